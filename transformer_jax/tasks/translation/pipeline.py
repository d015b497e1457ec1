"""The translation pipeline. Outputs follow the Hugging Face pipeline shapes.

translator = transformer_jax.pipeline("translation", workdir="runs/tiny")
translator(["The cat sleeps on the couch."])
# [{'translation_text': 'El gato duerme en el sofá.'}]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections
import numpy as np

from transformer_jax.nn.config import TransformerConfig
from transformer_jax.tasks.translation.decoding import translate_rows
from transformer_jax.train.metrics import report
from transformer_jax.train.task import InputError


def decode_settings(run_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A run config's decoding settings, as `TranslationPipeline` fields.

    Keys an older run config lacks take their defaults (the paper's GNMT scoring).
    """
    d = run_config.decode
    return {
        "beam_size": d.beam_size,
        "alpha": d.alpha,
        "length_penalty_type": d.get("length_penalty_type", "gnmt"),
        "length_penalty": d.get("length_penalty", 1.0),
        "early_stopping": d.get("early_stopping", "false"),
        "forced_eos": d.get("forced_eos", False),
        "extra_length": d.extra_length,
        "max_decode_len": d.max_decode_len,
        "max_source_len": run_config.data.max_length,
    }


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


@dataclasses.dataclass
class TranslationPipeline:
    """Text in, text out: tokenize, batch by length, jitted beam search, detokenize.

    Inputs longer than `max_source_len` tokens are truncated to that many (the
    end-of-sentence token is kept); empty or blank lines translate to "".

    With a `mesh`, each batch's rows are split over its data-parallel devices,
    those of every host (`batch_size` is rounded up to a multiple of their
    number), and every host gets all translations. Under several processes
    every host must translate the same texts.
    """

    params: object
    model_config: TransformerConfig
    src_tokenizer: object
    tgt_tokenizer: object
    beam_size: int = 4
    alpha: float = 0.6
    length_penalty_type: str = "gnmt"  # "hf": length_penalty and early_stopping, as HF's
    length_penalty: float = 1.0
    early_stopping: str = "false"
    forced_eos: bool = False
    extra_length: int = 50
    max_decode_len: int = 256
    max_source_len: int = 256
    batch_size: int = 64
    mesh: object = None  # a jax.sharding.Mesh, or None for the default device

    def __post_init__(self) -> None:
        """Decoding settings a caller can get wrong fail here, one line each."""
        for name, low in (
            ("beam_size", 1),
            ("batch_size", 1),
            ("max_decode_len", 1),
            ("max_source_len", 1),
            ("extra_length", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise InputError(f"{name} must be an int, got {value!r}")
            if value < low:
                raise InputError(f"{name} must be >= {low}, got {value}")
        if not (isinstance(self.alpha, int | float | np.number) and 0 <= self.alpha < np.inf):
            raise InputError(f"alpha must be a finite number >= 0, got {self.alpha!r}")

    @classmethod
    def from_workdir(
        cls, workdir: str, *, step: int | None = None, averaged: bool = False, **overrides
    ) -> TranslationPipeline:
        from transformer_jax.train.restore import load_for_inference

        return cls.from_loaded(
            load_for_inference(workdir, step=step, averaged=averaged), **overrides
        )

    @classmethod
    def from_loaded(cls, loaded, **overrides) -> TranslationPipeline:
        """The pipeline of a loaded checkpoint, with its run's decoding settings."""
        kwargs = dict(
            params=loaded.params,
            model_config=loaded.model_config,
            src_tokenizer=loaded.processors["src_tokenizer"],
            tgt_tokenizer=loaded.processors["tgt_tokenizer"],
            **decode_settings(loaded.run_config),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def encode_source(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"expected text (str), got {type(text).__name__}")
        ids = self.src_tokenizer.encode(text)
        eos = self.model_config.eos_id
        if ids and ids[-1] == eos:
            ids = ids[:-1]
        return ids[: self.max_source_len - 1] + [eos]

    def translate(self, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, bytes | bytearray) or not isinstance(texts, Iterable):
            raise InputError(f"expected text (str) or a list of texts, got {type(texts).__name__}")
        texts = list(texts)
        out = [""] * len(texts)
        todo = [i for i, t in enumerate(texts) if (t if isinstance(t, str) else "x").strip()]
        encoded = {i: self.encode_source(texts[i]) for i in todo}
        todo.sort(key=lambda i: len(encoded[i]))
        cfg = self.model_config
        if self.mesh is None:
            rows_sharding, multiple = None, 1
        else:
            from transformer_jax.train import sharding as shd

            rows_sharding = shd.batch_sharding(self.mesh)
            multiple = shd.data_parallel_size(self.mesh)
        # Every host computes the same batches (same count, same shapes) from the same
        # texts: under several processes each decode is one computation of all hosts.
        per_batch = _round_up(self.batch_size, multiple)
        report("decoding", 0, len(todo))
        for start in range(0, len(todo), per_batch):
            rows = todo[start : start + per_batch]
            S = _round_up(max(len(encoded[i]) for i in rows), 16)
            B = _round_up(len(rows), 8) if len(rows) > 8 else len(rows)
            B = _round_up(B, multiple)
            src_BS = np.full((B, S), cfg.pad_id, np.int32)
            lengths_B = np.ones((B,), np.int32)
            for r, i in enumerate(rows):
                src_BS[r, : len(encoded[i])] = encoded[i]
                lengths_B[r] = len(encoded[i])
            src_BS[len(rows) :, 0] = cfg.eos_id
            max_len_B = np.minimum(lengths_B + self.extra_length, self.max_decode_len)
            ids_BL = translate_rows(
                self.params,
                src_BS,
                max_len_B,
                rows_sharding=rows_sharding,
                config=cfg,
                beam_size=self.beam_size,
                alpha=self.alpha,
                max_decode_len=self.max_decode_len,
                length_penalty_type=self.length_penalty_type,
                length_penalty=self.length_penalty,
                early_stopping=self.early_stopping,
                forced_eos=self.forced_eos,
            )
            for r, i in enumerate(rows):
                out[i] = self.tgt_tokenizer.decode(_until_eos(ids_BL[r], cfg.eos_id))
            report("decoding", start + len(rows), len(todo))
        return out

    def __call__(self, texts: str | Iterable[str]) -> list[dict[str, str]]:
        if isinstance(texts, str):
            texts = [texts]
        return [{"translation_text": t} for t in self.translate(texts)]


def _until_eos(ids, eos_id: int) -> list[int]:
    ids = [int(t) for t in ids]
    return ids[: ids.index(eos_id)] if eos_id in ids else ids
