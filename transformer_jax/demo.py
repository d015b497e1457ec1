"""`make demo`: train the tiny translation model, score it, translate a few sentences.

python -m transformer_jax.demo --workdir runs/demo
"""

from __future__ import annotations

import argparse
import os
import time

EXAMPLES = [
    "The cat sleeps on the couch.",
    "The dog does not eat the apple.",
    "The white houses are near the river.",
    "She read a red book in the garden.",
    "My young friends did not see the black horses.",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument(
        "--config",
        default=os.path.join(os.path.dirname(__file__), "..", "configs", "translate_tiny.py"),
    )
    args, extra = p.parse_known_args(argv)

    from transformer_jax.__main__ import _overrides, quiet_libraries
    from transformer_jax.config import load_config
    from transformer_jax.pipelines import TranslationPipeline
    from transformer_jax.train.evaluation import evaluate_checkpoint
    from transformer_jax.train.trainer import train_and_evaluate

    quiet_libraries()
    t0 = time.perf_counter()
    cfg = load_config(os.path.normpath(args.config), _overrides(extra))
    train_and_evaluate(cfg, args.workdir)
    t1 = time.perf_counter()
    result = evaluate_checkpoint(args.workdir, split=cfg.data.test_split, loss_batches=0)
    t2 = time.perf_counter()
    translator = TranslationPipeline.from_workdir(args.workdir)
    print()
    print(
        f"test BLEU (sacreBLEU, detokenized, {cfg.data.test_split} split): "
        f"{result[cfg.data.test_split + '/bleu']:.2f}"
    )
    print(f"train {t1 - t0:.0f}s, test eval {t2 - t1:.0f}s")
    for src, out in zip(EXAMPLES, translator(EXAMPLES)):
        print(f"  {src}  ->  {out['translation_text']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
