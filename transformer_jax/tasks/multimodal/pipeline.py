"""The image-text-to-text pipeline: questions about images, audio and video, answered.

    pipe = transformer_jax.pipeline("image-text-to-text", workdir="runs/mm")
    pipe({"text": "what color is the circle?", "images": ["shapes.png"]})
    # -> [{"input_text": "what color is the circle?", "generated_text": "red"}]

An input is a dict with "text" (the prompt; "" asks for a caption) and any of
"images" (a list of paths or uint8 [H, W, 3] arrays), "audio" (a path or float
[-1, 1] samples at 16 kHz) and "video" (a video file, a folder of frames, or uint8
[F, H, W, 3]). Files are read by `media_io` (resizing, resampling, down-mixing and frame
sampling are documented there). Answers are greedy, one jitted program per batch size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax.nn.layout import KeptLayout
from transformer_jax.nn.lm import decoding_params
from transformer_jax.tasks.generation.text import lm_specials
from transformer_jax.tasks.multimodal.config import MultimodalConfig
from transformer_jax.tasks.multimodal.data import EncodeExample, stack_rows
from transformer_jax.tasks.multimodal.model import MultimodalModel, answer
from transformer_jax.train.metrics import report
from transformer_jax.train.task import InputError

_KNOWN_KEYS = ("text", "images", "audio", "video")


def _decoding_params(params, config: MultimodalConfig, step_rows=None):
    """The weights laid out for answering batches of `step_rows` rows each: the text
    decoder's and output's layout (`nn.lm.decoding_params`)."""
    return decoding_params(config.text, params, step_rows)


def _bucket(rows: int, batch_size: int) -> int:
    size = 1
    while size < min(rows, batch_size):
        size *= 2
    return min(size, batch_size)


class ImageTextToTextPipeline:
    """Greedy answers of a trained multimodal model (see the module docstring)."""

    def __init__(
        self,
        params,
        config: MultimodalConfig,
        tokenizer,
        *,
        max_text_length: int = 32,
        max_new_tokens: int = 16,
        batch_size: int = 16,
    ) -> None:
        self.params, self.config, self.tok = params, config, tokenizer
        self.model = MultimodalModel(config)
        self.encode = EncodeExample(tokenizer, config, max_text_length)
        self.max_new_tokens, self.batch_size = int(max_new_tokens), int(batch_size)
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.eos_id = lm_specials(tokenizer).eos_id
        self._programs: dict[int, Any] = {}
        self._layout = KeptLayout(_decoding_params)  # of the last params answered with

    @classmethod
    def from_loaded(cls, loaded, **settings) -> ImageTextToTextPipeline:
        run = loaded.run_config
        g = dict(run.get("generate", {}))
        g.update(settings)
        return cls(
            loaded.params,
            loaded.model_config,
            loaded.processors["tokenizer"],
            max_text_length=run["data"]["max_text_length"],
            max_new_tokens=g.get("max_new_tokens", 16),
            batch_size=g.get("batch_size", 16),
        )

    # -- inputs ----------------------------------------------------------------------------

    def example(self, item: Mapping[str, Any] | str) -> dict[str, Any]:
        """A user input -> a canonical example (media read, checked and converted)."""
        from transformer_jax.tasks.multimodal import media_io

        if isinstance(item, str):
            item = {"text": item}
        unknown = sorted(set(item) - set(_KNOWN_KEYS))
        if unknown:
            raise InputError(f"unknown input keys {unknown}: use {', '.join(_KNOWN_KEYS)}")
        cfg = self.config
        have = cfg.modalities
        ex: dict[str, Any] = {"task": "", "prompt": str(item.get("text") or ""), "answer": ""}
        images = item.get("images") or []
        if isinstance(images, str | np.ndarray):
            images = [images]
        if images:
            if "image" not in have:
                raise InputError(self._untrained("image"))
            if len(images) > cfg.max_images:
                raise InputError(
                    f"{len(images)} images given: the model reads at most {cfg.max_images}"
                )
            size = cfg.vision.image_size
            ex["images"] = np.stack(
                [
                    media_io.read_image(x, size) if isinstance(x, str | os.PathLike)
                    else _check_image(x)
                    for x in images
                ]
            )  # fmt: skip
            ex["num_images"] = len(images)
        audio = item.get("audio")
        if audio is not None:
            if "audio" not in have:
                raise InputError(self._untrained("audio"))
            S = cfg.audio.max_samples
            if isinstance(audio, str | os.PathLike):
                wave = media_io.read_audio(audio, max_samples=S)
            else:
                wave = _check_wave(audio)[:S]
            ex["audio"] = np.round(np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)
            ex["audio_samples"] = len(wave)
        video = item.get("video")
        if video is not None:
            if "video" not in have:
                raise InputError(self._untrained("video"))
            v = cfg.vision
            if isinstance(video, str | os.PathLike):
                frames = media_io.read_video(video, v.num_frames, v.image_size)
            else:
                frames = _check_video(video)
            ex["video"], ex["num_frames"] = frames, len(frames)
        return ex

    def _untrained(self, medium: str) -> str:
        return (
            f"this model was not trained on {medium} input "
            f"(it reads {', '.join(self.config.modalities) or 'text only'})"
        )

    # -- answering -------------------------------------------------------------------------

    def _program(self, rows: int):
        if rows not in self._programs:
            model, n = self.model, self.max_new_tokens

            def run(params, media, prompts, mask):
                return answer(model, params, media, prompts, mask, max_new_tokens=n)

            self._programs[rows] = jax.jit(run)
        return self._programs[rows]

    def answer_examples(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        """Greedy answers of canonical examples (prompt + media), in order."""
        out: list[str] = []
        starts = range(0, len(examples), self.batch_size)
        rows = [_bucket(len(examples[s : s + self.batch_size]), self.batch_size) for s in starts]
        params = self._layout(self.params, self.config, step_rows=rows)
        report("answering", 0, len(examples))  # shown by an active Progress (evaluations)
        for start in starts:
            chunk = examples[start : start + self.batch_size]
            rows = []
            for ex in chunk:
                row = self.encode.text(ex["prompt"], None)
                row.update(self.encode.media(ex))
                rows.append(row)
            batch = stack_rows(rows, _bucket(len(rows), self.batch_size))
            media = {k: jnp.asarray(batch[k]) for k in batch if k not in _TEXT_KEYS}
            ids = self._program(len(batch["tokens"]))(
                params, media, batch["tokens"], batch["text_mask"]
            )
            for seq in np.asarray(jax.device_get(ids))[: len(chunk)]:
                out.append(self._detok(seq))
            report("answering", len(out), len(examples))
        return out

    def _detok(self, seq: np.ndarray) -> str:
        ids = []
        for t in seq.tolist():
            if t == self.eos_id or t < 0:
                break
            ids.append(int(t))
        return self.tok.decode(ids).strip()

    def __call__(self, inputs, **settings):
        """HF-shaped: a list with one [{"input_text", "generated_text"}] per input (a
        single input gives its list alone)."""
        if settings:
            unknown = sorted(set(settings) - {"max_new_tokens"})
            if unknown:
                raise InputError(f"unknown pipeline settings {unknown}")
            if "max_new_tokens" in settings:
                self.max_new_tokens = int(settings["max_new_tokens"])
                self._programs.clear()
        single = isinstance(inputs, Mapping | str)
        items = [inputs] if single else list(inputs)
        examples = [self.example(x) for x in items]
        answers = self.answer_examples(examples)
        results = [
            [{"input_text": ex["prompt"], "generated_text": a}]
            for ex, a in zip(examples, answers, strict=True)
        ]
        return results[0] if single else results


_TEXT_KEYS = ("tokens", "text_mask", "prefix_len", "task_id")


def _check_image(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise InputError(f"an image array must be uint8 [H, W, 3], got {x.dtype} {x.shape}")
    return x


def _check_wave(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 1 or not len(x):
        raise InputError(f"audio samples must be a non-empty 1-D array, got shape {x.shape}")
    return x


def _check_video(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise InputError(f"video frames must be uint8 [F, H, W, 3], got {x.dtype} {x.shape}")
    if len(x) < 2:
        raise InputError(f"a video needs at least 2 frames, got {len(x)}")
    return x
