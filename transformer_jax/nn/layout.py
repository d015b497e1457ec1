"""Weights laid out for a decoding loop, once per set of weights, outside its program.

A decoding step multiplies a few rows by each weight matrix. Two copies make those
matmuls cheaper on a CPU:
- each attention's query, key and value kernels joined into one (`nn.attention.
  with_fused_qkv`): one matmul over the joined kernel takes about two thirds of the
  time of the three;
- the output matrix in the other layout (`nn.embed.with_transposed`): a tied table
  [V, D] also as [D, V], which `Embed.attend` reads at one row and beyond `_FEW_ROWS`
  rows (at one row, 1.4 ms against 2.0-2.5 ms for the table itself at D 512, V 32,000),
  or where the table is in another dtype than the compute; an untied kernel [D, V] also
  as [V, D], which `OutputProjection` reads at 2 to `_FEW_ROWS` rows (as [V, D] times
  the rows: at GPT-2 small's 768 x 50,257 and 8 rows, 6.9 against 11.3 ms). Given the
  row counts a loop's steps will multiply, a copy is made only where they read it
  (`nn.embed.output_layouts`): greedy or beam 4 at batch 8 never read a tied table's
  copy, and skip 65 MB (translation's shape B) to 154 MB (GPT-2 small) and the time to
  make it; an untied kernel's copy is made only for them.
Made inside the decoding program instead, XLA folds both back into the matmuls or
repeats them every step. So `for_decoding` makes them beforehand and the program takes
them as arguments. `KeptLayout` keeps the copies of the last weights it saw, so that
calls after the first reuse them (for loops of other row counts, it grows to cover them).

Every decoding path (translation, generation, multimodal answers) lays its weights out
here. The layout applies where the params live on the CPU only. Elsewhere they come back
as they are: no gain was measured there, and the copies would take accelerator memory.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax

from transformer_jax.nn.attention import with_fused_qkv
from transformer_jax.nn.embed import (
    TRANSPOSED_KERNEL,
    TRANSPOSED_TABLE,
    output_layouts,
    with_transposed,
)

__all__ = ["KeptLayout", "for_decoding"]


def for_decoding(
    params,
    *,
    decoders: Sequence[str] = ("decoder",),
    tied_tables: Sequence[tuple[str, ...]] = (),
    untied_outputs: Sequence[tuple[str, ...]] = (),
    table_dtype=None,
    step_rows: Iterable[int] | None = None,
):
    """`params` (unboxed) with the decoding copies added: the joined q/k/v kernel of every
    attention under the top-level `decoders` (the stacks that decode step by step; an
    encoder's would be memory spent for nothing), and for each path in `tied_tables`
    (an `Embed` read as the output projection) its table as [D, V] in `table_dtype`
    (the compute dtype: the cast is then not repeated every step), and for each path in
    `untied_outputs` (an `OutputProjection`) its kernel as [V, D] in `table_dtype`; each
    only where decoding steps multiplying `step_rows` rows each (batch x beams, for each
    batch these params will decode; None: unknown) read it (`nn.embed.output_layouts`).
    The originals stay the same arrays; the copies take memory beside them (the
    decoders' attention kernels once more, and each output matrix copied).

    Params on another platform than the CPU, or traced ones (inside a program, where
    the copies would be folded back), are returned unboxed but otherwise as they are.
    Op by op, not jitted: a jitted program would return a copy of every leaf it passes
    through, where this adds the copies alone."""
    params = nn.unbox(params)  # the arrays of logically partitioned leaves, as apply reads them
    if _platforms(params) != {"cpu"}:
        return params
    out = dict(params)
    for name in decoders:
        if name in out:
            out[name] = with_fused_qkv(out[name])
    layouts = output_layouts(step_rows)
    for path in tied_tables:
        dtype = _at(out, path)["embedding"].dtype
        if "DV" in layouts or (table_dtype is not None and dtype != table_dtype):
            out = with_transposed(out, path, "embedding", TRANSPOSED_TABLE, table_dtype)
    if "VD" in layouts:
        for path in untied_outputs:
            out = with_transposed(out, path, "kernel", TRANSPOSED_KERNEL, table_dtype)
    return out


def _at(params, path: tuple[str, ...]):
    for name in path:
        params = params[name]
    return params


def _platforms(params) -> set[str]:
    """Where the leaves live (host arrays: where jit would place them); "traced" for
    leaves of a program being traced."""
    out: set[str] = set()
    for x in jax.tree.leaves(params):
        if isinstance(x, jax.core.Tracer):
            out.add("traced")
        elif isinstance(x, jax.Array):
            out |= {d.platform for d in x.devices()}
        else:
            out.add(jax.default_backend())
    return out


class KeptLayout:
    """`make(params, *key, step_rows=step_rows)`, kept for the last params seen (compared
    leaf by leaf, by identity) and key: a later call with the same arrays returns a layout
    over the same arrays, its copies made once. A layout kept for `step_rows` serves
    later `step_rows` that read no other layout of the output matrix
    (`nn.embed.output_layouts`); for others the same params are laid out again for the
    kept and the new row counts together, so that alternating batch sizes lay out at
    most twice. New params replace the kept copies (released before the new ones are
    made). Params whose leaves are not all `jax.Array`s (NumPy arrays
    can change in place) are laid out on every call and not kept.

    Only what `make` added is kept: the leaves it passed through are the params' own,
    taken again from the caller's params on each call. So the params are not held here,
    and the copies are released when the params die."""

    def __init__(self, make: Callable[..., Any]) -> None:
        self._make = make
        # (weak refs to the leaves, (key, step rows laid out for), treedef of the layout, its
        # leaves as (own, index of the params' own leaf, copy), finalizer)
        self._kept: tuple | None = None

    def __call__(self, params, *key, step_rows: Iterable[int] | None = None):
        leaves = jax.tree.leaves(params)
        step_rows = None if step_rows is None else tuple(step_rows)
        kept = self._kept
        if kept is not None:
            refs, (kept_key, kept_rows), treedef, parts, _ = kept
            same = kept_key == key and len(refs) == len(leaves)
            if same and all(r() is x for r, x in zip(refs, leaves, strict=True)):
                if output_layouts(step_rows) <= output_layouts(kept_rows):
                    return treedef.unflatten([leaves[i] if own else x for own, i, x in parts])
                # Laid out again for both: the copies only grow while the params live.
                step_rows = (
                    None if kept_rows is None or step_rows is None else kept_rows + step_rows
                )
        self.clear()
        laid = self._make(params, *key, step_rows=step_rows)
        if leaves and all(
            isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) for x in leaves
        ):
            index = {id(x): i for i, x in reversed(list(enumerate(leaves)))}
            laid_leaves, treedef = jax.tree.flatten(laid)
            parts = [
                (True, index[id(x)], None) if id(x) in index else (False, -1, x)
                for x in laid_leaves
            ]
            refs = [weakref.ref(x) for x in leaves]
            # The finalizer holds this object weakly: a dead layout needs no clearing.
            done = weakref.finalize(leaves[0], _clear_if_alive, weakref.ref(self))
            self._kept = (refs, (key, step_rows), treedef, parts, done)
        return laid

    def clear(self) -> None:
        """Drops the kept copies."""
        if self._kept is not None:
            self._kept[4].detach()  # its params may outlive it: it must not clear later ones
            self._kept = None


def _clear_if_alive(ref: weakref.ref) -> None:
    kept = ref()
    if kept is not None:
        kept.clear()
