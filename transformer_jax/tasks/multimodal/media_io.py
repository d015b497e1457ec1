"""Reading real image, audio and video files into the arrays the multimodal model takes.

Every problem a user can cause (a missing, corrupt or unsupported file, an empty clip)
raises `MediaError` with one line naming the file, so no bad array ever reaches JAX.
Pillow, soundfile, imageio and PyAV are the `media` extra; they are imported lazily.

Policies:
- Images are padded to a centred black square (nothing is cropped away; the training
  images have black backgrounds), then resized with Pillow's antialiased bicubic filter.
  Transparent pixels (RGBA, LA, palette with transparency) are composited on black;
  grayscale and CMYK become RGB; 16-bit pixels are scaled to 8 bits; EXIF rotation is
  applied. An animated GIF gives its first frame.
- Audio is down-mixed to mono by averaging the channels, resampled to `sample_rate`
  with a polyphase filter (scipy.signal.resample_poly), clipped to [-1, 1]; a clip longer
  than `max_samples` keeps its first `max_samples` and logs a warning.
- A video (a file, or a folder of frame images sorted by name with numbers compared as
  numbers) gives `num_frames` frames at indices round(linspace(0, n - 1, num_frames)) of
  its n frames: uniform over the clip, first and last included, frames repeated when
  n < num_frames. A clip of fewer than 2 frames is an error.
"""

from __future__ import annotations

import logging
import math
import os
import re

import numpy as np

from transformer_jax.tasks.multimodal.media_config import SAMPLE_RATE
from transformer_jax.train.task import InputError

log = logging.getLogger(__name__)

IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP", "TIFF")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg")


class MediaError(InputError):
    """A media file that cannot be used (one line naming the file)."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"reading media needs {module}: pip install 'transformer_jax[media]'"
        ) from None


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise MediaError(f"{path}: no such file")
    if os.path.isdir(path):
        raise MediaError(f"{path}: is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise MediaError(f"{path}: permission denied")


def media_kind(path: str) -> str:
    """ "image", "audio" or "video" by the file's extension (a folder is a video of frames)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "video"
    ext = os.path.splitext(path)[1].lower()
    for kind, exts in (
        ("image", IMAGE_EXTENSIONS),
        ("audio", AUDIO_EXTENSIONS),
        ("video", VIDEO_EXTENSIONS),
    ):
        if ext in exts:
            return kind
    known = " ".join(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS + VIDEO_EXTENSIONS)
    raise MediaError(f"{path}: unknown media type {ext or '(no extension)'!r} (known: {known})")


# ---------------------------------------------------------------------------- images


def _to_rgb(img, path: str) -> np.ndarray:
    """A Pillow image of any supported mode -> uint8 [H, W, 3]."""
    mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)  # composite on black
        return np.round(rgb).astype(np.uint8)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale (mode "I" is taken to hold 16-bit values too).
        a = np.asarray(img).astype(np.float64)
        a = np.round(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
    if mode == "F":  # float pixels, taken to lie in [0, 1]
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        a = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as e:
        raise MediaError(f"{path}: cannot convert {mode} pixels to RGB ({_one_line(e)})") from None


def _fit_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Pad uint8 [H, W, 3] to a centred black square, then resize to [size, size, 3]."""
    Image = _require("PIL.Image")
    h, w = rgb.shape[:2]
    side = max(h, w)
    if h != w:
        square = np.zeros((side, side, 3), np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        square[top : top + h, left : left + w] = rgb
        rgb = square
    if side == size:
        return np.ascontiguousarray(rgb)
    out = Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.uint8)


def read_image(path, size: int) -> np.ndarray:
    """An image file -> uint8 [size, size, 3] (see the module docstring for the policy)."""
    Image = _require("PIL.Image")
    ImageOps = _require("PIL.ImageOps")
    if size <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    path = os.fspath(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            if img.format not in IMAGE_FORMATS:
                raise MediaError(
                    f"{path}: unsupported image format {img.format} "
                    f"(supported: {', '.join(IMAGE_FORMATS)})"
                )
            img.seek(0)  # first frame of an animation
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.width == 0 or img.height == 0:
                raise MediaError(f"{path}: empty image ({img.width}x{img.height})")
            rgb = _to_rgb(img, path)
    except MediaError:
        raise
    except Image.UnidentifiedImageError:
        raise MediaError(f"{path}: not an image file (cannot identify image)") from None
    except Image.DecompressionBombError as e:
        raise MediaError(f"{path}: image too large ({_one_line(e)})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        # Truncated or corrupt data surfaces as OSError/SyntaxError from the decoders.
        raise MediaError(f"{path}: corrupt image ({_one_line(e)})") from None
    return _fit_square(rgb, size)


# ----------------------------------------------------------------------------- audio


def read_audio(path, sample_rate: int = SAMPLE_RATE, max_samples: int | None = None) -> np.ndarray:
    """An audio file -> float32 [S] in [-1, 1], mono, at `sample_rate` Hz."""
    sf = _require("soundfile")
    path = os.fspath(path)
    _check_file(path)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError, TypeError) as e:
        raise MediaError(f"{path}: not a readable audio file ({_one_line(e)})") from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise MediaError(f"{path}: empty audio (no samples)")
    if not np.all(np.isfinite(data)):
        raise MediaError(f"{path}: audio holds NaN or infinite samples")
    wave = data.mean(axis=1, dtype=np.float32)  # down-mix: average of the channels
    if rate != sample_rate:
        from scipy.signal import resample_poly

        g = math.gcd(int(rate), int(sample_rate))
        wave = resample_poly(wave, sample_rate // g, int(rate) // g).astype(np.float32)
        if wave.size == 0:
            raise MediaError(f"{path}: empty audio after resampling {rate} Hz -> {sample_rate} Hz")
    wave = np.clip(wave, -1.0, 1.0).astype(np.float32)
    if max_samples is not None and wave.size > max_samples:
        log.warning(
            "%s: %.2f s of audio, keeping the first %.2f s",
            path,
            wave.size / sample_rate,
            max_samples / sample_rate,
        )
        wave = wave[:max_samples]
    return wave


def write_wav(path, wave, sample_rate: int = SAMPLE_RATE) -> str:
    """Write float [S] or [S, C] in [-1, 1] as a 16-bit PCM WAV file; returns the path."""
    sf = _require("soundfile")
    path = os.fspath(path)
    sf.write(path, np.clip(np.asarray(wave, np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16")
    return path


# ----------------------------------------------------------------------------- video


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _frame_indices(n: int, num_frames: int, path: str) -> np.ndarray:
    if n == 0:
        raise MediaError(f"{path}: empty video (no frames)")
    if n == 1:
        raise MediaError(f"{path}: one frame: a video needs at least 2")
    return np.round(np.linspace(0, n - 1, num_frames)).astype(np.int64)


def _read_frame_folder(path: str, num_frames: int, size: int) -> np.ndarray:
    names = sorted(
        (
            f
            for f in os.listdir(path)
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        ),
        key=_natural_key,
    )
    idx = _frame_indices(len(names), num_frames, path)
    cache: dict[int, np.ndarray] = {}
    for i in idx:
        if i not in cache:
            cache[i] = read_image(os.path.join(path, names[i]), size)
    return np.stack([cache[i] for i in idx])


def _count_frames(path: str) -> int:
    """The number of video frames: the container's count, else the packets of the stream."""
    av = _require("av")
    with av.open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size)


def _decode_frames(path: str, want: np.ndarray, size: int) -> tuple[dict[int, np.ndarray], int]:
    """Decode up to the last wanted index; returns the wanted frames and the frames decoded."""
    iio = _require("imageio.v3")
    wanted = set(want.tolist())
    last = int(want.max())
    kept: dict[int, np.ndarray] = {}
    decoded = 0
    for i, frame in enumerate(iio.imiter(path, plugin="pyav")):
        decoded = i + 1
        if i in wanted:
            frame = np.asarray(frame)
            if frame.ndim == 2:
                frame = np.repeat(frame[..., None], 3, axis=-1)
            kept[i] = _fit_square(np.ascontiguousarray(frame[..., :3], dtype=np.uint8), size)
        if i >= last:
            break
    return kept, decoded


def read_video(path, num_frames: int, size: int) -> np.ndarray:
    """A video file or a folder of frame images -> uint8 [num_frames, size, size, 3]."""
    if num_frames <= 0 or size <= 0:
        raise ValueError(f"num_frames and size must be positive, got {num_frames}, {size}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(f"{path}: no such file")
    if os.path.isdir(path):
        return _read_frame_folder(path, num_frames, size)
    _check_file(path)
    av = _require("av")
    try:
        n = _count_frames(path)
        idx = _frame_indices(n, num_frames, path)
        kept, decoded = _decode_frames(path, idx, size)
        if decoded <= idx.max():
            # The container promised more frames than decode: sample over what decodes.
            idx = _frame_indices(decoded, num_frames, path)
            kept, _ = _decode_frames(path, idx, size)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError, KeyError, IndexError) as e:
        raise MediaError(f"{path}: not a readable video file ({_one_line(e)})") from None
    return np.stack([kept[int(i)] for i in idx])


def write_video(path, frames, fps: float = 10.0) -> str:
    """Write uint8 [F, H, W, 3] as a video (for tests and demos); returns the path.

    .gif goes through Pillow (which merges identical consecutive frames); anything else
    (.mp4, ...) through PyAV with H.264 when this FFmpeg has libx264, else MPEG-4 Part 2.
    """
    iio = _require("imageio.v3")
    av = _require("av")
    path = os.fspath(path)
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.shape}")
    if path.lower().endswith(".gif"):
        iio.imwrite(path, frames, duration=1000.0 / fps, loop=0)
        return path
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:  # 4:2:0 chroma needs even sides: pad with black
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    iio.imwrite(path, frames, plugin="pyav", codec=codec, fps=fps)
    return path
