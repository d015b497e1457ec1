"""Tests of the English->Spanish grammar corpus."""

import re

import pytest

from transformer_jax.tasks.translation import corpus_en_es as corpus

WORD = re.compile(r"[^\W\d_]+")


@pytest.fixture(scope="module")
def splits() -> dict[str, list[tuple[str, str]]]:
    return {s: corpus.generate_split(s) for s in corpus.SPLITS}


@pytest.fixture(scope="module")
def all_pairs(splits) -> dict[str, str]:
    return {en: es for pairs in splits.values() for en, es in pairs}


def _words(pairs, side: int) -> set[str]:
    return {w for pair in pairs for w in WORD.findall(pair[side].lower())}


def test_sizes_and_determinism(splits):
    assert {s: len(p) for s, p in splits.items()} == corpus.SPLIT_SIZES
    corpus._generate.cache_clear()
    for s in corpus.SPLITS:
        assert corpus.generate_split(s) == splits[s]
    assert corpus.generate_split("train", num_examples=5) == splits["train"][:5]
    assert corpus.generate_split("validation", seed=1) != splits["validation"]
    with pytest.raises(ValueError, match="bogus"):
        corpus.generate_split("bogus")


def test_no_duplicates_and_no_overlap(splits):
    seen: set[tuple[str, str]] = set()
    for pairs in splits.values():
        assert len(set(pairs)) == len(pairs)
        assert not seen & set(pairs)
        seen |= set(pairs)
    # The translation is a function of the English sentence.
    assert len({en for en, _ in seen}) == len(seen)


def test_cat_sentence_in_train(splits):
    pair = ("The cat sleeps on the couch.", "El gato duerme en el sofá.")
    assert corpus.cat_sentence() == pair
    assert pair in splits["train"]
    assert pair in corpus.generate_split("train", num_examples=10)


def _variants_of(en: str) -> set[str]:
    """The surface variants read off an English sentence."""
    found = set()
    if en.endswith("!"):
        found.add("exclamation")
    if en[-1].isalpha():
        found.add("no_period")
    letters = [c for c in en if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        found.add("upper")
    elif not any(c.isupper() for c in letters):
        found.add("lower")
    return found


def test_sentence_shape(splits):
    for pairs in splits.values():
        for en, es in pairs:
            for text in (en, es):
                assert corpus.MIN_WORDS <= len(text.split()) <= corpus.MAX_WORDS, text
                assert text[-1] in ".?!" or text[-1].isalpha(), text
                assert text.count(" ") == len(text.split()) - 1
            assert (en[-1] == "?") == (es[0] == "¿") == (es[-1] == "?"), (en, es)
            assert (en[-1] == "!") == (es[0] == "¡") == (es[-1] == "!"), (en, es)
            assert (en[-1] == ".") == (es[-1] == "."), (en, es)
            assert en.isupper() == es.isupper() and en.islower() == es.islower(), (en, es)
            if not (en.isupper() or en.islower()):
                assert en[0].isupper() and es.lstrip("¿¡")[0].isupper(), (en, es)


def test_surface_variants_at_their_rates(splits):
    """Each variant appears at about its configured share, on train and on test alike."""
    for split in ("train", "test"):
        pairs = splits[split]
        counts = {name: 0 for name in corpus.SURFACE_VARIANTS}
        for en, _ in pairs:
            for name in _variants_of(en):
                counts[name] += 1
        for name, p in corpus.SURFACE_VARIANTS.items():
            share = counts[name] / len(pairs)
            # Questions never lose their "?", so the punctuation variants fall a little short.
            assert 0.6 * p < share < 1.3 * p, (split, name, share)


def test_first_and_second_person_are_frequent(splits):
    train = splits["train"]
    first_second = sum(en.lower().split()[0] in ("i", "you") for en, _ in train)
    third = sum(en.lower().split()[0] in ("he", "she") for en, _ in train)
    assert first_second > 2.5 * third
    short = {en for en, _ in train if len(en.split()) == 2}
    assert {"I slept.", "You sleep."} <= short


DETS = {
    "the",
    "a",
    "an",
    "some",
    "this",
    "these",
    "that",
    "those",
    "my",
    "your",
    "his",
    "her",
    "our",
}
AUX = {"is", "are", "was", "were", "do", "does", "did"}


def _text_combinations(en: str) -> set[tuple[str, str, str]]:
    """(noun, adjective) and (subject noun, verb) combinations read off an English sentence."""
    nouns = {f: n.en for n in corpus.NOUNS for f in (n.en, n.en_pl)}
    adjectives = {a.en for a in corpus.ADJECTIVES}
    verbs = {f: v.en for v in corpus.VERBS for f in (v.en, v.en_3sg, v.en_past)}
    words = en.rstrip(".?!").lower().split()
    found = {
        ("noun_adj", nouns[b], a)
        for a, b in zip(words, words[1:])
        if a in adjectives and b in nouns
    }
    rest = words[1:] if words[0] in AUX else words
    if rest[0] in DETS:
        rest = rest[2:] if rest[1] in adjectives and rest[2] in nouns else rest[1:]
        noun = nouns.get(rest[0])
        rest = rest[1:]
        if rest and rest[0] in AUX:
            rest = rest[2:] if len(rest) > 1 and rest[1] == "not" else rest[1:]
        if noun and rest:
            if rest[0] in verbs and not (
                words[-1] == rest[0] and rest[0] in adjectives and len(rest) == 1
            ):
                found.add(("subject_verb", noun, verbs[rest[0]]))
            if len(rest) == 1 and rest[0] in adjectives:
                found.add(("noun_adj", noun, rest[0]))
    return found


def test_held_out_combinations(splits):
    held_out = corpus.held_out_combinations()
    kinds = {k for k, _, _ in held_out}
    assert kinds == {"noun_adj", "subject_verb"} and len(held_out) > 40
    assert ("subject_verb", "cat", "sleep") not in held_out
    # The generator's own bookkeeping.
    for split in corpus.SPLITS:
        for _, _, combos in corpus.generate_split_with_combinations(split):
            assert bool(combos & held_out) == (split != "train")
    # An independent check on the English text.
    for en, _ in splits["train"]:
        assert not _text_combinations(en) & held_out, en
    for split in ("validation", "test"):
        for en, _ in splits[split]:
            assert _text_combinations(en) & held_out, en
    assert _text_combinations("Are these girls clean?") == {("noun_adj", "girl", "clean")}
    assert _text_combinations("The old cat did not see a dog.") == {
        ("noun_adj", "cat", "old"),
        ("subject_verb", "cat", "see"),
    }


def test_eval_words_appear_in_train(splits):
    for side in (0, 1):
        train_words = _words(splits["train"], side)
        for split in ("validation", "test"):
            assert _words(splits[split], side) <= train_words


EXPECTED = [
    ("I wash the black mice.", "Yo lavo a los ratones negros."),
    ("The women are fast.", "Las mujeres son rápidas."),
    ("The cows are sad.", "Las vacas están tristes."),
    ("Our beds were old.", "Nuestras camas eran viejas."),
    ("Are we young?", "¿Nosotros somos jóvenes?"),
    ("Some new gardens are not red.", "Unos jardines nuevos no son rojos."),
    ("These mice ran.", "Estos ratones corrieron."),
    ("Those beds are ugly.", "Esas camas son feas."),
    ("My tired cows sleep.", "Mis vacas cansadas duermen."),
    ("This bird sees the dog.", "Este pájaro ve al perro."),
    ("I saw your bird.", "Yo vi a tu pájaro."),
    ("They have the balls.", "Ellos tienen las pelotas."),
    ("He is under the couch.", "Él está debajo del sofá."),
    ("I run behind the tree.", "Yo corro detrás del árbol."),
    ("Was I in front of the garden?", "¿Yo estaba delante del jardín?"),
    ("I did not play.", "Yo no jugué."),
    ("My cat slept.", "Mi gato durmió."),
    ("He read the letter.", "Él leyó la carta."),
    ("We read the book.", "Nosotros leemos el libro."),
    ("Did some men read?", "¿Unos hombres leyeron?"),
    ("You lived with the woman.", "Tú viviste con la mujer."),
    # First and second person singular, also with adjectives (masculine by default).
    ("I slept.", "Yo dormí."),
    ("You were happy.", "Tú estabas contento."),
    ("Am I tired?", "¿Yo estoy cansado?"),
    ("I was not dirty.", "Yo no estaba sucio."),
    # Surface variants.
    ("A boy helped that black dog!", "¡Un chico ayudó a ese perro negro!"),
    ("THE BOY WAS IN FRONT OF THE NEW HOUSE.", "EL CHICO ESTABA DELANTE DE LA CASA NUEVA."),
    ("you do not sleep near that garden.", "tú no duermes cerca de ese jardín."),
    ("The doctor sleeps on the tables", "El médico duerme en las mesas"),
]


@pytest.mark.parametrize("en,es", EXPECTED)
def test_spanish_spot_checks(all_pairs, en, es):
    assert all_pairs.get(en) == es


def test_contractions(all_pairs):
    spanish = list(all_pairs.values())
    assert not any(re.search(r"\b(a|de) el\b", es, re.IGNORECASE) for es in spanish)
    assert sum(" al " in es for es in spanish) > 1000
    assert sum(" del " in es for es in spanish) > 1000
    assert any(" a la " in es for es in spanish) and any(" de la " in es for es in spanish)
    # "tú" is the pronoun, "tu" the possessive.
    for en, es in all_pairs.items():
        if en.startswith(("You ", "Do you ", "Did you ")):
            assert es.lstrip("¿¡").startswith("Tú "), (en, es)
        if en.startswith("Your "):
            assert es.lstrip("¿¡").startswith(("Tu ", "Tus ")), (en, es)


def test_agreement_of_adjectives(all_pairs):
    """Every attributive adjective agrees with its noun in gender and number."""
    forms = {}
    for noun in corpus.NOUNS:
        for adj in corpus.ADJECTIVES:
            if noun.kind in adj.kinds:
                f = noun.gender == "f"
                forms[(noun.en, adj.en)] = f"{noun.es} {adj.es[f]}"
                forms[(noun.en_pl, adj.en)] = f"{noun.es_pl} {adj.es[2 + f]}"
    checked = 0
    for en, es in all_pairs.items():
        words = en.rstrip(".?!").lower().split()
        for adj_en, noun_en in zip(words, words[1:]):
            if (noun_en, adj_en) in forms and adj_en not in {"clean"}:
                assert forms[(noun_en, adj_en)] in es.lower(), (en, es)
                checked += 1
    assert checked > 10_000
