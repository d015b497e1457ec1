"""Tests of the language-modelling corpus, its TFDS builder and the n-gram baselines."""

import collections
import math
import re

import numpy as np
import pytest

from transformer_jax.data import catalog
from transformer_jax.tasks.generation import corpus_lm as corpus
from transformer_jax.tasks.generation import ngram

WORD = re.compile(r"[^\W_]+", re.UNICODE)


@pytest.fixture(scope="module")
def docs() -> dict[str, list[corpus.Document]]:
    return {s: corpus.generate_documents(s) for s in corpus.SPLITS}


@pytest.fixture(scope="module")
def stories() -> dict[str, list[corpus.StoryExample]]:
    return {s: corpus.generate_stories(s) for s in corpus.SPLITS}


def test_sizes_mix_and_determinism(docs):
    assert {s: len(x) for s, x in docs.items()} == corpus.SPLIT_SIZES
    for split, xs in docs.items():
        kinds = collections.Counter(d.kind for d in xs)
        assert {k: n / len(xs) for k, n in kinds.items()} == pytest.approx(corpus.MIX), split
        languages = collections.Counter(d.language for d in xs)
        assert set(languages) == {"en", "es"} and 0.45 < languages["en"] / len(xs) < 0.55
        # A prefix keeps the mix (the kinds are shuffled together).
        head = collections.Counter(d.kind for d in xs[: len(xs) // 10])
        assert all(abs(head[k] / (len(xs) // 10) - corpus.MIX[k]) < 0.08 for k in corpus.KINDS)
    texts = {s: corpus.generate_split(s) for s in corpus.SPLITS}
    corpus._generate.cache_clear()
    corpus._stories.cache_clear()
    for s in corpus.SPLITS:
        assert corpus.generate_split(s) == texts[s] == [d.text for d in docs[s]]
    assert corpus.generate_split("train", num_examples=7) == texts["train"][:7]
    other_seed = [x.text for x in corpus.generate_stories("validation", seed=1)]
    assert other_seed != [x.text for x in corpus.generate_stories("validation")]
    with pytest.raises(ValueError, match="bogus"):
        corpus.generate_split("bogus")


def test_documents_are_short(docs):
    for xs in docs.values():
        words = [len(d.text.split()) for d in xs]
        assert max(words) <= 45 and np.median(words) < 25
        assert all(d.text and d.text == d.text.strip() for d in xs)


def test_reused_sentences_and_reviews(docs):
    """Sentences are both sides of the translation split's pairs; reviews come from the same split."""
    from transformer_jax.tasks.classification import corpus_sentiment
    from transformer_jax.tasks.translation import corpus_en_es

    for split, xs in docs.items():
        pairs = corpus_en_es.generate_split(split)
        sides = {(en, "en") for en, _ in pairs} | {(es, "es") for _, es in pairs}
        sentences = {(d.text, d.language) for d in xs if d.kind == "sentence"}
        assert sentences <= sides  # ("We sleep." and "We slept." share "Nosotros dormimos.")
        used = [p for p in pairs if (p[0], "en") in sentences]
        assert sum((p[1], "es") in sentences for p in used) >= len(used) - 1, split
        reviews = {(t, lang) for t, _, lang in corpus_sentiment.generate_split(split)}
        assert {(d.text, d.language) for d in xs if d.kind == "review"} <= reviews


def _english_combinations(text: str) -> set[tuple[str, str, str]]:
    """The (head, attribute) combinations an English story mentions, read from its words."""
    found = set()
    attrs = "|".join({a.en for a in corpus.OBJECT_ATTRIBUTES + corpus.ANIMAL_ATTRIBUTES})
    heads = "|".join(n.en for n in corpus.OBJECTS + corpus.ANIMALS)
    for attr, head in re.findall(rf"\b({attrs}) ({heads})\b", text):
        found.add(("object_attr", head, attr))
    for head, attr in re.findall(rf"\bthe ({heads}) is ({attrs})\b", text):
        found.add(("object_attr", head, attr))
    numbers = "|".join(n for n, _ in corpus.NUMBERS)
    fruits = "|".join(f.en for f in corpus.FRUITS)
    for n, fruit in re.findall(rf"\b({numbers}) ({fruits})\b", text):
        found.add(("fruit_number", fruit, n))
    return found


def test_held_out_combinations_only_in_validation_and_test(stories):
    held = corpus.held_out_combinations()
    kinds = collections.Counter(k for k, _, _ in held)
    assert kinds["object_attr"] >= 15 and kinds["fruit_number"] >= 5
    for split, xs in stories.items():
        for x in xs:
            if x.language == "en":
                assert _english_combinations(x.text) == set(x.combinations), x.text
            if split == "train":
                assert not x.combinations & held, x.text
            else:
                assert x.combinations & held, x.text
        templates = collections.Counter(x.template for x in xs)
        assert set(templates) == set(corpus.STORY_TEMPLATES), split
    texts = [x.text for xs in stories.values() for x in xs]
    assert len(set(texts)) == len(texts)
    # The same vocabulary: every word of a held-out story occurs in a train story.
    train_words = {w for x in stories["train"] for w in WORD.findall(x.text)}
    for split in ("validation", "test"):
        assert {w for x in stories[split] for w in WORD.findall(x.text)} <= train_words


def test_stories_refer_back(stories):
    """Later sentences repeat what the first one introduced (the name's gender, the attribute)."""
    names = {n.name: n.female for n in corpus.NAMES}
    for x in stories["train"][:2000]:
        sentences = x.text.split(". ")
        assert 2 <= len(sentences) <= 5, x.text
        if x.template == "have" and x.language == "en":
            name, attr, obj = re.match(r"(\w+) has an? (\w+) (\w+)\.", x.text).groups()
            his = "her" if names[name] else "his"
            assert f"{name} takes {his} {attr} {obj} to the" in x.text
        if x.template == "have" and x.language == "es" and x.text.endswith("Está contenta."):
            assert names[x.text.split()[0]]


def test_builder_prepares_and_reads_back(tmp_path):
    data_dir = str(tmp_path / "tfds")
    src = catalog.data_source("lm_corpus/tiny", "train", data_dir)
    expected = corpus.generate_documents("train", num_examples=2_000)
    assert len(src) == 2_000
    got = [(r["text"].decode(), r["kind"].decode(), r["language"].decode()) for r in src]
    assert sorted(got) == sorted((d.text, d.kind, d.language) for d in expected)
    assert len(catalog.data_source("lm_corpus/tiny", "validation", data_dir)) == 200
    b = catalog.builder("lm_corpus/tiny", data_dir)
    assert type(b).__module__ == "transformer_jax.tasks.generation.dataset"
    assert [c.name for c in type(b).BUILDER_CONFIGS] == ["full", "tiny"]
    assert set(b.info.features) == {"text", "kind", "language"}


# --- n-gram baselines ------------------------------------------------------------------------

BOS, EOS = 2, 1


def test_ngram_hand_computed():
    # Sequences 2 3 4 1 | 2 3 1 | 2 4 4 1; predicted: 3 4 1 3 1 4 4 1 (N = 8), V = 6.
    train = [[3, 4], [3], [4, 4]]
    # Scored: 4 3 1 after bos, and 5 1 (5 never seen in training).
    evaluation = [[4, 3], [5]]
    got = ngram.ngram_perplexities(train, evaluation, 6, bos_id=BOS, eos_id=EOS)
    # Unigram, add-one: counts {1: 3, 3: 2, 4: 3, 5: 0}, p = (c + 1) / 14.
    uni = [4 / 14, 3 / 14, 4 / 14, 1 / 14, 4 / 14]
    assert got["unigram"] == pytest.approx(math.exp(-sum(map(math.log, uni)) / 5), rel=1e-12)
    # Bigram types: (2,3):2 (3,4):1 (4,1):2 (3,1):1 (2,4):1 (4,4):1 -> n1 = 4, n2 = 2, D = 0.5.
    # c(2) = 3, c(3) = 2, c(4) = 3; two distinct followers each.
    bi = [
        (1 - 0.5 + 0.5 * 2 * 4 / 14) / 3,  # 4 after bos: seen once
        (0 + 0.5 * 2 * 3 / 14) / 3,  # 3 after 4: unseen pair
        (1 - 0.5 + 0.5 * 2 * 4 / 14) / 2,  # eos after 3: seen once
        (0 + 0.5 * 2 * 1 / 14) / 3,  # 5 after bos: unseen pair
        4 / 14,  # eos after 5: unseen context, the unigram
    ]
    assert got["bigram"] == pytest.approx(math.exp(-sum(map(math.log, bi)) / 5), rel=1e-12)


def _reference(train, evaluation, vocab_size):
    """Both models written out with loops and dictionaries, in float64."""
    uni, pairs, contexts, n_pred = (
        collections.Counter(),
        collections.Counter(),
        collections.Counter(),
        0,
    )
    for ids in train:
        seq = [BOS, *ids, EOS]
        for a, b in zip(seq[:-1], seq[1:], strict=True):
            uni[b] += 1
            pairs[a, b] += 1
            contexts[a] += 1
            n_pred += 1
    n1 = sum(c == 1 for c in pairs.values())
    n2 = sum(c == 2 for c in pairs.values())
    d = min(max(n1 / (n1 + 2 * n2), 0.1), 0.9)
    followers = collections.Counter(a for a, _ in pairs)
    log_uni = log_bi = 0.0
    n = 0
    for ids in evaluation:
        seq = [BOS, *ids, EOS]
        for a, b in zip(seq[:-1], seq[1:], strict=True):
            p_uni = (uni[b] + 1) / (n_pred + vocab_size)
            if contexts[a]:
                p_bi = (max(pairs[a, b] - d, 0) + d * followers[a] * p_uni) / contexts[a]
            else:
                p_bi = p_uni
            log_uni += math.log(p_uni)
            log_bi += math.log(p_bi)
            n += 1
    return {"unigram": math.exp(-log_uni / n), "bigram": math.exp(-log_bi / n)}


def test_ngram_matches_loop_reference():
    rng = np.random.default_rng(0)
    vocab = 23

    def doc():  # Zipf-like ids in [3, vocab), some documents empty.
        return [int(x) for x in np.minimum(rng.zipf(1.6, rng.integers(0, 9)) + 2, vocab - 1)]

    train, evaluation = [doc() for _ in range(300)], [doc() for _ in range(60)]
    got = ngram.ngram_perplexities(train, evaluation, vocab, bos_id=BOS, eos_id=EOS)
    assert got == pytest.approx(_reference(train, evaluation, vocab), rel=1e-10)
    with pytest.raises(ValueError, match=r"Token ids must lie in \[0, 23\)"):
        ngram.ngram_perplexities(train, [[23]], vocab)


def test_bigram_beats_unigram_on_the_corpus(docs):
    words: dict[str, int] = {}
    unk = 3

    def ids(text, grow):
        out = []
        for w in WORD.findall(text.lower()):
            if grow:
                words.setdefault(w, len(words) + 4)
            out.append(words.get(w, unk))
        return out

    train = [ids(d.text, True) for d in docs["train"]]
    valid = [ids(d.text, False) for d in docs["validation"]]
    got = ngram.ngram_perplexities(train, valid, len(words) + 4)
    print(f"word-level validation perplexity: {got}")
    assert 1 < got["bigram"] < 0.5 * got["unigram"]
