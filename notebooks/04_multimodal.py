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
# # Multimodal: questions about pictures, sounds and clips
#
# Trains `multimodal_tiny` (a decoder that reads ViT patches, Whisper-style audio tokens
# and video tubelets as a bidirectional prefix) on the embedded set of coloured shapes,
# beeps and moving shapes; asks it about a picture and a sound made here; evaluates the
# test split and shows its sample sheet (`samples.png`).
#
# The full config trains for about 20 minutes on a CPU runtime; the default here is a
# shorter run (answers above chance, not yet good), a GPU or TPU runtime does more.

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
ROOT = tempfile.mkdtemp(prefix="tjax_multimodal_")  # data, workdir and media files live here
DATA_DIR = os.path.join(ROOT, "tfds")
WORKDIR = os.path.join(ROOT, "multimodal_tiny")
print("quick:", QUICK, "| files under", ROOT)

# %% [markdown]
# ## Accelerator (GPU / TPU)
# On a GPU or TPU runtime: bfloat16 compute, `attention_impl=auto`, and the config's
# full 3,400 steps.

# %%
import jax

PLATFORM = jax.devices()[0].platform
ACCEL_OVERRIDES = []
if PLATFORM in ("gpu", "tpu"):
    ACCEL_OVERRIDES = [
        "model.dtype=bfloat16",
        "model.attention_impl=auto",
        "train.num_steps=3400",
        "train.eval_every=3400",
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
        "data.name=multimodal_corpus/tiny",
        "media=image",  # compiling the audio and video encoders takes minutes on a CPU
        "data.batch_size=16",
        "data.eval_batch_size=16",
        "tokenizer.max_train_sentences=1000",
        "model.d_model=32",
        "model.num_heads=2",
        "model.d_ff=64",
        "model.num_decoder_layers=1",
        "image.d_model=32",
        "image.num_heads=2",
        "image.d_ff=64",
        "image.num_layers=1",
        "audio.d_model=32",
        "audio.num_heads=2",
        "audio.d_ff=64",
        "audio.num_layers=1",
        "optimizer.warmup_steps=5",
        "train.num_steps=10",
        "train.log_every=5",
        "train.eval_every=10",
        "train.eval_batches=1",
        "train.checkpoint_every=10",
        "generate.eval_examples=12",
        "generate.max_new_tokens=6",
    ]
else:
    overrides += [
        "train.num_steps=240",  # of the config's 3,400
        "train.eval_every=240",
        "train.checkpoint_every=240",
        "generate.eval_examples=240",
    ]
cfg = load_config("multimodal_tiny", overrides + ACCEL_OVERRIDES)
result = train_and_evaluate(cfg, WORKDIR)
print({k: round(v, 3) for k, v in result.items() if isinstance(v, float)})

# %% [markdown]
# ## Our own picture and sound
# A 3 x 3 grid picture with a red circle and a blue square, and a 0.75 s clip with two
# high beeps at 16 kHz, written as PNG and WAV and read back by the pipeline (which pads
# and resizes pictures and resamples audio as needed).

# %%
import numpy as np
import soundfile
from PIL import Image as PILImage
from PIL import ImageDraw

picture = PILImage.new("RGB", (96, 96), "black")
draw = ImageDraw.Draw(picture)
draw.ellipse((36, 4, 60, 28), fill=(230, 30, 30))  # top middle: a red circle
draw.rectangle((36, 68, 60, 92), fill=(30, 60, 230))  # bottom middle: a blue square
picture_path = os.path.join(ROOT, "shapes.png")
picture.save(picture_path)

rate = 16_000
t = np.arange(int(0.75 * rate)) / rate
on = ((t > 0.10) & (t < 0.22)) | ((t > 0.31) & (t < 0.43))  # two beeps of 0.12 s
beeps = (0.5 * np.sin(2 * np.pi * 1600.0 * t) * on).astype(np.float32)
sound_path = os.path.join(ROOT, "beeps.wav")
soundfile.write(sound_path, beeps, rate)

# %%
from IPython.display import Audio, Image, display

import transformer_jax

display(Image(filename=picture_path, width=96))
display(Audio(beeps, rate=rate))
describer = transformer_jax.pipeline("image-text-to-text", workdir=WORKDIR)
questions = [
    {"text": "what color is the circle?", "images": [picture_path]},
    {"text": "how many shapes are there?", "images": [picture_path]},
    {"text": "", "images": [picture_path]},  # no question: a caption
    {"text": "how many beeps?", "audio": sound_path},
    {"text": "", "audio": sound_path},
]
trained = cfg.media.split(",")  # a model answers only about the media it was trained on
questions = [q for q in questions if ("image" if "images" in q else "audio") in trained]
for q, outs in zip(questions, describer(questions)):  # a list of answers per input
    medium = "image" if "images" in q else "audio"
    print(f"[{medium}] {q['text'] or '(caption)':28} -> {outs[0]['generated_text']!r}")

# %% [markdown]
# ## Evaluate the test split
# Exact match per question type, BLEU per caption type, and a sheet of samples
# (`samples.png`, written beside the JSON in the workdir).

# %%
from transformer_jax.train.evaluation import evaluate_checkpoint

report = evaluate_checkpoint(WORKDIR, split="test", limit=24 if QUICK else 240)
for key, value in sorted(report.items()):
    if key.startswith("test/") and isinstance(value, float):
        print(f"{key:28} {value:.3f}")
for png in report.get("files", []):
    display(Image(filename=png))
