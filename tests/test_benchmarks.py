"""The CPU benchmark runner end to end at minuscule shapes (no timing assertions)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os

import pytest

pytest.importorskip("torch")

from benchmarks import run  # noqa: E402
from benchmarks.report import write_results  # noqa: E402

MICRO = run.Shape(
    name="micro",
    vocab=40,
    d_model=16,
    heads=2,
    d_ff=32,
    enc_layers=1,
    dec_layers=1,
    batch=2,
    src_len=6,
    tgt_len=5,
    decode_batch=2,
    decode_src_len=6,
    decode_len=4,
)
ONCE = run.Timing(windows=1, steps_per_window=1, warmup_steps=0, decode_windows=1, decode_warmup=0)


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_run_shape_reports_both_sides(tmp_path):
    # Greedy only: a beam-search compile would add seconds; --quick covers beam 4.
    result = run.run_shape(
        MICRO, ONCE, beams=(1,), peak_flops=1e10, bandwidth=1e10, log=lambda _: None
    )

    train = result["train"]
    for side in ("ours", "torch"):
        row = train[side]
        assert _positive(row["tokens_per_s"]), (side, row)
        assert row["tokens_per_window"] == MICRO.batch * (MICRO.src_len + MICRO.tgt_len)
        assert row["loss_finite"], (side, row)
        assert row["params"] > 0
        assert _positive(row["fraction_of_matmul_peak"]), (side, row)
    assert _positive(train["ratio_ours_over_torch"])
    # Both sides run the same model FLOPs.
    assert train["ours"]["model_flops_per_step"] == train["torch"]["model_flops_per_step"]
    # Every side ran in a process of its own, none in this one.
    pids = [train["ours"]["pid"], train["torch"]["pid"]] + [d["pid"] for d in result["decode"]]
    assert len(set(pids)) == len(pids) and os.getpid() not in pids, pids

    decoders = [d["label"] for d in result["decode"]]
    assert len(decoders) == 2, decoders
    assert decoders[0].startswith("ours greedy") and "MarianMTModel.generate greedy" in decoders[1]
    for row in result["decode"]:
        assert _positive(row["tokens_per_s"]), row
        assert row["tokens_per_window"] == MICRO.decode_batch * MICRO.decode_len
        # Exactly decode_len new tokens per row on every side (eos suppressed).
        assert row["output_shape"] == [MICRO.decode_batch, MICRO.decode_len], row
        assert _positive(row["ratio_vs_generate"])
        assert _positive(row["bound_ms_per_step"])
        # One one-token call per timed window, after the warm-up's were dropped.
        assert len(row["first_token_s"]) == len(row["window_s"]) == ONCE.decode_windows, row
        assert all(_positive(t) for t in row["first_token_s"]), row
        assert math.isfinite(row["ms_per_later_step"]), row

    report = {
        "date": "2000-01-01",
        "timestamp": "2000-01-01T00:00:00",
        "quick": True,
        "machine": run.machine_info(),
        "load_average_end": None,
        "wall_s": 1.0,
        "results": [result],
    }
    table = run.render_markdown(report)
    assert "| micro |" in table and "ours/torch" in table and "vs generate()" in table
    json_path, md_path = write_results(report, table, str(tmp_path), "cpu", quick=True)
    assert json_path.endswith("cpu_2000-01-01_quick.json") and md_path.endswith("cpu_quick.md")
    assert json.loads(open(json_path).read())["results"][0]["decode"] == result["decode"]


def test_a_second_full_run_on_one_day_keeps_the_first(tmp_path):
    def write(value, hour, minute, *, quick=False):
        now = datetime.datetime(2000, 1, 1, hour, minute)
        report = {"date": "2000-01-01", "value": value}
        return write_results(report, f"table {value}", str(tmp_path), "x_cpu", quick=quick, now=now)

    first, md = write(1, 9, 5)
    second, _ = write(2, 14, 30)
    third, _ = write(3, 14, 30)
    quick1, quick_md = write(4, 15, 0, quick=True)
    quick2, _ = write(5, 15, 1, quick=True)
    names = [os.path.basename(p) for p in (first, second, third, quick1, quick2)]
    assert names == [
        "x_cpu_2000-01-01.json",
        "x_cpu_2000-01-01_1430.json",
        "x_cpu_2000-01-01_1430_2.json",
        "x_cpu_2000-01-01_quick.json",
        "x_cpu_2000-01-01_quick.json",  # smoke runs replace their own file
    ]
    values = [json.loads(open(p).read())["value"] for p in (first, second, third)]
    assert values == [1, 2, 3]
    assert json.loads(open(quick2).read())["value"] == 5
    # The full run's table is the latest full run's; a quick run writes its own.
    assert open(md).read() == "table 3\n" and open(quick_md).read() == "table 5\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_a_side_that_fails_in_its_process_names_itself():
    side = run._Isolated("NoSuchBench")
    with pytest.raises(RuntimeError, match="benchmark side NoSuchBench failed: KeyError"):
        side.prepare()
    assert side.proc is None  # its process was closed


def test_classify_bench_quick_reports_both_sides(tmp_path):
    pytest.importorskip("transformers")
    from benchmarks import classify_bench

    classify_bench.main(["--quick", "--out-dir", str(tmp_path)])

    [json_path] = tmp_path.glob("classify_cpu_*_quick.json")
    assert (tmp_path / "classify_cpu_quick.md").is_file()
    report = json.loads(json_path.read_text())
    [result] = report["results"]
    assert result["params"]["ours"] == result["params"]["torch"], result["params"]
    for part in ("train", "inference"):
        for side in ("ours", "torch"):
            row = result[part][side]
            assert _positive(row["examples_per_s"]), (part, side, row)
        assert _positive(result[part]["ratio_ours_over_torch"]), part
    for side in ("ours", "torch"):
        assert result["train"][side]["loss_finite"], side
    assert set(report["vector_extensions"]) >= {"avx2", "avx512f"}


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_generate_bench_bound_reads_every_weight_a_step_reads(model):
    """The bound's bytes at batch 1 with an empty cache are the `transformers` model's
    weights, less the table a step only gathers a row of (GPT-2's positions; Llama's
    untied token embedding)."""
    pytest.importorskip("transformers")
    from benchmarks import generate_bench

    shape = generate_bench.SHAPES[model, True]
    empty = dataclasses.replace(shape, prompt_len=0, new_tokens=0)
    hf = generate_bench.hf_model(shape)
    weights = sum(p.numel() for p in hf.parameters())  # a tied table counts once
    gathered = (shape.context if model == "gpt2" else shape.vocab) * shape.d_model
    bound = generate_bench.step_bound(empty, 1, {"read_gb_per_s": 1.0, "matmul_gflop_per_s": 1.0})
    assert bound["bytes_read"] == 4 * (weights - gathered)


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_generate_bench_quick_reports_both_sides(tmp_path, model):
    pytest.importorskip("transformers")
    from benchmarks import generate_bench

    generate_bench.main(["--quick", "--model", model, "--out-dir", str(tmp_path)])

    prefix = generate_bench.RESULT_PREFIX[model]
    [json_path] = tmp_path.glob(f"{prefix}_*_quick.json")
    assert "| ours tok/s |" in (tmp_path / f"{prefix}_quick.md").read_text()
    report = json.loads(json_path.read_text())
    shape = generate_bench.SHAPES[model, True]
    assert report["shape"]["arch"] == model
    assert report["model_class"] == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[model]
    rows = report["generation"]
    assert {(r["batch"], r["mode"]) for r in rows} == {
        (b, m) for b in shape.batches for m in generate_bench.MODES
    }
    for row in rows:
        for side in ("ours", "theirs"):
            assert _positive(row[side]["tokens_per_s"]), (side, row)
            assert _positive(row[side]["prefill_first_token_s"]), (side, row)
        assert _positive(row["ratio_ours_over_theirs"]) and _positive(row["bound"]["bound_ms"])
    assert _positive(report["ttft"]["ours"]) and _positive(report["ttft"]["theirs"])
    # Same weights on both sides: greedy decoding agrees (a near-tie may flip a token).
    assert all(v >= 0.9 for v in report["greedy_agreement"].values()), report["greedy_agreement"]
    assert report["load_average_end"] is not None


def test_beam_cache_bench_quick_reports_both_modes_with_the_same_beams(tmp_path):
    from benchmarks import beam_cache_bench

    report = beam_cache_bench.main(["--quick", "--out-dir", str(tmp_path)])

    [json_path] = tmp_path.glob("beam_cache_cpu_*_quick.json")
    assert json.loads(json_path.read_text())["rows"]
    assert "| gathered ms/step |" in (tmp_path / "beam_cache_cpu_quick.md").read_text()
    assert [r["prompt"] for r in report["rows"]] == list(beam_cache_bench.QUICK.prompts)
    for row in report["rows"]:
        assert row["same_beams"], row
        for mode in beam_cache_bench.MODES:
            assert _positive(row[f"{mode}_call_s"]), (mode, row)
        assert math.isfinite(row["speedup"]), row


@pytest.mark.slow  # compiling the tiny multimodal train step takes minutes on 2 cores
def test_multimodal_bench_quick_reports_training_and_describe(tmp_path):
    from benchmarks import multimodal_bench

    multimodal_bench.main(["--quick", "--out", str(tmp_path)])

    assert "| examples/s |" in (tmp_path / "multimodal_cpu_quick.md").read_text()
    [json_path] = tmp_path.glob("multimodal_cpu_*.json")  # the quick run's alone
    assert (
        json_path.name.endswith("_quick.json")
        and not (tmp_path / "multimodal_cpu_latest.md").exists()
    )
    report = json.loads(json_path.read_text())
    [case] = multimodal_bench.QUICK.train
    [row] = report["train"]
    assert (row["label"], row["batch"]) == (case.name, case.batch), row
    for key in ("examples_per_s", "text_tokens_per_s", "model_flops_per_s", "step_s"):
        assert _positive(row[key]), (key, row)
    assert row["text_tokens_per_step"] == case.batch * row["text_columns"]  # all text real
    assert row["loss_finite"] and row["params"] > 0 and row["media_columns"] > 0
    rows = report["describe"]["rows"]
    assert {(r["task"], r["input"]) for r in rows} == {
        (t, k) for t in multimodal_bench.DESCRIBE_TASKS for k in ("arrays", "files")
    }
    new = multimodal_bench.QUICK.max_new_tokens
    for r in rows:
        assert _positive(r["median_s"]) and r["new_tokens"] == new, r
        assert 0 <= r["tokens_before_eos"] <= new, r
    assert set(report["vector_extensions"]) >= {"avx2", "avx512f"}
    assert report["load_average_end"] is not None


def test_input_bench_constant_mode_repeats_the_first_batch_and_keeps_the_state():
    """The "constant" side hands back the pipeline's first batch for every step, while
    the trainer can still save the iterator's state (so the run ends as usual)."""
    import grain
    import numpy as np

    from benchmarks.input_bench import _ConstantDataset

    ds = grain.MapDataset.range(10).batch(2)
    real = iter(ds)
    const = iter(_ConstantDataset(ds))
    first = next(real)
    for _ in range(4):
        np.testing.assert_array_equal(next(const), first)
    assert next(real).tolist() != first.tolist()  # the real pipeline moves on
    one_read = iter(ds)
    next(one_read)
    assert const.get_state() == one_read.get_state() != iter(ds).get_state()


def test_decode_step_bound_by_hand():
    # One decoder layer, d 4, ff 8, vocab 10, 2 rows, 2 new tokens (t = 1), source 3:
    # weights 4*16 + 2*16 + 2*32 + 40 = 200; cache 2 * 1 * 2 * 4 * (1 + 3) = 64 floats.
    shape = run.Shape("hand", 10, 4, 2, 8, 1, 1, 2, 3, 2, 2, 3, 2)
    seconds, parts = run.decode_step_bound(shape, 1, peak_flops=1e3, bandwidth=1e3)
    assert parts["read_bytes"] == 4 * (200 + 64)
    assert parts["flops"] == 2 * 2 * 200 + 2 * 2 * 2 * 1 * 4 * (1 + 3)
    assert seconds == max(parts["read_bytes"], parts["flops"]) / 1e3


def test_attention_sweep_runs_each_side_in_its_own_process(tmp_path):
    from benchmarks import attention_bench

    report = attention_bench.main(
        [
            "--lengths",
            "64",
            "--sides",
            "chunked",
            "xla",
            "--budget-s",
            "0",
            "--out-dir",
            str(tmp_path),
        ]
    )

    rows = {r["side"]: r for r in report["results"]}
    assert set(rows) == {"chunked", "xla"}
    for row in rows.values():
        assert row["length"] == 64 and len(row["times_s"]) >= 3, row
        assert _positive(row["median_s"]), row
        assert row["compiled_temp_bytes"] > 0 and row["peak_extra_bytes"] >= 0, row
    assert (tmp_path / f"attention_cpu_{report['date']}.json").is_file()
    assert "| 64 | chunked |" in (tmp_path / "attention_cpu_latest.md").read_text()


def test_attention_goals_by_hand():
    from benchmarks.attention_bench import goals

    rows = [
        {"side": "chunked", "length": 16384, "compiled_temp_bytes": 100},
        {"side": "xla", "length": 16384, "compiled_temp_bytes": 1000},  # not run: no median
        {"side": "chunked", "length": 1024, "median_s": 0.3, "compiled_temp_bytes": 1},
        {"side": "xla", "length": 1024, "median_s": 0.25, "compiled_temp_bytes": 1},
    ]
    g = goals(rows)
    assert g["memory_fraction"] == 0.1 and g["memory_met"] is True
    assert g["time_ratio"] == pytest.approx(1.2) and g["time_met"] is True
    rows[0]["compiled_temp_bytes"] = 200
    rows[2]["median_s"] = 0.4  # 1.6x
    g = goals(rows)
    assert g["memory_met"] is False and g["time_met"] is False
    assert goals(rows[2:3]) == {}


def test_gpu_check_cpu_smoke_runs_every_check(tmp_path):
    """The GPU check's code paths at tiny shapes on the CPU: every check runs and passes
    (the encoder-decoder train step, tested at length elsewhere, left out for time)."""
    from benchmarks import gpu_check

    argv = ["--cpu-smoke", "--skip", "check_training", "--out", str(tmp_path)]
    assert gpu_check.main(argv) == 0
    (out,) = tmp_path.glob("gpu_*_cpu_smoke.json")
    report = json.loads(out.read_text())
    names = [r.get("check", "") for r in report["rows"]]
    assert report["ok"] and all(r.get("ok", True) for r in report["rows"])
    assert "attention xla causal, positions reversed" in names
    assert "decoder-only LM train step bfloat16" in names
    lm = next(r for r in report["rows"] if r.get("check") == "decoder-only LM train step bfloat16")
    assert lm["step_ms"] > 0 and 0 < lm["mfu"] < 1
    assert gpu_check._lm_run("16:noscan:full") == dict(
        big=True, steps=10, batch=16, scan=False, remat="full"
    )
