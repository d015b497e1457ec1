"""XLA settings the launchers give accelerator jobs: overlap collectives with compute.

    python -m transformer_jax.xla_env gpu     # prints XLA_FLAGS with the GPU flags added
    python -m transformer_jax.xla_env tpu     # prints LIBTPU_INIT_ARGS with the TPU ones

Sharded training moves parameters and gradients between chips every step (FSDP's
all-gathers and reduce-scatters, data parallelism's all-reduces). These flags let XLA
schedule that traffic asynchronously and overlap it with the matmuls around it:

GPU (`XLA_FLAGS`, set by launch/slurm_gpu.sbatch): the latency-hiding scheduler, the
highest-priority stream for collectives, and pipelined all-gather / reduce-scatter /
all-reduce inside scanned layers (with double-buffered while loops), as the JAX and
NVIDIA GPU performance guides recommend.
TPU (`LIBTPU_INIT_ARGS`, set by launch/tpu_pod.py): async collective fusion (all-gathers
included, across steps) and compute/collective overlap, as MaxText's TPU runs set.

A flag the user already gives (by name, whatever its value) is left as given; the
others are appended. TJAX_XLA_FLAGS=default adds none. Single-device runs are not
affected (they have no collectives), and `tjax` itself never sets these: XLA rejects a
flag its backend does not know, so they are only given where the platform is known.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence

OPT_OUT_VAR = "TJAX_XLA_FLAGS"

GPU_XLA_FLAGS: tuple[str, ...] = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_highest_priority_async_stream=true",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
)

TPU_LIBTPU_ARGS: tuple[str, ...] = (
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_gather=true",
)

PLATFORMS = {"gpu": ("XLA_FLAGS", GPU_XLA_FLAGS), "tpu": ("LIBTPU_INIT_ARGS", TPU_LIBTPU_ARGS)}


def _name(flag: str) -> str:
    return flag.split("=", 1)[0].lstrip("-").replace("-", "_")


def merged(existing: str, defaults: Sequence[str]) -> str:
    """`existing` flags plus each of `defaults` whose name `existing` does not give."""
    given = shlex.split(existing or "")
    named = {_name(f) for f in given if f.startswith("-")}
    return " ".join(given + [f for f in defaults if _name(f) not in named])


def tuned(platform: str, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(variable, value) for `platform` ("gpu" or "tpu"): the variable's current value
    with this module's flags added (none with TJAX_XLA_FLAGS=default)."""
    environ = os.environ if environ is None else environ
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {', '.join(PLATFORMS)}, got {platform!r}")
    choice = environ.get(OPT_OUT_VAR, "tuned").strip().lower() or "tuned"
    if choice not in ("tuned", "default"):
        raise ValueError(f"{OPT_OUT_VAR} must be tuned or default, got {environ[OPT_OUT_VAR]!r}")
    var, defaults = PLATFORMS[platform]
    existing = environ.get(var, "")
    return var, existing.strip() if choice == "default" else merged(existing, defaults)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m transformer_jax.xla_env gpu|tpu", file=sys.stderr)
        return 2
    try:
        print(tuned(args[0])[1])
    except ValueError as e:
        print(f"xla_env: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
