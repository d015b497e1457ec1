"""`tjax info` / `run_info`: a run's task, size, steps, checkpoints and best metric."""

import json
import os
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.__main__ import main
from transformer_jax.config import load_config
from transformer_jax.train.checkpoint import Checkpointer
from transformer_jax.train.runinfo import (
    format_run_info,
    primary_metric,
    run_info,
)

TOKENIZER = {
    "format": "processors",
    "processors": {
        "src_tokenizer": {"kind": "sentencepiece", "model": "AAAA"},
        "tgt_tokenizer": {"same_as": "src_tokenizer"},
    },
}
BLEU = {10: 5.0, 20: 9.5, 30: 7.0}


def make_run(folder, checkpoint_steps=(10, 20, 30)):
    """A synthetic translation workdir: translate_tiny with two overrides, 30 logged
    steps (and a line cut short), BLEU per eval, three small checkpoints."""
    os.makedirs(folder)
    cfg = json.loads(
        json.dumps(
            load_config("translate_tiny", ["train.num_steps=30", "model.d_model=64"]).to_dict()
        )
    )
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(folder, "config_history.jsonl"), "w") as f:
        f.write(json.dumps({"step": 0, "time": "2026-01-02T03:04:05+00:00", "changes": {}}) + "\n")
        change = {"train.num_steps": [20, 30]}
        f.write(json.dumps({"step": 20, "time": "t2", "changes": change, "config": cfg}) + "\n")
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for s in range(1, 31):
            f.write(json.dumps({"step": s, "train/loss": 10.0 / s}) + "\n")
            if s in BLEU:  # accuracy comes first and peaks elsewhere: the task's metric is BLEU
                row = {"validation/loss": 3.0, "validation/accuracy": s / 100}
                f.write(json.dumps({"step": s, **row, "validation/bleu": BLEU[s]}) + "\n")
        f.write('{"step": 31, "train/lo')
    ckpt = Checkpointer(os.path.join(folder, "checkpoints"), keep=5, async_save=False)
    state = {
        "params": {"w": jnp.ones((3, 4), jnp.float32), "b": jnp.ones((4,), jnp.bfloat16)},
        "opt_state": {"mu": jnp.zeros((3, 4), jnp.float32)},
        "step": jnp.asarray(0, jnp.int32),
    }
    for step in checkpoint_steps:
        ckpt.save(
            step,
            state=state,
            data={"iterator": "{}"},
            config=cfg,
            model={},
            tokenizer=TOKENIZER,
        )
    ckpt.close()
    # What a save killed mid-write leaves: not a checkpoint.
    os.makedirs(os.path.join(folder, "checkpoints", "40.orbax-checkpoint-tmp-1"))
    return str(folder)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(str(tmp_path_factory.mktemp("runs") / "run"))


def test_run_info_reads_what_the_run_wrote(run):
    info = run_info(run)
    assert info["workdir"] == run
    assert info["task"] == "translation"
    assert info["num_steps"] == 30
    assert info["last_logged_step"] == 30
    assert info["checkpoints"] == [10, 20, 30]
    assert info["latest_checkpoint"] == 30
    # params only (not the optimizer state): 3*4 float32 + 4 bfloat16
    assert info["parameters"] == {"count": 16, "bytes": 12 * 4 + 4 * 2, "step": 30}
    assert info["best"] == {"metric": "validation/bleu", "value": 9.5, "step": 20}
    assert info["last_eval"]["step"] == 30 and info["last_eval"]["validation/bleu"] == 7.0
    assert info["last_train_loss"] == {"step": 30, "value": 10.0 / 30}
    tok = info["tokenizer"]
    assert tok["source"] == "trained by the run on its training split"
    assert tok["stored_in"] == os.path.join(run, "checkpoints", "30", "tokenizer")
    assert tok["kinds"] == {
        "src_tokenizer": "sentencepiece",
        "tgt_tokenizer": "same as src_tokenizer",
    }
    config = info["config"]
    assert config["file"] == os.path.join(run, "config.json")
    assert config["started"] == "2026-01-02T03:04:05+00:00"
    assert config["closest_shipped"] == "translate_tiny"
    assert sorted(config["overrides"]) == ["model.d_model=64", "train.num_steps=30"]
    assert config["changes"] == [
        {"step": 20, "time": "t2", "changes": {"train.num_steps": [20, 30]}}
    ]
    assert info["running"] is None


def test_format_run_info(run):
    text = format_run_info(run_info(run))
    lines = text.splitlines()
    assert "parameters:   16 (16, 0.0 MiB; checkpoint step 30)" in lines
    assert "steps:        30/30 (finished) logged" in lines
    assert "checkpoints:  10, 20, 30 (latest 30)" in lines
    assert "best:         validation/bleu 9.5 at step 20" in lines
    assert (
        "as:           tjax train --config translate_tiny --config.model.d_model=64 "
        "--config.train.num_steps=30  (closest shipped config and the keys that differ)"
    ) in lines


def test_a_recorded_command_is_shown_as_given(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    overrides = ["model.d_model=64", "train.num_steps=30"]
    cfg = load_config("translate_tiny", overrides).to_dict()
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "metrics.jsonl").write_text('{"step": 3, "train/loss": 1.0}\n')
    argv = ["tjax", "train", "--config", "my_cfg.py", "--workdir", "run", "--config.seed=7"]
    starts = [
        {"step": 0, "time": "t0", "config": "my_cfg.py", "overrides": ["seed=7"], "argv": argv},
        {"step": 3, "time": "t1", "config": None, "overrides": [], "argv": None},  # Python
        {"step": 5, "time": "t2", "config": "my_cfg.py", "overrides": [], "argv": argv[:6]},
    ]
    (folder / "starts.jsonl").write_text("".join(json.dumps(s) + "\n" for s in starts))
    config = run_info(folder)["config"]
    # Not the closest shipped config (translate_tiny): the command the run was started with.
    assert config["closest_shipped"] is None and config["overrides"] == ["seed=7"]
    assert config["command"]["argv"] == argv and config["last_command"]["step"] == 5
    assert config["started"] == "t0" and config["starts"] == 3
    lines = format_run_info(run_info(folder)).splitlines()
    assert "as:           tjax train --config my_cfg.py --workdir run --config.seed=7" in lines
    assert (
        "last start:   tjax train --config my_cfg.py --workdir run  (at step 5; 3 starts)"
    ) in lines


def test_a_live_lock_shows_the_running_run(tmp_path):
    folder = tmp_path / "live"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text('{"step": 3, "train/loss": 1.0}\n')
    holder = {"host": socket.gethostname(), "pid": 4242, "started": "s", "heartbeat": time.time()}
    (folder / ".lock").write_text(json.dumps(holder))
    info = run_info(folder)
    assert info["running"] == {"host": socket.gethostname(), "pid": 4242, "started": "s"}
    assert info["checkpoints"] == [] and info["parameters"] is None and info["best"] is None
    holder["heartbeat"] = time.time() - 3600  # stale: nobody runs it
    (folder / ".lock").write_text(json.dumps(holder))
    assert run_info(folder)["running"] is None


def test_best_of_a_loss_is_its_minimum(tmp_path):
    folder = tmp_path / "lm"
    folder.mkdir()
    rows = [(5, 4.0), (10, 2.5), (15, 3.0)]
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "validation/loss": v}) + "\n" for s, v in rows)
    )
    assert primary_metric(None, ["validation/loss"]) == "validation/loss"
    assert run_info(folder)["best"] == {"metric": "validation/loss", "value": 2.5, "step": 10}


def test_cli_json_and_table(run, tmp_path, capsys):
    assert main(["info", "--workdir", run, "--json"]) == 0
    blob = json.loads(capsys.readouterr().out)
    assert blob["checkpoints"] == [10, 20, 30]
    assert blob["best"] == {"metric": "validation/bleu", "value": 9.5, "step": 20}
    other = tmp_path / "x" / "run"
    other.mkdir(parents=True)
    (other / "metrics.jsonl").write_text('{"step": 7, "train/loss": 1.0}\n')
    assert main(["info", "--workdir", run, "--workdir", str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split() == [
        "workdir",
        "task",
        "params",
        "steps",
        "checkpoints",
        "best",
    ]
    # Both folders are named "run": told apart by their parents.
    assert lines[1].split()[:4] == ["runs0/run", "translation", "16", "30/30"]
    assert lines[2].split()[:5] == ["x/run", "?", "?", "7", "0"]


def test_bad_workdirs_are_one_line_errors(tmp_path, capsys):
    missing = tmp_path / "missing"
    other = tmp_path / "other"
    other.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad, why in ((missing, "does not exist"), (other, "not a run's workdir"), (afile, "file")):
        assert main(["info", "--workdir", str(bad)]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith("tjax info: error: ") and str(bad) in lines[0], lines
        assert why in lines[0]


@pytest.mark.slow
def test_info_of_a_trained_run(trained):
    from helpers import TRAINED_STEPS

    info = run_info(trained)
    assert info["last_logged_step"] == TRAINED_STEPS
    assert info["checkpoints"] == [16, 20, 24] and info["latest_checkpoint"] == 24
    assert info["best"]["metric"] == "validation/bleu" and info["best"]["step"] == TRAINED_STEPS
    assert info["config"]["closest_shipped"] == "translate_tiny"
    assert "train.num_steps=24" in info["config"]["overrides"]
    # The count from metadata equals the parameters actually stored.
    ckpt = Checkpointer(os.path.join(trained, "checkpoints"), async_save=False, read_only=True)
    try:
        params = ckpt.restore_state_on_host(24)["params"]
    finally:
        ckpt.close()
    sizes = [np.asarray(x).size for x in jax.tree.leaves(params)]
    assert info["parameters"]["count"] == sum(sizes)
