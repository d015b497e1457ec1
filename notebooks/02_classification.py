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
# # Classification: a bilingual sentiment classifier
#
# Trains `classify_tiny` (a 3-layer encoder with RoBERTa's head) on the embedded English +
# Spanish review set, classifies reviews of our own with the pipeline, and evaluates the
# test split: accuracy, macro-F1, per-class scores and the confusion matrix picture.

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
ROOT = tempfile.mkdtemp(prefix="tjax_classify_")  # data and workdirs live here
DATA_DIR = os.path.join(ROOT, "tfds")
WORKDIR = os.path.join(ROOT, "classify_tiny")
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
        "data.batch_size=128",
        "data.tokens_per_batch=4096",
    ]
print(f"{jax.device_count()} {PLATFORM} device(s); accelerator overrides: {ACCEL_OVERRIDES}")

# %% [markdown]
# ## Train

# %%
from transformer_jax.config import load_config
from transformer_jax.train.trainer import train_and_evaluate

overrides = [f"data.data_dir={DATA_DIR}", "train.progress=False"]
if QUICK:
    overrides += [
        "data.name=sentiment_reviews/tiny",
        "data.batch_size=32",
        "data.eval_batch_size=64",
        "tokenizer.vocab_size=300",
        "model.d_model=32",
        "model.num_heads=2",
        "model.d_ff=64",
        "model.num_encoder_layers=1",
        "optimizer.warmup_steps=10",
        "train.num_steps=20",
        "train.log_every=10",
        "train.eval_every=20",
        "train.checkpoint_every=20",
    ]
else:
    overrides += ["train.num_steps=400", "train.eval_every=400"]  # of the config's 600
cfg = load_config("classify_tiny", overrides + ACCEL_OVERRIDES)
result = train_and_evaluate(cfg, WORKDIR)
print({k: round(v, 4) for k, v in result.items() if isinstance(v, float)})

# %% [markdown]
# ## Classify reviews of our own
# `top_k=None` gives every label's score, best first.

# %%
import transformer_jax

classifier = transformer_jax.pipeline("text-classification", workdir=WORKDIR)
reviews = [
    "This product is excellent.",
    "Not bad at all.",
    "Good screen but terrible battery.",
    "El servicio fue lento y la comida estaba fría.",
    "Es un teléfono normal.",
]
for text, out in zip(reviews, classifier(reviews)):
    print(f"{out['label']:9} {out['score']:.2f}  {text}")
print(classifier("No es malo.", top_k=None))

# %% [markdown]
# ## Evaluate the test split
# `evaluate_checkpoint` (what `tjax eval` runs) writes the metrics as JSON into the
# workdir, with the confusion matrix as a PNG beside it.

# %%
from IPython.display import Image, display

from transformer_jax.train.evaluation import evaluate_checkpoint

report = evaluate_checkpoint(WORKDIR, split="test")
print(f"test accuracy {report['test/class_accuracy']:.3f}, macro-F1 {report['test/macro_f1']:.3f}")
for label, scores in report["test/report"]["per_class"].items():
    print(
        f"  {label:9}", {k: round(v, 3) if isinstance(v, float) else v for k, v in scores.items()}
    )
print("written:", report["path"])
for png in report["files"]:
    display(Image(filename=png))
