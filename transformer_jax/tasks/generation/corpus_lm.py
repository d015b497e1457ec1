"""Seeded English/Spanish document corpus for training a small causal language model.

Each split mixes three kinds of short documents (shares in :data:`MIX`):

- ``"sentence"``: both sides of the translation corpus's sentence pairs
  (:mod:`transformer_jax.tasks.translation.corpus_en_es`), each side a document of its
  own; a split takes its pairs from the same split of that corpus.
- ``"review"``: reviews from the sentiment corpus
  (:mod:`transformer_jax.tasks.classification.corpus_sentiment`), from the same split.
- ``"story"``: short stories of 2-5 sentences in English or Spanish in which the later
  sentences refer back to the earlier ones: a person introduced with a gendered name is
  later "he"/"she" ("contento"/"contenta"), an object introduced with an attribute comes
  back with that attribute ("Ana has a red kite. ... Today Ana takes her red kite to the
  park."), a number of fruits bought is repeated, a pet's name and habit recur. A model
  that reads the earlier sentences predicts the later ones far better than a bigram.

Stories have a small vocabulary of their own (about 250 words in both languages together).
Held-out generalisation: a seeded set of (object or animal, attribute) and (fruit,
number) combinations (:func:`held_out_combinations`) never occurs in a train story;
every validation and test story contains at least one of them, and every word of them
occurs in train stories. No story occurs twice in the corpus.

The kinds are shuffled together (seeded), so every prefix of a split has about the
shares of :data:`MIX`.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable

from transformer_jax.tasks.classification import corpus_sentiment
from transformer_jax.tasks.translation import corpus_en_es

SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 20_000, "validation": 1_000, "test": 1_000}
KINDS = ("sentence", "review", "story")
LANGUAGES = ("en", "es")
MIX = {"sentence": 0.3, "review": 0.2, "story": 0.5}  # each kind's share of a split
HELD_OUT_FRACTION = 0.15

Combination = tuple[str, str, str]  # ("object_attr" | "fruit_number", head, attribute)


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: its text, kind (see :data:`KINDS`) and language."""

    text: str
    kind: str
    language: str


# --- Story lexicon ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Name:
    name: str
    female: bool


@dataclasses.dataclass(frozen=True)
class Noun:
    """A noun: English, Spanish and the Spanish gender."""

    en: str
    es: str
    female: bool


@dataclasses.dataclass(frozen=True)
class Attribute:
    """An adjective; Spanish forms are masculine and feminine singular."""

    en: str
    es_m: str
    es_f: str

    def es(self, female: bool) -> str:
        return self.es_f if female else self.es_m


def _attr(en: str, es_m: str, es_f: str | None = None) -> Attribute:
    if es_f is None:
        es_f = es_m[:-1] + "a" if es_m.endswith("o") else es_m
    return Attribute(en, es_m, es_f)


NAMES = tuple(
    Name(n, f)
    for n, f in (
        ("Ana", True), ("Eva", True), ("Sara", True), ("Lola", True), ("Nina", True),
        ("Emma", True), ("Rosa", True), ("Julia", True), ("Tom", False), ("Leo", False),
        ("Luis", False), ("Pablo", False), ("Ben", False), ("Hugo", False), ("Dan", False),
        ("Mario", False),
    )
)  # fmt: skip
PETS = ("Coco", "Luna", "Toby", "Kiko", "Mimi", "Rufo", "Pipo", "Lulu")

OBJECTS = (
    Noun("kite", "cometa", True),
    Noun("ball", "pelota", True),
    Noun("bike", "bicicleta", True),
    Noun("hat", "sombrero", False),
    Noun("bag", "bolsa", True),
    Noun("book", "libro", False),
    Noun("box", "caja", True),
    Noun("cup", "taza", True),
    Noun("car", "coche", False),
    Noun("umbrella", "paraguas", False),
    Noun("shirt", "camisa", True),
    Noun("pencil", "lápiz", False),
)
COLOURS = (
    _attr("red", "rojo"),
    _attr("blue", "azul"),
    _attr("green", "verde"),
    _attr("yellow", "amarillo"),
    _attr("black", "negro"),
    _attr("white", "blanco"),
)
OBJECT_ATTRIBUTES = COLOURS + (
    _attr("big", "grande"),
    _attr("small", "pequeño"),
    _attr("new", "nuevo"),
    _attr("old", "viejo"),
)
ANIMALS = (
    Noun("dog", "perro", False),
    Noun("cat", "gato", False),
    Noun("bird", "pájaro", False),
    Noun("rabbit", "conejo", False),
    Noun("duck", "pato", False),
)
ANIMAL_ATTRIBUTES = (
    _attr("black", "negro"),
    _attr("white", "blanco"),
    _attr("brown", "marrón", "marrón"),
    _attr("grey", "gris"),
    _attr("big", "grande"),
    _attr("small", "pequeño"),
)
# (English infinitive, English 3rd person, Spanish infinitive, Spanish 3rd person)
PET_VERBS = (
    ("run", "runs", "correr", "corre"),
    ("swim", "swims", "nadar", "nada"),
    ("play", "plays", "jugar", "juega"),
    ("sleep", "sleeps", "dormir", "duerme"),
    ("jump", "jumps", "saltar", "salta"),
)
FRUITS = (
    Noun("apples", "manzanas", True),
    Noun("pears", "peras", True),
    Noun("oranges", "naranjas", True),
    Noun("bananas", "plátanos", False),
    Noun("lemons", "limones", False),
    Noun("eggs", "huevos", False),
    Noun("cookies", "galletas", True),
)
NUMBERS = (
    ("two", "dos"),
    ("three", "tres"),
    ("four", "cuatro"),
    ("five", "cinco"),
    ("six", "seis"),
    ("seven", "siete"),
    ("eight", "ocho"),
)
PLACES = (
    Noun("park", "parque", False),
    Noun("school", "escuela", True),
    Noun("beach", "playa", True),
    Noun("garden", "jardín", False),
    Noun("library", "biblioteca", True),
    Noun("river", "río", False),
    Noun("square", "plaza", True),
)
DAYS = corpus_sentiment.DAYS  # (English, Spanish) day names
WHEN = (("Today", "Hoy"), ("Later", "Más tarde"), ("In the morning", "Por la mañana"),
        ("In the afternoon", "Por la tarde"))  # fmt: skip


def all_combinations() -> dict[str, tuple[tuple[str, str], ...]]:
    """Every (object or animal, attribute) and (fruit, number) combination of the stories."""
    return {
        "object_attr": tuple((o.en, a.en) for o in OBJECTS for a in OBJECT_ATTRIBUTES)
        + tuple((o.en, a.en) for o in ANIMALS for a in ANIMAL_ATTRIBUTES),
        "fruit_number": tuple((f.en, n) for f in FRUITS for n, _ in NUMBERS),
    }


@functools.lru_cache(maxsize=8)
def held_out_combinations(seed: int = 0) -> frozenset[Combination]:
    """The seeded combinations reserved for validation and test stories.

    Every head (object, animal, fruit) and every attribute (or number) keeps at
    least three combinations in train, so all their words are seen in training.
    """
    rng = random.Random(f"lm-held-out/{seed}")
    chosen: set[Combination] = set()
    for kind, pairs in all_combinations().items():
        candidates = list(pairs)
        rng.shuffle(candidates)
        quota = round(HELD_OUT_FRACTION * len(candidates))
        left_head: dict[str, int] = {}
        left_attr: dict[str, int] = {}
        for head, attr in candidates:
            left_head[head] = left_head.get(head, 0) + 1
            left_attr[attr] = left_attr.get(attr, 0) + 1
        for head, attr in candidates:
            if quota == 0:
                break
            if left_head[head] > 3 and left_attr[attr] > 3:
                chosen.add((kind, head, attr))
                left_head[head] -= 1
                left_attr[attr] -= 1
                quota -= 1
    return frozenset(chosen)


# --- Story rendering -------------------------------------------------------------------------


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _un(noun: Noun) -> str:
    return ("una " if noun.female else "un ") + noun.es


def _el(noun: Noun) -> str:
    return ("la " if noun.female else "el ") + noun.es


def _al(noun: Noun) -> str:
    return ("a la " if noun.female else "al ") + noun.es


def _en_el(noun: Noun) -> str:
    return ("en la " if noun.female else "en el ") + noun.es


def _he(p: Name) -> str:
    return "She" if p.female else "He"


def _his(p: Name) -> str:
    return "her" if p.female else "his"


def _happy(p: Name) -> str:
    return "contenta" if p.female else "contento"


def _lo(noun: Noun) -> str:
    return "la" if noun.female else "lo"


def _los(noun: Noun) -> str:
    return "las" if noun.female else "los"


Story = tuple[list[str], list[str], set[Combination]]  # English, Spanish sentences; combinations


def _two_people(rng: random.Random) -> tuple[Name, Name]:
    a, b = rng.sample(NAMES, 2)
    return a, b


def _story_have(rng: random.Random) -> Story:
    a = rng.choice(NAMES)
    obj, attr = rng.choice(OBJECTS), rng.choice(OBJECT_ATTRIBUTES)
    place = rng.choice(PLACES)
    when, cuando = rng.choice(WHEN)
    obj_es = f"{obj.es} {attr.es(obj.female)}"
    en = [f"{a.name} has {_a(attr.en)} {obj.en}."]
    es = [f"{a.name} tiene {_un(obj)} {attr.es(obj.female)}."]
    if rng.random() < 0.5:
        en.append(f"{_he(a)} likes it a lot.")
        es.append("Le gusta mucho.")
    en.append(f"{when}, {a.name} takes {_his(a)} {attr.en} {obj.en} to the {place.en}.")
    es.append(f"{cuando}, {a.name} lleva su {obj_es} {_al(place)}.")
    if rng.random() < 0.5:
        en.append(f"{_he(a)} is happy.")
        es.append(f"Está {_happy(a)}.")
    return en, es, {("object_attr", obj.en, attr.en)}


def _story_lost(rng: random.Random) -> Story:
    a, b = _two_people(rng)
    obj, attr = rng.choice(OBJECTS), rng.choice(OBJECT_ATTRIBUTES)
    place = rng.choice(PLACES)
    day, dia = rng.choice(DAYS)
    adj = attr.es(obj.female)
    en = [f"{a.name} has {_a(attr.en)} {obj.en}.", f"On {day}, {_he(a).lower()} loses it at the {place.en}."]  # fmt: skip
    es = [f"{a.name} tiene {_un(obj)} {adj}.", f"El {dia}, {_lo(obj)} pierde {_en_el(place)}."]
    if rng.random() < 0.5:
        en.append(f"{a.name} looks for the {obj.en} everywhere.")
        es.append(f"{a.name} busca {_el(obj)} por todas partes.")
    en.append(f"Later, {b.name} finds the {attr.en} {obj.en} and gives it to {a.name}.")
    es.append(f"Más tarde, {b.name} encuentra {_el(obj)} {adj} y se {_lo(obj)} da a {a.name}.")
    if rng.random() < 0.4:
        en.append(f"{a.name} is happy again.")
        es.append(f"{a.name} está {_happy(a)} otra vez.")
    return en, es, {("object_attr", obj.en, attr.en)}


def _story_market(rng: random.Random) -> Story:
    a, b = _two_people(rng)
    fruit = rng.choice(FRUITS)
    n, n_es = rng.choice(NUMBERS)
    en, es = [], []
    if rng.random() < 0.3:
        day, dia = rng.choice(DAYS)
        en.append(f"It is {day}.")
        es.append(f"Es {dia}.")
    en += [f"{a.name} goes to the market.", f"{_he(a)} buys {n} {fruit.en}."]
    es += [f"{a.name} va al mercado.", f"Compra {n_es} {fruit.es}."]
    if rng.random() < 0.5:
        en.append(f"Later, {a.name} eats the {fruit.en}.")
        es.append(f"Más tarde, {a.name} se come {_los(fruit)} {fruit.es}.")
    else:
        en += [f"{_he(a)} gives the {fruit.en} to {b.name}.", f"Now {b.name} has {n} {fruit.en}."]
        es += [f"Le da {_los(fruit)} {fruit.es} a {b.name}.",
               f"Ahora {b.name} tiene {n_es} {fruit.es}."]  # fmt: skip
    return en, es, {("fruit_number", fruit.en, n)}


def _story_pet(rng: random.Random) -> Story:
    a = rng.choice(NAMES)
    pet = rng.choice(PETS)
    animal, attr = rng.choice(ANIMALS), rng.choice(ANIMAL_ATTRIBUTES)
    verb, verbs, verbo, verbo3 = rng.choice(PET_VERBS)
    place = rng.choice(PLACES)
    en = [f"{a.name} has {_a(attr.en)} {animal.en} called {pet}.", f"{pet} likes to {verb}."]
    es = [f"{a.name} tiene {_un(animal)} {attr.es(animal.female)} que se llama {pet}.",
          f"A {pet} le gusta {verbo}."]  # fmt: skip
    if rng.random() < 0.7:
        en.append(f"Every morning, {a.name} and {pet} go to the {place.en}.")
        es.append(f"Cada mañana, {a.name} y {pet} van {_al(place)}.")
        if rng.random() < 0.6:
            en.append(f"There, {pet} {verbs} a lot.")
            es.append(f"Allí, {pet} {verbo3} mucho.")
    return en, es, {("object_attr", animal.en, attr.en)}


def _story_give(rng: random.Random) -> Story:
    a, b = _two_people(rng)
    o1, o2 = rng.sample(OBJECTS, 2)
    t1, t2 = rng.choice(OBJECT_ATTRIBUTES), rng.choice(OBJECT_ATTRIBUTES)
    e1, e2 = t1.es(o1.female), t2.es(o2.female)
    en = [
        f"{a.name} has {_a(t1.en)} {o1.en} and {b.name} has {_a(t2.en)} {o2.en}.",
        f"{a.name} gives {_his(a)} {o1.en} to {b.name}.",
        f"Now {b.name} has the {t1.en} {o1.en} and the {t2.en} {o2.en}.",
    ]
    es = [
        f"{a.name} tiene {_un(o1)} {e1} y {b.name} tiene {_un(o2)} {e2}.",
        f"{a.name} le da su {o1.es} a {b.name}.",
        f"Ahora {b.name} tiene {_el(o1)} {e1} y {_el(o2)} {e2}.",
    ]
    if rng.random() < 0.4:
        en.append(f"{_he(b)} is happy.")
        es.append(f"Está {_happy(b)}.")
    return en, es, {("object_attr", o1.en, t1.en), ("object_attr", o2.en, t2.en)}


def _story_paint(rng: random.Random) -> Story:
    a, b = _two_people(rng)
    obj = rng.choice(OBJECTS)
    attr = rng.choice(OBJECT_ATTRIBUTES)
    colour = rng.choice([c for c in COLOURS if c != attr])
    en = [f"{a.name} has {_a(attr.en)} {obj.en}.", f"{_he(a)} paints it {colour.en}.",
          f"Now the {obj.en} is {colour.en}."]  # fmt: skip
    es = [f"{a.name} tiene {_un(obj)} {attr.es(obj.female)}.",
          f"{_lo(obj).capitalize()} pinta de {colour.es_m}.",
          f"Ahora {_el(obj)} es {colour.es(obj.female)}."]  # fmt: skip
    if rng.random() < 0.5:
        en.append(f"{b.name} likes the {colour.en} {obj.en}.")
        es.append(f"A {b.name} le gusta {_el(obj)} {colour.es(obj.female)}.")
    return en, es, {("object_attr", obj.en, attr.en), ("object_attr", obj.en, colour.en)}


STORY_TEMPLATES: dict[str, Callable[[random.Random], Story]] = {
    "have": _story_have,
    "lost": _story_lost,
    "market": _story_market,
    "pet": _story_pet,
    "give": _story_give,
    "paint": _story_paint,
}


@dataclasses.dataclass(frozen=True)
class StoryExample:
    """A generated story: its text, language, template and combinations."""

    text: str
    language: str
    template: str
    combinations: frozenset[Combination]


def sample_story(rng: random.Random) -> StoryExample:
    """One random story, in English or Spanish."""
    template = rng.choice(tuple(STORY_TEMPLATES))
    en, es, combos = STORY_TEMPLATES[template](rng)
    language = rng.choice(LANGUAGES)
    text = " ".join(en if language == "en" else es)
    return StoryExample(text, language, template, frozenset(combos))


def _counts(size: int) -> dict[str, int]:
    n = {k: round(MIX[k] * size) for k in ("sentence", "review")}
    n["story"] = size - sum(n.values())
    return n


@functools.lru_cache(maxsize=4)
def _stories(seed: int) -> dict[str, tuple[StoryExample, ...]]:
    held_out = held_out_combinations(seed)
    rng = random.Random(f"lm-stories/{seed}")
    want = {s: _counts(SPLIT_SIZES[s])["story"] for s in SPLITS}
    out: dict[str, list[StoryExample]] = {s: [] for s in SPLITS}
    # Validation and test take each template about equally often (stories with two
    # combinations would otherwise dominate them, holding a held-out one more often).
    per_template = {s: -(-want[s] // len(STORY_TEMPLATES)) for s in SPLITS}
    used = {s: dict.fromkeys(STORY_TEMPLATES, 0) for s in SPLITS}
    seen: set[str] = set()
    while any(len(out[s]) < want[s] for s in SPLITS):
        story = sample_story(rng)
        if story.text in seen:
            continue
        if story.combinations & held_out:
            split = "validation" if len(out["validation"]) < want["validation"] else "test"
            if used[split][story.template] >= per_template[split]:
                continue
        else:
            split = "train"
        if len(out[split]) < want[split]:
            seen.add(story.text)
            used[split][story.template] += 1
            out[split].append(story)
    return {s: tuple(v) for s, v in out.items()}


def generate_stories(split: str, seed: int = 0) -> list[StoryExample]:
    """All stories of ``split`` with their structure, in generation order."""
    _check_split(split)
    return list(_stories(seed)[split])


@functools.lru_cache(maxsize=4)
def _generate(seed: int) -> dict[str, tuple[Document, ...]]:
    stories = _stories(seed)
    out: dict[str, tuple[Document, ...]] = {}
    for split in SPLITS:
        n = _counts(SPLIT_SIZES[split])
        docs = [Document(s.text, "story", s.language) for s in stories[split]]
        pairs = corpus_en_es.generate_split(split, seed, (n["sentence"] + 1) // 2)
        sentences = [Document(t, "sentence", lang) for p in pairs for t, lang in zip(p, LANGUAGES)]
        docs += sentences[: n["sentence"]]
        reviews = corpus_sentiment.generate_split(split, seed, n["review"])
        docs += [Document(text, "review", language) for text, _, language in reviews]
        random.Random(f"lm-mix/{seed}/{split}").shuffle(docs)
        out[split] = tuple(docs)
    return out


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")


def generate_documents(
    split: str, seed: int = 0, num_examples: int | None = None
) -> list[Document]:
    """Like :func:`generate_split` but returns each document's kind and language too."""
    _check_split(split)
    return list(_generate(seed)[split][:num_examples])


def generate_split(split: str, seed: int = 0, num_examples: int | None = None) -> list[str]:
    """Deterministic document texts of ``split``; optionally only the first few."""
    return [d.text for d in generate_documents(split, seed, num_examples)]
