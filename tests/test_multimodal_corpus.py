"""Tests of the synthetic multimodal corpus and its TFDS builder ``multimodal_corpus``."""

import collections
import hashlib
import re

import numpy as np
import pytest

from transformer_jax.data import catalog
from transformer_jax.tasks.multimodal import corpus_mm as corpus
from transformer_jax.tasks.multimodal import media_config


@pytest.fixture(scope="module")
def examples() -> dict[str, list[corpus.Example]]:
    return {s: corpus.generate_examples(s) for s in corpus.SPLITS}


def _digest(rec) -> str:
    h = hashlib.sha256()
    for key in ("task", "prompt", "answer"):
        value = rec[key]
        h.update(value if isinstance(value, bytes) else value.encode())
        h.update(b"\0")
    for key in ("images", "audio", "video"):
        h.update(np.asarray(rec[key]).tobytes())
    for key in ("num_images", "audio_samples", "num_frames"):
        h.update(np.int32(rec[key]).tobytes())
    return h.hexdigest()


def test_sizes_mix_and_determinism(examples):
    assert corpus.SAMPLE_RATE == media_config.SAMPLE_RATE
    assert {s: len(x) for s, x in examples.items()} == corpus.SPLIT_SIZES
    assert corpus.SPLIT_SIZES == {"train": 25_000, "validation": 1_200, "test": 1_200}
    for split, xs in examples.items():
        assert collections.Counter(e.task for e in xs) == corpus.TASK_SIZES[split]
        # A prefix (the "tiny" config) keeps the mix: the tasks are shuffled together.
        head = collections.Counter(e.task for e in xs[: len(xs) // 10])
        for task, n in corpus.TASK_SIZES[split].items():
            assert abs(head[task] / (len(xs) // 10) - n / len(xs)) < 0.06, (split, task)
    first = [_digest(r) for r in corpus.records("validation", num_examples=60, chunk=16)]
    corpus._examples.cache_clear()
    again = [_digest(r) for r in corpus.records("validation", num_examples=60)]
    assert first == again and len(set(first)) == 60
    assert [_digest(r) for r in corpus.records("validation", seed=1, num_examples=60)] != first
    assert corpus.generate_examples("train", num_examples=5) == examples["train"][:5]
    with pytest.raises(ValueError, match="bogus"):
        corpus.generate_examples("bogus")


def test_relations_asked_of_three_shapes_in_training_only(examples):
    def shape_counts(xs):
        return collections.Counter(
            len(e.images[0].shapes)
            for e in xs
            if re.fullmatch(r"is the \w+ (above or below|left or right of) the \w+\?", e.prompt)
        )

    train = shape_counts(examples["train"])
    assert set(train) == {2, 3} and min(train.values()) > 300
    for split in ("validation", "test"):
        assert set(shape_counts(examples[split])) == {2}, split


def test_held_out_combinations_are_disjoint(examples):
    scenes = {s: {i.signature for e in xs for i in e.images} for s, xs in examples.items()}
    assert not scenes["train"] & scenes["validation"]
    assert not scenes["train"] & scenes["test"]
    assert not scenes["validation"] & scenes["test"]
    for split, signatures in scenes.items():
        assert all(corpus.scene_split(sig) == split for sig in signatures)
    audio = {s: {e.audio.triple for e in xs if e.audio} for s, xs in examples.items()}
    video = {s: {e.video.triple for e in xs if e.video} for s, xs in examples.items()}
    for triples, held_out in ((audio, corpus.held_out_audio()), (video, corpus.held_out_video())):
        assert not triples["train"] & held_out
        assert triples["validation"] | triples["test"] == held_out
    # Every single attribute value still occurs in train.
    train = examples["train"]
    parts = {(x.color, x.shape, x.cell) for e in train for i in e.images for x in i.shapes}
    assert {p[0] for p in parts} == set(corpus.COLORS)
    assert {p[1] for p in parts} == set(corpus.SHAPES)
    assert {p[2] for p in parts} == set(range(corpus.NUM_CELLS))
    assert {c for c, _, _ in audio["train"]} == {1, 2, 3}
    assert {p for _, p, _ in audio["train"]} == set(corpus.PITCHES)
    assert {p for _, _, p in audio["train"]} == set(corpus.PATTERNS)
    assert {d for _, _, d in video["train"]} == set(corpus.DIRECTIONS)
    # Validation and test captions use only words seen in train.
    words = {s: {w for e in xs for w in re.findall(r"\w+", e.answer)} for s, xs in examples.items()}
    assert words["validation"] | words["test"] <= words["train"]


def test_answers_and_prompts_use_a_small_vocabulary(examples):
    attributes = set(corpus.COLORS + corpus.SHAPES + corpus.DIRECTIONS + corpus.PITCHES)
    attributes |= set(corpus.PATTERNS + corpus.COUNT_WORDS) | {"above", "below"}
    caption_words = attributes | {"a", "of", "and", "moves", "beep", "beeps"}
    phrase = r"a (red|green|blue|yellow) (circle|square|triangle)"
    image_caption = re.compile(
        rf"{phrase}|{phrase} (above|below|left of|right of) {phrase}|{phrase}, {phrase} and {phrase}"
    )
    audio_caption = re.compile(r"one (low|medium|high) (steady|rising|falling) beep|"
                               r"(two|three) (low|medium|high) (steady|rising|falling) beeps")  # fmt: skip
    video_caption = re.compile(rf"{phrase} moves (left|right|up|down)")
    captions = {"image_caption": image_caption, "audio_caption": audio_caption}
    captions["video_caption"] = video_caption
    prompt_words = set()
    for xs in examples.values():
        for e in xs:
            if e.task.endswith("_qa"):
                assert e.answer in attributes, e
                assert e.prompt.endswith("?")
                prompt_words |= set(re.findall(r"\w+", e.prompt))
            else:
                assert e.prompt == ""
                assert set(re.findall(r"\w+", e.answer)) <= caption_words, e
                patterns = [captions[e.task]] if e.task in captions else list(captions.values())
                assert any(p.fullmatch(e.answer) for p in patterns), e
    assert len(prompt_words) < 45, sorted(prompt_words)


def test_captions_and_questions_follow_the_scene():
    red_circle = corpus.Shape("circle", "red", 0)
    blue_square = corpus.Shape("square", "blue", 8)  # diagonal: vertical on a tie
    assert corpus.image_caption(corpus.ImageSpec((blue_square, red_circle))) == (
        "a red circle above a blue square"
    )
    green_triangle = corpus.Shape("triangle", "green", 3)  # row 1, col 0
    assert corpus.image_caption(
        corpus.ImageSpec((green_triangle, corpus.Shape("circle", "red", 5)))
    ) == ("a red circle right of a green triangle")
    three = corpus.ImageSpec((blue_square, corpus.Shape("circle", "red", 4), green_triangle))
    assert corpus.image_caption(three) == "a green triangle, a red circle and a blue square"
    for e in corpus.generate_examples("train", num_examples=3000):
        if e.task != "image_qa":
            continue
        spec = e.images[-1] if "second image" in e.prompt else e.images[0]
        by_shape = {s.shape: s for s in spec.shapes}
        if m := re.fullmatch(r"what color is the (\w+)( in the \w+ image)?\?", e.prompt):
            assert by_shape[m.group(1)].color == e.answer
        elif m := re.fullmatch(
            r"is the (\w+) (above or below|left or right of) the (\w+)\?", e.prompt
        ):
            assert (
                corpus.relation(by_shape[m.group(1)], by_shape[m.group(3)]).split()[0] == e.answer
            )
        elif e.prompt == "how many shapes in total?":
            assert corpus.COUNT_WORDS.index(e.answer) + 1 == sum(len(i.shapes) for i in e.images)


def _nearest_color(rgb: np.ndarray) -> str:
    table = np.array([corpus.COLOR_RGB[c] for c in corpus.COLORS], np.float32)
    return corpus.COLORS[int(np.argmin(((table - rgb.astype(np.float32)) ** 2).sum(-1)))]


def test_images_show_the_stated_colours_at_the_stated_cells(examples):
    specs = [i for e in examples["validation"] + examples["train"][:1500] for i in e.images]
    images = corpus.render_images(specs)
    assert images.shape == (len(specs), 32, 32, 3) and images.dtype == np.uint8
    # The cell of each pixel (by its centre): every shape lies inside its own cell.
    band = ((np.arange(32) + 0.5) // (32 / 3)).astype(int)
    cell_of = band[:, None] * 3 + band[None, :]
    checked = 0
    for spec, image in zip(specs, images):
        occupied = {}
        for s in spec.shapes:
            cy, cx = s.center
            assert _nearest_color(image[int(cy), int(cx)]) == s.color, spec
            occupied[s.cell] = s
        bright = image.max(-1) > 100
        for cell in range(corpus.NUM_CELLS):
            here = bright & (cell_of == cell)
            if cell in occupied:
                assert 30 <= here.sum() <= 70, (spec, cell)  # about a 9 px wide shape
                assert {_nearest_color(p) for p in image[here]} == {occupied[cell].color}
            else:
                assert not here.any() and image[cell_of == cell].max() < 16, (spec, cell)
        checked += 1
    assert checked > 1000
    np.testing.assert_array_equal(corpus.render_image(specs[3]), images[3])


def _beeps(wave: np.ndarray, amplitude: float) -> list[tuple[int, int]]:
    """(start, end) sample of each run where the 80-sample block peak exceeds half the amplitude."""
    n = len(wave) // 80 * 80
    loud = np.abs(wave[:n].astype(np.float32)).reshape(-1, 80).max(-1) > 0.5 * amplitude * 32767
    edges = np.diff(np.concatenate([[0], loud.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1) * 80, np.flatnonzero(edges == -1) * 80))


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * corpus.SAMPLE_RATE / len(x)


def test_audio_beeps_pitch_and_pattern_match_the_labels(examples):
    specs = [e.audio for e in examples["train"][:3000] + examples["test"] if e.audio]
    assert len(specs) > 500
    for spec in specs:
        wave = corpus.render_audio(spec)
        assert wave.dtype == np.int16 and len(wave) == spec.num_samples
        assert corpus.MIN_AUDIO_SAMPLES <= len(wave) <= corpus.MAX_AUDIO_SAMPLES
        beeps = _beeps(wave, spec.amplitude)
        assert len(beeps) == spec.count, spec
        start, end = beeps[0]
        first = wave[start:end].astype(np.float32)
        hz = _peak_hz(first)
        assert {"low": hz < 450, "medium": 450 < hz < 1050, "high": hz > 1050}[spec.pitch], (
            spec,
            hz,
        )
        half = len(first) // 2
        rise = _peak_hz(first[half:]) / _peak_hz(first[:half])
        expected = {"steady": 0.93 < rise < 1.07, "rising": rise > 1.1, "falling": rise < 0.9}
        assert expected[spec.pattern], (spec, rise)


def test_video_moves_in_the_stated_direction(examples):
    specs = [e.video for e in examples["train"][:3000] + examples["test"] if e.video]
    videos = corpus.render_videos(specs)
    assert videos.shape == (len(specs), 8, 32, 32, 3) and videos.dtype == np.uint8
    unit = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
    for spec, video in zip(specs, videos):
        bright = video.max(-1) > 100  # [F, H, W]
        sizes = bright.sum((1, 2))
        assert sizes.min() > 25 and sizes.max() - sizes.min() < 15, spec  # stays inside
        ys, xs = np.mgrid[:32, :32]
        cy = (bright * ys).sum((1, 2)) / sizes
        cx = (bright * xs).sum((1, 2)) / sizes
        move = np.array([cy[-1] - cy[0], cx[-1] - cx[0]])
        assert np.dot(move, unit[spec.direction]) > 12, (spec, move)  # 2-3 px per frame
        assert abs(move @ unit[spec.direction][::-1]) < 2, (spec, move)  # nothing across it
        assert {_nearest_color(p) for p in video[bright]} == {spec.color}
    np.testing.assert_array_equal(corpus.render_video(specs[0]), videos[0])


def test_builder_prepares_and_reads_back(tmp_path):
    data_dir = str(tmp_path / "tfds")
    train = catalog.data_source("multimodal_corpus/tiny", "train", data_dir)
    assert len(train) == 2_400
    tasks = collections.Counter(r["task"].decode() for r in train)
    assert set(tasks) == set(corpus.TASKS) and tasks["image_qa"] > tasks["audio_qa"]
    validation = catalog.data_source("multimodal_corpus/tiny", "validation", data_dir)
    assert len(validation) == 120
    shapes = {
        "images": ((2, 32, 32, 3), np.uint8),
        "audio": ((12_000,), np.int16),
        "video": ((8, 32, 32, 3), np.uint8),
    }
    got = []
    for r in validation:
        for key, (shape, dtype) in shapes.items():
            assert r[key].shape == shape and r[key].dtype == dtype, key
        n_images, n_samples = int(r["num_images"]), int(r["audio_samples"])
        assert n_images in (0, 1, 2) and not r["images"][n_images:].any()
        assert n_samples == 0 or 9_000 <= n_samples <= 12_000
        assert not r["audio"][n_samples:].any() and int(r["num_frames"]) in (0, 8)
        got.append(_digest(r))
    # The very records the generator makes (TFDS shuffles their order).
    assert sorted(got) == sorted(_digest(r) for r in corpus.records("validation", num_examples=120))
    b = catalog.builder("multimodal_corpus/tiny", data_dir)
    assert type(b).__module__ == "transformer_jax.tasks.multimodal.dataset"
    assert [c.name for c in type(b).BUILDER_CONFIGS] == ["full", "tiny"]
