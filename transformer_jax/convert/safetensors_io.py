"""Reading safetensors weights into NumPy arrays (no pickle, no torch).

A checkpoint directory holds either one `model.safetensors` or shards listed in
`model.safetensors.index.json`. Tensors whose dtype NumPy lacks (bfloat16,
float8) are read from the file's raw bytes with `ml_dtypes`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")

_RAW_DTYPES = {
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
}


def _header(path: str) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset where the data starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"{path} is not a safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path} is not a safetensors file (unreadable header)") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors_file(path: str) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as NumPy arrays."""
    header, data_start = _header(path)
    out: dict[str, np.ndarray] = {}
    raw_names = [k for k, v in header.items() if v.get("dtype") in _RAW_DTYPES]
    try:
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                if name not in raw_names:
                    out[name] = f.get_tensor(name)
    except Exception as e:  # the library reports corrupt files in several ways
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if raw_names:
        blob = np.memmap(path, dtype=np.uint8, mode="r")
        for name in raw_names:
            info = header[name]
            begin, end = info["data_offsets"]
            dtype = np.dtype(_RAW_DTYPES[info["dtype"]])
            shape = tuple(info["shape"])
            if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise ValueError(f"{path}: tensor {name} has inconsistent offsets")
            chunk = np.asarray(blob[data_start + begin : data_start + end])
            out[name] = chunk.view(dtype).reshape(shape).copy()
    return out


def read_safetensors_dir(src_dir: str) -> dict[str, np.ndarray]:
    """The weights of a checkpoint directory (single file or sharded); refuses pickle files."""
    single = os.path.join(src_dir, SINGLE_FILE)
    index = os.path.join(src_dir, INDEX_FILE)
    if os.path.isfile(single):
        return read_safetensors_file(single)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no weight_map")
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            if os.path.basename(shard) != shard:
                raise ValueError(f"{index} names a shard outside the directory: {shard!r}")
            path = os.path.join(src_dir, shard)
            if not os.path.isfile(path):
                raise ValueError(f"missing weight shard {path} (listed in {INDEX_FILE})")
            out.update(read_safetensors_file(path))
        return out
    pickled = [p for p in PICKLE_FILES if os.path.isfile(os.path.join(src_dir, p))]
    if pickled:
        raise ValueError(
            f"{src_dir} has only {pickled[0]}: pickle files are not loaded; "
            f"convert it to {SINGLE_FILE} first"
        )
    raise ValueError(f"missing {SINGLE_FILE} in {src_dir}")


def read_json(src_dir: str, name: str, required: bool = True) -> Any:
    """A JSON file of a Hub model folder (config.json, tokenizer_config.json, ...);
    None when it is missing and not `required`; a one-line ValueError otherwise."""
    path = os.path.join(src_dir, name)
    if not os.path.isfile(path):
        if required:
            raise ValueError(f"missing {name} in {src_dir}")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def export_destination(out_dir: str) -> str:
    """`out_dir` as a path, refused (one line) unless it is absent or empty."""
    out_dir = os.fspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir} is not empty; export into a new folder")
    return out_dir


def write_hf_folder(
    out_dir: str, tensors: dict[str, np.ndarray], files: dict[str, Any], tokenizer
) -> None:
    """A Hugging Face folder: `model.safetensors`, each of `files` (name -> JSON value)
    and `tokenizer.json` (`tokenizer.save(path)`, a `tokenizers.Tokenizer`). It is
    written into a staging folder beside `out_dir` and renamed into place when
    complete, so a failed export leaves nothing behind."""
    from safetensors.numpy import save_file

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        save_file(tensors, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
        for name, value in files.items():
            with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                json.dump(value, f, indent=2, ensure_ascii=False)
        tokenizer.save(os.path.join(staging, "tokenizer.json"))
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
