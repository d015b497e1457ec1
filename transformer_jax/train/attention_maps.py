"""Attention maps: each layer's heads as heatmaps of query tokens against key tokens.

`attention_maps(workdir, text)` restores a run's checkpoint as `tjax translate` does,
asks the run's task for its attention views (`Task.attention_view`: a translation
gives encoder self-attention, decoder self-attention and encoder-decoder attention of
its own greedy translation; a language model the self-attention over the prompt and a
few generated tokens) and writes one PNG per view: a grid of heads, tokens as ticks.
`attention_arrays` returns the same views as arrays, without writing anything.

The weights come from one forward pass with the reference ("xla") attention core,
which sows them into the "intermediates" collection only when asked
(`mutable=["intermediates"]`); training and decoding never compute them.
"""

from __future__ import annotations

import dataclasses
import io
import math
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from transformer_jax.train.task import InputError

# Longer inputs are cut to this many tokens (a heatmap of more is unreadable).
MAX_TOKENS = 48
# At most this many generated tokens follow a language model's prompt.
GENERATED_TOKENS = 8


@dataclasses.dataclass
class AttentionView:
    """One attention module's weights for one input: `weights[h, q, k]` is how much
    query token q of head h attends to key token k (rows of visible keys sum to 1)."""

    kind: str  # e.g. "encoder self-attention"
    layer: int
    weights: np.ndarray  # [heads, queries, keys] float32
    query_tokens: list[str]
    key_tokens: list[str]
    query_label: str = "query"
    key_label: str = "key"
    note: str = ""  # e.g. that the input was cut to MAX_TOKENS

    @property
    def name(self) -> str:
        """The file stem: "<kind>_layer<N>", e.g. "encoder_self_attention_layer0"."""
        slug = re.sub(r"[^a-z0-9]+", "_", self.kind.lower()).strip("_")
        return f"{slug}_layer{self.layer}"


# -- what the tasks use to collect weights ------------------------------------------------------


def inspection_config(config):
    """A model config that computes the same function and sows attention weights: the
    reference attention core, one module per layer (no scan, no remat), no dropout."""
    return config.replace(
        attention_impl="xla", remat="none", scan_layers=False, decode=False, deterministic=True
    )


def unscanned_params(params: Any) -> Any:
    """Parameters of a scanned stack (`layers`, stacked on a leading axis) as the
    per-layer modules `layer_0`, `layer_1`, ... of an unscanned one."""
    if not isinstance(params, dict):
        return params
    out = {}
    for key, value in params.items():
        if key == "layers" and isinstance(value, dict):
            count = jax.tree.leaves(value)[0].shape[0]
            for i in range(count):
                out[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], value)
        else:
            out[key] = unscanned_params(value)
    return out


def collect_attention(model, params, *args, **kwargs) -> dict[tuple[str, ...], np.ndarray]:
    """Runs `model.apply` once (jitted; `args` are arrays, `kwargs` static) and returns
    {module path: weights [B, N, T, S]} of every attention module (the model's config
    must come from `inspection_config`)."""
    from flax import traverse_util

    @jax.jit
    def run(params, *args):
        return model.apply({"params": params}, *args, mutable=["intermediates"], **kwargs)[1]

    state = run(unscanned_params(params), *args)
    flat = traverse_util.flatten_dict(dict(state.get("intermediates", {})))
    return {
        path[:-1]: np.asarray(value[0], np.float32)
        for path, value in flat.items()
        if path[-1] == "attention_weights"
    }


def layer_of(path: Sequence[str]) -> int:
    """The layer index in a module path such as ("encoder", "layer_3", "self_attention")."""
    for part in path:
        m = re.fullmatch(r"layer_(\d+)", part)
        if m:
            return int(m.group(1))
    raise ValueError(f"no layer in module path {'/'.join(path)}")


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """The tokenizer's pieces of `ids` (SentencePiece pieces, "▁" marks a word start)."""
    to_piece = getattr(tokenizer, "id_to_piece", None)
    return [str(to_piece(int(i))) if to_piece else str(int(i)) for i in ids]


def self_attention_views(weights, tokens: list[str], note: str) -> list[AttentionView]:
    """The self-attention views, by layer, of `collect_attention`'s output for one row
    whose queries and keys are both `tokens`."""
    views = [
        AttentionView(
            kind="self-attention",
            layer=layer_of(path),
            weights=w_BNTS[0],
            query_tokens=tokens,
            key_tokens=tokens,
            note=note,
        )
        for path, w_BNTS in weights.items()
        if path[-1] == "self_attention"
    ]
    return sorted(views, key=lambda v: v.layer)


def cap_note(what: str, length: int, limit: int = MAX_TOKENS) -> str:
    return f"{what} cut to its first {limit} of {length} tokens" if length > limit else ""


# -- the library entry points ------------------------------------------------------------------


def _views(workdir: str, text: str, step: int | None, layers) -> tuple[int, list[AttentionView]]:
    from transformer_jax.config import make_task
    from transformer_jax.train.restore import load_for_inference

    if not isinstance(text, str) or not text.strip():
        raise InputError("give a non-empty sentence to show the attention of")
    loaded = load_for_inference(workdir, step=step)
    task = make_task(loaded.run_config)
    views = task.attention_view(loaded, text)
    if layers is not None:
        wanted = sorted({int(i) for i in layers})
        have = sorted({v.layer for v in views})
        missing = [i for i in wanted if i not in have]
        if missing:
            raise InputError(
                f"layers {missing} do not exist: the model has layers "
                f"{', '.join(map(str, have)) or 'none'}"
            )
        views = [v for v in views if v.layer in wanted]
    return loaded.step, views


def attention_arrays(
    workdir: str, text: str, *, step: int | None = None, layers: Sequence[int] | None = None
) -> list[AttentionView]:
    """The attention views of `text` under a run's checkpoint (default: the latest)."""
    return _views(workdir, text, step, layers)[1]


def attention_maps(
    workdir: str,
    text: str,
    out_dir: str | None = None,
    step: int | None = None,
    layers: Sequence[int] | None = None,
) -> list[pathlib.Path]:
    """Writes one PNG per attention module and layer (a grid of its heads) into `out_dir`
    (default `<workdir>/attention/step<N>`) and returns their paths."""
    from etils import epath

    from transformer_jax.train import paths

    ckpt_step, views = _views(workdir, text, step, layers)
    if out_dir is None:
        out_dir = paths.join(workdir, "attention", f"step{ckpt_step}")
    paths.makedirs(out_dir)
    written = []
    for view in views:
        path = paths.join(out_dir, f"{view.name}.png")
        paths.write_bytes(path, render_png(view, title=f"step {ckpt_step}"))
        written.append(epath.Path(path) if paths.is_remote(path) else pathlib.Path(path))
    return written


# -- drawing ------------------------------------------------------------------------------------


def render_png(view: AttentionView, title: str = "") -> bytes:
    """The view as PNG bytes: one heatmap per head (query rows, key columns)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heads, nq, nk = view.weights.shape
    cols = min(heads, 4)
    rows = math.ceil(heads / cols)
    side = max(3.0, 0.2 * max(nq, nk) + 1.5)  # inches per head
    fig = Figure(figsize=(cols * side, rows * side + 0.8), dpi=100)
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    axes = fig.subplots(rows, cols, squeeze=False)
    font = 8 if max(nq, nk) <= 24 else 6
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= heads:
            ax.axis("off")
            continue
        ax.imshow(view.weights[h], cmap="viridis", vmin=0.0, aspect="auto", interpolation="none")
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xticks(range(nk), view.key_tokens, rotation=90, fontsize=font)
        ax.set_yticks(range(nq), view.query_tokens, fontsize=font)
        if h % cols == 0:
            ax.set_ylabel(view.query_label, fontsize=8)
        if h // cols == rows - 1 or h + cols >= heads:
            ax.set_xlabel(view.key_label, fontsize=8)
    heading = f"{view.kind}, layer {view.layer}" + (f" ({title})" if title else "")
    if view.note:
        heading += f"\n{view.note}"
    fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


__all__ = [
    "MAX_TOKENS",
    "AttentionView",
    "attention_arrays",
    "attention_maps",
    "collect_attention",
    "inspection_config",
    "render_png",
]
