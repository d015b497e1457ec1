"""Property tests: whatever text, ids, overrides or arguments come in, no crash and no traceback.

Each property runs a bounded number of Hypothesis examples; the number of cases
actually run is counted and shown in pytest's summary.
"""

from __future__ import annotations

import collections
import contextlib
import io
import random
import re
import subprocess

import ml_collections
import pytest
from helpers import (
    TINY_CONFIG,
    compilation_cache,
    subprocess_env,
    summary_line,
    tjax_executable,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transformer_jax.__main__ import main
from transformer_jax.config import ConfigError, load_config, set_key
from transformer_jax.pipelines import InputError
from transformer_jax.tasks.translation.config import translation_base
from transformer_jax.tasks.translation.pipeline import TranslationPipeline

CASES: collections.Counter[str] = collections.Counter()
FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", autouse=True)
def _jit_cache_and_counts(tmp_path_factory, request):
    failed_before = request.session.testsfailed
    with compilation_cache(tmp_path_factory):
        yield
    if CASES:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(CASES.items()))
        failed = request.session.testsfailed - failed_before
        summary_line(
            request.config,
            f"fuzzing: {sum(CASES.values())} cases ({detail}); failed tests: {failed}",
        )


@pytest.fixture(scope="module")
def pipe(trained):
    """Greedy and short: the properties are about robustness, not translation quality."""
    return TranslationPipeline.from_workdir(trained, beam_size=1, max_decode_len=8, extra_length=4)


# -- (a) the translation pipeline ----------------------------------------------------------

controls = st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn"])
texts = st.one_of(
    st.text(max_size=60),  # any code point except surrogates
    st.text(alphabet=controls, max_size=30),
    st.text(alphabet=" \t\n\r\x0b\x0c\x85\xa0\u2028\u3000", max_size=20),  # blank
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=12), st.integers(100, 1500)),
    st.sampled_from(["", " ", "The cat sleeps on the couch.", "\x00", "\ufeff", "🐈" * 40]),
)


def _check_one_line(e: BaseException) -> None:
    assert str(e) and "\n" not in str(e), repr(e)


@FAST
@given(text=texts)
def test_pipeline_translates_any_text(pipe, text):
    CASES["pipeline text"] += 1
    out = pipe(text)
    assert isinstance(out, list) and len(out) == 1
    assert set(out[0]) == {"translation_text"} and isinstance(out[0]["translation_text"], str)
    if not text.strip():
        assert out[0]["translation_text"] == ""


@settings(FAST, max_examples=40)
@given(batch=st.lists(texts, min_size=1, max_size=3))
def test_pipeline_translates_any_batch_in_order(pipe, batch):
    CASES["pipeline batch"] += 1
    out = pipe(batch)
    assert [type(o["translation_text"]) for o in out] == [str] * len(batch)
    assert [o["translation_text"] for o in out] == pipe.translate(batch)


@settings(FAST, max_examples=40)
@given(
    bad=st.one_of(
        st.none(),
        st.integers(),
        st.floats(),
        st.binary(),
        st.lists(st.one_of(st.none(), st.integers(), st.binary()), min_size=1, max_size=3).map(
            lambda xs: ["ok", *xs]
        ),
    )
)
def test_pipeline_refuses_non_text(pipe, bad):
    CASES["pipeline non-text"] += 1
    with pytest.raises(ValueError) as e:  # InputError is a ValueError
        pipe(bad)
    assert isinstance(e.value, InputError), repr(e.value)
    _check_one_line(e.value)


@settings(FAST, max_examples=30)
@given(text=st.tuples(st.text(max_size=10), st.characters(categories=["Cs"]), st.text(max_size=10)))
def test_pipeline_refuses_lone_surrogates(pipe, text):
    CASES["pipeline surrogates"] += 1
    with pytest.raises(ValueError) as e:
        pipe("".join(text))
    _check_one_line(e.value)


# -- (b) the tokenizer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def alphabet(pipe):
    """Characters the tokenizer reproduces exactly on their own (spaces aside)."""
    tok = pipe.src_tokenizer
    chars = {c for i in range(tok.vocab_size) for c in tok.id_to_piece(i)}
    return "".join(sorted(c for c in chars if not c.isspace() and tok.decode(tok.encode(c)) == c))


@FAST
@given(text=texts)
def test_tokenizer_encodes_any_text(pipe, text):
    CASES["tokenizer text"] += 1
    tok = pipe.src_tokenizer
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert isinstance(tok.decode(ids), str)


@FAST
@given(data=st.data())
def test_tokenizer_round_trip_on_its_alphabet(pipe, alphabet, data):
    CASES["tokenizer round trip"] += 1
    assert len(alphabet) > 20
    words = data.draw(st.lists(st.text(alphabet=alphabet, min_size=1, max_size=8), max_size=8))
    gaps = data.draw(st.lists(st.integers(1, 3), min_size=len(words) + 1, max_size=len(words) + 1))
    text = "".join(" " * g + w for g, w in zip(gaps, words)) + " " * gaps[-1]
    tok = pipe.src_tokenizer
    # Runs of spaces collapse and the ends are trimmed; everything else survives.
    assert tok.decode(tok.encode(text)) == " ".join(words)


@FAST
@given(ids=st.lists(st.integers(-3, 260), max_size=40))
def test_tokenizer_decodes_any_ids(pipe, ids):
    CASES["tokenizer ids"] += 1
    tok = pipe.src_tokenizer
    if all(0 <= i < tok.vocab_size for i in ids):
        assert isinstance(tok.decode(ids), str)
        return
    try:
        assert isinstance(tok.decode(ids), str)
    except ValueError as e:
        assert "outside the vocabulary" in str(e)
        _check_one_line(e)


# -- (c) config overrides ------------------------------------------------------------------


def _keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        out.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            out += _keys(v, prefix + k + ".")
    return out


KEYS = _keys(translation_base())
keys = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(KEYS).map(lambda k: k.upper()),
    st.sampled_from(KEYS).map(lambda k: k + "."),
    st.text(max_size=20),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", max_size=24),
)
values = st.one_of(
    st.text(max_size=20),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e999", "-1e999", "1e-999", "nan", "inf", "-0", "1_000", "0x10", "True"]),
    st.sampled_from(["none", "[]", "{}", "(", "ab=cd", "1e5", " 7 ", "\n", "٣", "1" * 400]),
)


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


@settings(FAST, max_examples=200)
@given(key=keys, value=values)
def test_config_override_is_applied_or_a_config_error(key, value):
    CASES["config overrides"] += 1
    try:
        cfg = load_config(TINY_CONFIG, [f"{key}={value}"])
    except ConfigError as e:
        _check_one_line(e)
    else:
        # Applied with the field's own type.
        base = translation_base()
        name = key.strip()
        assert type(_get(cfg, name)) is type(_get(base, name))

    cfg = translation_base()
    cfg.lock()
    try:
        set_key(cfg, key, value)
    except ConfigError as e:
        _check_one_line(e)


# -- (d) the command line on a workdir that does not exist ---------------------------------

OPTIONS = {
    "translate": ["--step", "--averaged", "--beam-size", "--batch-size", "--", "-", "-1"],
    "eval": ["--split", "--step", "--averaged", "--limit", "--loss-batches", "--config.seed"],
    "average": ["--last", "--last=0", "--last=-2", "--last=x"],
}
COMMON = ["--config.train.num_steps=3", "--config.", "--config.nope=1", "3", "x", "-7", "="]


def _not_help_or_workdir(token: str) -> bool:
    # `--h`, `--he`, ... abbreviate --help (exit 0); `--w...` abbreviates --workdir.
    return not token.lstrip("-").startswith(("h", "w")) or not token.startswith("-")


@pytest.fixture(scope="module")
def missing(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli") / "no_such_workdir")


@settings(FAST, max_examples=150)
@given(data=st.data(), command=st.sampled_from(sorted(OPTIONS)))
def test_cli_errors_are_one_line_status_2(missing, data, command):
    CASES["cli argv"] += 1
    token = st.one_of(st.sampled_from(OPTIONS[command] + COMMON), st.text(max_size=12)).filter(
        _not_help_or_workdir
    )
    tokens = data.draw(st.lists(token, max_size=5))
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main([command, "--workdir", missing, *tokens])
        except SystemExit as e:
            rc = e.code
    assert rc == 2, (rc, err.getvalue())
    text = err.getvalue()
    assert "Traceback" not in text
    lines = [line for line in text.split("\n") if line.strip()]
    error = re.compile(rf"tjax( {command})?: error: ")
    if lines and lines[0].startswith("usage:"):  # argparse: usage, then its error
        assert any(error.match(line) for line in lines[1:]), text
    else:  # ours: exactly one line
        assert len(lines) == 1 and error.match(lines[0]), text
    assert out.getvalue() == ""


# -- (e) random bytes through `tjax translate` ---------------------------------------------


def _random_lines(rng: random.Random, n: int) -> list[bytes]:
    special = [
        b"",
        b"   ",
        b"\t",
        b"\r",
        b"\xff\xfe\xfd",
        b"\xc3",
        b"\xed\xa0\x80",  # an encoded surrogate (invalid UTF-8)
        "a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2028h\u2029i".encode(),
        b"The cat sleeps on the couch.",
        "El gato 🐈 duerme\x00".encode(),
        b"cat " * 2000,
    ]
    lines = []
    for i in range(n):
        if i < len(special):
            line = special[i]
        elif rng.random() < 0.5:
            line = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        else:
            text = "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(60)))
            line = text.encode("utf-8")
        lines.append(line.replace(b"\n", b" "))
    return lines


def test_translate_stdin_random_bytes(trained, tmp_path_factory):
    lines = _random_lines(random.Random(1234), 160)
    proc = subprocess.run(
        [tjax_executable(), "translate", "--workdir", trained, "--beam-size", "1"],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        env=subprocess_env(tmp_path_factory),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    out = proc.stdout.decode("utf-8").split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    for line, translation in zip(lines, out):
        if not line.decode("utf-8", errors="replace").strip():
            assert translation == ""
    CASES["stdin lines"] += len(lines)
