"""GPU path checks, meant to be run once on a lent accelerator (one short script).

    python -m benchmarks.gpu_check                 # on the GPU machine
    python -m benchmarks.gpu_check --cpu-smoke     # the same code paths, tiny, on a CPU
    python -m benchmarks.gpu_check --lm 8:scan --skip check_training --profile /tmp/p

Checks, each printed as one JSON line and written to benchmarks/results/gpu_<date>.json:
1. cuDNN attention (`implementation="cudnn"`, bf16) agrees with the float32 XLA
   reference: padding, packed segments, causal, causal at an offset (T=1 vs a
   cache) -- within a bf16 tolerance -- and its gradients.
2. The chunked attention agrees with the reference in bf16 on long sequences.
3. A bf16 training step of the paper-base-shaped model runs, its loss matches the
   float32 step within a stated tolerance, parameters stay float32.
4. Steady-state step time, tokens/s and MFU (model FLOPs / data-sheet peak), for that
   model and for a GPT-style decoder-only LM of about 1.3B parameters (d 2048, 24
   layers, 16 heads, ff 8192, vocabulary 32,000) at sequence 2048, in bf16.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _emit(rows: list[dict], row: dict) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


def check_attention(rows: list[dict], impl: str, dtype, T: int, H: int) -> None:
    from transformer_jax.ops.attention import dot_product_attention

    rng = np.random.default_rng(0)
    B, N = 2, 4
    q, k, v = (jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.float32) for _ in range(3))
    seg = np.ones((B, T), np.int32)
    seg[0, T // 2 :] = 2  # two packed segments in row 0
    seg[1, T - T // 4 :] = 0  # padding in row 1
    seg = jnp.asarray(seg)
    rev = jnp.broadcast_to(jnp.arange(T - 1, -1, -1, dtype=jnp.int32), (B, T))
    cases = {
        "padding+packing": dict(q_segment_ids=seg, kv_segment_ids=seg),
        "causal": dict(q_segment_ids=seg, kv_segment_ids=seg, causal=True),
        # Keys after their query by index: cuDNN's causal kernel must not be taken.
        "causal, positions reversed": dict(
            q_segment_ids=seg, kv_segment_ids=seg, q_positions=rev, kv_positions=rev, causal=True
        ),
    }
    for name, kw in cases.items():
        ref = dot_product_attention(q, k, v, implementation="xla", **kw)
        out = dot_product_attention(
            q.astype(dtype), k.astype(dtype), v.astype(dtype), implementation=impl, **kw
        )
        err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref)))

        def loss(q_, k_, v_, impl_=impl, kw_=kw):
            return jnp.sum(dot_product_attention(q_, k_, v_, implementation=impl_, **kw_) ** 2)

        g_ref = jax.grad(lambda a: loss(a, k, v, "xla"))(q)
        g = jax.grad(lambda a: loss(a, k.astype(dtype), v.astype(dtype)))(q.astype(dtype))
        gerr = float(jnp.max(jnp.abs(g.astype(jnp.float32) - g_ref)) / jnp.max(jnp.abs(g_ref)))
        tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4
        _emit(
            rows,
            {
                "check": f"attention {impl} {name}",
                "T": T,
                "dtype": jnp.dtype(dtype).name,
                "max_abs_err": err,
                "grad_rel_err": gerr,
                "ok": err < tol * 4 and gerr < tol * 4,
            },
        )
    # One query at an offset against a cache: explicit positions, never top-left causal.
    S, pos = T, T // 3
    q1 = q[:, pos : pos + 1]
    qp = jnp.full((B, 1), pos, jnp.int32)
    kvp = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
    kvs = (kvp <= pos).astype(jnp.int32)
    kw = dict(
        q_segment_ids=jnp.ones((B, 1), jnp.int32),
        kv_segment_ids=kvs,
        q_positions=qp,
        kv_positions=kvp,
        causal=True,
    )
    ref = dot_product_attention(q1, k, v, implementation="xla", **kw)
    out = dot_product_attention(
        q1.astype(dtype), k.astype(dtype), v.astype(dtype), implementation="auto", **kw
    )
    err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref)))
    _emit(
        rows,
        {"check": "attention auto, one query at an offset", "max_abs_err": err, "ok": err < 1e-1},
    )


def check_attention_speed(rows: list[dict], impls, dtype, B: int, T: int, N: int, H: int) -> None:
    """Forward+backward time of causal self-attention with packed segments, per implementation."""
    from transformer_jax.ops.attention import dot_product_attention

    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((B, T, N, H)), dtype) for _ in range(3))
    seg = jnp.ones((B, T), jnp.int32).at[:, T // 2 :].set(2)
    rev = jnp.broadcast_to(jnp.arange(T - 1, -1, -1, dtype=jnp.int32), (B, T))
    for impl in impls:
        # "cudnn-dense": positions out of index order, so cuDNN runs without its causal
        # kernel (the dense mask alone), as before it could use it.
        pos = rev if impl.endswith("-dense") else None

        def loss(q_, k_, v_, impl_=impl.removesuffix("-dense"), pos_=pos):
            out = dot_product_attention(
                q_,
                k_,
                v_,
                q_segment_ids=seg,
                kv_segment_ids=seg,
                q_positions=pos_,
                kv_positions=pos_,
                causal=True,
                implementation=impl_,
            )
            return jnp.sum(out.astype(jnp.float32) ** 2)

        f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        jax.block_until_ready(f(q, k, v))
        reps = 10
        t0 = time.perf_counter()
        for _ in range(reps):
            g = f(q, k, v)
        jax.block_until_ready(g)
        ms = (time.perf_counter() - t0) / reps * 1e3
        _emit(
            rows,
            {
                "check": f"attention speed {impl}",
                "shape_BTNH": [B, T, N, H],
                "dtype": jnp.dtype(dtype).name,
                "fwd_bwd_ms": ms,
            },
        )


def _time_train_steps(task, model, tx, params, batch, *, steps, warmup=0, profile_dir=""):
    """Trains `steps` timed steps from `params` after the first (compiling) one and
    `warmup` more: (first loss, seconds to compile and run the first, seconds per
    step, final state, last step's metrics). With `profile_dir`, three more steps are traced there."""
    from transformer_jax.train.trainer import TrainState, train_step

    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    fn = jax.jit(
        functools.partial(train_step, task=task, model=model, tx=tx, base_rng=jax.random.key(0)),
        donate_argnums=(0,),
    )
    t0 = time.perf_counter()
    state, m = fn(state, batch)
    first = float(m["loss_sum"] / m["weight_sum"])
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, m = fn(state, batch)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = fn(state, batch)
    jax.block_until_ready(state)
    dt_step = (time.perf_counter() - t0) / steps
    if profile_dir:
        with jax.profiler.trace(profile_dir):
            for _ in range(3):
                state, m = fn(state, batch)
            jax.block_until_ready(state)
    return first, compile_s, dt_step, state, m


def check_training(rows: list[dict], *, base: bool, steps: int) -> None:
    import flax.linen as nn

    from transformer_jax.tasks.translation.config import translation_base
    from transformer_jax.tasks.translation.task import TranslationTask
    from transformer_jax.train import flops as flops_lib
    from transformer_jax.train.optim import make_optimizer

    cfg = translation_base()
    if base:
        B, L, V = 64, 128, 32768
    else:
        B, L, V = 8, 16, 256
        cfg.model.d_model, cfg.model.d_ff, cfg.model.num_heads = 64, 128, 4
        cfg.model.num_encoder_layers = cfg.model.num_decoder_layers = 2
    cfg.data.max_length = L

    class _Tok:
        vocab_size, pad_id, eos_id, bos_id = V, 0, 1, 2

    rng = np.random.default_rng(0)
    ids = rng.integers(3, V, (B, L)).astype(np.int32)
    batch = {"inputs": jnp.asarray(ids), "targets": jnp.asarray(np.roll(ids, 1, axis=1))}
    losses = {}
    for dtype in ("float32", "bfloat16"):
        cfg.model.dtype = dtype
        task = TranslationTask(cfg)
        mcfg = task.model_config({"src_tokenizer": _Tok, "tgt_tokenizer": _Tok})
        model = task.build_model(mcfg)
        train_model = task.build_model(mcfg.replace(deterministic=False, dropout_rate=0.0))
        tx = make_optimizer(cfg.optimizer, mcfg.d_model)
        params = nn.unbox(
            model.init(jax.random.key(0), batch["inputs"][:1], batch["targets"][:1])["params"]
        )
        first, _, dt_step, state, _ = _time_train_steps(
            task, train_model, tx, params, batch, steps=steps
        )
        fl = flops_lib.encoder_decoder_flops(mcfg, B, L, L)
        peak, source = flops_lib.device_peak_flops()
        dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(state.params)})
        losses[dtype] = first
        _emit(
            rows,
            {
                "check": f"train step {dtype}",
                "params": int(sum(x.size for x in jax.tree.leaves(params))),
                "batch": [B, L],
                "first_loss": first,
                "step_ms": dt_step * 1e3,
                "tokens_per_s": 2 * B * L / dt_step,
                "model_tflops_per_step": fl / 1e12,
                "mfu": flops_lib.mfu(fl, dt_step, 1, peak),
                "peak_source": source,
                "param_dtypes": dtypes,
                "ok": dtypes == ["float32"],
            },
        )
    rel = abs(losses["bfloat16"] - losses["float32"]) / abs(losses["float32"])
    _emit(rows, {"check": "bf16 first loss vs float32", "rel_diff": rel, "ok": rel < 2e-2})


def check_lm(
    rows: list[dict],
    *,
    big: bool,
    steps: int,
    batch: int = 8,
    scan: bool = True,
    remat="none",
    profile_dir: str = "",
) -> None:
    """Train steps of a decoder-only LM in bf16: step time, tokens/s, MFU."""
    import flax.linen as nn

    from transformer_jax.tasks.generation.config import lm_base
    from transformer_jax.tasks.generation.task import CausalLMTask, decoder_only_flops
    from transformer_jax.train import flops as flops_lib
    from transformer_jax.train.optim import make_optimizer

    cfg = lm_base()
    if big:  # GPT-3 XL's dimensions (1.3B)
        B, L, V = batch, 2048, 32000
        dims = dict(d_model=2048, num_heads=16, d_ff=8192, num_decoder_layers=24)
    else:
        B, L, V = 2, 64, 256
        dims = dict(d_model=64, num_heads=4, d_ff=128, num_decoder_layers=2)
    cfg.model.update(dims, max_position=L, dtype="bfloat16", dropout_rate=0.0)
    cfg.model.scan_layers = scan
    cfg.model.remat = remat
    cfg.data.max_length = L
    cfg.tokenizer.vocab_size = V

    class _Tok:
        vocab_size, pad_id, eos_id, bos_id = V, 0, 1, 2

    task = CausalLMTask(cfg)
    mcfg = task.model_config({"tokenizer": _Tok})
    model = task.build_model(mcfg.replace(deterministic=False))
    tx = make_optimizer(cfg.optimizer, mcfg.d_model, num_steps=100_000)
    rng = np.random.default_rng(0)
    batch_ = {
        "inputs": jnp.asarray(rng.integers(3, V, (B, L)), jnp.int32),
        "segment_ids": jnp.ones((B, L), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L)),
    }
    one = jax.tree.map(lambda x: x[:1], batch_)
    params = jax.jit(lambda k: nn.unbox(task.init_variables(model, k, one)["params"]))(
        jax.random.key(0)
    )
    first, compile_s, dt_step, state, m = _time_train_steps(
        task, model, tx, params, batch_, steps=steps, warmup=1, profile_dir=profile_dir
    )
    fl = decoder_only_flops(mcfg, B, L)
    peak, source = flops_lib.device_peak_flops()
    n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    _emit(
        rows,
        {
            "check": "decoder-only LM train step bfloat16",
            "scan_layers": scan,
            "remat": remat,
            "params": n_params,
            "batch": [B, L],
            "first_loss": first,
            "ln_vocab": float(np.log(V)),
            "compile_and_first_step_s": compile_s,
            "step_ms": dt_step * 1e3,
            "tokens_per_s": B * L / dt_step,
            "model_tflops_per_step": fl / 1e12,
            "mfu": flops_lib.mfu(fl, dt_step, 1, peak),
            "peak_source": source,
            "ok": bool(np.isfinite(float(m["loss_sum"])) and abs(first - np.log(V)) < 1.0),
        },
    )


def _lm_run(spec: str) -> dict:
    """ "8:scan" / "16:noscan:full" -> check_lm keyword arguments."""
    batch, scan, *remat = spec.split(":")
    return dict(
        big=True, steps=10, batch=int(batch), scan=scan == "scan", remat=(remat or ["none"])[0]
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes, xla in place of cudnn")
    p.add_argument(
        "--lm",
        default="8:noscan,16:noscan",
        help="decoder-only LM runs, comma-separated BATCH:scan|noscan[:REMAT]",
    )
    p.add_argument("--profile", default="", help="a folder for a trace of the first LM run")
    p.add_argument("--out", default=RESULTS_DIR, help="folder for the JSON results")
    p.add_argument("--skip", default="", help="comma-separated check functions to leave out")
    args = p.parse_args(argv)
    rows: list[dict] = []
    dev = jax.devices()[0]
    _emit(rows, {"device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__})
    if args.cpu_smoke:
        checks = [
            (check_attention, ("xla", jnp.float32, 32, 16), {}),
            (check_attention, ("chunked", jnp.float32, 48, 16), {}),
            (
                check_attention_speed,
                (("xla", "xla-dense", "chunked"), jnp.float32, 2, 64, 2, 16),
                {},
            ),
            (check_training, (), dict(base=False, steps=2)),
            (check_lm, (), dict(big=False, steps=2)),
        ]
    else:
        checks = [
            (check_attention, ("cudnn", jnp.bfloat16, 512, 64), {}),
            (check_attention, ("chunked", jnp.bfloat16, 2048, 64), {}),
            (
                check_attention_speed,
                (("cudnn", "cudnn-dense", "chunked", "xla"), jnp.bfloat16, 8, 2048, 16, 128),
                {},
            ),
            *(
                (check_lm, (), dict(_lm_run(spec), profile_dir=args.profile if i == 0 else ""))
                for i, spec in enumerate(filter(None, args.lm.split(",")))
            ),
            (check_training, (), dict(base=True, steps=10)),
        ]
    skip = set(filter(None, args.skip.split(",")))
    checks = [c for c in checks if c[0].__name__ not in skip]
    for fn, a, kw in checks:  # one failing check is reported; the others still run
        try:
            fn(rows, *a, **kw)
        except Exception as e:  # noqa: BLE001
            _emit(rows, {"check": fn.__name__, "error": f"{type(e).__name__}: {e}", "ok": False})
    ok = all(r.get("ok", True) for r in rows)
    os.makedirs(args.out, exist_ok=True)
    name = f"gpu_{dt.date.today().isoformat()}{'_cpu_smoke' if args.cpu_smoke else ''}.json"
    with open(os.path.join(args.out, name), "w") as f:
        json.dump({"ok": ok, "rows": rows}, f, indent=2)
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'}: {name}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
