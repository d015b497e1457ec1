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
# # Scale out: a device mesh, logical axis rules, one sharded train step
#
# Every parameter of the models names its dimensions with *logical* axes (`embed`,
# `heads`, `mlp`, `vocab`, ...). A sharding strategy is a table from logical axes to
# the axes of a device mesh (`data`, `fsdp`, `tensor`, `sequence`); the same model code
# then runs data-parallel, fully sharded (ZeRO-3 style) or tensor-parallel. On a CPU
# runtime this notebook makes 8 fake devices out of the host, which is enough to see
# every placement and to run a real sharded train step.

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
# 8 host devices: XLA reads this flag once, when jax starts, so it must be set before
# the first `import jax` (restart the runtime if jax was imported already).
import os
import sys

if "jax" in sys.modules:
    print("jax is already imported: restart the runtime to get 8 host devices")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import tempfile

# TJAX_NOTEBOOK_QUICK=1 (set by the tests) shrinks the model and the data.
QUICK = os.environ.get("TJAX_NOTEBOOK_QUICK") == "1"
ROOT = tempfile.mkdtemp(prefix="tjax_scale_")  # data and workdir live here
DATA_DIR = os.path.join(ROOT, "tfds")
WORKDIR = os.path.join(ROOT, "translate_tiny")

# %% [markdown]
# ## Accelerator (GPU / TPU)
# A TPU runtime with 8 cores (v2-8, v3-8) or a machine with 8 GPUs gets the mesh on its
# own devices, in bfloat16. With fewer accelerators (one Colab GPU, a v5e-1), the mesh
# is built over the 8 host devices made above, as on a CPU runtime.

# %%
import jax

PLATFORM = jax.devices()[0].platform
if PLATFORM in ("gpu", "tpu") and jax.device_count() >= 8:
    DEVICES = jax.devices()[:8]
    ACCEL_OVERRIDES = ["model.dtype=bfloat16", "model.attention_impl=auto"]
else:
    DEVICES = jax.devices("cpu")[:8]
    ACCEL_OVERRIDES = []
print(f"default platform {PLATFORM}; the mesh uses {len(DEVICES)} {DEVICES[0].platform} devices")
assert len(DEVICES) == 8, "restart the runtime so that XLA_FLAGS above takes effect"

# %% [markdown]
# ## A device mesh
# `make_mesh` shapes the devices into the four mesh axes; `-1` takes what is left.
# Here: 2-way data parallel x 2-way FSDP x 2-way tensor parallel.

# %%
import ml_collections

from transformer_jax.train import sharding as shd

mesh_cfg = ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=2, sequence=1))
mesh = shd.make_mesh(mesh_cfg, devices=DEVICES)
print(dict(mesh.shape))
print(mesh.devices.reshape(-1, mesh.shape["tensor"]))  # device ids: rows of the tensor axis
for name, table in shd.RULES.items():
    print(f"{name:14}", dict(table))

# %% [markdown]
# ## The model, its tokenizer and a batch
# `Setup` is what `train_and_evaluate` builds before its first step: the task, the
# tokenizer (trained on the training split), the model and the optimizer.

# %%
from transformer_jax.config import load_config
from transformer_jax.train.trainer import Setup

overrides = [f"data.data_dir={DATA_DIR}", "data.name=en_es_grammar/tiny", "train.progress=False"]
if QUICK:
    overrides += [
        "data.tokens_per_batch=512",
        "tokenizer.vocab_size=200",
        "model.d_model=32",
        "model.num_heads=2",
        "model.d_ff=64",
        "model.num_encoder_layers=1",
        "model.num_decoder_layers=1",
    ]
cfg = load_config("translate_tiny", overrides + ACCEL_OVERRIDES)
setup = Setup(cfg, WORKDIR, for_training=True)
local_batch = next(iter(setup.task.train_dataset(setup.processors, 0, 1)))
print({k: (v.shape, v.dtype.name) for k, v in local_batch.items()})

# %% [markdown]
# ## How the rules place each parameter
# `eval_shape` traces the initialisation without computing it: every parameter comes
# back boxed with its logical axis names. `logical_shardings` maps them through a rule
# table to `NamedSharding`s on the mesh (a dimension the mesh axes do not divide stays
# replicated). The same parameters under three strategies:

# %%
import flax.linen as nn
import jax.numpy as jnp

from transformer_jax.train.checkpoint import path_name
from transformer_jax.train.evaluation import MeshContext
from transformer_jax.train.trainer import TrainState

example = setup.task.example_batch(setup.model_config)


def init(rng):
    params = setup.task.init_variables(setup.model, rng, example)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=setup.tx.init(params))


boxed = jax.eval_shape(init, jax.random.key(0))
logical = nn.get_partition_spec(boxed.params)
placements = {}
for strategy in ("data_parallel", "fsdp", "fsdp_tensor"):
    rules = shd.rules_for(strategy)
    with MeshContext(mesh, rules):
        placements[strategy] = shd.logical_shardings(boxed.params, mesh, rules)

flat_logical = jax.tree_util.tree_flatten_with_path(logical)[0]
shapes = jax.tree.leaves(nn.unbox(boxed.params))
shown = [
    i
    for i, (p, _) in enumerate(flat_logical)
    if shapes[i].ndim >= 2 and ("layer_0" in path_name(p) or "embed" in path_name(p))
][:10]
print(
    f"{'parameter':44}{'shape':>12}  {'logical axes':26}" + "".join(f"{s:>26}" for s in placements)
)
for i in shown:
    path, spec = flat_logical[i]
    specs = [jax.tree.leaves(placements[s])[i].spec for s in placements]
    print(
        f"{path_name(path):44}{str(shapes[i].shape):>12}  {str(tuple(spec)):26}"
        + "".join(f"{str(tuple(sp)):>26}" for sp in specs)
    )

# %% [markdown]
# ## One sharded train step
# The train state is created directly in its shardings (each device holds only its
# shards), the batch is split over the `data` and `fsdp` axes, and `jax.jit` with
# `in_shardings`/`out_shardings` compiles one SPMD program: XLA inserts the
# all-gathers (FSDP), reduce-scatters (gradients) and all-reduces (tensor parallel).

# %%
import functools

from transformer_jax.train.trainer import train_step

rules = shd.rules_for("fsdp_tensor")
with MeshContext(mesh, rules):
    shardings = shd.logical_shardings(boxed, mesh, rules)
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(jax.random.key(0))
    batch = shd.global_batch(local_batch, mesh)
    step_fn = jax.jit(
        functools.partial(
            train_step,
            task=setup.task,
            model=setup.train_model,
            tx=setup.tx,
            base_rng=jax.random.key(cfg.seed),
        ),
        in_shardings=(shardings, shd.batch_sharding(mesh)),
        out_shardings=(shardings, shd.replicated(mesh)),
        donate_argnums=(0,),
    )
    state, metrics = step_fn(state, batch)
metrics = jax.device_get(metrics)
print(f"step {int(state.step)}: loss {metrics['loss_sum'] / metrics['weight_sum']:.3f}")

name, leaf = max(
    ((path_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]),
    key=lambda item: item[1].size,
)
print(f"{name}: global {leaf.shape}, {leaf.sharding.spec}")
print("shard shapes per device:", sorted({s.data.shape for s in leaf.addressable_shards}))
print("the batch's inputs:", batch[next(iter(batch))].sharding.spec)
if leaf.ndim == 2:
    jax.debug.visualize_array_sharding(leaf)
n = sum(x.size for x in jax.tree.leaves(state.params))
per_device = sum(x.addressable_shards[0].data.size for x in jax.tree.leaves(state.params))
print(f"{n:,} parameters; device 0 holds {per_device:,} of them")
setup.ckpt.close()

# %% [markdown]
# ## On a TPU runtime (or a pod)
#
# * **Devices.** Leave `XLA_FLAGS` alone: `jax.devices()` lists the TPU cores (8 on a
#   v2-8/v3-8, 4 chips on a v4-8 host, ...) and the mesh is built over them. In a run,
#   the mesh comes from the config: `--config.mesh.data=-1 --config.mesh.fsdp=4
#   --config.mesh.tensor=2 --config.mesh.rules=fsdp_tensor` (a product that must equal
#   the device count; `-1` takes the rest).
# * **Mesh shape.** Keep `tensor` within one host (it talks on every layer; 2-8 on the
#   fast interconnect), put `fsdp` next when the parameters and Adam's moments do not fit
#   on one device, and spend the rest on `data`. The batch is split over `data x fsdp`,
#   so the global batch must be a multiple of that product.
# * **Several hosts.** Every host runs the same program; `train_and_evaluate` first calls
#   `transformer_jax.train.distributed.initialize()`, which on a Cloud TPU VM runs
#   `jax.distributed.initialize()` (it reads the topology itself). Each host then reads
#   only its own share of the data (`train_dataset(processors, jax.process_index(),
#   jax.process_count())`) and `global_batch` stitches the shares into one global array.
#   The workdir must be a path every host sees (a bucket or a shared mount);
#   `launch/tpu_pod.py` creates a pod slice and starts `tjax train` on every worker.
# * **Numbers.** `model.dtype=bfloat16` (parameters stay float32), `attention_impl=auto`
#   (the splash kernel where the shapes allow) and `model.remat=dots` for long sequences.
