"""The notebooks in notebooks/: each .ipynb is its jupytext "percent" .py, without
outputs; each runs top to bottom (quick settings) in a kernel of this interpreter."""

import json
import os
import resource
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SCRIPTS = sorted(NOTEBOOKS.glob("*.py"))
NAMES = [p.stem for p in SCRIPTS]
# A quick run of each notebook (TJAX_NOTEBOOK_QUICK=1) should take well under this.
CELL_TIMEOUT_S = 300


def test_every_notebook_is_there():
    assert NAMES, "no notebooks found"
    ipynbs = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert ipynbs == NAMES, f"each notebooks/NAME.py needs its NAME.ipynb: {ipynbs} vs {NAMES}"


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_matches_its_script_and_has_no_outputs(name):
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
    script = jupytext.read(NOTEBOOKS / f"{name}.py")
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells, name
    for cell in code_cells:
        assert cell.outputs == [], f"{name}.ipynb holds outputs; strip them"
        assert cell.execution_count is None, f"{name}.ipynb holds execution counts"
    # The pair holds the same cells: compare what the script gives with what the .ipynb
    # gives, each written as the percent script.
    fmt = "py:percent"
    want = jupytext.writes(script, fmt)
    got = jupytext.writes(nb, fmt)
    assert got == want, (
        f"notebooks/{name}.ipynb is out of sync with {name}.py; run "
        f"`jupytext --to ipynb notebooks/{name}.py`"
    )
    raw = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    assert all(not c.get("outputs") for c in raw["cells"]), name


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A Jupyter data dir holding a kernel spec that runs this interpreter (the venv's)."""
    path = tmp_path_factory.mktemp("jupyter")
    spec = path / "kernels" / "tjax-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "tjax test", "language": "python"})
    )
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timings(nb) -> str:
    """Seconds per executed code cell (nbclient records each cell's start and end)."""
    out = []
    for i, cell in enumerate(nb.cells):
        times = cell.get("metadata", {}).get("execution", {})
        begin, end = times.get("iopub.execute_input"), times.get("shell.execute_reply")
        if begin and end:
            seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(begin)).total_seconds()
            out.append(f"cell {i}: {seconds:.1f} s")
    return "; ".join(out)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, kernel_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    jupytext = pytest.importorskip("jupytext")
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    # First, which interpreter the kernel runs.
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JUPYTER_PATH")}
    env.update(
        TJAX_NOTEBOOK_QUICK="1",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        TMPDIR=str(tmp_path),  # the notebooks' data and workdirs (tempfile)
        MPLBACKEND="agg",
        JUPYTER_PATH=str(kernel_dir),
        # Programs compiled by one cell (or notebook) are read back by the next ones.
        JAX_COMPILATION_CACHE_DIR=str(kernel_dir / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    client = nbclient.NotebookClient(
        nb,
        kernel_name="tjax-test",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},
        record_timing=True,
    )
    start, cpu_before = time.perf_counter(), _children_cpu()
    try:
        client.execute(env=env)  # raises CellExecutionError on the first failing cell
    finally:
        print(_timings(nb))
    # The kernel is a child process of this one: its CPU time shows once it has ended.
    print(
        f"{name}: {time.perf_counter() - start:.0f} s wall, "
        f"{_children_cpu() - cpu_before:.0f} s CPU in the kernel"
    )
    first = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
    assert Path(first) == Path(sys.executable), f"the kernel ran {first}, not {sys.executable}"
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, errors
    # The notebooks fall back on a note for an older installed package; this checkout
    # has every module they use.
    texts = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    missing = [t for t in texts if "is not in this version of the package" in t]
    assert not missing, missing
