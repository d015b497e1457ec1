"""Tests of the English/Spanish review sentiment corpus and its TFDS builder."""

import collections
import dataclasses
import re

import pytest

from transformer_jax.data import catalog
from transformer_jax.tasks.classification import corpus_sentiment as corpus

NEG, NEU, POS = (corpus.LABELS.index(n) for n in ("NEGATIVE", "NEUTRAL", "POSITIVE"))
PUNCT = re.compile(r"[.!¡,]")


@pytest.fixture(scope="module")
def examples() -> dict[str, list[corpus.Example]]:
    return {s: corpus.generate_examples(s) for s in corpus.SPLITS}


def _plain(text: str) -> str:
    return " ".join(PUNCT.sub("", text).lower().split())


def _expected(clause: corpus.Clause) -> int:
    """The documented rules, written out independently of the corpus module."""
    if clause.kind in ("fact", "okay", "neither"):
        return NEU
    if clause.kind == "recommend":
        return NEG if clause.negated else POS
    polarity = clause.adjective.polarity
    if polarity == 0:
        assert not clause.negated and clause.modifier is None
        return NEU
    if clause.negated:
        return {1: NEG, -1: NEU}[polarity]
    return {1: POS, -1: NEG}[polarity]


def test_sizes_and_determinism(examples):
    assert {s: len(x) for s, x in examples.items()} == corpus.SPLIT_SIZES
    triples = {s: corpus.generate_split(s) for s in corpus.SPLITS}
    corpus._generate.cache_clear()
    for s in corpus.SPLITS:
        assert corpus.generate_split(s) == triples[s]
        assert triples[s] == [(x.text, x.label, x.language) for x in examples[s]]
    assert corpus.generate_split("train", num_examples=7) == triples["train"][:7]
    assert corpus.generate_split("validation", seed=1) != triples["validation"]
    with pytest.raises(ValueError, match="bogus"):
        corpus.generate_split("bogus")


def test_languages_and_labels_balanced(examples):
    for split, xs in examples.items():
        languages = collections.Counter(x.language for x in xs)
        labels = collections.Counter(x.label for x in xs)
        assert set(languages) == {"en", "es"}, split
        assert all(0.4 < n / len(xs) < 0.6 for n in languages.values()), (split, languages)
        assert set(labels) == {NEG, NEU, POS}, split
        assert all(0.25 < n / len(xs) < 0.42 for n in labels.values()), (split, labels)


def test_no_test_sentence_in_train(examples):
    seen: set[str] = set()
    for split in corpus.SPLITS:
        plain = [_plain(x.text) for x in examples[split]]
        assert len(set(plain)) == len(plain), split
        assert not seen & set(plain), split
        seen |= set(plain)
    train = {x.text for x in examples["train"]}
    assert not train & {x.text for x in examples["test"]}


def test_held_out_combinations(examples):
    held = corpus.held_out_combinations()
    kinds = collections.Counter(kind for kind, _, _ in held)
    assert kinds["aspect_adj"] >= 20 and kinds["modifier_adj"] >= 5
    for split in ("train", "validation"):
        for x in examples[split]:
            assert x.combinations == corpus.combinations(x.review)
            assert not x.combinations & held, x.text
    test = examples["test"]
    assert all(x.combinations & held for x in test[0::2])
    assert not any(x.combinations & held for x in test[1::2])
    in_test = set().union(*(x.combinations & held for x in test))
    assert collections.Counter(k for k, _, _ in in_test).keys() == {"aspect_adj", "modifier_adj"}
    # Read off the text too: a held-out "modifier adjective" never appears in English train text.
    held_phrases = {f"{m} {a}" for kind, m, a in held if kind == "modifier_adj"}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, held_phrases)) + r")\b")
    english = [_plain(x.text) for x in examples["train"] if x.language == "en"]
    assert not any(pattern.search(t) for t in english)
    assert any(pattern.search(_plain(x.text)) for x in test if x.language == "en")


def test_required_sentences(examples):
    assert corpus.product_sentence("en") == "This product is excellent."
    assert corpus.product_sentence("es") == "Este producto es excelente."
    assert corpus.product_sentence("en", "battery") == "The battery is excellent."
    assert corpus.product_sentence("es", "battery") == "La batería es excelente."
    texts = [_plain(x.text) for xs in examples.values() for x in xs]
    for phrase in ("this product is", "este producto es", "the battery is", "la batería es"):
        assert any(phrase in t for t in texts), phrase


def test_phenomena_present(examples):
    texts = {
        lang: [x.text for x in examples["train"] if x.language == lang] for lang in ("en", "es")
    }
    plain = {lang: " | ".join(_plain(t) for t in ts) for lang, ts in texts.items()}
    for phrase in ("is not bad", "is not good", "do not recommend", "don't recommend", "isn't",
                   " but ", "very ", "really ", "extremely ", "a bit ", "somewhat ", "kind of ",
                   "neither good nor bad", "is okay", "arrived on", "average"):  # fmt: skip
        assert phrase in plain["en"], phrase
    for phrase in ("no es malo", "no es bueno", "no lo recomiendo", " pero ", "muy ", "realmente ",
                   "extremadamente ", "un poco ", "algo ", "ni bueno ni malo", "está bien",
                   "llegó el", "normal", "los auriculares son"):  # fmt: skip
        assert phrase in plain["es"], phrase
    all_texts = texts["en"] + texts["es"]
    assert any(t.endswith("!") for t in texts["en"])
    assert any(t.startswith("¡") and t.endswith("!") for t in texts["es"])
    assert any(t[-1].isalpha() for t in all_texts)
    assert any(t.isupper() for t in all_texts) and any(t.islower() for t in all_texts)


def test_spanish_agreement():
    phone, headphones = corpus.DOMAINS[0], corpus.DOMAINS[2]
    screen = next(n for n in phone.aspects if n.en == "screen")
    good = next(a for a in corpus.ADJECTIVES if a.en == "good")
    cushions = next(n for n in headphones.aspects if n.en == "cushions")
    cases = [
        (corpus.Clause("copula", "phone", screen, "the", good), "la pantalla es buena"),
        (
            corpus.Clause("copula", "headphones", headphones.product, "the", good),
            "los auriculares son buenos",
        ),  # fmt: skip
        (
            corpus.Clause("copula", "headphones", cushions, "this", good, negated=True),
            "estas almohadillas no son buenas",
        ),  # fmt: skip
        (corpus.Clause("copula", "headphones", None, "the", good), "son buenos"),
    ]
    for clause, text in cases:
        assert corpus.render_clause(clause, "es") == text
    for x in corpus.generate_examples("train", num_examples=3000):
        if x.language == "es" and x.review.form == "single" and x.review.opinion.kind == "copula":
            c = x.review.opinion
            noun = c.subject or next(d.product for d in corpus.DOMAINS if d.name == c.domain)
            form = c.adjective.es[2 * noun.plural + (noun.gender == "f")]
            assert _plain(x.text).endswith(" " + form), x.text


def test_label_rules(examples):
    opposed = 0
    for xs in examples.values():
        for x in xs:
            review = x.review
            assert x.label == _expected(review.opinion), x.text
            if review.form == "contrast":
                first, second = review.clauses
                # The text is "A but B"; the label is that of B generated alone.
                tail = corpus.render_clause(second, x.language).lower()
                assert _plain(x.text).endswith((" but " if x.language == "en" else " pero ") + tail)
                alone = corpus.Review("single", (second,), x.language)
                assert alone.label == x.label
                swapped = dataclasses.replace(review, clauses=(second, first))
                assert swapped.label == _expected(first)
                opposed += _expected(first) != _expected(second)
            for c in review.clauses:
                if c.modifier is not None and c.kind != "recommend":
                    assert _expected(dataclasses.replace(c, modifier=None)) == c.label
    # Enough contrasts with opposite clauses that word counts alone cannot decide.
    assert opposed > 0.35 * sum(len(xs) for xs in examples.values())


def test_builder_prepares_and_reads_back(tmp_path):
    data_dir = str(tmp_path / "tfds")
    src = catalog.data_source("sentiment_reviews/tiny", "train", data_dir)
    expected = corpus.generate_split("train", num_examples=2_000)
    assert len(src) == 2_000
    got = {(r["text"].decode(), int(r["label"]), r["language"].decode()) for r in src}
    assert got == set(expected)
    test = catalog.data_source("sentiment_reviews/tiny", "test", data_dir)
    assert len(test) == 200
    b = catalog.builder("sentiment_reviews/tiny", data_dir)
    assert type(b).__module__ == "transformer_jax.tasks.classification.dataset"
    assert b.info.features["label"].names == list(corpus.LABELS)
    assert [c.name for c in type(b).BUILDER_CONFIGS] == ["full", "tiny"]


def test_bag_of_words_baseline(examples):
    train = corpus.generate_split("train")
    test = corpus.generate_split("test")
    accuracy = corpus.bag_of_words_baseline(train, test)
    print(f"bag-of-words baseline test accuracy: {accuracy:.3f}")
    assert 0.45 < accuracy < 0.85
    # The same learner does well where word order does not matter (no contrast).
    single = [(x.text, x.label) for x in examples["train"] if x.review.form != "contrast"]
    single_test = [(x.text, x.label) for x in examples["test"] if x.review.form != "contrast"]
    assert corpus.bag_of_words_baseline(single, single_test) > 0.9
    # Bytes texts and label names (as read back from TFDS) give the same figure.
    few = train[:1_500]
    as_read = [(t.encode(), corpus.LABELS[y]) for t, y, _ in few]
    assert corpus.bag_of_words_baseline(as_read, test) == corpus.bag_of_words_baseline(few, test)
