"""Real-file media readers (images, audio, video) and the PNG sample sheet."""

import numpy as np
import pytest

from transformer_jax.tasks.multimodal import media_io
from transformer_jax.tasks.multimodal.media_io import (
    MediaError,
    media_kind,
    read_audio,
    read_image,
    read_video,
    write_video,
    write_wav,
)
from transformer_jax.tasks.multimodal.sheet import sample_sheet
from transformer_jax.train.task import InputError

Image = pytest.importorskip("PIL.Image")
sf = pytest.importorskip("soundfile")


def _one_line_error(exc_info, name):
    msg = str(exc_info.value)
    assert "\n" not in msg
    assert name in msg
    return msg


# ----------------------------------------------------------------------------- images


def test_png_and_jpeg_rgb(tmp_path):
    a = np.zeros((20, 20, 3), np.uint8)
    a[..., 2] = 200  # blue
    Image.fromarray(a).save(tmp_path / "b.png")
    Image.fromarray(a).save(tmp_path / "b.jpg", quality=95)
    for name in ("b.png", "b.jpg"):
        x = read_image(tmp_path / name, 16)
        assert x.shape == (16, 16, 3) and x.dtype == np.uint8
        assert abs(int(x[8, 8, 2]) - 200) <= 4 and x[8, 8, 0] <= 4 and x[8, 8, 1] <= 4


def test_rgba_is_composited_on_black(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 0] = 255  # pure red
    a[:4, ..., 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "r.png")
    x = read_image(tmp_path / "r.png", 8)
    assert x.shape == (8, 8, 3)
    np.testing.assert_array_equal(x[1, 4], [255, 0, 0])
    np.testing.assert_array_equal(x[6, 4], [0, 0, 0])


def test_grayscale_and_16bit(tmp_path):
    Image.fromarray(np.full((10, 10), 128, np.uint8), "L").save(tmp_path / "g.png")
    x = read_image(tmp_path / "g.png", 10)
    np.testing.assert_array_equal(x[5, 5], [128, 128, 128])
    Image.fromarray(np.full((10, 10), 65535, np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    y = read_image(tmp_path / "g16.png", 10)
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y[5, 5], [255, 255, 255])


def test_palette_with_transparency_and_cmyk(tmp_path):
    p = Image.new("P", (6, 6), 1)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # index 1 = green
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    x = read_image(tmp_path / "p.png", 6)
    np.testing.assert_array_equal(x[3, 3], [0, 255, 0])
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # red in CMYK
    y = read_image(tmp_path / "c.jpg", 6)
    assert y[3, 3, 0] > 200 and y[3, 3, 1] < 60 and y[3, 3, 2] < 60


def test_non_square_is_padded_black_and_resized(tmp_path):
    Image.fromarray(np.full((10, 40, 3), 255, np.uint8)).save(tmp_path / "wide.png")
    x = read_image(tmp_path / "wide.png", 20)
    assert x.shape == (20, 20, 3)
    assert x[10, 10].min() > 240  # the image band in the middle
    assert x[0, 10].max() == 0 and x[19, 10].max() == 0  # black padding above and below


def test_not_an_image_and_missing_file(tmp_path):
    (tmp_path / "x.png").write_text("hello, not pixels\n")
    with pytest.raises(MediaError) as e:
        read_image(tmp_path / "x.png", 8)
    assert "not an image" in _one_line_error(e, "x.png")
    assert isinstance(e.value, InputError)
    with pytest.raises(MediaError) as e:
        read_image(tmp_path / "missing.png", 8)
    assert "no such file" in _one_line_error(e, "missing.png")


def test_truncated_image(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        tmp_path / "t.png"
    )
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as e:
        read_image(tmp_path / "t.png", 8)
    _one_line_error(e, "t.png")


def test_media_kind(tmp_path):
    assert media_kind("a.JPG") == "image"
    assert media_kind("a.flac") == "audio"
    assert media_kind("a.mp4") == "video"
    assert media_kind(tmp_path) == "video"
    with pytest.raises(MediaError) as e:
        media_kind("notes.txt")
    _one_line_error(e, "notes.txt")


# ----------------------------------------------------------------------------- audio


def test_stereo_44k_sine_resampled_to_16k_mono(tmp_path):
    rate, seconds = 44_100, 0.5
    t = np.arange(int(rate * seconds)) / rate
    sine = 0.5 * np.sin(2 * np.pi * 1000 * t)
    stereo = np.stack([sine, sine], axis=1)
    write_wav(tmp_path / "s.wav", stereo, rate)
    w = read_audio(tmp_path / "s.wav")
    assert w.dtype == np.float32 and w.ndim == 1
    assert w.shape[0] == 8000
    assert np.abs(w).max() <= 1.0
    spectrum = np.abs(np.fft.rfft(w))
    peak_hz = np.argmax(spectrum) * 16_000 / w.shape[0]
    assert abs(peak_hz - 1000) <= 4
    assert 0.4 < np.abs(w[100:-100]).max() < 0.6


def test_downmix_averages_channels(tmp_path):
    data = np.stack([np.full(1600, 0.5), np.full(1600, -0.1)], axis=1)
    write_wav(tmp_path / "d.wav", data, 16_000)
    w = read_audio(tmp_path / "d.wav")
    np.testing.assert_allclose(w, 0.2, atol=1e-3)


def test_long_audio_keeps_the_start(tmp_path, caplog):
    write_wav(tmp_path / "l.wav", np.linspace(-0.5, 0.5, 16_000), 16_000)
    with caplog.at_level("WARNING"):
        w = read_audio(tmp_path / "l.wav", max_samples=4000)
    assert w.shape == (4000,)
    assert w[0] < -0.49
    assert "l.wav" in caplog.text


def test_empty_corrupt_and_missing_audio(tmp_path):
    sf.write(tmp_path / "e.wav", np.zeros((0,), np.float32), 16_000)
    with pytest.raises(MediaError) as e:
        read_audio(tmp_path / "e.wav")
    assert "empty" in _one_line_error(e, "e.wav")
    (tmp_path / "c.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(MediaError) as e:
        read_audio(tmp_path / "c.wav")
    _one_line_error(e, "c.wav")
    with pytest.raises(MediaError) as e:
        read_audio(tmp_path / "gone.wav")
    assert "no such file" in _one_line_error(e, "gone.wav")


# ----------------------------------------------------------------------------- video


def _moving_square(n=12, size=32):
    frames = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i, 12:20, 2 * i : 2 * i + 8] = 255
    return frames


def _square_x(frame):
    cols = np.nonzero(frame[..., 0].max(axis=0) > 128)[0]
    return cols.mean()


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif"])
def test_video_file_sampled_uniformly(tmp_path, name):
    path = write_video(tmp_path / name, _moving_square(), fps=10)
    v = read_video(path, num_frames=8, size=32)
    assert v.shape == (8, 32, 32, 3) and v.dtype == np.uint8
    xs = [_square_x(f) for f in v]
    # indices round(linspace(0, 11, 8)) = 0 2 3 5 6 8 9 11: x = 2 * index + 3.5
    expected = 2 * np.round(np.linspace(0, 11, 8)) + 3.5
    np.testing.assert_allclose(xs, expected, atol=1.0)


def test_video_frame_folder_in_natural_order(tmp_path):
    frames = _moving_square(n=12)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"frame_{i}.png")  # frame_10 after frame_9
    (folder / "notes.txt").write_text("ignored")
    v = read_video(folder, num_frames=4, size=16)
    assert v.shape == (4, 16, 16, 3)
    xs = [_square_x(f) for f in v]
    assert all(a < b for a, b in zip(xs, xs[1:]))
    assert xs[-1] > 12  # the last frame (index 11), not frame_9


def test_one_frame_and_empty_videos(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(_moving_square(n=1)[0]).save(folder / "0.png")
    with pytest.raises(MediaError) as e:
        read_video(folder, 8, 16)
    assert "at least 2" in _one_line_error(e, "one")
    (tmp_path / "none").mkdir()
    with pytest.raises(MediaError) as e:
        read_video(tmp_path / "none", 8, 16)
    assert "empty video" in _one_line_error(e, "none")
    path = write_video(tmp_path / "single.mp4", _moving_square(n=1), fps=10)
    with pytest.raises(MediaError) as e:
        read_video(path, 8, 16)
    assert "at least 2" in _one_line_error(e, "single.mp4")


def test_unreadable_video(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(MediaError) as e:
        read_video(tmp_path / "bad.mp4", 8, 16)
    _one_line_error(e, "bad.mp4")
    with pytest.raises(MediaError) as e:
        read_video(tmp_path / "nothing.mp4", 8, 16)
    assert "no such file" in _one_line_error(e, "nothing.mp4")


# ----------------------------------------------------------------------------- sheet


def test_sample_sheet_png(tmp_path):
    rng = np.random.default_rng(0)
    examples = [
        {
            "task": "image_qa",
            "prompt": "what colour is the square?",
            "reference": "red",
            "hypothesis": "red",
            "images": rng.integers(0, 255, (2, 32, 32, 3), np.uint8),
        },
        {
            "task": "audio_caption",
            "prompt": "",
            "reference": "a rising tone",
            "hypothesis": "a falling tone $x$",
            "audio_mel": rng.normal(size=(75, 80)).astype(np.float32),
        },
        {
            "task": "video_caption",
            "prompt": "",
            "reference": "a square moves right",
            "hypothesis": "a square moves right",
            "video": _moving_square(n=8),
        },
        {"task": "text", "prompt": "2 + 2", "reference": "4", "hypothesis": "5"},
    ]
    out = sample_sheet(examples, tmp_path / "sub" / "sheet.png")
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.width > 200 and img.height > 200
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10
    # Both answer colours appear: pure-ish green and red text pixels.
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    assert np.any((g > 100) & (r < 60) & (b < 60))
    assert np.any((r > 200) & (g < 60) & (b < 60))


def test_sample_sheet_max_rows(tmp_path):
    ex = {"task": "text", "prompt": "", "reference": "a", "hypothesis": "a"}
    small = sample_sheet([ex] * 2, tmp_path / "a.png")
    capped = sample_sheet([ex] * 30, tmp_path / "b.png", max_rows=3)
    with Image.open(small) as a, Image.open(capped) as b:
        assert b.height > a.height
        assert b.height < 2 * a.height


def test_missing_media_package_message(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *args):
        if name == "soundfile":
            raise ImportError("No module named soundfile")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ImportError, match=r"transformer_jax\[media\]"):
        media_io.read_audio("whatever.wav")


@pytest.mark.parametrize("ext", ["bmp", "gif", "webp", "tif"])
def test_other_formats(tmp_path, ext):
    a = np.zeros((12, 12, 3), np.uint8)
    a[..., 1] = 255  # green
    Image.fromarray(a).save(tmp_path / f"g.{ext}", **({"lossless": True} if ext == "webp" else {}))
    x = read_image(tmp_path / f"g.{ext}", 12)
    assert x.shape == (12, 12, 3)
    assert x[6, 6, 1] > 240 and x[6, 6, 0] < 15 and x[6, 6, 2] < 15


def test_unsupported_image_format(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.ppm")
    with pytest.raises(MediaError) as e:
        read_image(tmp_path / "a.ppm", 4)
    assert "unsupported image format" in _one_line_error(e, "a.ppm")
