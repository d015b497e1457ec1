"""Multimodal examples -> fixed-shape batches (one example per row, no packing).

A record becomes: text ids `[bos] prompt answer [eos]` (`tokens`, `text_mask`, with the
prefix length `prefix_len` = 1 + prompt ids), the media the model reads (uint8 images
[max_images, H, W, 3] with `num_images`, int16 audio [max_samples] with
`audio_samples`, uint8 video [num_frames, H, W, 3] with `num_frames`), and `task_id`.
Only the modalities the model has are batched; examples that need another one are
left out of training and evaluation.

Sources: the embedded `multimodal_corpus` records as they are, or tfds `coco_captions`
records (an image and several captions: one captioning example per image, a random
caption each epoch while training, the first one otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from transformer_jax.data.reading import batched_source, map_in_chunks
from transformer_jax.tasks.generation.text import lm_specials
from transformer_jax.tasks.multimodal.config import MultimodalConfig
from transformer_jax.tasks.multimodal.media_config import HOP_LENGTH

TASKS = (
    "image_caption",
    "image_qa",
    "audio_caption",
    "audio_qa",
    "video_caption",
    "video_qa",
    "text",
)
TASK_MEDIA = {
    "image_caption": "image",
    "image_qa": "image",
    "audio_caption": "audio",
    "audio_qa": "audio",
    "video_caption": "video",
    "video_qa": "video",
    "text": None,
}


def _str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return _str(value.item())
    return str(value)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3]: centre crop to a square, then area/bicubic
    resampling (Pillow)."""
    image = np.asarray(image)
    if image.shape[:2] == (size, size):
        return image.astype(np.uint8)
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(image[top : top + s, left : left + s].astype(np.uint8))
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0))


def sample_frames(count: int, num_frames: int) -> np.ndarray:
    """Indices of `num_frames` frames spread uniformly over `count` (first and last kept)."""
    return np.round(np.linspace(0, count - 1, num_frames)).astype(np.int64)


def canonical(record: Mapping[str, Any], fmt: str, *, caption_index: int = 0) -> dict[str, Any]:
    """A source record in the corpus's form: task, prompt, answer, media and counts.

    coco_captions: `caption_index` picks the caption (modulo their number); the others
    are kept in "references".
    """
    if fmt == "corpus":
        out = {k: record[k] for k in record}
        out["task"], out["prompt"] = _str(record["task"]), _str(record["prompt"])
        out["answer"] = _str(record["answer"])
        out["references"] = [out["answer"]]
        return out
    captions = record["captions"]["text"]
    captions = [_str(c) for c in np.asarray(captions).reshape(-1)]
    image = np.asarray(record["image"])
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return {
        "task": "image_caption",
        "prompt": "",
        "answer": captions[caption_index % len(captions)].strip().lower() if captions else "",
        "references": [c.strip().lower() for c in captions],
        "images": image[None, ..., :3],
        "num_images": 1,
    }


class EncodeExample:
    """A canonical example -> one batch row (see the module docstring)."""

    def __init__(self, tokenizer, config: MultimodalConfig, max_text_length: int) -> None:
        self.tok, self.config, self.L = tokenizer, config, max_text_length
        self.specials = lm_specials(tokenizer)

    def text(self, prompt: str, answer: str | None) -> dict[str, np.ndarray]:
        """`[bos] prompt answer [eos]` (answer None: the prompt alone, for decoding)."""
        s, L = self.specials, self.L
        prompt_ids = [s.bos_id, *(self.tok.encode(prompt) if prompt else [])]
        prompt_ids = prompt_ids[: L - 1] if answer is not None else prompt_ids[:L]
        ids = list(prompt_ids)
        if answer is not None:
            ids += [*self.tok.encode(answer), s.eos_id]
        ids = ids[:L]
        tokens = np.full(L, s.pad_id, np.int32)
        tokens[: len(ids)] = ids
        mask = np.zeros(L, np.int32)
        mask[: len(ids)] = 1
        return {"tokens": tokens, "text_mask": mask, "prefix_len": np.int32(len(prompt_ids))}

    def media(self, ex: Mapping[str, Any]) -> dict[str, np.ndarray]:
        cfg, out = self.config, {}
        if cfg.max_images:
            v = cfg.vision
            images = np.zeros((cfg.max_images, v.image_size, v.image_size, 3), np.uint8)
            n = min(int(ex.get("num_images", 0)), cfg.max_images)
            for i in range(n):
                images[i] = resize_square(ex["images"][i], v.image_size)
            out["images"], out["num_images"] = images, np.int32(n)
        if cfg.audio is not None:
            S = cfg.audio.max_samples
            audio = np.zeros(S, np.int16)
            n = min(int(ex.get("audio_samples", 0)), S)
            if n:
                audio[:n] = np.asarray(ex["audio"])[:n]
            out["audio"], out["audio_samples"] = audio, np.int32(n)
        if cfg.video:
            v = cfg.vision
            video = np.zeros((v.num_frames, v.image_size, v.image_size, 3), np.uint8)
            count = int(ex.get("num_frames", 0))
            if count:
                frames = np.asarray(ex["video"])[:count]
                for j, f in enumerate(sample_frames(count, v.num_frames)):
                    video[j] = resize_square(frames[f], v.image_size)
            out["video"], out["num_frames"] = video, np.int32(v.num_frames if count else 0)
        return out

    def real_tokens(self, row: Mapping[str, np.ndarray]) -> int:
        """The row's real media and text tokens (what `model.max_tokens` must hold)."""
        cfg, n = self.config, int(np.sum(row["text_mask"]))
        if cfg.max_images:
            n += int(row["num_images"]) * (cfg.vision.image_out_tokens + 2)
        if cfg.audio is not None and int(row["audio_samples"]):
            frames = min(int(row["audio_samples"]), cfg.audio.max_samples) // HOP_LENGTH
            n += (frames + 1) // 2 + 2
        if cfg.video and int(row["num_frames"]):
            n += cfg.vision.video_out_tokens + 2
        return n

    def __call__(self, ex: Mapping[str, Any]) -> dict[str, np.ndarray]:
        row = self.text(ex["prompt"], ex["answer"])
        row.update(self.media(ex))
        K = self.config.max_tokens
        if K and self.config.fusion == "prefix" and self.real_tokens(row) > K:
            raise ValueError(
                f"a {ex['task'] or 'given'} example has {self.real_tokens(row)} media and text "
                f"tokens: more than model.max_tokens={K}"
            )
        task = ex["task"]
        row["task_id"] = np.int32(TASKS.index(task) if task in TASKS else len(TASKS))
        return row


def usable(config: MultimodalConfig, task: str) -> bool:
    """Whether the model reads the medium an example of `task` needs."""
    medium = TASK_MEDIA.get(task, None)
    return medium is None or medium in config.modalities


class _Canonical(grain.transforms.RandomMap):
    def __init__(self, fmt: str, train: bool) -> None:
        self.fmt, self.train = fmt, train

    def random_map(self, record, rng: np.random.Generator):
        index = int(rng.integers(0, 1 << 30)) if self.train else 0
        return canonical(record, self.fmt, caption_index=index)


def stack_rows(rows: Sequence[Mapping[str, np.ndarray]], num_rows: int) -> dict[str, np.ndarray]:
    """Rows -> a batch, padded with all-zero rows (zero weight) to `num_rows`."""
    batch = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
    if len(rows) < num_rows:
        batch = {
            k: np.concatenate([v, np.zeros((num_rows - len(rows),) + v.shape[1:], v.dtype)])
            for k, v in batch.items()
        }
    return batch


def mm_dataset(
    source: Sequence[Mapping[str, Any]],
    encode: EncodeExample,
    *,
    fmt: str,
    rows: int,
    shuffle: bool,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    drop_remainder: bool = True,
    limit: int = 0,
) -> grain.IterDataset:
    """Batches of encoded examples (dicts of [rows, ...] arrays)."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"Need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    ds = batched_source(source)
    if limit:
        ds = ds[:limit]
    ds = ds[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"Shard {shard_index} of {shard_count} is empty ({len(source)} examples)")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs).random_map(_Canonical(fmt, shuffle), seed=seed)
    ds = ds.filter(lambda ex: usable(encode.config, ex["task"]))
    it = map_in_chunks(ds, encode, chunk_size=16)  # whole examples with media: 16 at a time
    return it.batch(rows, drop_remainder=drop_remainder, batch_fn=lambda r: stack_rows(r, rows))
