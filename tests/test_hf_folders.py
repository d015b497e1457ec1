"""The Hugging Face folder plumbing every importer and exporter shares: safetensors read
back as written (bfloat16 included), the export folder written whole or not at all, and
the one-line refusals of a missing source, a used workdir and a non-empty export folder."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from tokenizers import Tokenizer, models

from transformer_jax.convert.safetensors_io import (
    export_destination,
    read_safetensors_dir,
    write_hf_folder,
)
from transformer_jax.train.checkpoint import (
    Checkpointer,
    check_import,
    checkpoint_dir,
    save_imported,
)


def _tokenizer() -> Tokenizer:
    return Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))


def test_written_folder_reads_back(tmp_path):
    out = tmp_path / "deep" / "export"
    tensors = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "h": np.array([1.5, -2.25], ml_dtypes.bfloat16),
    }
    files = {"config.json": {"model_type": "x", "name": "ñ"}, "extra.json": [1, 2]}
    write_hf_folder(str(out), tensors, files, _tokenizer())
    assert sorted(os.listdir(out)) == [
        "config.json", "extra.json", "model.safetensors", "tokenizer.json",
    ]  # fmt: skip
    back = read_safetensors_dir(str(out))
    np.testing.assert_array_equal(back["w"], tensors["w"])
    assert back["h"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(back["h"].astype(np.float32), [1.5, -2.25])
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["name"] == "ñ"
    assert Tokenizer.from_file(str(out / "tokenizer.json")).token_to_id("a") == 1
    assert os.listdir(out.parent) == ["export"]  # no staging folder left


def test_failed_export_leaves_nothing(tmp_path):
    class Broken:
        def save(self, path):
            raise OSError("disk full")

    out = tmp_path / "export"
    out.mkdir()  # an empty folder may be exported into
    with pytest.raises(OSError, match="disk full"):
        write_hf_folder(str(out), {"w": np.zeros(2, np.float32)}, {"config.json": {}}, Broken())
    assert os.listdir(tmp_path) == ["export"] and os.listdir(out) == []


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="^Marian model directory .*nope does not exist$"):
        check_import(tmp_path / "nope", str(tmp_path / "run"), "Marian model")
    src = tmp_path / "hub"
    src.mkdir()
    assert check_import(src, str(tmp_path / "run")) == str(src)

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="full is not empty; export into a new folder"):
        export_destination(tmp_path / "full")
    assert export_destination(tmp_path / "new") == str(tmp_path / "new")


def test_imported_step_zero_and_a_second_import(tmp_path):
    from transformer_jax.nn.config import TransformerConfig, config_to_json
    from transformer_jax.tasks.generation.config import lm_base

    run = lm_base()
    model = TransformerConfig(vocab_size=8, d_model=4, num_heads=1, d_ff=8)
    params = {"w": np.arange(4, dtype=np.float32)}
    workdir = str(tmp_path / "run")
    save_imported(workdir, params, config=run.to_dict(), model=config_to_json(model), tokenizer={})
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["task"] == "causal_lm"
    ckpt = Checkpointer(checkpoint_dir(workdir), keep=1, read_only=True)
    try:
        assert ckpt.latest_step() == 0
        assert ckpt.restore_meta(0)["data"] == {}  # parameters alone: a run starts from it
        state = ckpt.restore_state_on_host(0)
    finally:
        ckpt.close()
    np.testing.assert_array_equal(state["params"]["w"], params["w"])
    with pytest.raises(ValueError, match="already holds checkpoints; import into a fresh"):
        check_import(tmp_path, workdir)
