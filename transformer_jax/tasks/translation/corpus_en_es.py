"""Seeded English->Spanish translation corpus generated from a small grammar.

The grammar covers determiners, nouns and adjectives with Spanish gender and
number agreement, pronoun and noun subjects, present and simple past tense,
negation, yes/no questions, objects (with the Spanish personal "a"),
prepositional phrases (with the contractions "al" and "del") and the copulas
"ser"/"estar".

Surface variants: a seeded share of the sentences is written the way people
also type them, identically on both sides: ending in "!" (Spanish "¡...!"),
without the final period, all in capitals, or all in lower case. First and
second person singular subjects ("I", "you") are drawn more often than the
other pronouns, and sentences may be as short as "I slept.".

Held-out generalisation: a seeded set of (noun, adjective) and (subject noun,
verb) combinations never occurs in the train split; every validation and test
sentence contains at least one of them.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Sequence

SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 60_000, "validation": 1_000, "test": 1_000}
MIN_WORDS, MAX_WORDS = 2, 14

PERSON, ANIMAL, THING = "person", "animal", "thing"

Pair = tuple[str, str]
Combination = tuple[str, str, str]  # ("noun_adj" | "subject_verb", noun, adjective or verb)


@dataclasses.dataclass(frozen=True)
class Noun:
    """A noun with English/Spanish singular and plural forms."""

    en: str
    en_pl: str
    es: str
    es_pl: str
    gender: str  # "m" or "f"
    kind: str  # PERSON, ANIMAL or THING
    tags: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Adjective:
    """An adjective; Spanish forms are ordered m.sg, f.sg, m.pl, f.pl."""

    en: str
    es: tuple[str, str, str, str]
    copula: str  # "ser" or "estar"
    kinds: frozenset[str]
    group: str  # adjectives of one group (colours, sizes, ...) are not combined


@dataclasses.dataclass(frozen=True)
class Verb:
    """A verb; Spanish forms are ordered yo, tú, él, nosotros, ellos."""

    en: str
    en_3sg: str
    en_past: str
    es_present: tuple[str, ...]
    es_past: tuple[str, ...]
    subjects: frozenset[str]
    objects: frozenset[str]  # noun tags accepted as direct object; empty = intransitive
    intransitive: bool
    personal_a: bool
    preps: tuple[str, ...] | None = None  # restricts (and then requires) a prepositional phrase


@dataclasses.dataclass(frozen=True)
class Determiner:
    """A determiner; Spanish forms are ordered m.sg, f.sg, m.pl, f.pl."""

    en_sg: str
    en_pl: str
    es: tuple[str, str, str, str]
    weight: int


@dataclasses.dataclass(frozen=True)
class Preposition:
    """A preposition and the noun tags it accepts."""

    en: str
    es: str
    tags: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Subject:
    """A sentence subject: words, person index (0..4), gender and noun."""

    en: list[str]
    es: list[str]
    person: int  # 0=I 1=you 2=he/she/it 3=we 4=they
    gender: str
    noun: Noun | None
    adjective: Adjective | None


def _es_plural(word: str) -> str:
    return word + ("s" if word[-1] in "aeiouáéó" else "es")


def _noun(
    en: str, es: str, gender: str, kind: str, tags: str = "", *, en_pl: str = "", es_pl: str = ""
) -> Noun:
    tag_set = frozenset(tags.split()) | {kind}
    return Noun(en, en_pl or en + "s", es, es_pl or _es_plural(es), gender, kind, tag_set)


NOUNS: tuple[Noun, ...] = (
    _noun("woman", "mujer", "f", PERSON, "with", en_pl="women"),
    _noun("man", "hombre", "m", PERSON, "with", en_pl="men"),
    _noun("child", "niño", "m", PERSON, "with", en_pl="children"),
    _noun("boy", "chico", "m", PERSON, "with"),
    _noun("girl", "chica", "f", PERSON, "with"),
    _noun("friend", "amigo", "m", PERSON, "with"),
    _noun("teacher", "profesor", "m", PERSON, "with"),
    _noun("doctor", "médico", "m", PERSON, "with"),
    _noun("cat", "gato", "m", ANIMAL, "with"),
    _noun("dog", "perro", "m", ANIMAL, "with"),
    _noun("bird", "pájaro", "m", ANIMAL, "with"),
    _noun("horse", "caballo", "m", ANIMAL, "with"),
    _noun("mouse", "ratón", "m", ANIMAL, "with", en_pl="mice", es_pl="ratones"),
    _noun("cow", "vaca", "f", ANIMAL, "with"),
    _noun("duck", "pato", "m", ANIMAL, "with"),
    _noun("rabbit", "conejo", "m", ANIMAL, "with"),
    _noun("house", "casa", "f", THING, "inside landmark clean"),
    _noun("table", "mesa", "f", THING, "surface under landmark clean"),
    _noun("couch", "sofá", "m", THING, "surface under landmark clean", en_pl="couches"),
    _noun("car", "coche", "m", THING, "inside under landmark clean buy"),
    _noun("book", "libro", "m", THING, "read open portable with"),
    _noun("window", "ventana", "f", THING, "open landmark clean"),
    _noun("door", "puerta", "f", THING, "open landmark clean"),
    _noun("garden", "jardín", "m", THING, "inside landmark", es_pl="jardines"),
    _noun("street", "calle", "f", THING, "inside"),
    _noun("city", "ciudad", "f", THING, "inside", en_pl="cities"),
    _noun("tree", "árbol", "m", THING, "inside under landmark"),
    _noun("bed", "cama", "f", THING, "surface under landmark clean"),
    _noun("chair", "silla", "f", THING, "surface under landmark portable clean"),
    _noun("box", "caja", "f", THING, "inside open portable landmark", en_pl="boxes"),
    _noun("ball", "pelota", "f", THING, "portable with"),
    _noun("apple", "manzana", "f", THING, "food portable"),
    _noun("cake", "pastel", "m", THING, "food"),
    _noun("orange", "naranja", "f", THING, "food portable"),
    _noun("letter", "carta", "f", THING, "read open portable"),
    _noun("newspaper", "periódico", "m", THING, "read portable"),
    _noun("bottle", "botella", "f", THING, "open portable clean"),
    _noun("flower", "flor", "f", THING, "portable"),
    _noun("river", "río", "m", THING, "inside landmark"),
    _noun("park", "parque", "m", THING, "inside landmark"),
    _noun("bag", "bolsa", "f", THING, "inside open portable with"),
    _noun("school", "escuela", "f", THING, "inside landmark"),
)

_ALL = frozenset({PERSON, ANIMAL, THING})
_ANIMATE = frozenset({PERSON, ANIMAL})


def _adj(
    en: str, m: str, f: str, copula: str, kinds: frozenset[str], group: str, m_pl: str = ""
) -> Adjective:
    m_pl = m_pl or _es_plural(m)
    f_pl = m_pl if m == f else _es_plural(f)
    return Adjective(en, (m, f, m_pl, f_pl), copula, kinds, group)


ADJECTIVES: tuple[Adjective, ...] = (
    _adj("white", "blanco", "blanca", "ser", frozenset({ANIMAL, THING}), "colour"),
    _adj("black", "negro", "negra", "ser", frozenset({ANIMAL, THING}), "colour"),
    _adj("red", "rojo", "roja", "ser", frozenset({THING}), "colour"),
    _adj("green", "verde", "verde", "ser", frozenset({THING}), "colour"),
    _adj("blue", "azul", "azul", "ser", frozenset({THING}), "colour"),
    _adj("yellow", "amarillo", "amarilla", "ser", frozenset({THING}), "colour"),
    _adj("big", "grande", "grande", "ser", _ALL, "size"),
    _adj("small", "pequeño", "pequeña", "ser", _ALL, "size"),
    _adj("old", "viejo", "vieja", "ser", _ALL, "age"),
    _adj("new", "nuevo", "nueva", "ser", frozenset({THING}), "age"),
    _adj("beautiful", "bonito", "bonita", "ser", _ALL, "looks"),
    _adj("ugly", "feo", "fea", "ser", _ALL, "looks"),
    _adj("clean", "limpio", "limpia", "estar", _ALL, "state"),
    _adj("dirty", "sucio", "sucia", "estar", _ALL, "state"),
    _adj("tall", "alto", "alta", "ser", frozenset({PERSON}), "size"),
    _adj("young", "joven", "joven", "ser", _ANIMATE, "age", m_pl="jóvenes"),
    _adj("fast", "rápido", "rápida", "ser", _ANIMATE, "ability"),
    _adj("strong", "fuerte", "fuerte", "ser", _ANIMATE, "ability"),
    _adj("happy", "contento", "contenta", "estar", _ANIMATE, "mood"),
    _adj("sad", "triste", "triste", "estar", _ANIMATE, "mood"),
    _adj("tired", "cansado", "cansada", "estar", _ANIMATE, "mood"),
)


def _regular(stem_infinitive: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Present and preterite forms (yo, tú, él, nosotros, ellos) of a regular verb."""
    stem, ending = stem_infinitive[:-2], stem_infinitive[-2:]
    if ending == "ar":
        return (
            (stem + "o", stem + "as", stem + "a", stem + "amos", stem + "an"),
            (stem + "é", stem + "aste", stem + "ó", stem + "amos", stem + "aron"),
        )
    vowel = "e" if ending == "er" else "i"
    return (
        (stem + "o", stem + "es", stem + "e", stem + vowel + "mos", stem + "en"),
        (stem + "í", stem + "iste", stem + "ió", stem + "imos", stem + "ieron"),
    )


def _conjugation(spec: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Parses "infinitive" (regular) or "present forms / past forms", where a part may be an infinitive."""
    if "/" not in spec:
        return _regular(spec)
    present, past = (part.split() for part in spec.split("/"))
    return (
        tuple(present) if len(present) == 5 else _regular(present[0])[0],
        tuple(past) if len(past) == 5 else _regular(past[0])[1],
    )


def _verb(
    en_forms: str,
    es: str,
    subjects: frozenset[str],
    objects: str = "",
    *,
    intransitive: bool = True,
    personal_a: bool = True,
    preps: tuple[str, ...] | None = None,
) -> Verb:
    en, en_3sg, en_past = en_forms.split()
    present, past = _conjugation(es)
    return Verb(
        en, en_3sg, en_past, present, past, subjects, frozenset(objects.split()),
        intransitive, personal_a, preps,
    )  # fmt: skip


_PEOPLE = frozenset({PERSON})
VERBS: tuple[Verb, ...] = (
    _verb("sleep sleeps slept", "duermo duermes duerme dormimos duermen / dormí dormiste durmió dormimos durmieron", _ANIMATE),
    _verb("run runs ran", "correr", _ANIMATE),
    _verb("walk walks walked", "caminar", _ANIMATE),
    _verb("swim swims swam", "nadar", _ANIMATE),
    _verb("sing sings sang", "cantar", _ANIMATE),
    _verb("dance dances danced", "bailar", _PEOPLE),
    _verb("play plays played", "juego juegas juega jugamos juegan / jugué jugaste jugó jugamos jugaron", _ANIMATE),
    _verb("live lives lived", "vivir", _ANIMATE, preps=("in", "near", "with")),
    _verb("work works worked", "trabajar", _PEOPLE),
    _verb("eat eats ate", "comer", _ANIMATE, "food", personal_a=False),
    _verb("read reads read", "leo lees lee leemos leen / leí leíste leyó leímos leyeron", _PEOPLE, "read"),
    _verb("see sees saw", "veo ves ve vemos ven / vi viste vio vimos vieron", _ANIMATE, "person animal thing", intransitive=False),
    _verb("have has had", "tengo tienes tiene tenemos tienen / tuve tuviste tuvo tuvimos tuvieron", _ANIMATE, "portable animal", intransitive=False, personal_a=False),
    _verb("buy buys bought", "comprar", _PEOPLE, "portable food buy", intransitive=False, personal_a=False),
    _verb("open opens opened", "abrir", _PEOPLE, "open", intransitive=False),
    _verb("close closes closed", "cierro cierras cierra cerramos cierran / cerrar", _PEOPLE, "open", intransitive=False),
    _verb("find finds found", "encuentro encuentras encuentra encontramos encuentran / encontrar", _ANIMATE, "portable food person animal", intransitive=False),
    _verb("love loves loved", "amar", _PEOPLE, "person animal", intransitive=False),
    _verb("help helps helped", "ayudar", _PEOPLE, "person animal", intransitive=False),
    _verb("follow follows followed", "sigo sigues sigue seguimos siguen / seguí seguiste siguió seguimos siguieron", _ANIMATE, "person animal", intransitive=False),
    _verb("wash washes washed", "lavar", _PEOPLE, "clean animal", intransitive=False),
    _verb("clean cleans cleaned", "limpiar", _PEOPLE, "clean", intransitive=False),
    _verb("carry carries carried", "llevar", _PEOPLE, "portable", intransitive=False),
    _verb("hear hears heard", "oigo oyes oye oímos oyen / oí oíste oyó oímos oyeron", _ANIMATE, "person animal", intransitive=False),
)  # fmt: skip

DETERMINERS: tuple[Determiner, ...] = (
    Determiner("the", "the", ("el", "la", "los", "las"), 6),
    Determiner("a", "some", ("un", "una", "unos", "unas"), 3),
    Determiner("this", "these", ("este", "esta", "estos", "estas"), 1),
    Determiner("that", "those", ("ese", "esa", "esos", "esas"), 1),
    Determiner("my", "my", ("mi", "mi", "mis", "mis"), 1),
    Determiner("your", "your", ("tu", "tu", "tus", "tus"), 1),
    Determiner("his", "his", ("su", "su", "sus", "sus"), 1),
    Determiner("her", "her", ("su", "su", "sus", "sus"), 1),
    Determiner("our", "our", ("nuestro", "nuestra", "nuestros", "nuestras"), 1),
)

PREPOSITIONS: tuple[Preposition, ...] = (
    Preposition("on", "en", frozenset({"surface"})),
    Preposition("in", "en", frozenset({"inside"})),
    Preposition("under", "debajo de", frozenset({"under"})),
    Preposition("near", "cerca de", frozenset({"landmark"})),
    Preposition("behind", "detrás de", frozenset({"landmark"})),
    Preposition("in front of", "delante de", frozenset({"landmark"})),
    Preposition("with", "con", frozenset({"with"})),
)

_PLACES = tuple(p.en for p in PREPOSITIONS if p.en != "with")

# (English, Spanish, person index, gender); "I"/"you" have no fixed gender.
PRONOUNS: tuple[tuple[str, str, int, str], ...] = (
    ("I", "yo", 0, ""),
    ("you", "tú", 1, ""),
    ("he", "él", 2, "m"),
    ("she", "ella", 2, "f"),
    ("we", "nosotros", 3, "m"),
    ("they", "ellos", 4, "m"),
)

# "I" and "you" are what people type most: drawn three times as often as each other pronoun.
PRONOUN_WEIGHTS: tuple[int, ...] = (3, 3, 1, 1, 1, 1)

# Share of sentences written in each surface variant (drawn independently, so a
# sentence may be both shouted and in capitals). Questions keep their "?".
SURFACE_VARIANTS: dict[str, float] = {
    "exclamation": 0.06,  # "The cat sleeps!" -> "¡El gato duerme!"
    "no_period": 0.06,  # "The cat sleeps" -> "El gato duerme"
    "upper": 0.04,  # "THE CAT SLEEPS." -> "EL GATO DUERME."
    "lower": 0.03,  # "the cat sleeps." -> "el gato duerme."
}

_BE_PRESENT = ("am", "are", "is", "are", "are")
_BE_PAST = ("was", "were", "was", "were", "were")
_DO = ("do", "do", "does", "do", "do")
_COPULA = {
    ("ser", False): ("soy", "eres", "es", "somos", "son"),
    ("ser", True): ("era", "eras", "era", "éramos", "eran"),
    ("estar", False): ("estoy", "estás", "está", "estamos", "están"),
    ("estar", True): ("estaba", "estabas", "estaba", "estábamos", "estaban"),
}
_DETERMINER_BAG: tuple[Determiner, ...] = tuple(d for d in DETERMINERS for _ in range(d.weight))


def _attach(head: str, words: list[str]) -> list[str]:
    """Prefixes ``head`` ("a", "con", "debajo de", ...) applying a+el->al, de+el->del."""
    if words[0] == "el" and (head == "a" or head.endswith(" de")):
        return [*head.split()[:-1], head.split()[-1] + "l", *words[1:]]
    return [*head.split(), *words]


def _capitalise(text: str) -> str:
    for i, char in enumerate(text):
        if char.isalpha():
            return text[:i] + char.upper() + text[i + 1 :]
    return text


def _is_vowel_sound(word: str) -> bool:
    return word[0] in "aeiou"


class Grammar:
    """Samples sentence pairs and reports which held-out combinations they use."""

    def __init__(self, seed: int = 0, held_out_fraction: float = 0.08) -> None:
        self.adjectives_for = {k: tuple(a for a in ADJECTIVES if k in a.kinds) for k in _ALL}
        self.subjects_for = {v.en: tuple(n for n in NOUNS if n.kind in v.subjects) for v in VERBS}
        self.objects_for = {v.en: tuple(n for n in NOUNS if n.tags & v.objects) for v in VERBS}
        self.pp_nouns = {p.en: tuple(n for n in NOUNS if n.tags & p.tags) for p in PREPOSITIONS}
        self.prepositions = {p.en: p for p in PREPOSITIONS}
        self.intransitive = tuple(v for v in VERBS if v.intransitive)
        self.transitive = tuple(v for v in VERBS if v.objects)
        self.held_out = held_out_combinations(seed, held_out_fraction)

    # -- phrases -----------------------------------------------------------
    def noun_phrase(
        self, rng: random.Random, noun: Noun
    ) -> tuple[list[str], list[str], bool, Adjective | None]:
        """Returns (English words, Spanish words, plural, adjective)."""
        plural = rng.random() < 0.4
        det = _DETERMINER_BAG[int(rng.random() * len(_DETERMINER_BAG))]
        adjective = None
        if rng.random() < 0.35:
            options = self.adjectives_for[noun.kind]
            adjective = options[int(rng.random() * len(options))]
        form = (2 if plural else 0) + (noun.gender == "f")
        en_noun = noun.en_pl if plural else noun.en
        en_next = adjective.en if adjective else en_noun
        en_det = det.en_pl if plural else det.en_sg
        if en_det == "a" and _is_vowel_sound(en_next):
            en_det = "an"
        en = [en_det, *([adjective.en] if adjective else []), en_noun]
        es = [
            det.es[form],
            noun.es_pl if plural else noun.es,
            *([adjective.es[form]] if adjective else []),
        ]
        return en, es, plural, adjective

    def subject(
        self, rng: random.Random, nouns: Sequence[Noun], pronoun_p: float, pronouns: Sequence[int]
    ) -> Subject:
        if rng.random() < pronoun_p:
            bag = [i for i in pronouns for _ in range(PRONOUN_WEIGHTS[i])]
            en, es, person, gender = PRONOUNS[bag[int(rng.random() * len(bag))]]
            return Subject([en], [es], person, gender, None, None)
        noun = nouns[int(rng.random() * len(nouns))]
        en, es, plural, adjective = self.noun_phrase(rng, noun)
        return Subject(en, es, 4 if plural else 2, noun.gender, noun, adjective)

    def prepositional_phrase(
        self, rng: random.Random, allowed: Sequence[str] | None, exclude: Sequence[Noun | None]
    ) -> tuple[list[str], list[str], Noun, Adjective | None]:
        names = allowed or tuple(self.prepositions)
        prep = self.prepositions[names[int(rng.random() * len(names))]]
        nouns = self.pp_nouns[prep.en]
        noun = nouns[int(rng.random() * len(nouns))]
        while noun in exclude:  # no "The table is on the table."
            noun = nouns[(nouns.index(noun) + 1) % len(nouns)]
        en, es, _, adjective = self.noun_phrase(rng, noun)
        return [*prep.en.split(), *en], _attach(prep.es, es), noun, adjective

    # -- sentences ---------------------------------------------------------
    def sample(self, rng: random.Random) -> tuple[str, str, frozenset[Combination]] | None:
        """One random sentence pair with its combinations, or None if rejected."""
        r = rng.random()
        if r < 0.3:
            parts = self._verb_sentence(rng, transitive=False)
        elif r < 0.72:
            parts = self._verb_sentence(rng, transitive=True)
        elif r < 0.87:
            parts = self._copula_adjective(rng)
        else:
            parts = self._copula_location(rng)
        if parts is None:
            return None
        en_words, es_words, question, combos = parts
        if not (
            MIN_WORDS <= len(en_words) <= MAX_WORDS and MIN_WORDS <= len(es_words) <= MAX_WORDS
        ):
            return None
        en = _capitalise(" ".join(en_words)) + ("?" if question else ".")
        es = _capitalise(("¿" if question else "") + " ".join(es_words)) + (
            "?" if question else "."
        )
        return en, es, frozenset(combos)

    def _mode(self, rng: random.Random) -> tuple[bool, bool, bool]:
        """Returns (past, negated, question)."""
        past = rng.random() < 0.45
        r = rng.random()
        return past, r < 0.2, 0.2 <= r < 0.32

    def _verb_sentence(self, rng: random.Random, transitive: bool) -> tuple | None:
        verbs = self.transitive if transitive else self.intransitive
        verb = verbs[int(rng.random() * len(verbs))]
        past, negated, question = self._mode(rng)
        subject = self.subject(rng, self.subjects_for[verb.en], 0.3, range(len(PRONOUNS)))
        p = subject.person
        aux = "did" if past else _DO[p]
        if past and verb.en_past == verb.en and p != 2 and not (negated or question):
            return None  # "I read" would be ambiguous between present and past
        es_verb = (verb.es_past if past else verb.es_present)[p]
        if question:
            en = [aux, *subject.en, verb.en]
        elif negated:
            en = [*subject.en, aux, "not", verb.en]
        else:
            en = [*subject.en, verb.en_past if past else (verb.en_3sg if p == 2 else verb.en)]
        es = [*subject.es, *(["no"] if negated else []), es_verb]
        combos = self._subject_combos(subject)
        if subject.noun is not None:
            combos.append(("subject_verb", subject.noun.en, verb.en))
        used: list[Noun | None] = [subject.noun]
        if transitive:
            candidates = self.objects_for[verb.en]
            noun = candidates[int(rng.random() * len(candidates))]
            if noun is subject.noun:
                return None
            used.append(noun)
            obj_en, obj_es, _, adjective = self.noun_phrase(rng, noun)
            en += obj_en
            es += _attach("a", obj_es) if verb.personal_a and noun.kind != THING else obj_es
            if adjective:
                combos.append(("noun_adj", noun.en, adjective.en))
        if verb.preps or rng.random() < (0.3 if transitive else 0.6):
            pp_en, pp_es, noun, adjective = self.prepositional_phrase(rng, verb.preps, used)
            en += pp_en
            es += pp_es
            if adjective:
                combos.append(("noun_adj", noun.en, adjective.en))
        return en, es, question, combos

    def _copula_adjective(self, rng: random.Random) -> tuple | None:
        past, negated, question = self._mode(rng)
        # "I"/"you" take the masculine form ("Yo estoy cansado."), Spanish's default.
        subject = self.subject(rng, NOUNS, 0.3, range(len(PRONOUNS)))
        kind = subject.noun.kind if subject.noun else PERSON
        options = self.adjectives_for[kind]
        adjective = options[int(rng.random() * len(options))]
        if subject.adjective is not None and subject.adjective.group == adjective.group:
            return None  # avoids "The black car is red."
        p = subject.person
        plural = p in (3, 4)
        be = (_BE_PAST if past else _BE_PRESENT)[p]
        es_be = _COPULA[(adjective.copula, past)][p]
        es_adj = adjective.es[(2 if plural else 0) + (subject.gender == "f")]
        if question:
            en = [be, *subject.en, adjective.en]
        else:
            en = [*subject.en, be, *(["not"] if negated else []), adjective.en]
        es = [*subject.es, *(["no"] if negated else []), es_be, es_adj]
        combos = self._subject_combos(subject)
        if subject.noun is not None:
            combos.append(("noun_adj", subject.noun.en, adjective.en))
        return en, es, question, combos

    def _copula_location(self, rng: random.Random) -> tuple | None:
        past, negated, question = self._mode(rng)
        subject = self.subject(rng, NOUNS, 0.3, range(len(PRONOUNS)))
        p = subject.person
        be = (_BE_PAST if past else _BE_PRESENT)[p]
        pp_en, pp_es, noun, adjective = self.prepositional_phrase(rng, _PLACES, [subject.noun])
        if question:
            en = [be, *subject.en, *pp_en]
        else:
            en = [*subject.en, be, *(["not"] if negated else []), *pp_en]
        es = [*subject.es, *(["no"] if negated else []), _COPULA[("estar", past)][p], *pp_es]
        combos = self._subject_combos(subject)
        if adjective:
            combos.append(("noun_adj", noun.en, adjective.en))
        return en, es, question, combos

    @staticmethod
    def _subject_combos(subject: Subject) -> list[Combination]:
        if subject.noun is not None and subject.adjective is not None:
            return [("noun_adj", subject.noun.en, subject.adjective.en)]
        return []


def surface_variant(en: str, es: str, variants: Sequence[str]) -> Pair:
    """Rewrites a pair in the given surface variants (see SURFACE_VARIANTS), both sides alike."""
    question = en.endswith("?")
    if "exclamation" in variants and not question:
        en, es = en[:-1] + "!", _capitalise("¡" + es[0].lower() + es[1:-1] + "!")
    if "no_period" in variants and en.endswith("."):
        en, es = en[:-1], es[:-1]
    if "upper" in variants:
        en, es = en.upper(), es.upper()
    elif "lower" in variants:
        en, es = en.lower(), es.lower()
    return en, es


def _draw_variants(rng: random.Random) -> tuple[str, ...]:
    return tuple(name for name, p in SURFACE_VARIANTS.items() if rng.random() < p)


def cat_sentence() -> Pair:
    """Builds "The cat sleeps on the couch." through the grammar's own phrase rules."""
    nouns = {n.en: n for n in NOUNS}
    sleep = next(v for v in VERBS if v.en == "sleep")
    the = DETERMINERS[0]
    cat, couch = nouns["cat"], nouns["couch"]
    on = next(p for p in PREPOSITIONS if p.en == "on")
    en = ["the", cat.en, sleep.en_3sg, on.en, the.en_sg, couch.en]
    es = [the.es[0], cat.es, sleep.es_present[2], *_attach(on.es, [the.es[0], couch.es])]
    return _capitalise(" ".join(en)) + ".", _capitalise(" ".join(es)) + "."


def all_combinations() -> dict[str, tuple[tuple[str, str], ...]]:
    """All grammatical (noun, adjective) and (subject noun, verb) combinations."""
    return {
        "noun_adj": tuple((n.en, a.en) for n in NOUNS for a in ADJECTIVES if n.kind in a.kinds),
        "subject_verb": tuple((n.en, v.en) for n in NOUNS for v in VERBS if n.kind in v.subjects),
    }


@functools.lru_cache(maxsize=8)
def held_out_combinations(seed: int = 0, fraction: float = 0.08) -> frozenset[Combination]:
    """The seeded set of combinations reserved for validation and test."""
    rng = random.Random(f"held-out/{seed}")
    protected = {("subject_verb", "cat", "sleep")}
    chosen: set[Combination] = set()
    for kind, pairs in all_combinations().items():
        candidates = [(kind, *pair) for pair in pairs if (kind, *pair) not in protected]
        chosen.update(rng.sample(candidates, max(1, round(fraction * len(candidates)))))
    return frozenset(chosen)


@functools.lru_cache(maxsize=4)
def _generate(seed: int) -> dict[str, tuple[tuple[str, str, frozenset[Combination]], ...]]:
    grammar = Grammar(seed)
    held_out = grammar.held_out
    rng = random.Random(seed)
    cat_en, cat_es = cat_sentence()
    out: dict[str, list[tuple[str, str, frozenset[Combination]]]] = {s: [] for s in SPLITS}
    out["train"].append((cat_en, cat_es, frozenset({("subject_verb", "cat", "sleep")})))
    seen = {cat_en}
    surface_rng = random.Random(f"surface/{seed}")  # its own stream: variants never shift samples
    while any(len(out[s]) < SPLIT_SIZES[s] for s in SPLITS):
        sample = grammar.sample(rng)
        if sample is None or sample[0] in seen:
            continue
        if sample[2] & held_out:
            split = "validation" if len(out["validation"]) < SPLIT_SIZES["validation"] else "test"
        else:
            split = "train"
        if len(out[split]) < SPLIT_SIZES[split]:
            seen.add(sample[0])  # the plain form: no sentence appears in two variants
            en, es = surface_variant(sample[0], sample[1], _draw_variants(surface_rng))
            out[split].append((en, es, sample[2]))
    return {s: tuple(v) for s, v in out.items()}


def generate_split_with_combinations(
    split: str, seed: int = 0, num_examples: int | None = None
) -> list[tuple[str, str, frozenset[Combination]]]:
    """Like :func:`generate_split` but also returns each sentence's combinations."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    return list(_generate(seed)[split][:num_examples])


def generate_split(split: str, seed: int = 0, num_examples: int | None = None) -> list[Pair]:
    """Deterministic (English, Spanish) pairs of ``split``; optionally only the first few."""
    return [(en, es) for en, es, _ in generate_split_with_combinations(split, seed, num_examples)]
