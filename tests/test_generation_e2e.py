"""The generation pipeline as a user meets it: `tjax train --config lm_tiny`, its
perplexity against n-gram models of the same training split, `tjax generate` (greedy,
sampled, beams, JSON, stdin batches, bad options), `tjax eval` and the Python pipeline."""

import json
import re
import subprocess
import time

import numpy as np
import pytest
from helpers import read_metrics, subprocess_env, tjax_executable

from transformer_jax.data import catalog
from transformer_jax.tasks.generation.ngram import baseline_perplexities

pytestmark = pytest.mark.slow

STEPS = 300  # of lm_tiny's 400, to spare CI time (context copying needs about 300)


def _tjax(args, env, stdin=None, check=True, timeout=900):
    proc = subprocess.run(
        [tjax_executable(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = subprocess_env(tmp_path_factory)
    e.pop("XLA_FLAGS", None)  # one CPU device, as a user's run has
    e["TFDS_DATA_DIR"] = str(tmp_path_factory.getbasetemp() / "tfds_lm")
    return e


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, env):
    """`tjax train --config lm_tiny` as the README gives it, with fewer steps."""
    workdir = tmp_path_factory.mktemp("lm") / "run"
    start = time.perf_counter()
    _tjax(
        [
            "train", "--config", "lm_tiny", "--workdir", str(workdir),
            f"--config.train.num_steps={STEPS}", f"--config.train.eval_every={STEPS}",
            "--config.generate.eval_examples=32",
        ],
        env,
    )  # fmt: skip
    return str(workdir), time.perf_counter() - start


def _texts(env, split):
    source = catalog.data_source("lm_corpus", split, env["TFDS_DATA_DIR"])
    texts = (source[i]["text"] for i in range(len(source)))
    return [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]


def test_perplexity_is_far_below_unigram_and_bigram_models(lm_run, env):
    from transformer_jax.train.restore import load_for_inference

    workdir, seconds = lm_run
    evals = [r for r in read_metrics(workdir) if "validation/perplexity" in r]
    ppl = evals[-1]["validation/perplexity"]
    tok = load_for_inference(workdir).processors["tokenizer"]
    base = baseline_perplexities(tok, _texts(env, "train"), _texts(env, "validation"))
    print(
        f"lm_tiny ({STEPS} steps): {seconds:.0f} s; validation perplexity {ppl:.2f}, "
        f"unigram {base['unigram']:.2f}, bigram {base['bigram']:.2f}"
    )
    assert ppl < 0.5 * base["bigram"], (ppl, base)
    assert base["bigram"] < base["unigram"]
    assert "validation/continuation_match" in evals[-1]


def test_context_decides_the_continuation(lm_run, env):
    """Held-out stories: "Luis has a red cup. ... Nina finds the" -> "red cup". The
    (colour, object) pair never occurs in training, so only the first sentence tells."""
    import transformer_jax

    workdir, _ = lm_run
    prompts, expected = [], []
    for text in _texts(env, "test"):
        m = re.match(r"(\w+) has an? (\w+) (\w+)\.", text)
        if not m:
            continue
        pair = f"{m.group(2)} {m.group(3)}"
        later = text.find(pair, m.end())
        if later < 0:
            continue
        prompts.append(text[:later].rstrip())
        expected.append(pair)
    assert len(prompts) >= 40
    gen = transformer_jax.pipeline("text-generation", workdir=workdir)
    outs = gen(prompts, max_new_tokens=6, return_full_text=False)
    hits = [o[0]["generated_text"].strip().startswith(e) for o, e in zip(outs, expected)]
    print(f"context copy: {np.mean(hits):.3f} of {len(hits)}")
    assert np.mean(hits) >= 0.8


def test_generate_cli(lm_run, env):
    workdir, _ = lm_run
    prompt = "Ana goes to the market."
    greedy = _tjax(["generate", "--workdir", workdir, "--max-new-tokens", "12", prompt], env)
    text = greedy.stdout.strip()
    assert text.startswith(prompt) and len(text) > len(prompt) + 3
    # JSON, two prompts of different lengths from stdin in one batch, sampled twice each.
    proc = _tjax(
        [
            "generate", "--workdir", workdir, "--json", "--temperature", "0.8", "--top-p", "0.9",
            "--num-return-sequences", "2", "--seed", "3", "--max-new-tokens", "10",
        ],
        env,
        stdin="Tom has a\nEs sábado. Lola va al mercado. Compra\n",
    )  # fmt: skip
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert len(lines) == 2 and all(len(x) == 2 for x in lines)
    assert lines[1][0]["generated_text"].startswith("Es sábado.")
    again = _tjax(
        [
            "generate", "--workdir", workdir, "--json", "--temperature", "0.8", "--top-p", "0.9",
            "--num-return-sequences", "2", "--seed", "3", "--max-new-tokens", "10",
            "Es sábado. Lola va al mercado. Compra",
        ],
        env,
    )  # fmt: skip
    assert json.loads(again.stdout.strip()) == lines[1]  # the same sample alone
    beams = _tjax(
        ["generate", "--workdir", workdir, "--num-beams", "4", "--stop", ".", prompt], env
    )
    assert beams.stdout.strip().startswith(prompt) and not beams.stdout.strip().endswith(".")


@pytest.mark.parametrize(
    "bad, words",
    [
        (["--top-p", "1.5"], "top_p"),
        (["--top-k", "-1"], "top_k"),
        (["--temperature", "-1"], "temperature"),
        (["--max-new-tokens", "10000"], "max_position"),
    ],
)
def test_generate_refuses_bad_options_in_one_line(lm_run, bad, words, capsys):
    from transformer_jax.__main__ import main

    workdir, _ = lm_run
    assert main(["generate", "--workdir", workdir, *bad, "x"]) == 2
    err = capsys.readouterr().err
    mine = [line for line in err.splitlines() if line.startswith("tjax generate: error:")]
    assert len(mine) == 1 and words in mine[0] and "Traceback" not in err, err


def test_eval_reports_perplexity_on_a_split(lm_run, env):
    workdir, _ = lm_run
    proc = _tjax(["eval", "--workdir", workdir, "--split", "test", "--limit", "8"], env)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 1.0 < out["test/perplexity"] < 30.0
    assert 0.0 <= out["test/continuation_match"] <= 1.0
