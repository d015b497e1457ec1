"""Processors (tokenizers, label maps, ...) as JSON, stored inside every checkpoint.

A task's processors are a dict `{name: processor}`. Each processor type is
registered once with `register_processor(kind, cls, to_json, from_json)`;
nothing is ever pickled. SentencePiece is registered here; tasks register their
own types (e.g. the Marian tokenizers) when their module is imported.

Stored form: `{"format": "processors", "processors": {name: {"kind": ..., ...}}}`;
a processor stored under several names is written once and referred to by
`{"same_as": first_name}`, so it comes back as one object; a part two processors
share (e.g. both sides of a tokenizer pair hold the pair) is written once too,
its later copies as `{"$same_as": earlier_name}`. Checkpoints written
before processors had names hold one `{"kind": ...}` item for a (source, target)
tokenizer pair; they load as `{"src_tokenizer": ..., "tgt_tokenizer": ...}`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

FORMAT = "processors"

_BY_KIND: dict[str, tuple[type, Callable[[Any], dict], Callable[[dict], Any]]] = {}


def register_processor(
    kind: str, cls: type, to_json: Callable[[Any], dict], from_json: Callable[[dict], Any]
) -> None:
    """Makes instances of `cls` storable as `{"kind": kind, **to_json(obj)}`."""
    _BY_KIND[kind] = (cls, to_json, from_json)


def processor_to_json(obj: Any) -> dict[str, Any]:
    for kind, (cls, to_json, _) in _BY_KIND.items():
        if type(obj) is cls:
            return {**to_json(obj), "kind": kind}
    raise TypeError(
        f"cannot store a processor of type {type(obj).__name__}: register it with "
        "transformer_jax.data.processors.register_processor"
    )


def processor_from_json(blob: dict[str, Any]) -> Any:
    kind = blob.get("kind") if isinstance(blob, dict) else None
    if kind not in _BY_KIND:
        raise ValueError(f"unknown processor kind {kind!r} in checkpoint")
    return _BY_KIND[kind][2](blob)


def processors_to_json(processors: dict[str, Any]) -> dict[str, Any]:
    """`{name: processor}` -> JSON (a processor under several names is stored once)."""
    out: dict[str, Any] = {}
    first: dict[int, str] = {}
    for name, obj in processors.items():
        if id(obj) in first:
            out[name] = {"same_as": first[id(obj)]}
            continue
        first[id(obj)] = name
        blob = processor_to_json(obj)
        for key, value in blob.items():
            earlier = next(
                (n for n, b in out.items() if isinstance(value, dict) and b.get(key) == value),
                None,
            )
            if earlier is not None:
                blob[key] = {"$same_as": earlier}
        out[name] = blob
    return {"format": FORMAT, "processors": out}


def processors_from_json(blob: dict[str, Any]) -> dict[str, Any]:
    """JSON -> `{name: processor}`; also reads the older tokenizer-pair item."""
    if not isinstance(blob, dict):
        raise ValueError("processors item in checkpoint is not a JSON object")
    if blob.get("format") != FORMAT:
        return _from_tokenizer_pair(blob)
    items: dict[str, Any] = blob["processors"]
    out: dict[str, Any] = {}
    for name, item in items.items():
        if isinstance(item, dict) and "same_as" in item:
            out[name] = out[item["same_as"]]
            continue
        shared = {  # parts written once, under an earlier processor
            k: items[v["$same_as"]][k]
            for k, v in item.items()
            if isinstance(v, dict) and set(v) == {"$same_as"}
        }
        out[name] = processor_from_json({**item, **shared})
    return out


def _from_tokenizer_pair(blob: dict[str, Any]) -> dict[str, Any]:
    """The item of older checkpoints: one shared tokenizer, or an object with
    `.source` and `.target` tokenizers (a Marian pair)."""
    if blob.get("kind") not in _BY_KIND:
        raise ValueError(f"unknown tokenizer kind {blob.get('kind')!r} in checkpoint")
    obj = processor_from_json(blob)
    return {
        "src_tokenizer": getattr(obj, "source", obj),
        "tgt_tokenizer": getattr(obj, "target", obj),
    }


def _register_sentencepiece() -> None:
    from transformer_jax.data.tokenizer import SentencePieceTokenizer

    register_processor(
        "sentencepiece",
        SentencePieceTokenizer,
        lambda tok: {"model": base64.b64encode(tok.to_bytes()).decode()},
        lambda blob: SentencePieceTokenizer.from_bytes(base64.b64decode(blob["model"])),
    )


_register_sentencepiece()
