"""The classification pipeline as a user meets it: `tjax train --config classify_tiny`,
`tjax classify`, `tjax eval`, the Python pipeline, masked-LM pre-training, fine-tuning
from it and `tjax fill-mask`."""

import json
import os
import subprocess
import time

import pytest
from helpers import read_metrics, subprocess_env, tjax_executable

from transformer_jax.data import catalog
from transformer_jax.tasks.classification import corpus_sentiment

pytestmark = pytest.mark.slow


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
    e["TFDS_DATA_DIR"] = str(tmp_path_factory.getbasetemp() / "tfds_sentiment")
    return e


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory, env):
    """`tjax train --config classify_tiny` as the README gives it, with 400 of its 600
    steps (the schedule decays to zero at the end either way) to spare CI time."""
    workdir = tmp_path_factory.mktemp("classify") / "run"
    start = time.perf_counter()
    _tjax(
        [
            "train", "--config", "classify_tiny", "--workdir", str(workdir),
            "--config.train.num_steps=400", "--config.train.eval_every=200",
        ],
        env,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return str(workdir), seconds


def test_classify_tiny_beats_a_bag_of_words_on_unseen_combinations(classify_run, env):
    workdir, seconds = classify_run
    proc = _tjax(["eval", "--workdir", workdir, "--split", "test"], env)
    out = json.loads(proc.stdout.strip().splitlines()[-1])  # after the log lines
    acc = out["test/class_accuracy"]

    def rows(split):
        source = catalog.data_source("sentiment_reviews", split, env["TFDS_DATA_DIR"])
        return [(source[i]["text"], source[i]["label"]) for i in range(len(source))]

    bow = corpus_sentiment.bag_of_words_baseline(rows("train"), rows("test"))
    print(f"classify_tiny: {seconds:.0f} s, test accuracy {acc:.4f}; bag of words {bow:.4f}")
    assert acc >= 0.95, out
    assert bow < acc - 0.1
    # The evaluation's report: macro-F1, per class, the confusion matrix as JSON and PNG.
    assert out["test/macro_f1"] > 0.9
    report = out["test/report"]
    assert set(report["per_class"]) == {"NEGATIVE", "NEUTRAL", "POSITIVE"}
    matrix = report["matrix"]
    assert sum(map(sum, matrix)) == len(rows("test"))
    assert sum(matrix[i][i] for i in range(3)) / sum(map(sum, matrix)) == pytest.approx(acc)
    (png,) = out["files"]
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.dirname(png) == os.path.dirname(out["path"])


def test_classify_prints_label_and_probability(classify_run, env):
    workdir, _ = classify_run
    line = _tjax(["classify", "--workdir", workdir, "Este producto es excelente."], env).stdout
    label, score = line.split()
    assert label == "POSITIVE" and 0.5 < float(score) <= 1.0, line
    as_json = json.loads(
        _tjax(["classify", "--workdir", workdir, "--json", "The battery is terrible."], env).stdout
    )
    assert [d["label"] for d in as_json] == ["NEGATIVE"] and 0.5 < as_json[0]["score"] <= 1
    top = json.loads(
        _tjax(
            ["classify", "--workdir", workdir, "--json", "--top-k", "3", "It is okay."], env
        ).stdout
    )
    assert sorted(d["label"] for d in top) == ["NEGATIVE", "NEUTRAL", "POSITIVE"]
    assert [d["score"] for d in top] == sorted((d["score"] for d in top), reverse=True)
    assert sum(d["score"] for d in top) == pytest.approx(1.0, abs=1e-3)


def test_classify_batches_stdin_and_handles_odd_lines(classify_run, env):
    workdir, _ = classify_run
    lines = [
        "La pantalla es buena pero la batería es terrible.",
        "",  # an empty line is classified as it is: one output line
        "   ",
        "The screen is great. " * 200,  # far over data.max_length: cut, with a warning
        "No es malo.",
    ] * 7
    proc = _tjax(["classify", "--workdir", workdir], env, stdin="\n".join(lines) + "\n")
    out = proc.stdout.splitlines()
    assert len(out) == len(lines)
    assert out[0].startswith("NEGATIVE ")
    assert "truncated" in proc.stderr and "data.max_length" in proc.stderr
    bad = _tjax(["classify", "--workdir", workdir, "--top-k", "0", "x"], env, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr


def test_python_pipeline_has_hugging_faces_shapes(classify_run):
    import transformer_jax

    workdir, _ = classify_run
    clf = transformer_jax.pipeline("text-classification", workdir=workdir)
    one = clf("Este producto es excelente.")
    assert len(one) == 1 and one[0]["label"] == "POSITIVE" and set(one[0]) == {"label", "score"}
    two = clf(["good", "The hotel is awful."])
    assert len(two) == 2 and all(isinstance(d, dict) for d in two)
    every = clf("The hotel is awful.", top_k=None)
    assert len(every) == 3 and every[0]["label"] == "NEGATIVE"
    with pytest.raises(ValueError, match="not 'translation'"):
        transformer_jax.pipeline("translation", workdir=workdir)


def test_pretrain_then_fine_tune_from_the_encoder(tmp_path, env):
    """Masked-LM pre-training reports masked-token accuracy; fine-tuning starts from its
    encoder with a new head (said so at start-up); fill-mask answers."""
    mlm = tmp_path / "mlm"
    small = [
        "--config.train.num_steps=60",
        "--config.train.eval_every=60",
        "--config.train.checkpoint_every=60",
        "--config.optimizer.warmup_steps=20",
        "--config.model.num_encoder_layers=2",
    ]
    _tjax(["train", "--config", "mlm_tiny", "--workdir", str(mlm), *small], env)
    rows = [r for r in read_metrics(str(mlm)) if "validation/accuracy" in r]
    assert rows and 0.05 < rows[-1]["validation/accuracy"] <= 1.0  # masked-token accuracy
    filled = json.loads(
        _tjax(["fill-mask", "--workdir", str(mlm), "--json", "El producto es <mask>."], env).stdout
    )
    assert len(filled) == 5 and all("<mask>" not in d["sequence"] for d in filled)
    assert filled[0]["score"] >= filled[-1]["score"]
    no_mask = _tjax(["fill-mask", "--workdir", str(mlm), "no mask here"], env, check=False)
    assert no_mask.returncode == 2 and "give exactly one" in no_mask.stderr

    ft = tmp_path / "ft"
    proc = _tjax(
        [
            "train", "--config", "classify_tiny", "--workdir", str(ft), *small,
            f"--config.train.init_from={mlm}",
        ],
        env,
    )  # fmt: skip
    start = proc.stdout + proc.stderr
    assert "new (freshly initialised): 4 [head/" in start, start[-2000:]
    assert "dropped (not in the model): 5 [mlm/" in start
    rows = [r for r in read_metrics(str(ft)) if "validation/class_accuracy" in r]
    assert rows[-1]["validation/class_accuracy"] > 0.45  # chance: 1/3
    # The label map is the fine-tuning run's; the tokenizer the pre-trained one's.
    line = _tjax(["classify", "--workdir", str(ft), "Excelente."], env).stdout.split()
    assert line[0] in {"NEGATIVE", "NEUTRAL", "POSITIVE"}
    # A run whose head predicts other labels cannot start from the fine-tuned classifier.
    other = _tjax(
        [
            "train", "--config", "classify_tiny", "--workdir", str(tmp_path / "other"),
            *small, f"--config.train.init_from={ft}",
            "--config.data.labels=POSITIVE,NEGATIVE,NEUTRAL",
        ],
        env,
        check=False,
    )  # fmt: skip
    assert other.returncode == 2, other.stderr
    assert "this run's labels are ['POSITIVE', 'NEGATIVE', 'NEUTRAL']" in other.stderr
    assert not os.path.exists(tmp_path / "other" / "checkpoints") or not os.listdir(
        tmp_path / "other" / "checkpoints"
    )
