"""The multimodal pipeline as a user meets it: `tjax train --config multimodal_tiny`,
`tjax describe` on image, audio and video files written from held-out test examples
(PNG, WAV, MP4, a folder of frames; RGBA, stereo 44.1 kHz), bad files, `tjax eval` with
its sample sheet, and the Python pipeline."""

import json
import os
import subprocess
import time

import numpy as np
import pytest
from helpers import read_metrics, subprocess_env, tjax_executable

from transformer_jax.data import catalog
from transformer_jax.tasks.multimodal.data import canonical

pytestmark = pytest.mark.slow

STEPS = 400  # of multimodal_tiny's 3,400, to spare CI time; the README's figures are the full run's


def _tjax(args, env, check=True, timeout=1200):
    proc = subprocess.run(
        [tjax_executable(), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = subprocess_env(tmp_path_factory)
    e.pop("XLA_FLAGS", None)  # one CPU device, as a user's run has
    e["TFDS_DATA_DIR"] = str(tmp_path_factory.getbasetemp() / "tfds_mm")
    return e


@pytest.fixture(scope="module")
def mm_run(tmp_path_factory, env):
    workdir = tmp_path_factory.mktemp("mm") / "run"
    start = time.perf_counter()
    _tjax(
        [
            "train", "--config", "multimodal_tiny", "--workdir", str(workdir),
            f"--config.train.num_steps={STEPS}", f"--config.train.eval_every={STEPS}",
            f"--config.train.checkpoint_every={STEPS}", "--config.generate.eval_examples=240",
        ],
        env,
    )  # fmt: skip
    return str(workdir), time.perf_counter() - start


@pytest.fixture(scope="module")
def test_examples(env):
    source = catalog.data_source("multimodal_corpus", "test", env["TFDS_DATA_DIR"])
    out: dict[str, list] = {}
    for i in range(len(source)):
        ex = canonical(source[i], "corpus")
        out.setdefault(ex["task"], []).append(ex)
    return out


def test_training_learns_every_medium(mm_run):
    workdir, seconds = mm_run
    evals = [r for r in read_metrics(workdir) if "validation/answer_match" in r]
    last = evals[-1]
    print(f"multimodal_tiny ({STEPS} steps): {seconds:.0f} s; {json.dumps(last)}")
    # Chance is about 1/3 per question; a short run is already above it (the README
    # gives the full run's figures).
    assert last["validation/image_qa_match"] > 0.45, last
    assert last["validation/audio_qa_match"] > 0.45, last
    assert last["validation/video_qa_match"] > 0.35, last
    assert last["validation/image_caption_bleu"] > 15, last


VOCAB = {
    "red", "green", "blue", "yellow", "circle", "square", "triangle", "one", "two", "three",
    "four", "five", "six", "above", "below", "left", "right", "up", "down", "high", "medium",
    "low", "rising", "falling", "steady",
}  # fmt: skip


def refs_of(*groups):
    return [ex for group in groups for ex in group]


def _png(path, ex, mode="RGB"):
    from PIL import Image

    img = Image.fromarray(np.asarray(ex["images"][0], np.uint8))
    if mode == "RGBA":
        img = img.convert("RGBA")
    img.save(path + ".png")
    return path + ".png"


def _describe(env, workdir, *args):
    return _tjax(["describe", "--workdir", workdir, *args], env, check=False)


def _share_right(outputs, examples):
    return np.mean([o == ex["answer"] for o, ex in zip(outputs, examples)])


def test_describe_answers_questions_about_files(mm_run, env, test_examples, tmp_path):
    """PNG (RGB and RGBA), WAV (16 kHz mono and 44.1 kHz stereo), MP4 and a folder of
    frames, written from held-out examples: answered by the pipeline from the files, and
    by `tjax describe` once per medium."""
    import soundfile
    from scipy.signal import resample_poly

    import transformer_jax
    from transformer_jax.tasks.multimodal import media_io

    workdir, _ = mm_run
    pipe = transformer_jax.pipeline("image-text-to-text", workdir=workdir)
    n = 6
    images = [ex for ex in test_examples["image_qa"] if int(ex["num_images"]) == 1][:n]
    clips = test_examples["audio_qa"][:n]
    videos = test_examples["video_qa"][:n]
    requests, variants = [], []
    for i, ex in enumerate(images):
        rgb = _png(str(tmp_path / f"img{i}"), ex)
        rgba = _png(str(tmp_path / f"img{i}a"), ex, "RGBA")
        requests.append({"text": ex["prompt"], "images": [rgb]})
        variants.append({"text": ex["prompt"], "images": [rgba]})
    for i, ex in enumerate(clips):
        wave = np.asarray(ex["audio"])[: int(ex["audio_samples"])].astype(np.float32) / 32768
        mono = media_io.write_wav(str(tmp_path / f"a{i}.wav"), wave, 16000)
        stereo = str(tmp_path / f"a{i}s.wav")
        wide = resample_poly(wave, 441, 160)
        soundfile.write(stereo, np.stack([wide, wide], 1), 44100)
        requests.append({"text": ex["prompt"], "audio": mono})
        variants.append({"text": ex["prompt"], "audio": stereo})
    for i, ex in enumerate(videos):
        frames = np.asarray(ex["video"])[: int(ex["num_frames"])]
        mp4 = media_io.write_video(str(tmp_path / f"v{i}.mp4"), frames, fps=8)
        folder = tmp_path / f"frames{i}"
        folder.mkdir()
        for j, f in enumerate(frames):
            _png(str(folder / f"frame_{j}"), {"images": f[None]})
        requests.append({"text": ex["prompt"], "video": str(folder)})
        variants.append({"text": ex["prompt"], "video": mp4})
    arrays = []
    for ex in refs_of(images, clips, videos):
        item = {"text": ex["prompt"]}
        if int(ex.get("num_images", 0)):
            item["images"] = [np.asarray(ex["images"][0])]
        if int(ex.get("audio_samples", 0)):
            item["audio"] = np.asarray(ex["audio"])[: int(ex["audio_samples"])] / 32768.0
        if int(ex.get("num_frames", 0)):
            item["video"] = np.asarray(ex["video"])[: int(ex["num_frames"])]
        arrays.append(item)
    from_arrays = [o[0]["generated_text"] for o in pipe(arrays)]
    got = [o[0]["generated_text"] for o in pipe(requests)]
    other = [o[0]["generated_text"] for o in pipe(variants)]
    refs = refs_of(images, clips, videos)
    print("answers", list(zip(got, other, [e["answer"] for e in refs])))
    # Lossless files (PNG, opaque RGBA, 16-bit WAV, PNG frames) answer as the arrays do.
    assert got == from_arrays
    assert other[:n] == from_arrays[:n]
    # Resampled stereo audio and compressed MP4 are close to, not equal to, the originals.
    assert np.mean([a == b for a, b in zip(other[n:], from_arrays[n:])]) >= 0.6
    # Answers are words of the corpus's answer vocabulary, not fragments.
    assert sum(a in VOCAB for a in got) >= 0.8 * len(got), got
    for request in (variants[0], variants[n], variants[2 * n]):
        media = [a for key in ("images", "audio", "video") if key in request
                 for a in (["--image", request["images"][0]] if key == "images"
                           else [f"--{key}", request[key]])]  # fmt: skip
        proc = _describe(env, workdir, *media, request["text"], "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout) == pipe(request)


def test_describe_refuses_bad_inputs_in_one_line(mm_run, env, tmp_path):
    workdir, _ = mm_run
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    one = tmp_path / "one"
    one.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(one / "frame_0.png")
    cases = [
        (["--image", str(text)], "notes.png"),
        (["--image", str(tmp_path / "missing.png")], "missing.png"),
        (["--video", str(one)], "frame"),
        (["--image", str(text), "--image", str(text), "--image", str(text)], "at most 2"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
    ]
    for args, needle in cases:
        proc = _describe(env, workdir, *args, "what color is the circle?")
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_eval_reports_each_task_and_writes_a_sample_sheet(mm_run, env, tmp_path):
    from PIL import Image

    workdir, _ = mm_run
    proc = _tjax(["eval", "--workdir", workdir, "--split", "test", "--limit", "140"], env)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("image_qa_match", "audio_qa_match", "video_qa_match", "image_caption_bleu",
                "answer_match"):  # fmt: skip
        assert f"test/{key}" in report, (key, sorted(report))
    pngs = [f for f in report.get("files", []) if f.endswith("samples.png")]
    assert pngs, report.get("files")
    path = pngs[0] if os.path.isabs(pngs[0]) else os.path.join(workdir, pngs[0])
    with Image.open(path) as img:
        assert img.size[0] > 300 and img.size[1] > 300
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 10  # not blank


def test_python_pipeline_matches_the_cli(mm_run, env, test_examples, tmp_path):
    import transformer_jax

    workdir, _ = mm_run
    ex = [e for e in test_examples["image_qa"] if int(e["num_images"]) == 2][0]
    paths = []
    for k in range(2):
        paths.append(_png(str(tmp_path / f"two{k}"), {"images": ex["images"][k : k + 1]}))
    pipe = transformer_jax.pipeline("image-text-to-text", workdir=workdir)
    out = pipe({"text": ex["prompt"], "images": paths})
    cli = _describe(env, workdir, "--image", paths[0], "--image", paths[1], ex["prompt"])
    assert out[0]["generated_text"] == cli.stdout.strip()
    assert out[0]["input_text"] == ex["prompt"]
    batch = pipe([{"text": ex["prompt"], "images": paths}, {"text": "", "images": paths[:1]}])
    assert batch[0] == out and len(batch) == 2
