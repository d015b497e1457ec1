"""`tjax plot` / `plot_runs`: PNG curves of one run or several, from metrics.jsonl."""

import io
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image

from transformer_jax.__main__ import main
from transformer_jax.train.plots import load_runs, log_to_tensorboard, make_figure, plot_runs
from transformer_jax.train.runinfo import series, short_labels


def write_run(folder, steps=20, eval_every=10, lr=1e-3, truncated=True, scale=1.0):
    """A synthetic workdir: train rows every step, validation rows every `eval_every`,
    and (optionally) a last line cut short as a killed run leaves it."""
    os.makedirs(folder, exist_ok=True)
    lines = []
    for s in range(1, steps + 1):
        lines.append(
            {
                "step": s,
                "train/loss": scale * 5.0 / s,
                "train/accuracy": 1 - 1 / (s + 1),
                "train/learning_rate": lr * s,
                "train/tokens_per_second": 1000.0 + s,
            }
        )
        if s % eval_every == 0:
            lines.append(
                {
                    "step": s,
                    "validation/loss": scale * 6.0 / s,
                    "validation/accuracy": 0.5,
                    "validation/bleu": 2.0 * s,
                }
            )
    text = "".join(json.dumps(r) + "\n" for r in lines)
    if truncated:
        text += '{"step": 21, "train/lo'
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.write(text)
    return str(folder)


def axis(fig, title):
    (ax,) = [a for a in fig.axes if a.get_title() == title]
    return ax


def check_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        width, height = im.size
        pixels = np.asarray(im.convert("RGB"))
    assert width >= 400 and height >= 300, (width, height)
    assert pixels.astype(np.float64).var() > 0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2  # lines in colour, not just text


def test_one_run_gives_a_valid_nonblank_png_in_the_workdir(tmp_path):
    run = write_run(tmp_path / "run")
    (path,) = plot_runs([run])
    assert path == tmp_path / "run" / "curves.png"
    check_png(path)


def test_panels_and_lines_follow_the_metrics(tmp_path):
    (run,) = load_runs([write_run(tmp_path / "run")])
    fig = make_figure([run])
    titles = [a.get_title() for a in fig.axes]
    assert titles == ["loss", "accuracy", "bleu", "learning rate", "tokens/s"]
    loss = axis(fig, "loss")
    assert [line.get_label() for line in loss.get_lines()] == ["train", "validation"]
    train, valid = loss.get_lines()
    assert list(train.get_xdata()) == list(range(1, 21))  # the cut-short line is skipped
    assert list(valid.get_xdata()) == [10, 20]
    np.testing.assert_allclose(valid.get_ydata(), [0.6, 0.3])
    bleu = axis(fig, "bleu").get_lines()
    assert len(bleu) == 1 and list(bleu[0].get_ydata()) == [20.0, 40.0]


def test_two_runs_give_one_labelled_line_each(tmp_path):
    a = write_run(tmp_path / "a", lr=1e-3)
    b = write_run(tmp_path / "b", lr=2e-3, steps=10, eval_every=5, truncated=False)
    fig = make_figure(load_runs([a, b]))
    lr = axis(fig, "learning rate").get_lines()
    assert [line.get_label() for line in lr] == ["a", "b"]
    np.testing.assert_allclose(lr[1].get_ydata(), [2e-3 * s for s in range(1, 11)])
    assert lr[0].get_color() != lr[1].get_color()
    labels = [line.get_label() for line in axis(fig, "loss").get_lines()]
    assert labels == ["a (train)", "a (validation)", "b (train)", "b (validation)"]
    assert [line.get_label() for line in axis(fig, "bleu").get_lines()] == ["a", "b"]
    out = tmp_path / "out"
    (path,) = plot_runs([a, b], out_dir=out)
    assert path == out / "curves_a_vs_b.png"
    check_png(path)


def test_a_run_with_a_few_lines_and_no_eval(tmp_path):
    run = tmp_path / "short"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"step": 1, "train/loss": 9.0, "train/learning_rate": 0.001}\n{"step": 2, "train/lo'
    )
    fig = make_figure(load_runs([run]))
    assert [a.get_title() for a in fig.axes] == ["loss", "learning rate"]
    (line,) = axis(fig, "loss").get_lines()
    assert line.get_marker() == "o"  # a single point stays visible
    check_png(plot_runs([run])[0])


def test_a_later_row_for_a_step_wins():
    rows = [
        {"step": 1, "train/loss": 3.0},
        {"step": 2, "train/loss": 2.0},
        {"step": 2, "train/loss": 2.5, "note": "x"},
    ]
    assert series(rows) == {"train/loss": ([1, 2], [3.0, 2.5])}


def test_runs_with_the_same_folder_name_are_told_apart():
    assert short_labels(["/x/a/run", "/y/b/run"]) == ["a/run", "b/run"]
    assert short_labels(["/x/a", "/y/b"]) == ["a", "b"]


def read_events(folder):
    """The events of every TensorBoard file in `folder` (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    events = []
    for name in sorted(os.listdir(folder)):
        data = open(os.path.join(folder, name), "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            events.append(event_pb2.Event.FromString(data[i + 12 : i + 12 + n]))
            i += 12 + n + 4
    return events


def test_tensorboard_gets_the_picture(tmp_path):
    run = write_run(tmp_path / "run")
    (path,) = plot_runs([run])
    assert log_to_tensorboard(run, path) == 20
    images = [
        (e.step, v.image)
        for e in read_events(os.path.join(run, "tensorboard"))
        for v in e.summary.value
        if v.tag == "curves"
    ]
    assert len(images) == 1
    step, image = images[0]
    assert step == 20
    with Image.open(path) as want, Image.open(io.BytesIO(image.encoded_image_string)) as got:
        assert got.size == want.size


def one_error_line(capsys, argv, command="plot"):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tjax {command}: error: "), err
    return lines[0]


def test_bad_workdirs_are_one_line_errors(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert str(missing) in one_error_line(capsys, ["plot", "--workdir", str(missing)])
    other = tmp_path / "other"
    other.mkdir()
    line = one_error_line(capsys, ["plot", "--workdir", str(other)])
    assert str(other) in line and "not a run's workdir" in line
    no_metrics = tmp_path / "no_metrics"
    no_metrics.mkdir()
    (no_metrics / "config.json").write_text("{}")
    line = one_error_line(capsys, ["plot", "--workdir", str(no_metrics)])
    assert "no metrics.jsonl" in line and str(no_metrics) in line
    for name, text in (("empty", ""), ("garbage", 'not json\n{"step": 1, "train')):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text(text)
        line = one_error_line(capsys, ["plot", "--workdir", str(run)])
        assert str(run / "metrics.jsonl") in line and "holds no metrics" in line
    # A good run next to a bad one: the bad one is named.
    good = write_run(tmp_path / "good")
    line = one_error_line(capsys, ["plot", "--workdir", good, "--workdir", str(missing)])
    assert str(missing) in line
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = one_error_line(capsys, ["plot", "--workdir", good, "--out", str(afile)])
    assert str(afile) in line


def test_cli_prints_the_written_paths(tmp_path, capsys):
    a = write_run(tmp_path / "a")
    b = write_run(tmp_path / "b", scale=2.0)
    assert main(["plot", "--workdir", a, "--workdir", b, "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / "o" / "curves_a_vs_b.png")]
    check_png(out[0])


@pytest.mark.slow
def test_plot_of_a_trained_run(trained, tmp_path):
    (path,) = plot_runs([trained], out_dir=tmp_path)
    check_png(path)
    fig = make_figure(load_runs([trained]))
    titles = [a.get_title() for a in fig.axes]
    assert titles[0] == "loss" and "bleu" in titles and "learning rate" in titles


def test_help(capsys):
    for command, options in (
        ("plot", ["--workdir", "--out", "--tensorboard"]),
        ("info", ["--workdir", "--json"]),
    ):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: tjax {command}")
        assert all(option in out for option in options), out


def test_an_evaluators_pictures_reach_tensorboard(tmp_path):
    """The PNGs an evaluator returns during training (a confusion matrix, a sample
    sheet) are TensorBoard images at the eval step; other files are not."""

    from transformer_jax.train.metrics import MetricsWriter

    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[5:15, 10:20] = (200, 30, 40)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    writer = MetricsWriter(str(tmp_path))
    writer.write_images(40, {"validation/confusion_matrix.png": buf.getvalue(), "x.txt": b"1"})
    writer.close()
    images = [
        (e.step, v.tag, v.image)
        for e in read_events(str(tmp_path / "tensorboard"))
        for v in e.summary.value
        if v.HasField("image")
    ]
    assert [(step, tag) for step, tag, _ in images] == [(40, "validation/confusion_matrix")]
    with Image.open(io.BytesIO(images[0][2].encoded_image_string)) as got:
        np.testing.assert_array_equal(np.asarray(got.convert("RGB")), pixels)
