"""Random-access data sources for any TFDS dataset, and the registry of embedded datasets.

The datasets this package generates itself are TFDS builders kept beside their task and
found here by name (`LOCAL_BUILDERS`); they are prepared on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds

_FILE_FORMAT = "array_record"
# TFDS registers catalog builders when their category package is imported; without
# TensorFlow the lazy import in ``tensorflow_datasets/__init__`` does not happen.
_TFDS_CATEGORIES = (
    "translate", "text", "summarization", "question_answering", "structured", "image",
    "image_classification", "object_detection", "audio", "video", "vision_language",
    "graphs", "time_series", "ranking", "recommendation", "text_simplification",
)  # fmt: skip


def _base_name(name: str) -> str:
    return name.split("/")[0].split(":")[0]


# The datasets this package generates itself (no downloads), by TFDS name: an import path
# "package.module:BuilderClass", imported on first use so that this layer never imports a
# task; each task registers its embedded builder here.
LOCAL_BUILDERS: dict[str, str] = {
    "en_es_grammar": "transformer_jax.tasks.translation.dataset:EnEsGrammar",
    "sentiment_reviews": "transformer_jax.tasks.classification.dataset:SentimentReviews",
    "lm_corpus": "transformer_jax.tasks.generation.dataset:LMCorpus",
    "multimodal_corpus": "transformer_jax.tasks.multimodal.dataset:MultimodalCorpus",
}


def register_local_builder(name: str, path: str) -> None:
    """Registers an embedded dataset: TFDS ``name`` -> ``"package.module:BuilderClass"``."""
    if not path.partition(":")[2]:
        raise ValueError(f"Builder of dataset {name!r}: {path!r} is not package.module:Class.")
    LOCAL_BUILDERS[name] = path


def _local_builder(name: str) -> type[tfds.core.DatasetBuilder] | None:
    """The builder class of one of this package's datasets (importing its module), or None."""
    path = LOCAL_BUILDERS.get(_base_name(name))
    if path is None:
        return None
    module_name, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"Cannot import the builder {path} of dataset {name!r}: {e}") from None
    if getattr(cls, "name", None) != _base_name(name):
        raise ValueError(f"The builder {path} is not dataset {_base_name(name)!r}.")
    return cls


def builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder for ``name`` (e.g. ``en_es_grammar/tiny``, ``wmt14_translate/de-en``)."""
    local = _local_builder(name)  # Importing its module registers it with TFDS.
    if local is None and _base_name(name) not in tfds.list_builders(with_community_datasets=False):
        for category in _TFDS_CATEGORIES:
            with contextlib.suppress(Exception):
                importlib.import_module(f"tensorflow_datasets.{category}")
    config = name.split("/")[1].split(":")[0] if "/" in name else None
    if local is not None and config is not None:
        configs = [c.name for c in local.BUILDER_CONFIGS]
        if config not in configs:
            raise ValueError(
                f"Unknown config {config!r} of dataset {_base_name(name)!r}; available: {', '.join(configs)}."
            )
    try:
        return tfds.builder(name, data_dir=data_dir, file_format=_FILE_FORMAT)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"Unknown dataset {name!r}: not a registered TFDS dataset.") from None
    except (ValueError, KeyError, AssertionError) as e:
        raise ValueError(f"Cannot load dataset {name!r}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].split(" Here are ")[0] if text else type(e).__name__


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Returns the builder of ``name``, generating this package's datasets if needed.

    Generation holds a file lock, so concurrent calls (several processes on one
    host or a shared file system with ``flock``) generate the data only once.
    Catalog datasets that need downloads are never prepared here.
    """
    b = builder(name, data_dir)
    if b.is_prepared():
        return b
    if _base_name(name) not in LOCAL_BUILDERS:
        raise ValueError(
            f"Dataset {name!r} is not prepared (no {_FILE_FORMAT} data in {b.data_dir}); prepare it "
            f"first with `tfds build {name} --file_format={_FILE_FORMAT} --data_dir={data_dir or 'DIR'}` "
            "on a machine with network access and TensorFlow."
        )
    with _file_lock(os.path.join(os.path.dirname(b.data_dir), ".prepare.lock")):
        b = builder(name, data_dir)
        if not b.is_prepared():
            b.download_and_prepare(
                file_format=_FILE_FORMAT,
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )
    return b


_SPLIT_NAME = re.compile(r"[A-Za-z_][\w-]*")


def _check_split(b: tfds.core.DatasetBuilder, name: str, split: str) -> None:
    known: Sequence[str] = list(b.info.splits.keys())
    if not known:  # Splits are unknown before preparation (or under tfds mocking).
        return
    for part in split.split("+"):
        match = _SPLIT_NAME.match(part.strip())
        if match is None or match.group(0) not in known:
            raise ValueError(
                f"Unknown split {split!r} of dataset {name!r}; available: {', '.join(known)}."
            )


def data_source(name: str, split: str, data_dir: str | None = None) -> Sequence[dict[str, Any]]:
    """A random-access source of ``split`` of dataset ``name`` (array_record files).

    This package's datasets are generated on first use; other catalog datasets
    must already be prepared in ``data_dir`` in the array_record format.
    """
    b = prepare(name, data_dir) if _base_name(name) in LOCAL_BUILDERS else builder(name, data_dir)
    _check_split(b, name, split)
    try:
        return b.as_data_source(split)
    except Exception as e:
        if not b.is_prepared():
            prepare(name, data_dir)  # Raises the one-line "not prepared" error.
        raise ValueError(
            f"Cannot read split {split!r} of dataset {name!r}: {_first_line(e)}"
        ) from None
