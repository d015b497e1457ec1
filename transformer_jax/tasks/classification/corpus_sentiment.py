"""Seeded bilingual (English/Spanish) review corpus for three-way sentiment classification.

Short reviews of phones, laptops, headphones, hotels, restaurants and
deliveries; about half are English, half Spanish (with gender/number agreement:
"la pantalla es buena", "los auriculares son buenos"). Each review is built from
clauses whose structure decides its label, by these rules:

- Polarity: an adjective is positive, negative or neutral; a clause "X is ADJ"
  (or the fragment "ADJ X") takes that polarity: "The battery is excellent." is
  POSITIVE, "The room is dirty." NEGATIVE, "The screen is average." NEUTRAL.
- Intensifiers ("very", "really", "extremely", "incredibly" / "muy",
  "realmente", "extremadamente", "increíblemente") and hedges ("a bit",
  "somewhat", "kind of", "slightly" / "un poco", "algo", "más bien",
  "ligeramente") never change the label.
- Negation: a negated positive is NEGATIVE ("not good", "no es bueno",
  "I do not recommend it", "no lo recomiendo"); a negated negative is NEUTRAL
  ("not bad", "no es malo"). Neutral adjectives are never negated.
- Neutral statements: "It is okay." / "Está bien.", "neither good nor bad" /
  "ni bueno ni malo", and plain facts ("It arrived on Tuesday." / "Llegó el
  martes.") are NEUTRAL.
- Contrast: in "A but B" / "A pero B" the clause after "but"/"pero" decides,
  whatever A says ("terrible screen but good battery" is POSITIVE).
- A fact placed before or after an opinion sentence does not change the
  opinion's label.

Surface variants (a seeded share, never changing the label): the review ends in
"!" (Spanish "¡...!") or without the final period, is written in capitals or in
lower case, or has a comma before "but"/"pero"; English negations may be
contracted ("isn't", "don't").

Held-out generalisation: a seeded set of (aspect noun, adjective) and
(modifier, adjective) combinations (see :func:`held_out_combinations`) never
occurs in the train or validation split; half of the test split (its even
positions) contains at least one of them, the other half does not. Every
sentence occurs in one split only.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 12_000, "validation": 1_000, "test": 1_000}
LABELS = ("NEGATIVE", "NEUTRAL", "POSITIVE")
NEGATIVE, NEUTRAL, POSITIVE = range(3)
LANGUAGES = ("en", "es")

# How a review is put together, and its share of the corpus.
FORMS = {"single": 0.4, "contrast": 0.45, "fact_first": 0.075, "fact_last": 0.075}
# The chance that a contrast's first clause has a label other than its second's.
CONTRAST_OPPOSED = 0.9
SURFACE_VARIANTS = {"exclamation": 0.12, "no_period": 0.15, "upper": 0.05, "lower": 0.1}
CONTRACTION = 0.3  # English "isn't", "don't" instead of "is not", "do not"
COMMA_BEFORE_BUT = 0.3

Combination = tuple[str, str, str]  # ("aspect_adj" | "modifier_adj", noun or modifier, adjective)


@dataclasses.dataclass(frozen=True)
class Noun:
    """A noun: English form (already plural where plural), Spanish form, gender and number."""

    en: str
    es: str
    gender: str  # "m" or "f"
    plural: bool
    tags: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Adjective:
    """An adjective; Spanish forms are ordered m.sg, f.sg, m.pl, f.pl."""

    en: str
    es: tuple[str, str, str, str]
    polarity: int  # +1, -1 or 0
    copula: str  # "ser" or "estar"
    tags: frozenset[str] | None  # nouns it describes (by tag); None: any noun
    grade: str  # "gradable", "extreme" (only "really") or "plain" (no modifier)
    antonym: str | None = None  # a negative adjective, for "neither ADJ nor ANTONYM"


@dataclasses.dataclass(frozen=True)
class Modifier:
    """An intensifier or a hedge placed before an adjective."""

    en: str
    es: str
    kind: str  # "intensifier" or "hedge"
    polarities: frozenset[int]  # adjective polarities it goes with


@dataclasses.dataclass(frozen=True)
class Domain:
    """A kind of product or service: the product noun, its aspects and its facts."""

    name: str
    product: Noun
    aspects: tuple[Noun, ...]
    facts: tuple[tuple[str, str], ...]  # templates with {day}, {n}, {it}, {lo}, ...
    past: bool  # copula clauses may be in the past ("The room was clean.")
    generic: bool  # "this product" / "este producto" may stand for the product


@dataclasses.dataclass(frozen=True)
class Clause:
    """One clause of a review, in a language-neutral form."""

    kind: str  # "copula", "fragment", "neither", "okay", "recommend" or "fact"
    domain: str
    subject: Noun | None = None  # None: the product as a pronoun ("it", Spanish pro-drop)
    determiner: str = "the"  # "the" or "this"
    adjective: Adjective | None = None
    antonym: Adjective | None = None  # the second adjective of "neither ... nor ..."
    modifier: Modifier | None = None
    negated: bool = False
    past: bool = False
    contracted: bool = False
    fact: tuple[str, str] | None = None  # a fact's English and Spanish text

    @property
    def label(self) -> int:
        return clause_label(self)


@dataclasses.dataclass(frozen=True)
class Review:
    """A review: one or two clauses joined as ``form`` says, in one language."""

    form: str  # a key of FORMS
    clauses: tuple[Clause, ...]
    language: str
    comma: bool = False

    @property
    def label(self) -> int:
        return review_label(self)

    @property
    def opinion(self) -> Clause:
        """The clause that decides the label."""
        if self.form == "fact_first":
            return self.clauses[1]
        if self.form == "fact_last":
            return self.clauses[0]
        return self.clauses[-1]


@dataclasses.dataclass(frozen=True)
class Example:
    """A generated example: its text, label index, language and structure."""

    text: str
    label: int
    language: str
    review: Review
    combinations: frozenset[Combination]


def clause_label(clause: Clause) -> int:
    """The label of one clause under the rules of the module docstring."""
    if clause.kind in ("fact", "okay", "neither"):
        return NEUTRAL
    if clause.kind == "recommend":
        return NEGATIVE if clause.negated else POSITIVE
    polarity = clause.adjective.polarity
    if polarity == 0:
        return NEUTRAL
    if clause.negated:
        return NEGATIVE if polarity > 0 else NEUTRAL
    return POSITIVE if polarity > 0 else NEGATIVE


def review_label(review: Review) -> int:
    """The label of a review: that of the clause after "but", or of its opinion sentence."""
    return clause_label(review.opinion)


# --- Lexicon ---------------------------------------------------------------------------------


def _noun(en: str, es: str, gender: str, tags: str = "", plural: bool = False) -> Noun:
    return Noun(en, es, gender, plural, frozenset(tags.split()))


def _es_forms(ms: str) -> tuple[str, str, str, str]:
    """Spanish m.sg, f.sg, m.pl, f.pl of a regular adjective."""
    if ms.endswith("o"):
        return ms, ms[:-1] + "a", ms + "s", ms[:-1] + "as"
    if ms.endswith("e"):
        return ms, ms, ms + "s", ms + "s"
    if ms.endswith("z"):  # "capaz" -> "capaces"
        return ms, ms, ms[:-1] + "ces", ms[:-1] + "ces"
    if ms.endswith("án") or ms.endswith("ón"):
        base = ms[:-2] + ms[-2].translate(str.maketrans("áó", "ao")) + "n"
        return ms, base + "a", base + "es", base + "as"
    if ms in ("estándar",):
        return ms, ms, ms, ms  # invariable in use
    return ms, ms, ms + "es", ms + "es"


def _adj(
    en: str,
    es: str,
    polarity: int,
    tags: str | None = None,
    grade: str = "gradable",
    copula: str = "ser",
    antonym: str | None = None,
) -> Adjective:
    tag_set = None if tags is None else frozenset(tags.split())
    return Adjective(en, _es_forms(es), polarity, copula, tag_set, grade, antonym)


PRODUCT = _noun("product", "producto", "m", "item")

DAYS = (
    ("Monday", "lunes"),
    ("Tuesday", "martes"),
    ("Wednesday", "miércoles"),
    ("Thursday", "jueves"),
    ("Friday", "viernes"),
    ("Saturday", "sábado"),
    ("Sunday", "domingo"),
)
NUMBERS = (
    ("two", "dos"),
    ("three", "tres"),
    ("four", "cuatro"),
    ("five", "cinco"),
    ("six", "seis"),
)
WHEN = (
    ("yesterday", "ayer"),
    ("last week", "la semana pasada"),
    ("last month", "el mes pasado"),
    ("two weeks ago", "hace dos semanas"),
)
DISHES = (
    ("pasta", "la pasta"),
    ("soup", "la sopa"),
    ("fish", "el pescado"),
    ("salad", "la ensalada"),
)

_ITEM_FACTS = (
    ("{It} arrived on {day}.", "{Llego} el {dia}."),
    ("I bought {it} {when}.", "{Lo} compré {cuando}."),
    ("I use {it} every day.", "{Lo} uso todos los días."),
    ("I have had {it} for {n} months.", "{Lo} tengo desde hace {n_es} meses."),
)

DOMAINS: tuple[Domain, ...] = (
    Domain(
        "phone",
        _noun("phone", "teléfono", "m", "item device speed price"),
        (
            _noun("battery", "batería", "f", "battery"),
            _noun("screen", "pantalla", "f", "screen"),
            _noun("camera", "cámara", "f", "camera"),
            _noun("speaker", "altavoz", "m", "sound"),
            _noun("case", "funda", "f", "sturdy"),
            _noun("charger", "cargador", "m", "speed sturdy"),
            _noun("software", "software", "m", "speed"),
        ),
        _ITEM_FACTS,
        past=False,
        generic=True,
    ),
    Domain(
        "laptop",
        _noun("laptop", "portátil", "m", "item device speed price"),
        (
            _noun("keyboard", "teclado", "m", "comfort sturdy quiet"),
            _noun("screen", "pantalla", "f", "screen"),
            _noun("battery", "batería", "f", "battery"),
            _noun("fan", "ventilador", "m", "quiet"),
            _noun("speakers", "altavoces", "m", "sound", plural=True),
            _noun("touchpad", "touchpad", "m", "comfort"),
        ),
        _ITEM_FACTS,
        past=False,
        generic=True,
    ),
    Domain(
        "headphones",
        _noun("headphones", "auriculares", "m", "item device price comfort", plural=True),
        (
            _noun("sound", "sonido", "m", "sound"),
            _noun("carrying case", "estuche", "m", "sturdy"),
            _noun("microphone", "micrófono", "m", "sound"),
            _noun("cushions", "almohadillas", "f", "comfort", plural=True),
            _noun("cable", "cable", "m", "sturdy"),
            _noun("battery", "batería", "f", "battery"),
        ),
        _ITEM_FACTS,
        past=False,
        generic=True,
    ),
    Domain(
        "hotel",
        _noun("hotel", "hotel", "m", "place price clean quiet"),
        (
            _noun("room", "habitación", "f", "comfort clean quiet"),
            _noun("bed", "cama", "f", "comfort clean"),
            _noun("staff", "personal", "m", "people"),
            _noun("breakfast", "desayuno", "m", "food"),
            _noun("location", "ubicación", "f", "place"),
            _noun("bathroom", "baño", "m", "clean"),
            _noun("pool", "piscina", "f", "clean"),
            _noun("Wi-Fi", "wifi", "m", "speed"),
        ),
        (
            ("I stayed {n} nights.", "Me quedé {n_es} noches."),
            ("We arrived on {day}.", "Llegamos el {dia}."),
            ("We booked a double room.", "Reservamos una habitación doble."),
            ("We checked out on {day}.", "Nos fuimos el {dia}."),
        ),
        past=True,
        generic=False,
    ),
    Domain(
        "restaurant",
        _noun("restaurant", "restaurante", "m", "place price clean quiet"),
        (
            _noun("food", "comida", "f", "food"),
            _noun("service", "servicio", "m", "speed people"),
            _noun("waiter", "camarero", "m", "people speed"),
            _noun("dessert", "postre", "m", "food"),
            _noun("portions", "raciones", "f", "size", plural=True),
            _noun("fries", "patatas fritas", "f", "food", plural=True),
            _noun("terrace", "terraza", "f", "clean quiet"),
        ),
        (
            ("We had dinner there on {day}.", "Cenamos allí el {dia}."),
            ("We were a group of {n}.", "Éramos un grupo de {n_es}."),
            ("I ordered the {dish}.", "Pedí {dish_es}."),
            ("We booked a table for {n}.", "Reservamos una mesa para {n_es}."),
        ),
        past=True,
        generic=False,
    ),
    Domain(
        "delivery",
        _noun("delivery", "entrega", "f", "speed"),
        (
            _noun("courier", "repartidor", "m", "people speed"),
            _noun("package", "paquete", "m", "sturdy"),
            _noun("packaging", "embalaje", "m", "sturdy"),
            _noun("tracking", "seguimiento", "m", "speed"),
            _noun("shop", "tienda", "f", "people speed"),
        ),
        (
            ("The package arrived on {day}.", "El paquete llegó el {dia}."),
            ("I ordered {it} on {day}.", "{Lo} pedí el {dia}."),
            ("It took {n} days.", "Tardó {n_es} días."),
            ("The courier came {when}.", "El repartidor vino {cuando}."),
        ),
        past=False,
        generic=False,
    ),
)
_PRODUCTS = {d.name: d.product for d in DOMAINS}
_ORDER = _noun("order", "pedido", "m")
# What "I recommend it" / "this ..." is about in each domain.
RECOMMENDED = {
    "phone": DOMAINS[0].product,
    "laptop": DOMAINS[1].product,
    "headphones": DOMAINS[2].product,
    "hotel": DOMAINS[3].product,
    "restaurant": DOMAINS[4].product,
    "delivery": _noun("shop", "tienda", "f"),
}

ADJECTIVES: tuple[Adjective, ...] = (
    # General evaluations: any noun.
    _adj("good", "bueno", 1, antonym="bad"),
    _adj("great", "genial", 1, grade="extreme"),
    _adj("excellent", "excelente", 1, grade="extreme"),
    _adj("amazing", "increíble", 1, grade="extreme"),
    _adj("fantastic", "fantástico", 1, grade="extreme"),
    _adj("perfect", "perfecto", 1, grade="extreme"),
    _adj("bad", "malo", -1),
    _adj("poor", "deficiente", -1),
    _adj("terrible", "terrible", -1, grade="extreme"),
    _adj("awful", "horrible", -1, grade="extreme"),
    _adj("disappointing", "decepcionante", -1),
    _adj("average", "normal", 0, grade="plain"),
    _adj("acceptable", "aceptable", 0, grade="plain"),
    _adj("so-so", "regular", 0, grade="plain"),
    _adj("standard", "estándar", 0, grade="plain"),
    # Evaluations of some nouns only.
    _adj("fast", "rápido", 1, "speed", antonym="slow"),
    _adj("slow", "lento", -1, "speed"),
    _adj("cheap", "barato", 1, "price", antonym="expensive"),
    _adj("expensive", "caro", -1, "price"),
    _adj("comfortable", "cómodo", 1, "comfort", antonym="uncomfortable"),
    _adj("uncomfortable", "incómodo", -1, "comfort"),
    _adj("clean", "limpio", 1, "clean", copula="estar", antonym="dirty"),
    _adj("dirty", "sucio", -1, "clean", copula="estar"),
    _adj("delicious", "delicioso", 1, "food", copula="estar"),
    _adj("bland", "soso", -1, "food", copula="estar"),
    _adj("cold", "frío", -1, "food", copula="estar"),
    _adj("friendly", "amable", 1, "people"),
    _adj("rude", "maleducado", -1, "people"),
    _adj("bright", "brillante", 1, "screen", antonym="dim"),
    _adj("dim", "oscuro", -1, "screen"),
    _adj("sharp", "nítido", 1, "camera screen"),
    _adj("blurry", "borroso", -1, "camera"),
    _adj("clear", "claro", 1, "sound", antonym="muffled"),
    _adj("muffled", "apagado", -1, "sound"),
    _adj("sturdy", "resistente", 1, "sturdy", antonym="flimsy"),
    _adj("flimsy", "frágil", -1, "sturdy"),
    _adj("quiet", "silencioso", 1, "quiet", antonym="noisy"),
    _adj("noisy", "ruidoso", -1, "quiet"),
    _adj("generous", "generoso", 1, "size", antonym="small"),
    _adj("small", "pequeño", -1, "size"),
    _adj("long-lasting", "duradero", 1, "battery"),
    _adj("weak", "débil", -1, "battery"),
)
_ADJ_BY_NAME = {a.en: a for a in ADJECTIVES}

_ANY = frozenset({-1, 1})
MODIFIERS: tuple[Modifier, ...] = (
    Modifier("very", "muy", "intensifier", _ANY),
    Modifier("really", "realmente", "intensifier", _ANY),
    Modifier("extremely", "extremadamente", "intensifier", _ANY),
    Modifier("incredibly", "increíblemente", "intensifier", _ANY),
    Modifier("a bit", "un poco", "hedge", frozenset({-1})),
    Modifier("somewhat", "algo", "hedge", _ANY),
    Modifier("kind of", "más bien", "hedge", _ANY),
    Modifier("slightly", "ligeramente", "hedge", frozenset({-1})),
)
_NEGATABLE_MODIFIERS = ("very", "really")  # "is not very good"; no "is not a bit slow"

_BE = {(False, False): "is", (False, True): "are", (True, False): "was", (True, True): "were"}
_ES_COPULA = {
    ("ser", False, False): "es",
    ("ser", False, True): "son",
    ("ser", True, False): "era",
    ("ser", True, True): "eran",
    ("estar", False, False): "está",
    ("estar", False, True): "están",
    ("estar", True, False): "estaba",
    ("estar", True, True): "estaban",
}


def _describes(adjective: Adjective, noun: Noun) -> bool:
    return adjective.tags is None or bool(adjective.tags & noun.tags)


@functools.cache
def _antonym_pairs_for(noun: Noun) -> tuple[Adjective, ...]:
    return tuple(a for a in ADJECTIVES if a.antonym and _describes(a, noun))


@functools.cache
def _adjectives_for(polarity: int, noun: Noun) -> tuple[Adjective, ...]:
    return tuple(a for a in ADJECTIVES if a.polarity == polarity and _describes(a, noun))


@functools.cache
def _modifiers_for(adjective: Adjective, negated: bool) -> tuple[Modifier, ...]:
    allowed = _NEGATABLE_MODIFIERS if negated else tuple(m.en for m in MODIFIERS)
    return tuple(m for m in MODIFIERS if m.en in allowed and _modifies(m, adjective))


def _modifies(modifier: Modifier, adjective: Adjective) -> bool:
    if adjective.grade == "plain" or adjective.polarity not in modifier.polarities:
        return False
    return adjective.grade == "gradable" or modifier.en == "really"


def all_combinations() -> dict[str, tuple[tuple[str, str], ...]]:
    """All (aspect noun, adjective) and (modifier, adjective) combinations the grammar makes."""
    nouns = {n.en: n for d in DOMAINS for n in (d.product, *d.aspects)} | {PRODUCT.en: PRODUCT}
    return {
        "aspect_adj": tuple(
            sorted({(n.en, a.en) for n in nouns.values() for a in ADJECTIVES if _describes(a, n)})
        ),
        "modifier_adj": tuple(
            (m.en, a.en) for m in MODIFIERS for a in ADJECTIVES if _modifies(m, a)
        ),
    }


@functools.lru_cache(maxsize=8)
def held_out_combinations(seed: int = 0, fraction: float = 0.08) -> frozenset[Combination]:
    """The seeded combinations that occur only in the test split."""
    rng = random.Random(f"held-out/{seed}")
    protected = {("aspect_adj", "battery", "excellent"), ("aspect_adj", "product", "excellent")}
    chosen: set[Combination] = set()
    for kind, pairs in all_combinations().items():
        candidates = [(kind, *p) for p in pairs if (kind, *p) not in protected]
        chosen.update(rng.sample(candidates, max(1, round(fraction * len(candidates)))))
    return frozenset(chosen)


# --- Rendering -------------------------------------------------------------------------------


def _es_article(noun: Noun, determiner: str) -> str:
    table = {"the": ("el", "la", "los", "las"), "this": ("este", "esta", "estos", "estas")}
    return table[determiner][2 * noun.plural + (noun.gender == "f")]


def _es_adjective(adjective: Adjective, noun: Noun) -> str:
    return adjective.es[2 * noun.plural + (noun.gender == "f")]


def _clitic(noun: Noun) -> str:
    """The Spanish object pronoun of ``noun``: lo, la, los, las."""
    return ("la" if noun.gender == "f" else "lo") + ("s" if noun.plural else "")


def _product_of(clause: Clause) -> Noun:
    return _PRODUCTS[clause.domain]


def _en_subject(clause: Clause) -> list[str]:
    if clause.subject is None:
        return ["they" if _product_of(clause).plural else "it"]
    det = {"the": "the", "this": "these" if clause.subject.plural else "this"}[clause.determiner]
    return [det, clause.subject.en]


def _es_subject(clause: Clause) -> list[str]:
    if clause.subject is None:
        return []  # "Es excelente."
    return [_es_article(clause.subject, clause.determiner), clause.subject.es]


def _en_be(clause: Clause, noun: Noun) -> list[str]:
    be = _BE[(clause.past, noun.plural)]
    if not clause.negated:
        return [be]
    return [be + "n't"] if clause.contracted else [be, "not"]


def render_clause(clause: Clause, language: str) -> str:
    """The text of one clause, lower case except proper nouns, without final punctuation."""
    noun = clause.subject or _product_of(clause)
    en = language == "en"
    mod = [] if clause.modifier is None else [clause.modifier.en if en else clause.modifier.es]
    if clause.kind == "fact":
        words = [clause.fact[0] if en else clause.fact[1]]
    elif clause.kind == "copula":
        if en:
            words = [*_en_subject(clause), *_en_be(clause, noun), *mod, clause.adjective.en]
        else:
            verb = _ES_COPULA[(clause.adjective.copula, clause.past, noun.plural)]
            words = [*_es_subject(clause), *(["no"] if clause.negated else []), verb]
            words += [*mod, _es_adjective(clause.adjective, noun)]
    elif clause.kind == "fragment":
        if en:
            words = [*mod, clause.adjective.en, noun.en]
        else:
            words = [noun.es, *mod, _es_adjective(clause.adjective, noun)]
    elif clause.kind == "neither":
        pos, neg = clause.adjective, clause.antonym
        if en:
            words = [*_en_subject(clause), _BE[(clause.past, noun.plural)], "neither", pos.en]
            words += ["nor", neg.en]
        else:
            verb = _ES_COPULA[(pos.copula, clause.past, noun.plural)]
            words = [*_es_subject(clause), "no", verb, "ni", _es_adjective(pos, noun), "ni"]
            words.append(_es_adjective(neg, noun))
    elif clause.kind == "okay":
        if en:
            words = [*_en_subject(clause), _BE[(clause.past, noun.plural)], "okay"]
        else:
            verb = _ES_COPULA[("estar", clause.past, noun.plural)]
            words = [*_es_subject(clause), verb, "bien"]
    elif clause.kind == "recommend":
        obj = RECOMMENDED[clause.domain]
        if en:
            neg = (["don't"] if clause.contracted else ["do", "not"]) if clause.negated else []
            if clause.determiner == "this":
                target = ["these" if obj.plural else "this", obj.en]
            else:
                target = ["them" if obj.plural else "it"]
            words = ["I", *neg, *mod, "recommend", *target]
        else:
            neg = ["no"] if clause.negated else []
            if clause.determiner == "this":
                words = [*mod, *neg, "recomiendo", _es_article(obj, "this"), obj.es]
            else:
                words = [*mod, *neg, _clitic(obj), "recomiendo"]
    else:
        raise ValueError(f"Unknown clause kind {clause.kind!r}.")
    return " ".join(words)


def _capitalise(text: str) -> str:
    if text.startswith("¡"):
        return "¡" + _capitalise(text[1:])
    return text[:1].upper() + text[1:]


def render(review: Review, variants: Sequence[str] = (), comma: bool | None = None) -> str:
    """The text of a review in the given surface variants (see SURFACE_VARIANTS).

    ``comma`` overrides the review's comma before "but"/"pero".
    """
    lang = review.language
    end = "!" if "exclamation" in variants else "" if "no_period" in variants else "."

    def sentence(text: str, mark: str) -> str:
        if mark == "!" and lang == "es":
            return _capitalise("¡" + text) + "!"
        return _capitalise(text) + mark

    parts = [render_clause(c, lang) for c in review.clauses]
    if review.form == "contrast":
        joiner = ("," if (review.comma if comma is None else comma) else "") + (
            " but " if lang == "en" else " pero "
        )
        text = sentence(joiner.join(parts), end)
    elif review.form == "single":
        text = sentence(parts[0], end)
    else:
        text = sentence(parts[0], ".") + " " + sentence(parts[1], end)
    if "upper" in variants:
        return text.upper()
    if "lower" in variants:
        return text.lower()
    return text


def combinations(review: Review) -> frozenset[Combination]:
    """The (aspect noun, adjective) and (modifier, adjective) combinations of a review."""
    found: set[Combination] = set()
    for c in review.clauses:
        noun = c.subject or _product_of(c)
        for adjective in (c.adjective, c.antonym):
            if adjective is not None and c.kind != "recommend":
                found.add(("aspect_adj", noun.en, adjective.en))
        if c.modifier is not None and c.adjective is not None:
            found.add(("modifier_adj", c.modifier.en, c.adjective.en))
    return frozenset(found)


# --- Sampling --------------------------------------------------------------------------------


def _pick(rng: random.Random, options: Sequence[Any]) -> Any:
    return options[int(rng.random() * len(options))]


def _choose(rng: random.Random, weights: dict[Any, float]) -> Any:
    x = rng.random() * _total(tuple(weights.values()))
    for key, w in weights.items():
        x -= w
        if x < 0:
            return key
    return key


@functools.cache
def _total(weights: tuple[float, ...]) -> float:
    return sum(weights)


def _subject(rng: random.Random, domain: Domain, aspect_share: float) -> tuple[Noun | None, str]:
    """A subject noun (None: the product as a pronoun) and its determiner."""
    if rng.random() < aspect_share:
        return _pick(rng, domain.aspects), "the"
    r = rng.random()
    if r < 0.3:
        return None, "the"
    if domain.generic and r < 0.5:
        return PRODUCT, "this"
    return domain.product, "this" if r < 0.75 else "the"


# The clause kinds (and their shares) that produce each label.
_KINDS = {
    POSITIVE: {"copula": 0.65, "fragment": 0.2, "recommend": 0.15},
    NEGATIVE: {"copula": 0.45, "negated": 0.25, "fragment": 0.15, "recommend": 0.15},
    NEUTRAL: {"copula": 0.25, "negated": 0.25, "neither": 0.2, "okay": 0.15, "fragment": 0.15},
}


def sample_clause(rng: random.Random, domain: Domain, label: int) -> Clause | None:
    """A random opinion clause about ``domain`` with the given label (None: retry)."""
    kind = _choose(rng, _KINDS[label])
    contracted = rng.random() < CONTRACTION
    if kind == "recommend":
        negated = label == NEGATIVE
        modifier = MODIFIERS[1] if not negated and rng.random() < 0.3 else None  # "really"
        determiner = "this" if rng.random() < 0.4 else "the"
        return Clause(kind, domain.name, None, determiner, modifier=modifier, negated=negated,
                      contracted=contracted)  # fmt: skip
    negated = kind == "negated"
    polarity = {
        POSITIVE: 1,
        NEGATIVE: -1 if not negated else 1,
        NEUTRAL: 0 if not negated else -1,
    }[label]
    if kind == "fragment":
        subject, determiner = _pick(rng, domain.aspects), "the"
    else:
        subject, determiner = _subject(rng, domain, 0.7)
    noun = subject or domain.product
    past = domain.past and rng.random() < 0.3
    if kind in ("neither", "okay"):
        if kind == "okay":
            return Clause(kind, domain.name, subject, determiner, past=past)
        pos = _pick(rng, _antonym_pairs_for(noun))
        return Clause(kind, domain.name, subject, determiner, adjective=pos,
                      antonym=_ADJ_BY_NAME[pos.antonym], past=past)  # fmt: skip
    options = _adjectives_for(polarity, noun)
    if not options:
        return None
    adjective = _pick(rng, options)
    modifiers = _modifiers_for(adjective, negated)
    modifier = _pick(rng, modifiers) if modifiers and rng.random() < 0.45 else None
    return Clause("fragment" if kind == "fragment" else "copula", domain.name, subject,
                  determiner, adjective, None, modifier, negated, past, contracted)  # fmt: skip


def sample_fact(rng: random.Random, domain: Domain) -> Clause:
    """A neutral statement of fact about ``domain`` ("It arrived on Tuesday.")."""
    en, es = _pick(rng, domain.facts)
    day, dia = _pick(rng, DAYS)
    n, n_es = _pick(rng, NUMBERS)
    when, cuando = _pick(rng, WHEN)
    dish, dish_es = _pick(rng, DISHES)
    product = domain.product if domain.name != "delivery" else _ORDER  # "Lo pedí el lunes."
    it = "them" if product.plural else "it"
    lo = _clitic(product)
    slots = {
        "day": day, "dia": dia, "n": n, "n_es": n_es, "when": when, "cuando": cuando,
        "dish": dish, "dish_es": dish_es, "it": it, "It": "They" if product.plural else "It",
        "Lo": lo, "Llego": "Llegaron" if product.plural else "Llegó",
    }  # fmt: skip
    fact = (en.format(**slots)[:-1], es.format(**slots)[:-1])
    fact = (fact[0][0].lower() + fact[0][1:] if not fact[0].startswith("I ") else fact[0],
            fact[1][0].lower() + fact[1][1:])  # fmt: skip
    return Clause("fact", domain.name, fact=fact)


def sample_review(rng: random.Random, label: int) -> Review | None:
    """A random review with the given label (None: retry)."""
    language = _pick(rng, LANGUAGES)
    domain = _pick(rng, DOMAINS)
    form = _choose(rng, FORMS)
    opinion = sample_clause(rng, domain, label)
    if opinion is None:
        return None
    if form == "single":
        if label == NEUTRAL and rng.random() < 0.1:
            opinion = sample_fact(rng, domain)
        return Review(form, (opinion,), language)
    if form == "contrast":
        others = [x for x in range(3) if x != label]
        first_label = _pick(rng, others) if rng.random() < CONTRAST_OPPOSED else label
        first = sample_clause(rng, domain, first_label)
        if first is None or first.kind == "recommend" or first.subject == opinion.subject:
            return None
        return Review(form, (first, opinion), language, comma=rng.random() < COMMA_BEFORE_BUT)
    fact = sample_fact(rng, domain)
    clauses = (fact, opinion) if form == "fact_first" else (opinion, fact)
    return Review(form, clauses, language)


def _draw_variants(rng: random.Random) -> tuple[str, ...]:
    return tuple(name for name, p in SURFACE_VARIANTS.items() if rng.random() < p)


@functools.lru_cache(maxsize=4)
def _generate(seed: int) -> dict[str, tuple[Example, ...]]:
    held_out = held_out_combinations(seed)
    rng = random.Random(seed)
    surface_rng = random.Random(f"surface/{seed}")  # its own stream: variants never shift samples
    out: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    held: list[Example] = []
    sizes = dict(SPLIT_SIZES)
    n_held = (sizes["test"] + 1) // 2
    sizes["test"] -= n_held
    seen: set[str] = set()
    while len(held) < n_held or any(len(out[s]) < sizes[s] for s in SPLITS):
        review = sample_review(rng, int(rng.random() * len(LABELS)))
        if review is None:
            continue
        plain = render(review, comma=False).lower()
        if plain in seen:
            continue
        combos = combinations(review)
        if combos & held_out:
            if len(held) >= n_held:
                continue
            target = held
        else:
            split = next((s for s in SPLITS if len(out[s]) < sizes[s]), None)
            if split is None:
                continue
            target = out[split]
        seen.add(plain)  # the plain form: no review appears in two variants
        text = render(review, _draw_variants(surface_rng))
        target.append(Example(text, review.label, review.language, review, combos))
    plain_test = out["test"]
    test = [x for pair in zip(held, plain_test) for x in pair]
    test += held[len(plain_test) :] + plain_test[len(held) :]
    out["test"] = test
    return {s: tuple(v) for s, v in out.items()}


def generate_examples(split: str, seed: int = 0, num_examples: int | None = None) -> list[Example]:
    """Like :func:`generate_split` but returns each review's structure too."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    return list(_generate(seed)[split][:num_examples])


def generate_split(
    split: str, seed: int = 0, num_examples: int | None = None
) -> list[tuple[str, int, str]]:
    """Deterministic (text, label index, language) triples of ``split``; optionally the first few."""
    return [(x.text, x.label, x.language) for x in generate_examples(split, seed, num_examples)]


def product_sentence(language: str = "en", aspect: str | None = None) -> str:
    """Builds "This product is excellent." (or "The battery is excellent.") through the grammar."""
    domain = DOMAINS[0]
    subject = PRODUCT if aspect is None else next(n for n in domain.aspects if n.en == aspect)
    clause = Clause("copula", domain.name, subject, "this" if aspect is None else "the",
                    _ADJ_BY_NAME["excellent"])  # fmt: skip
    return render(Review("single", (clause,), language))


# --- Bag-of-words baseline -------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def _label_index(label: Any) -> int:
    if isinstance(label, bytes):
        label = label.decode()
    return LABELS.index(label) if isinstance(label, str) else int(label)


def _tokens(text: Any) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode()
    return _TOKEN.findall(text.lower())


def bag_of_words_baseline(
    train: Sequence[Sequence[Any]],
    test: Sequence[Sequence[Any]],
    *,
    iterations: int = 300,
    learning_rate: float = 3.0,
    l2: float = 1e-4,
    seed: int = 0,
) -> float:
    """Test accuracy of a multinomial logistic regression on word counts.

    ``train`` and ``test`` hold items whose first two entries are the text (str or
    bytes) and the label (index or name); the model is fitted by full-batch
    gradient descent with L2 regularisation, from a seeded initialisation.
    """
    vocab: dict[str, int] = {}
    for item in train:
        for w in _tokens(item[0]):
            vocab.setdefault(w, len(vocab))
    n_features = len(vocab) + 1  # the last one is the bias

    def features(items: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = [], []
        for i, item in enumerate(items):
            ids = [vocab[w] for w in _tokens(item[0]) if w in vocab] + [n_features - 1]
            rows += [i] * len(ids)
            cols += ids
        return np.asarray(rows, np.int64), np.asarray(cols, np.int64)

    def logits(rows: np.ndarray, cols: np.ndarray, n: int, w: np.ndarray) -> np.ndarray:
        # Sparse counts @ w: sum the weight rows of each text's tokens.
        return np.stack(
            [np.bincount(rows, weights=w[cols, c], minlength=n) for c in range(w.shape[1])], 1
        )

    y = np.asarray([_label_index(item[1]) for item in train])
    n, k = len(train), len(LABELS)
    rows, cols = features(train)
    w = np.random.default_rng(seed).normal(0.0, 0.01, (n_features, k))
    onehot = np.eye(k)[y]
    for _ in range(iterations):
        z = logits(rows, cols, n, w)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / n
        # counts.T @ g, again through the sparse (row, column) pairs.
        grad = np.stack(
            [np.bincount(cols, weights=g[rows, c], minlength=n_features) for c in range(k)], 1
        )
        w -= learning_rate * (grad + l2 * w)
    test_rows, test_cols = features(test)
    pred = logits(test_rows, test_cols, len(test), w).argmax(1)
    gold = np.asarray([_label_index(item[1]) for item in test])
    return float((pred == gold).mean())
