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
# # Generation: a tiny Llama-style language model
#
# Trains `lm_tiny` (4 layers, rotary positions, grouped-query attention, SwiGLU) on the
# embedded English + Spanish text, continues prompts of our own (greedy, sampling, beam
# search) and evaluates the test split's perplexity.

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
ROOT = tempfile.mkdtemp(prefix="tjax_generate_")  # data and workdirs live here
DATA_DIR = os.path.join(ROOT, "tfds")
WORKDIR = os.path.join(ROOT, "lm_tiny")
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
        "data.batch_size=64",
        "data.tokens_per_batch=8192",
    ]
print(f"{jax.device_count()} {PLATFORM} device(s); accelerator overrides: {ACCEL_OVERRIDES}")

# %% [markdown]
# ## Train
# Rows of 128 tokens pack whole documents, each with its own segment ids and positions.

# %%
from transformer_jax.config import load_config
from transformer_jax.train.trainer import train_and_evaluate

overrides = [f"data.data_dir={DATA_DIR}", "train.progress=False"]
if QUICK:
    overrides += [
        "data.name=lm_corpus/tiny",
        "data.max_length=64",
        "data.batch_size=16",
        "data.eval_batch_size=16",
        "data.tokens_per_batch=1024",
        "data.eval_tokens_per_batch=1024",
        "tokenizer.vocab_size=300",
        "model.d_model=32",
        "model.num_heads=2",
        "model.num_kv_heads=1",
        "model.d_ff=64",
        "model.num_decoder_layers=1",
        "optimizer.warmup_steps=10",
        "train.num_steps=20",
        "train.log_every=10",
        "train.eval_every=20",
        "train.eval_batches=2",
        "train.checkpoint_every=20",
        "generate.eval_examples=0",  # evaluation: the loss only
    ]
cfg = load_config("lm_tiny", overrides + ACCEL_OVERRIDES)
result = train_and_evaluate(cfg, WORKDIR)
print({k: round(v, 4) for k, v in result.items() if isinstance(v, float)})

# %% [markdown]
# ## Continue prompts of our own
# Greedy by default; `temperature`, `top_k`, `top_p` sample (reproducibly with `seed`),
# `num_beams` searches, `stop` cuts the text before a stop string.

# %%
import transformer_jax

generator = transformer_jax.pipeline("text-generation", workdir=WORKDIR)
n_new = 12 if QUICK else 30
prompts = ["Ana has a red kite.", "The cat sleeps", "Es sábado."]
for outs in generator(prompts, max_new_tokens=n_new):  # a list of answers per prompt
    print("greedy :", outs[0]["generated_text"])
for out in generator(
    "Tom", max_new_tokens=n_new, temperature=0.8, top_p=0.9, num_return_sequences=3, seed=1
):
    print("sampled:", out["generated_text"])
print("beams  :", generator("Luis has a blue cup.", max_new_tokens=n_new, num_beams=4)[0])

# %% [markdown]
# ## Evaluate the test split
# Loss and perplexity (what `tjax eval --split test` prints), written into the workdir.

# %%
from transformer_jax.train.evaluation import evaluate_checkpoint

report = evaluate_checkpoint(WORKDIR, split="test", loss_batches=2 if QUICK else 0)
print({k: v for k, v in report.items() if k.startswith("test/") and isinstance(v, float)})
