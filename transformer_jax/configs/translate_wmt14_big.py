"""The paper's big Transformer on WMT14 English->German.

    tjax train --config translate_wmt14_big --workdir /mnt/shared/runs/big
    tjax average --workdir .../runs/big --last 20
    tjax eval --workdir .../runs/big --averaged --split test

Data: as configs/translate_wmt14_base.py.
Hardware: 8+ accelerators (the paper: 8 P100 GPUs, 3.5 days for 300k steps).
On a TPU v4-32 or 16 H100s expect about a day.
Should reach: 28.4 BLEU on newstest2014 (averaging the last 20 checkpoints,
written every 10 minutes in the paper), dropout 0.3 for EN-DE; 213M parameters.
"""

import importlib.util
import os


def _base():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "translate_wmt14_base.py")
    spec = importlib.util.spec_from_file_location("translate_wmt14_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = _base()
    c.model.d_model = 1024
    c.model.d_ff = 4096
    c.model.num_heads = 16
    c.model.dropout_rate = 0.3
    c.train.num_steps = 300_000
    c.train.keep_checkpoints = 25
    return c
