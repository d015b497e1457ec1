"""Training speed under glibc malloc settings (GLIBC_TUNABLES), each in a fresh process.

    python -m benchmarks.malloc_bench            # every setting, 3 rounds (about an hour on 2 cores)
    python -m benchmarks.malloc_bench --settings default,hugetlb   # a subset
    python -m benchmarks.malloc_bench --quick    # default and hugetlb only, 1 round

glibc reads GLIBC_TUNABLES once, when a process starts, so every setting runs in its own
process: `/usr/bin/time -v python -m benchmarks.malloc_bench --worker`, which times our
jitted `train_step` at the translate_tiny shape of `benchmarks/run.py` (compilation and
warm-up excluded; steps/s is the median over timed windows) and reports the minor page
faults and system time of the timed steps alone (getrusage), while /usr/bin/time gives
the same for the whole process. The settings run in alternating order within each round
(A B C ... then ... C B A), and every setting is also divided by the default of its own
round, so load from other processes hits all of them alike; the ratio column is the
median of those per-round ratios.

Writes benchmarks/results/malloc_cpu_<date>.json and malloc_cpu_latest.md (quick runs:
malloc_cpu_<date>_quick.json and malloc_cpu_quick.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.report import write_results

MIB = 1 << 20
# glibc ignores an mmap_threshold above HEAP_MAX_SIZE / 2, i.e. 32 MiB on 64-bit Linux.
SETTINGS: dict[str, str | None] = {
    "default": None,
    "hugetlb": "glibc.malloc.hugetlb=1",
    "thresholds": f"glibc.malloc.mmap_threshold={32 * MIB}:glibc.malloc.trim_threshold={1024 * MIB}",
    "top_pad": f"glibc.malloc.top_pad={64 * MIB}",
    "hugetlb+thresholds": (
        f"glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold={32 * MIB}"
        f":glibc.malloc.trim_threshold={1024 * MIB}"
    ),
    # Every block from the heap, none mmap'd on its own (and so unmapped again on free).
    "no_mmap": f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={1024 * MIB}",
    "hugetlb+no_mmap": (
        f"glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={1024 * MIB}"
    ),
    "hugetlb+thresholds+top_pad": (
        f"glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold={32 * MIB}"
        f":glibc.malloc.trim_threshold={1024 * MIB}:glibc.malloc.top_pad={64 * MIB}"
    ),
}
QUICK_SETTINGS = ("default", "hugetlb")
TIME_FIELDS = {
    "Minor (reclaiming a frame) page faults": "minor_faults",
    "Major (requiring I/O) page faults": "major_faults",
    "System time (seconds)": "system_s",
    "User time (seconds)": "user_s",
    "Maximum resident set size (kbytes)": "max_rss_kb",
    "Voluntary context switches": "voluntary_switches",
    "Involuntary context switches": "involuntary_switches",
}


# ------------------------------------------------------------------------------ worker


def worker(windows: int, steps_per_window: int) -> dict[str, Any]:
    """Times the translate_tiny training step in this process (one JSON line on stdout)."""
    from benchmarks.run import TINY, OursTrain, Timing

    timing = Timing(
        windows=windows,
        steps_per_window=steps_per_window,
        warmup_steps=3,
        decode_windows=0,
        decode_warmup=0,
    )
    bench = OursTrain(TINY, timing)
    bench.prepare()
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = [bench.window() for _ in range(windows)]
    after = resource.getrusage(resource.RUSAGE_SELF)
    med = statistics.median(times)
    return {
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "window_s": times,
        "steps_per_s": steps_per_window / med,
        "steps_per_s_range": [steps_per_window / max(times), steps_per_window / min(times)],
        "timed_steps": windows * steps_per_window,
        "timed_minor_faults": after.ru_minflt - before.ru_minflt,
        "timed_system_s": after.ru_stime - before.ru_stime,
        "timed_user_s": after.ru_utime - before.ru_utime,
        "first_step_s": bench.first_step_s,
        "final_loss": bench.summary()["final_loss"],
    }


# ------------------------------------------------------------------------------ driver


def _parse_time_v(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key in TIME_FIELDS:
            out[TIME_FIELDS[key]] = float(value)
    return out


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_setting(name: str, windows: int, steps: int, cache_dir: str) -> dict[str, Any]:
    """One fresh worker process under /usr/bin/time -v with the setting's GLIBC_TUNABLES."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    # A persistent compilation cache shared by the workers: only the first one compiles.
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["TJAX_MALLOC"] = "default"  # nothing below may add tunables of its own
    if SETTINGS[name] is not None:
        env["GLIBC_TUNABLES"] = SETTINGS[name]
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "benchmarks.malloc_bench", "--worker"]
    cmd += ["--windows", str(windows), "--steps", str(steps)]
    load_start = _load()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(
        setting=name,
        process=_parse_time_v(proc.stderr),
        process_wall_s=time.perf_counter() - t0,
        load_average_start=load_start,
        load_average_end=_load(),
    )
    return row


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Medians per setting, and the median over rounds of each setting / that round's default."""
    by_round: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["setting"]] = r
    out = {}
    for name in names:
        rows = [r for r in runs if r["setting"] == name]
        ratios = [
            rnd[name]["steps_per_s"] / rnd["default"]["steps_per_s"]
            for rnd in by_round.values()
            if name in rnd and "default" in rnd
        ]
        out[name] = {
            "glibc_tunables": SETTINGS[name],
            "rounds": len(rows),
            "steps_per_s": statistics.median(r["steps_per_s"] for r in rows),
            "ratio_vs_default": statistics.median(ratios) if ratios else None,
            "ratios_vs_default": ratios,
            "timed_minor_faults_per_step": statistics.median(
                r["timed_minor_faults"] / r["timed_steps"] for r in rows
            ),
            "timed_system_ms_per_step": statistics.median(
                1e3 * r["timed_system_s"] / r["timed_steps"] for r in rows
            ),
            "process_minor_faults": statistics.median(r["process"]["minor_faults"] for r in rows),
            "process_system_s": statistics.median(r["process"]["system_s"] for r in rows),
            "process_user_s": statistics.median(r["process"]["user_s"] for r in rows),
            "max_rss_mib": statistics.median(r["process"]["max_rss_kb"] / 1024 for r in rows),
            "load_average_1min": [r["load_average_start"][0] for r in rows],
        }
    return out


def machine() -> dict[str, Any]:
    from benchmarks.classify_bench import cpu_vector_extensions
    from benchmarks.run import _cpu_count, _cpu_model

    def read(path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None

    return {
        "cpu_model": _cpu_model(),
        "cores": _cpu_count(),
        "vector_extensions": cpu_vector_extensions(),
        "libc": os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None,
        "transparent_hugepage": read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "thp_defrag": read("/sys/kernel/mm/transparent_hugepage/defrag"),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    ext = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["vector_extensions"].items())
    lines = [
        f"# glibc malloc settings: training speed ({report['timestamp']}"
        f"{', quick' if report['quick'] else ''})",
        "",
        f"- CPU: {m['cpu_model']}, {m['cores']} cores; {ext}",
        f"- {m['libc']}; transparent hugepages: {m['transparent_hugepage']} "
        f"(defrag {m['thp_defrag']}); python {m['python']}",
        f"- workload: our jitted train_step at translate_tiny (64 x 32+32 tokens, 1.46M "
        f"params), {report['windows']} windows x {report['steps']} steps per process, "
        f"{report['rounds']} round(s), settings alternating in order",
        f"- load average (1 min) over the run: {report['load_min']}-{report['load_max']}; "
        "other processes shared the cores, so compare the ratios, each taken against the "
        "default of the same round",
        f"- total wall time {report['wall_s']:.0f} s",
        "",
        "| setting | steps/s | vs default (median) | per round | minor faults/step "
        "| sys ms/step | process minor faults | process sys s | process user s | max RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in report["summary"].items():
        ratio = s["ratio_vs_default"]
        cells = [
            name,
            f"{s['steps_per_s']:.2f}",
            f"{ratio:.3f}x" if ratio is not None else "n/a",
            " ".join(f"{x:.2f}" for x in s["ratios_vs_default"]),
            f"{s['timed_minor_faults_per_step']:,.0f}",
            f"{s['timed_system_ms_per_step']:.1f}",
            f"{s['process_minor_faults']:,.0f}",
            f"{s['process_system_s']:.1f}",
            f"{s['process_user_s']:.1f}",
            f"{s['max_rss_mib']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Settings (GLIBC_TUNABLES):", ""]
    lines += [f"- {name}: `{SETTINGS[name] or '(unset)'}`" for name in report["summary"]]
    lines += [
        "",
        "minor faults/step and sys ms/step cover the timed steps only (getrusage in the "
        "worker); the process columns are /usr/bin/time -v over the whole process, "
        "start-up and compilation included.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="default and hugetlb, 1 round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--windows", type=int, default=None, help="timed windows per process")
    parser.add_argument("--steps", type=int, default=None, help="training steps per window")
    parser.add_argument(
        "--settings", default=None, help=f"comma-separated subset of {', '.join(SETTINGS)}"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    args = parser.parse_args(argv)
    windows = args.windows or (3 if args.quick else 5)
    steps = args.steps or (5 if args.quick else 10)
    if args.worker:
        print(json.dumps(worker(windows, steps)), flush=True)
        return None

    from benchmarks.run import RESULTS_DIR

    names = (
        args.settings.split(",")
        if args.settings
        else list(QUICK_SETTINGS if args.quick else SETTINGS)
    )
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or "default" not in names:
        parser.error(f"--settings must include default and name only {', '.join(SETTINGS)}")
    rounds = args.rounds or (1 if args.quick else 3)
    t_start = time.perf_counter()
    runs = []
    cache = tempfile.TemporaryDirectory(prefix="malloc_bench_jax_cache_")
    for rnd in range(rounds):
        for name in names if rnd % 2 == 0 else reversed(names):
            row = run_setting(name, windows, steps, cache.name)
            row["round"] = rnd
            runs.append(row)
            print(
                f"{time.perf_counter() - t_start:7.0f}s round {rnd} {name}: "
                f"{row['steps_per_s']:.2f} steps/s, "
                f"{row['timed_minor_faults'] / row['timed_steps']:,.0f} faults/step, "
                f"load {row['load_average_start'][0]}",
                file=sys.stderr,
                flush=True,
            )
    cache.cleanup()
    loads = [x for r in runs for x in (r["load_average_start"][0], r["load_average_end"][0])]
    now = dt.datetime.now()
    report = {
        "date": now.strftime("%Y-%m-%d"),
        "timestamp": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "rounds": rounds,
        "windows": windows,
        "steps": steps,
        "load_min": min(loads),
        "load_max": max(loads),
        "wall_s": time.perf_counter() - t_start,
        "summary": summarize(runs, names),
        "runs": runs,
    }
    table = render_markdown(report)
    print(table)
    if not args.no_write:
        out_dir = args.out_dir or RESULTS_DIR
        paths = write_results(report, table, out_dir, "malloc_cpu", quick=args.quick)
        print("wrote " + " and ".join(paths), file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
