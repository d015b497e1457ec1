"""Times forward+backward of each attention implementation on the default backend.

Usage: python -m benchmarks.attention_bench [--lengths 512 2048] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from transformer_jax.ops.attention import dot_product_attention


def time_fwd_bwd(impl: str, L: int, args: argparse.Namespace) -> float:
    """Median seconds of one jitted forward+backward pass (causal self-attention)."""
    dtype = jnp.dtype(args.dtype)
    rng = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(rng[0], (args.batch, L, args.heads, args.head_dim), dtype)
    k = jax.random.normal(rng[1], (args.batch, L, args.kv_heads, args.head_dim), dtype)
    v = jax.random.normal(rng[2], (args.batch, L, args.kv_heads, args.head_dim), dtype)

    def loss(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        out = dot_product_attention(q, k, v, causal=True, implementation=impl)
        return jnp.sum(out.astype(jnp.float32))

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    jax.block_until_ready(step(q, k, v))
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(q, k, v))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--impls", nargs="+", default=["xla", "chunked", "auto"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"backend={jax.default_backend()} dtype={args.dtype}")
    for L in args.lengths:
        for impl in args.impls:
            try:
                ms = 1e3 * time_fwd_bwd(impl, L, args)
                print(f"L={L:6d} {impl:8s} {ms:10.2f} ms")
            except ValueError as err:
                print(f"L={L:6d} {impl:8s} skipped: {err}")


if __name__ == "__main__":
    main()
