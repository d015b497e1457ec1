"""`make demo`: train the tiny translation model, score it, translate a few sentences.

python -m transformer_jax.demo --workdir runs/demo
"""

from __future__ import annotations

import argparse
import sys
import time

EXAMPLES = [
    "The cat sleeps on the couch.",
    "The dog does not eat the apple.",
    "The white houses are near the river.",
    "She read a red book in the garden.",
    "My young friends did not see the black horses.",
    # As people also type them.
    "The cat sleeps on the couch!",
    "the cat sleeps on the couch",
    "THE CAT SLEEPS ON THE COUCH.",
    "I slept.",
    "You were tired.",
]
AVERAGE_LAST = 5  # the paper averages the last 5 checkpoints of its base model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m transformer_jax.demo", description=__doc__)
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--config", default="translate_tiny", help="a shipped config name or a file")
    args, extra = p.parse_known_args(argv)

    from transformer_jax.errors import USER_ERRORS
    from transformer_jax.train.preemption import Preempted

    try:
        return _demo(args.config, args.workdir, extra)
    except Preempted as e:
        print(f"demo: {e}", file=sys.stderr)
        return Preempted.exit_code
    except USER_ERRORS as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2


def _demo(config: str, workdir: str, extra: list[str]) -> int:
    from transformer_jax.__main__ import _overrides, quiet_libraries
    from transformer_jax.config import load_config
    from transformer_jax.pipelines import pipeline
    from transformer_jax.train.evaluation import average_checkpoints, evaluate_checkpoint
    from transformer_jax.train.restore import open_checkpoints
    from transformer_jax.train.trainer import train_and_evaluate

    quiet_libraries()
    t0 = time.perf_counter()
    cfg = load_config(config, _overrides(extra))
    train_and_evaluate(cfg, workdir)
    t1 = time.perf_counter()
    split = cfg.data.test_split
    result = evaluate_checkpoint(workdir, split=split, loss_batches=0)
    ckpt = open_checkpoints(workdir)
    have = len(ckpt.all_steps())
    ckpt.close()
    averaged = None
    if have >= AVERAGE_LAST:
        steps = average_checkpoints(workdir, AVERAGE_LAST)["steps"]
        averaged = evaluate_checkpoint(workdir, split=split, averaged=True, loss_batches=0)
    t2 = time.perf_counter()
    translator = pipeline("translation", workdir=workdir, averaged=averaged is not None)
    print()
    print(f"test BLEU (sacreBLEU, detokenized, {split} split):")
    print(f"  last checkpoint (step {result['step']}): {result[split + '/bleu']:.2f}")
    if averaged is not None:
        print(
            f"  average of the last {AVERAGE_LAST} (steps {steps}): {averaged[split + '/bleu']:.2f}"
        )
    print(f"train {t1 - t0:.0f}s, averaging and test eval {t2 - t1:.0f}s")
    print("translations" + (" (averaged checkpoint):" if averaged is not None else ":"))
    for src, out in zip(EXAMPLES, translator(EXAMPLES)):
        print(f"  {src}  ->  {out['translation_text']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
