"""Seeded synthetic image, audio, video and text corpus for the multimodal pipeline.

Pure NumPy (no TensorFlow). Every example has a task (:data:`TASKS`), a prompt, an answer
and up to :data:`MAX_IMAGES` images, one audio clip or one video:

- Images (32x32 RGB on a dark, slightly noisy background): 1 to 3 shapes of distinct
  types (:data:`SHAPES`) and distinct colours (:data:`COLORS`), each in one cell of a 3x3
  grid (jittered by up to a pixel). Captions: "a red circle"; "a red circle above a
  blue square" (the two shapes in :data:`SHAPES` order; the relation along the axis on
  which their cells differ more, vertical on a tie); "a red circle, a blue square and a
  green triangle" (left to right, top first within a column). Questions ask for a
  shape's colour, a colour's shape, the number of shapes, or (two shapes) their
  relation. A share of the questions show two images and ask about one or both.
- Audio (16 kHz int16, 9000..12000 samples): 1..3 beeps of one pitch class
  (:data:`PITCHES`, around :data:`PITCH_HZ`) and pattern (:data:`PATTERNS`: a linear
  sweep of -20%..+20% of the pitch over each beep for "rising"), light noise.
  Captions: "three high rising beeps"; questions ask the count, pitch or pattern.
- Video (8 frames of 32x32): one shape moving 2-3 px per frame in one of
  :data:`DIRECTIONS`. Captions: "a green square moves right"; questions ask the
  direction, colour or shape.
- Text ("text"): an empty prompt and the caption of a scene that is not shown.

Held-out generalisation: each image scene's signature (its set of (colour, shape, cell))
is hashed into exactly one split, so no validation or test scene occurs in train; a seeded
set of audio (count, pitch, pattern) and video (colour, shape, direction) triples occurs
only in validation and test (which hold only those triples). Every single attribute value
occurs in train. Examples of a split are shuffled together, so a prefix keeps the task mix.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

SPLITS = ("train", "validation", "test")
TASKS = (
    "image_caption", "image_qa", "audio_caption", "audio_qa", "video_caption", "video_qa", "text",
)  # fmt: skip
# Examples of each task in the "full" splits. Training leans on image questions, the
# hardest task (a question must find the right shape among several): 44% of training
# examples, against a third in validation and test, which keep the sizes of version 1.0.0.
TASK_SIZES = {
    "train": {
        "image_caption": 3_000, "image_qa": 11_000, "audio_caption": 1_500, "audio_qa": 3_500,
        "video_caption": 1_500, "video_qa": 3_500, "text": 1_000,
    },
    "validation": {
        "image_caption": 150, "image_qa": 400, "audio_caption": 75, "audio_qa": 175,
        "video_caption": 75, "video_qa": 175, "text": 150,
    },
}  # fmt: skip
TASK_SIZES["test"] = dict(TASK_SIZES["validation"])
SPLIT_SIZES = {s: sum(v.values()) for s, v in TASK_SIZES.items()}
TWO_IMAGE_FRACTION = 0.2  # share of image_qa examples that show two images
SCENE_SPLIT_FRACTIONS = {"validation": 0.1, "test": 0.1}  # image scenes hashed to held-out splits

IMAGE_SIZE = 32
MAX_IMAGES = 2
NUM_FRAMES = 8
SAMPLE_RATE = 16_000
MAX_AUDIO_SAMPLES = 12_000
MIN_AUDIO_SAMPLES = 9_000

COLORS = ("red", "green", "blue", "yellow")
COLOR_RGB = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 80, 240), "yellow": (230, 210, 30)}  # fmt: skip
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
PITCHES = ("low", "medium", "high")
PITCH_HZ = {"low": 300.0, "medium": 700.0, "high": 1600.0}
PATTERNS = ("steady", "rising", "falling")
SWEEP = {"steady": (1.0, 1.0), "rising": (0.8, 1.2), "falling": (1.2, 0.8)}  # start, end x pitch
COUNT_WORDS = ("one", "two", "three", "four", "five", "six")  # COUNT_WORDS[n - 1] names n
RELATIONS = ("above", "below", "left of", "right of")
ORDINALS = ("first", "second")
GRID = 3  # cells per row and column; cell = row * GRID + col
NUM_CELLS = GRID * GRID
HELD_OUT_AUDIO = 5  # (count, pitch, pattern) triples only in validation and test
HELD_OUT_VIDEO = 8  # (colour, shape, direction) triples only in validation and test

_HALF = 4.3  # half extent of a shape, px (cells are 32/3 px; jitter +-1 px keeps them apart)
_SQUARE_HALF = 3.8  # about the circle's area
_NOISE = 16  # background noise: uniform integers in [0, _NOISE)
_BEEP = (1_760, 2_080)  # beep length, samples (0.11..0.13 s)
_GAP = (1_120, 1_440)  # gap between beeps, samples (0.07..0.09 s)
_FADE = 160  # raised-cosine fade in and out, samples (10 ms)
_SPEED = (2.0, 3.0)  # video motion, px per frame
_MOTION = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (dy, dx)


# --- Specs ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shape:
    """One shape of an image: type, colour, grid cell and pixel jitter of its centre."""

    shape: str
    color: str
    cell: int
    dy: int = 0
    dx: int = 0

    @property
    def center(self) -> tuple[float, float]:
        row, col = divmod(self.cell, GRID)
        step = IMAGE_SIZE / GRID
        return (row + 0.5) * step + self.dy, (col + 0.5) * step + self.dx


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """An image: its shapes (distinct types, colours and cells) and the seed of its noise."""

    shapes: tuple[Shape, ...]
    noise_seed: int = 0

    @property
    def signature(self) -> frozenset[tuple[str, str, int]]:
        return frozenset((s.color, s.shape, s.cell) for s in self.shapes)


@dataclasses.dataclass(frozen=True)
class AudioSpec:
    """A clip of ``count`` equal beeps starting at ``onset`` (all lengths in samples)."""

    count: int
    pitch: str
    pattern: str
    freq: float  # Hz, the pitch class's frequency jittered by +-5%
    beep: int
    gap: int
    onset: int
    num_samples: int
    amplitude: float  # peak, as a fraction of full scale
    noise_seed: int = 0

    @property
    def triple(self) -> tuple[int, str, str]:
        return self.count, self.pitch, self.pattern


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """One shape moving ``speed`` px per frame in ``direction`` from centre (y0, x0)."""

    shape: str
    color: str
    direction: str
    y0: float
    x0: float
    speed: float
    noise_seed: int = 0

    @property
    def triple(self) -> tuple[str, str, str]:
        return self.color, self.shape, self.direction


@dataclasses.dataclass(frozen=True)
class Example:
    """One example before rendering: task, prompt, answer and the specs of its media."""

    task: str
    prompt: str
    answer: str
    images: tuple[ImageSpec, ...] = ()
    audio: AudioSpec | None = None
    video: VideoSpec | None = None


# --- Language ---------------------------------------------------------------------------------


def count_word(n: int) -> str:
    return COUNT_WORDS[n - 1]


def _phrase(s: Shape) -> str:
    return f"a {s.color} {s.shape}"


def relation(a: Shape, b: Shape) -> str:
    """Where ``a`` is relative to ``b``, along the axis on which their cells differ more."""
    (ra, ca), (rb, cb) = divmod(a.cell, GRID), divmod(b.cell, GRID)
    if abs(ra - rb) >= abs(ca - cb):
        return "above" if ra < rb else "below"
    return "left of" if ca < cb else "right of"


def image_caption(spec: ImageSpec) -> str:
    shapes = spec.shapes
    if len(shapes) == 1:
        return _phrase(shapes[0])
    if len(shapes) == 2:
        a, b = sorted(shapes, key=lambda s: SHAPES.index(s.shape))
        return f"{_phrase(a)} {relation(a, b)} {_phrase(b)}"
    a, b, c = sorted(shapes, key=lambda s: (s.cell % GRID, s.cell // GRID))
    return f"{_phrase(a)}, {_phrase(b)} and {_phrase(c)}"


def audio_caption(spec: AudioSpec) -> str:
    noun = "beep" if spec.count == 1 else "beeps"
    return f"{count_word(spec.count)} {spec.pitch} {spec.pattern} {noun}"


def video_caption(spec: VideoSpec) -> str:
    return f"a {spec.color} {spec.shape} moves {spec.direction}"


def _image_question(
    rng: random.Random, spec: ImageSpec, where: str = "", split: str = "test"
) -> tuple[str, str]:
    """A question about one image; ``where`` (" in the first image") names it among two.

    Held-out splits ask where one shape is relative to the other only in two-shape
    images; training asks it of two of three shapes too, for more practice at comparing
    positions.
    """
    shapes = spec.shapes
    pairs = len(shapes) == 2 or (len(shapes) == 3 and split == "train")
    kinds = ["color", "count", "shape"] + (["relation"] if pairs and not where else [])
    kind = rng.choice(kinds)
    s = rng.choice(shapes)
    if kind == "color":
        return f"what color is the {s.shape}{where}?", s.color
    if kind == "shape":
        return f"what shape is {s.color}{where}?", s.shape
    if kind == "count":
        return f"how many shapes{where}?", count_word(len(shapes))
    a, b = rng.sample(shapes, 2)
    rel = relation(a, b)
    if rel in ("above", "below"):
        return f"is the {a.shape} above or below the {b.shape}?", rel
    return f"is the {a.shape} left or right of the {b.shape}?", rel.split()[0]


def _two_image_question(rng: random.Random, specs: tuple[ImageSpec, ...]) -> tuple[str, str]:
    if rng.random() < 0.25:
        return "how many shapes in total?", count_word(sum(len(s.shapes) for s in specs))
    i = rng.randrange(len(specs))
    return _image_question(rng, specs[i], f" in the {ORDINALS[i]} image")


# --- Sampling ---------------------------------------------------------------------------------


def _unit_hash(*parts: Any) -> float:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def scene_split(signature: frozenset[tuple[str, str, int]], seed: int = 0) -> str:
    """The one split in which image scenes with this signature occur."""
    u = _unit_hash("mm-scene", seed, tuple(sorted(signature)))
    if u < SCENE_SPLIT_FRACTIONS["validation"]:
        return "validation"
    if u < SCENE_SPLIT_FRACTIONS["validation"] + SCENE_SPLIT_FRACTIONS["test"]:
        return "test"
    return "train"


@functools.lru_cache(maxsize=4)
def held_out_audio(seed: int = 0) -> frozenset[tuple[int, str, str]]:
    """The (count, pitch, pattern) triples that occur only in validation and test."""
    triples = sorted(itertools.product((1, 2, 3), PITCHES, PATTERNS))
    return frozenset(random.Random(f"mm-held-audio/{seed}").sample(triples, HELD_OUT_AUDIO))


@functools.lru_cache(maxsize=4)
def held_out_video(seed: int = 0) -> frozenset[tuple[str, str, str]]:
    """The (colour, shape, direction) triples that occur only in validation and test."""
    triples = sorted(itertools.product(COLORS, SHAPES, DIRECTIONS))
    return frozenset(random.Random(f"mm-held-video/{seed}").sample(triples, HELD_OUT_VIDEO))


def _sample_image(rng: random.Random, split: str, seed: int) -> ImageSpec:
    while True:
        n = rng.choices((1, 2, 3), weights=(0.3, 0.4, 0.3))[0]
        shapes = rng.sample(SHAPES, n)
        colors = rng.sample(COLORS, n)
        cells = rng.sample(range(NUM_CELLS), n)
        spec = ImageSpec(
            tuple(
                Shape(s, c, cell, rng.randint(-1, 1), rng.randint(-1, 1))
                for s, c, cell in zip(shapes, colors, cells)
            ),
            rng.getrandbits(63),
        )
        if scene_split(spec.signature, seed) == split:
            return spec


def _sample_audio(rng: random.Random, split: str, seed: int) -> AudioSpec:
    held_out = held_out_audio(seed)
    while True:
        count, pitch, pattern = rng.randint(1, 3), rng.choice(PITCHES), rng.choice(PATTERNS)
        if ((count, pitch, pattern) in held_out) == (split != "train"):
            break
    beep, gap = rng.randint(*_BEEP), rng.randint(*_GAP)
    total = count * beep + (count - 1) * gap
    num_samples = rng.randint(max(MIN_AUDIO_SAMPLES, total + 2 * _FADE), MAX_AUDIO_SAMPLES)
    return AudioSpec(
        count=count,
        pitch=pitch,
        pattern=pattern,
        freq=PITCH_HZ[pitch] * rng.uniform(0.95, 1.05),
        beep=beep,
        gap=gap,
        onset=rng.randint(_FADE, num_samples - total - _FADE),
        num_samples=num_samples,
        amplitude=rng.uniform(0.25, 0.8),
        noise_seed=rng.getrandbits(63),
    )


def _sample_video(rng: random.Random, split: str, seed: int) -> VideoSpec:
    held_out = held_out_video(seed)
    while True:
        color, shape, direction = rng.choice(COLORS), rng.choice(SHAPES), rng.choice(DIRECTIONS)
        if ((color, shape, direction) in held_out) == (split != "train"):
            break
    speed = rng.uniform(*_SPEED)
    travel = speed * (NUM_FRAMES - 1)
    lo, hi = _HALF + 0.5, IMAGE_SIZE - _HALF - 0.5
    dy, dx = _MOTION[direction]
    start = []
    for d in (dy, dx):  # along the motion: room for the travel; across it: anywhere inside
        if d > 0:
            start.append(rng.uniform(lo, hi - travel))
        elif d < 0:
            start.append(rng.uniform(lo + travel, hi))
        else:
            start.append(rng.uniform(lo, hi))
    return VideoSpec(shape, color, direction, start[0], start[1], speed, rng.getrandbits(63))


def _sample_example(rng: random.Random, task: str, split: str, seed: int) -> Example:
    if task == "image_caption":
        spec = _sample_image(rng, split, seed)
        return Example(task, "", image_caption(spec), images=(spec,))
    if task == "image_qa":
        n = 2 if rng.random() < TWO_IMAGE_FRACTION else 1
        specs = tuple(_sample_image(rng, split, seed) for _ in range(n))
        if n == 1:
            q, a = _image_question(rng, specs[0], split=split)
        else:
            q, a = _two_image_question(rng, specs)
        return Example(task, q, a, images=specs)
    if task in ("audio_caption", "audio_qa"):
        audio = _sample_audio(rng, split, seed)
        if task == "audio_caption":
            return Example(task, "", audio_caption(audio), audio=audio)
        q, a = rng.choice(
            (
                ("how many beeps?", count_word(audio.count)),
                ("is the pitch high, medium or low?", audio.pitch),
                ("is it rising, falling or steady?", audio.pattern),
            )
        )
        return Example(task, q, a, audio=audio)
    if task in ("video_caption", "video_qa"):
        video = _sample_video(rng, split, seed)
        if task == "video_caption":
            return Example(task, "", video_caption(video), video=video)
        q, a = rng.choice(
            (
                (f"which way does the {video.shape} move?", video.direction),
                ("what color is the moving shape?", video.color),
                ("what shape is moving?", video.shape),
            )
        )
        return Example(task, q, a, video=video)
    # Text only: the caption of a scene of this split that is not shown.
    medium = rng.choices(("image", "audio", "video"), weights=(0.6, 0.2, 0.2))[0]
    if medium == "image":
        return Example(task, "", image_caption(_sample_image(rng, split, seed)))
    if medium == "audio":
        return Example(task, "", audio_caption(_sample_audio(rng, split, seed)))
    return Example(task, "", video_caption(_sample_video(rng, split, seed)))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")


@functools.lru_cache(maxsize=8)
def _examples(split: str, seed: int) -> tuple[Example, ...]:
    rng = random.Random(f"mm-corpus/{seed}/{split}")
    out = [
        _sample_example(rng, task, split, seed)
        for task in TASKS
        for _ in range(TASK_SIZES[split][task])
    ]
    rng.shuffle(out)
    return tuple(out)


def generate_examples(split: str, seed: int = 0, num_examples: int | None = None) -> list[Example]:
    """The deterministic (unrendered) examples of ``split``; optionally only the first few."""
    _check_split(split)
    return list(_examples(split, seed)[:num_examples])


# --- Rendering --------------------------------------------------------------------------------

_PIXEL = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5  # pixel centres


def _masks(cy: np.ndarray, cx: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Boolean masks [N, H, W] of shapes ``kind`` (indices into SHAPES) centred at (cy, cx)."""
    dy = _PIXEL[None, :, None] - cy[:, None, None].astype(np.float32)
    dx = _PIXEL[None, None, :] - cx[:, None, None].astype(np.float32)
    circle = dy * dy + dx * dx <= _HALF * _HALF
    square = np.maximum(np.abs(dy), np.abs(dx)) <= _SQUARE_HALF
    # Apex up: the half width grows from 0 at the top to _HALF at the base.
    triangle = (np.abs(dy) <= _HALF) & (np.abs(dx) <= (dy + _HALF) / 2)
    k = kind[:, None, None]
    return np.where(k == 0, circle, np.where(k == 1, square, triangle))


def _noise(seeds: Sequence[int], shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(
        [np.random.default_rng(s).integers(0, _NOISE, shape, dtype=np.uint8) for s in seeds]
    )


_RGB = np.array([COLOR_RGB[c] for c in COLORS], np.uint8)


def _paint(canvas: np.ndarray, mask: np.ndarray, color: np.ndarray) -> None:
    """Sets the pixels of ``mask`` [N, H, W] of ``canvas`` [N, H, W, 3] to ``color`` [N] (in place)."""
    canvas[...] = np.where(mask[..., None], _RGB[color][:, None, None, :], canvas)


def render_images(specs: Sequence[ImageSpec]) -> np.ndarray:
    """uint8 [N, 32, 32, 3]: the images of ``specs`` (vectorised)."""
    n = len(specs)
    canvas = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for k in range(max((len(s.shapes) for s in specs), default=0)):
        idx = np.array([i for i, s in enumerate(specs) if len(s.shapes) > k], np.int64)
        shapes = [specs[i].shapes[k] for i in idx]
        cy, cx = np.array([s.center for s in shapes], np.float32).T
        kind = np.array([SHAPES.index(s.shape) for s in shapes])
        color = np.array([COLORS.index(s.color) for s in shapes])
        sub = canvas[idx]
        _paint(sub, _masks(cy, cx, kind), color)
        canvas[idx] = sub
    # Noise everywhere (the colours leave room for it below 255).
    return canvas + _noise([s.noise_seed for s in specs], (IMAGE_SIZE, IMAGE_SIZE, 3))


def render_image(spec: ImageSpec) -> np.ndarray:
    """uint8 [32, 32, 3]."""
    return render_images([spec])[0]


def video_centers(spec: VideoSpec) -> np.ndarray:
    """float32 [NUM_FRAMES, 2]: the shape's centre (y, x) in each frame."""
    dy, dx = _MOTION[spec.direction]
    t = np.arange(NUM_FRAMES, dtype=np.float32) * spec.speed
    return np.stack([spec.y0 + dy * t, spec.x0 + dx * t], axis=1).astype(np.float32)


def render_videos(specs: Sequence[VideoSpec]) -> np.ndarray:
    """uint8 [N, 8, 32, 32, 3]: the videos of ``specs`` (vectorised over videos and frames)."""
    n = len(specs)
    if n == 0:
        return np.zeros((0, NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    centers = np.concatenate([video_centers(s) for s in specs])  # [N * F, 2]
    kind = np.repeat([SHAPES.index(s.shape) for s in specs], NUM_FRAMES)
    color = np.repeat([COLORS.index(s.color) for s in specs], NUM_FRAMES)
    canvas = np.zeros((n * NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    _paint(canvas, _masks(centers[:, 0], centers[:, 1], kind), color)
    canvas = canvas.reshape(n, NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3)
    return canvas + _noise([s.noise_seed for s in specs], (NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3))


def render_video(spec: VideoSpec) -> np.ndarray:
    """uint8 [8, 32, 32, 3]."""
    return render_videos([spec])[0]


def render_audio(spec: AudioSpec) -> np.ndarray:
    """int16 [spec.num_samples]: the clip at 16 kHz."""
    rng = np.random.default_rng(spec.noise_seed)
    wave = rng.normal(0.0, 0.01, spec.num_samples)
    tau = np.arange(spec.beep) / SAMPLE_RATE
    length = spec.beep / SAMPLE_RATE
    f_start, f_end = (r * spec.freq for r in SWEEP[spec.pattern])
    # Linear sweep: the phase is the integral of the frequency.
    phase = 2 * np.pi * (f_start * tau + (f_end - f_start) * tau * tau / (2 * length))
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(_FADE) / _FADE)
    envelope = np.ones(spec.beep)
    envelope[:_FADE], envelope[-_FADE:] = ramp, ramp[::-1]
    beep = spec.amplitude * envelope * np.sin(phase)
    for k in range(spec.count):
        start = spec.onset + k * (spec.beep + spec.gap)
        wave[start : start + spec.beep] += beep
    return np.round(np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)


# --- Records ----------------------------------------------------------------------------------


def records(
    split: str, seed: int = 0, num_examples: int | None = None, chunk: int = 1024
) -> Iterator[dict[str, Any]]:
    """The fixed-shape records of ``split`` (the TFDS builder's features), in order.

    Media are rendered ``chunk`` examples at a time; unused image slots, frames and
    samples are zero.
    """
    examples = generate_examples(split, seed, num_examples)
    for lo in range(0, len(examples), chunk):
        batch = examples[lo : lo + chunk]
        image_specs = [s for e in batch for s in e.images]
        images = iter(render_images(image_specs)) if image_specs else iter(())
        video_specs = [e.video for e in batch if e.video is not None]
        videos = iter(render_videos(video_specs))
        for e in batch:
            rec: dict[str, Any] = {
                "task": e.task,
                "prompt": e.prompt,
                "answer": e.answer,
                "images": np.zeros((MAX_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
                "num_images": np.int32(len(e.images)),
                "audio": np.zeros(MAX_AUDIO_SAMPLES, np.int16),
                "audio_samples": np.int32(0),
                "video": np.zeros((NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
                "num_frames": np.int32(0),
            }
            for i in range(len(e.images)):
                rec["images"][i] = next(images)
            if e.audio is not None:
                rec["audio"][: e.audio.num_samples] = render_audio(e.audio)
                rec["audio_samples"] = np.int32(e.audio.num_samples)
            if e.video is not None:
                rec["video"] = next(videos)
                rec["num_frames"] = np.int32(NUM_FRAMES)
            yield rec
