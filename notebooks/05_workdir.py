# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A run's workdir: checkpoints, evaluations, curves
#
# A workdir holds everything of one training run: `config.json` (and its history across
# resumes), `metrics.jsonl` (one JSON row per logged step), `checkpoints/<step>/` (Orbax,
# with the tokenizer and model config beside the arrays) and the evaluations written by
# `tjax eval`. This notebook trains a short translation run, then opens its workdir as a
# finished run: summarises it, evaluates two checkpoints and their average, compares
# their metrics and plots the run.

# %%
# Install (Colab): skipped when transformer_jax is already importable.
# >>> Set REPO_URL to the git URL of this repository (a placeholder here). <<<
REPO_URL = "https://example.com/YOUR-ORG/transformer_jax.git"

import importlib.util

if importlib.util.find_spec("transformer_jax") is None:
    get_ipython().run_line_magic(  # noqa: F821 (IPython's `%pip install`)
        "pip", f'install -q "transformer_jax[notebooks,media] @ git+{REPO_URL}"'
    )
    # If this upgraded jax, restart the runtime once and run the notebook again.

# %%
import os
import tempfile

# TJAX_NOTEBOOK_QUICK=1 (set by the tests) shrinks the run to seconds.
QUICK = os.environ.get("TJAX_NOTEBOOK_QUICK") == "1"
ROOT = tempfile.mkdtemp(prefix="tjax_workdir_")  # data and workdirs live here
DATA_DIR = os.path.join(ROOT, "tfds")
WORKDIR = os.path.join(ROOT, "translate_tiny")  # or the path of any finished run
print("quick:", QUICK, "| files under", ROOT)

# %% [markdown]
# ## Accelerator (GPU / TPU)
# On a GPU or TPU runtime: bfloat16 compute, `attention_impl=auto` (the fused kernel
# where the shapes allow) and a larger batch.

# %%
import jax

PLATFORM = jax.devices()[0].platform
ACCEL_OVERRIDES = []
if PLATFORM in ("gpu", "tpu"):
    ACCEL_OVERRIDES = [
        "model.dtype=bfloat16",
        "model.attention_impl=auto",
        "data.tokens_per_batch=4096",
    ]
print(f"{jax.device_count()} {PLATFORM} device(s); accelerator overrides: {ACCEL_OVERRIDES}")

# %% [markdown]
# ## A run to look at
# Skip this cell and set `WORKDIR` above to open a run of your own instead.

# %%
from transformer_jax.config import load_config
from transformer_jax.train.trainer import train_and_evaluate

overrides = [f"data.data_dir={DATA_DIR}", "train.progress=False", "train.keep_checkpoints=5"]
if QUICK:
    overrides += [
        "data.name=en_es_grammar/tiny",
        "data.tokens_per_batch=512",
        "data.eval_tokens_per_batch=512",
        "tokenizer.vocab_size=200",
        "model.d_model=32",
        "model.num_heads=2",
        "model.d_ff=64",
        "model.num_encoder_layers=1",
        "model.num_decoder_layers=1",
        "optimizer.warmup_steps=20",
        "train.num_steps=12",
        "train.log_every=2",
        "train.eval_every=12",
        "train.eval_batches=1",
        "train.checkpoint_every=3",
        "decode.max_decode_len=24",
        "decode.bleu_examples=8",
        "decode.beam_size=1",
        "decode.batch_size=8",
    ]
else:
    overrides += [
        "train.num_steps=300",
        "optimizer.warmup_steps=150",
        "train.log_every=20",
        "train.eval_every=100",
        "train.checkpoint_every=50",
    ]
train_and_evaluate(load_config("translate_tiny", overrides + ACCEL_OVERRIDES), WORKDIR)

# %% [markdown]
# ## What the workdir holds
# `run_info` reads only small files and checkpoint metadata (never the arrays), so it is
# cheap on a finished run and on one still training (`tjax info` prints the same).

# %%
import json

for name in sorted(os.listdir(WORKDIR)):
    print(name + ("/" if os.path.isdir(os.path.join(WORKDIR, name)) else ""))
print("checkpoints:", sorted(os.listdir(os.path.join(WORKDIR, "checkpoints"))))
with open(os.path.join(WORKDIR, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
print(len(rows), "metric rows; the last:", rows[-1])

try:
    from transformer_jax.train.runinfo import run_info
except ImportError:  # an older installed version of the package
    run_info = None
    print("transformer_jax.train.runinfo is not in this version of the package")
if run_info is not None:
    print(json.dumps(run_info(WORKDIR), indent=1, default=str)[:3000])

# %% [markdown]
# ## Evaluate two checkpoints and their average
# `evaluate_checkpoint` is `tjax eval`: the loss and the task's metrics (BLEU here) of
# one checkpoint on a split, written as JSON into the workdir. `average_checkpoints`
# is `tjax average` (the paper averages the last 5 or 20 checkpoints).

# %%
from transformer_jax.train.evaluation import average_checkpoints, evaluate_checkpoint

steps = sorted(int(s) for s in os.listdir(os.path.join(WORKDIR, "checkpoints")) if s.isdigit())
first, last = steps[0], steps[-1]
limit = 16 if QUICK else 200  # sentences decoded for BLEU
reports = {
    f"step {first}": evaluate_checkpoint(WORKDIR, split="test", step=first, limit=limit),
    f"step {last}": evaluate_checkpoint(WORKDIR, split="test", step=last, limit=limit),
}
average_checkpoints(WORKDIR, last=min(3, len(steps)))
reports[f"average of the last {min(3, len(steps))}"] = evaluate_checkpoint(
    WORKDIR, split="test", averaged=True, limit=limit
)

# %% [markdown]
# ## Compare their metrics

# %%
keys = sorted({k for r in reports.values() for k, v in r.items() if isinstance(v, float)})
print(f"{'':24}" + "".join(f"{name:>28}" for name in reports))
for key in keys:
    cells = "".join(f"{r.get(key, float('nan')):28.4f}" for r in reports.values())
    print(f"{key:24}{cells}")
print("written:", *(r["path"] for r in reports.values()), sep="\n  ")

# %% [markdown]
# ## Plot the run
# `plot_runs` (`tjax plot`) draws each logged quantity over the steps, one line per run;
# give it several workdirs to compare runs.

# %%
from IPython.display import Image, display

try:
    from transformer_jax.train.plots import plot_runs
except ImportError:  # an older installed version of the package
    plot_runs = None
    print("transformer_jax.train.plots is not in this version of the package")
if plot_runs is not None:
    for png in plot_runs([WORKDIR], out_dir=os.path.join(ROOT, "plots")):
        display(Image(filename=str(png)))
