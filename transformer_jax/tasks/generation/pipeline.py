"""The text-generation pipeline. Outputs follow the Hugging Face pipeline shapes.

generator = TextGenerationPipeline.from_loaded(load_for_inference("runs/lm"))
generator("Once upon a time", max_new_tokens=20)
# [{'generated_text': 'Once upon a time ...'}]
generator(["a", "b"], num_return_sequences=2)  # a list of 2 such lists per prompt
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from transformer_jax.nn.config import TransformerConfig
from transformer_jax.tasks.generation.decoding import GenerateOptions, Generator
from transformer_jax.train.task import InputError

OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(GenerateOptions))
# Run-config `generate` keys that are not decoding options.
PIPELINE_KEYS = ("stop", "batch_size", "add_bos")

__all__ = ["TextGenerationPipeline", "parse_stop"]


def parse_stop(stop: Any) -> list[str]:
    """Stop strings from a list of strings, "" (none), or a JSON list string.

    Any other string is one stop string.
    """
    if isinstance(stop, str):
        if not stop:
            return []
        try:
            parsed = json.loads(stop)
        except json.JSONDecodeError:
            parsed = None
        stop = parsed if isinstance(parsed, list) else [stop]
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) and s for s in stop):
        raise InputError(f"stop={stop!r}: give a list of non-empty strings")
    return list(stop)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (without) its earliest stop string."""
    end = len(text)
    for s in stop:
        i = text.find(s)
        if 0 <= i < end:
            end = i
    return text[:end]


class TextGenerationPipeline:
    """Text in, text out: encode, batch prompts of any lengths, jitted decoding, decode.

    Prompts are encoded `[bos] + ids` when `add_bos` (an empty prompt is always `[bos]`).
    Generation ends at eos or after `max_new_tokens`; the text is then cut before its first
    stop string. Options: the fields of `GenerateOptions`, `stop`, `return_full_text`.

    `settings` (a run config's `generate` group; its other keys are ignored) gives defaults
    that keyword arguments override.
    """

    def __init__(
        self,
        params: Any,
        model_config: TransformerConfig,
        tokenizer: Any,
        *,
        settings: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        known = set(OPTION_FIELDS) | set(PIPELINE_KEYS)
        options = {k: v for k, v in dict(settings or {}).items() if k in known} | options
        batch_size = options.pop("batch_size", 16)
        add_bos = options.pop("add_bos", True)
        stop = options.pop("stop", "")
        self.tokenizer = tokenizer
        self.add_bos = bool(add_bos)
        self.stop = parse_stop(stop)
        self.options = self._options(GenerateOptions(), options)
        self.generator = Generator(model_config, params, batch_size=batch_size)

    @classmethod
    def from_loaded(cls, loaded: Any, **overrides: Any) -> TextGenerationPipeline:
        """The pipeline of a loaded checkpoint with its run's `generate` settings;
        `overrides` replace any of them."""
        return cls(
            loaded.params,
            loaded.model_config,
            loaded.processors["tokenizer"],
            settings=loaded.run_config.get("generate") or {},
            **overrides,
        )

    @staticmethod
    def _options(base: GenerateOptions, options: dict[str, Any]) -> GenerateOptions:
        unknown = sorted(set(options) - set(OPTION_FIELDS))
        if unknown:
            raise InputError(
                f"unknown generation option(s) {unknown}: choose from "
                f"{', '.join(OPTION_FIELDS + ('stop', 'return_full_text'))}"
            )
        out = dataclasses.replace(base, **options)
        out.validate()
        return out

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"expected text (str), got {type(text).__name__}")
        bos = self.generator.config.decoder_start_id
        ids = [int(i) for i in self.tokenizer.encode(text)]
        return [bos, *ids] if self.add_bos or not ids else ids

    def _text(self, prompt_ids: list[int], new_ids: list[int]) -> str:
        """The continuation's text, decoded after the prompt's so that word boundaries hold."""
        cfg = self.generator.config
        prompt_ids = prompt_ids[1:] if prompt_ids[:1] == [cfg.decoder_start_id] else prompt_ids
        if new_ids[-1:] == [cfg.eos_id]:
            new_ids = new_ids[:-1]
        before = self.tokenizer.decode(prompt_ids) if prompt_ids else ""
        full = self.tokenizer.decode(prompt_ids + new_ids)
        if full.startswith(before):
            return full[len(before) :]
        return self.tokenizer.decode(new_ids)

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        return_full_text: bool = True,
        stop: Any = None,
        **options: Any,
    ) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        single = isinstance(texts, str)
        if single:
            texts = [texts]
        elif isinstance(texts, bytes | bytearray) or not isinstance(texts, Sequence):
            raise InputError(f"expected text (str) or a list of texts, got {type(texts).__name__}")
        opts = self._options(self.options, options)
        stop = self.stop if stop is None else parse_stop(stop)
        encoded = [self.encode(t) for t in texts]
        prompts = self.generator.fit_prompts(encoded, opts.max_new_tokens, opts.truncation)
        outputs = self.generator.generate_ids(prompts, opts)
        results = []
        for text, prompt, continuations in zip(texts, prompts, outputs, strict=True):
            items = []
            for new_ids in continuations:
                generated = cut_at_stop(self._text(prompt, new_ids), stop)
                items.append(
                    {"generated_text": text + generated if return_full_text else generated}
                )
            results.append(items)
        return results[0] if single else results

    def generate_ids(
        self, prompt_id_lists: Sequence[Sequence[int]], **options: Any
    ) -> list[list[list[int]]]:
        """New token ids (eos kept) per prompt and returned sequence, for prompts given as
        ids exactly as the model sees them (no bos added; an empty prompt becomes `[bos]`)."""
        opts = self._options(self.options, options)
        return self.generator.generate_ids(prompt_id_lists, opts)
