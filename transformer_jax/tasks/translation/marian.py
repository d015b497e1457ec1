"""Marian translation models (Hugging Face `MarianMTModel` checkpoints) in this stack.

    from transformer_jax.tasks.translation.marian import import_marian
    import_marian("opus-mt-en-de", "runs/opus-en-de")
    TranslationPipeline.from_workdir("runs/opus-en-de")(["Hello world."])

A Marian checkpoint directory holds `config.json`, `model.safetensors`,
`vocab.json` (one piece -> id table, usually shared by both languages),
`source.spm` / `target.spm` (SentencePiece models that only segment text) and
optionally `generation_config.json`, `tokenizer_config.json` and
`target_vocab.json`. Weights are read from safetensors only; pickle files are
never loaded.

The architecture is the paper's post-LN encoder-decoder with biases on every
projection, a final-logits bias, sinusoidal positions laid out [sin | cos] and
LayerNorm epsilon 1e-5. Marian decodes from `<pad>` (the decoder start token)
and ends sentences with `</s>`.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

from transformer_jax.convert.safetensors_io import read_json, read_safetensors_dir
from transformer_jax.data.processors import register_processor

SPIECE_UNDERLINE = "\u2581"
# Added to the final-logits bias of tokens that generation must never produce
# (single-token `bad_words_ids`, e.g. Marian's <pad>): their probability is 0.
BANNED_LOGIT = -1.0e9
_ML_FLOATS = ("bfloat16", "float8_e4m3fn", "float8_e5m2")

_ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "swish": "swish",
    "silu": "silu",
}


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------


def _load_spm(model_bytes: bytes, what: str) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(bytes(model_bytes))
    except (RuntimeError, OSError, TypeError) as e:
        raise ValueError(f"{what} is not a SentencePiece model: {e}") from None
    return processor


def _check_vocab(vocab: Any, what: str) -> dict[str, int]:
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{what} must be a non-empty JSON object mapping pieces to ids")
    for piece, i in vocab.items():
        if not isinstance(piece, str) or isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"{what} maps {piece!r} to {i!r}: ids must be non-negative integers")
    return dict(vocab)


class MarianSideTokenizer:
    """One language side of a Marian tokenizer: a SentencePiece model segments the
    text, the vocabulary maps pieces to ids (unknown pieces -> `<unk>`), and
    `encode` appends `</s>`.

    Marian has no beginning-of-sentence token: the decoder starts from `<pad>`, so
    `bos_id` (the decoder start token of this stack) is the pad id.
    """

    def __init__(
        self,
        spm_bytes: bytes,
        vocab: dict[str, int],
        *,
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        pad_token: str = "<pad>",
        what: str = "tokenizer",
    ) -> None:
        self._spm_bytes = bytes(spm_bytes)
        self._sp = _load_spm(self._spm_bytes, f"{what} SentencePiece model")
        self.vocab = _check_vocab(vocab, f"{what} vocabulary")
        for role, token in (("eos", eos_token), ("unk", unk_token), ("pad", pad_token)):
            if token not in self.vocab:
                raise ValueError(f"{what} vocabulary has no {role} token {token!r}")
        self.eos_token, self.unk_token, self.pad_token = eos_token, unk_token, pad_token
        self.eos_id = self.vocab[eos_token]
        self.unk_id = self.vocab[unk_token]
        self.pad_id = self.vocab[pad_token]
        self.bos_id = self.pad_id
        self.vocab_size = max(self.vocab.values()) + 1
        self._pieces: dict[int, str] = {}
        for piece, i in self.vocab.items():
            self._pieces.setdefault(i, piece)
        self._skip = {self.pad_id, self.unk_id}

    def tokenize(self, text: str) -> list[str]:
        """Pieces of `text`; a leading `>>xx<<` language code stays one piece."""
        if not isinstance(text, str):
            raise ValueError(f"Tokenizer input must be str, got {type(text).__name__}.")
        code: list[str] = []
        if text.startswith(">>"):
            end = text.find("<<")
            if end != -1:
                code, text = [text[: end + 2]], text[end + 2 :]
        return code + list(self._sp.encode(text, out_type=str))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, ending in eos."""
        return [self.vocab.get(p, self.unk_id) for p in self.tokenize(text)] + [self.eos_id]

    def id_to_piece(self, i: int) -> str:
        return self._pieces.get(int(i), self.unk_token)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`; stops at the first eos, skips pad, unk and ids outside the vocabulary."""
        pieces: list[str] = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if i == self.eos_id:
                break
            if i in self._skip or i not in self._pieces:
                continue
            pieces.append(self._pieces[i])
        return self.detokenize(pieces)

    def detokenize(self, pieces: Sequence[str]) -> str:
        sp = self._sp
        unk = sp.unk_id()
        if all(sp.piece_to_id(p) != unk for p in pieces):
            text = sp.decode_pieces(list(pieces))
        else:  # pieces this model does not know (a shared vocabulary): join their surfaces
            text = "".join(pieces)
        return text.replace(SPIECE_UNDERLINE, " ").strip()

    def spm_bytes(self) -> bytes:
        return self._spm_bytes

    def __repr__(self) -> str:
        return f"MarianSideTokenizer(vocab_size={self.vocab_size})"


class MarianTokenizer:
    """The source and target tokenizers of a Marian model (`.source`, `.target`)."""

    def __init__(
        self,
        source_spm: bytes,
        target_spm: bytes,
        vocab: dict[str, int],
        target_vocab: dict[str, int] | None = None,
        *,
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        pad_token: str = "<pad>",
    ) -> None:
        specials = dict(eos_token=eos_token, unk_token=unk_token, pad_token=pad_token)
        self.source = MarianSideTokenizer(source_spm, vocab, what="source", **specials)
        self.target = MarianSideTokenizer(
            target_spm, vocab if target_vocab is None else target_vocab, what="target", **specials
        )
        self.separate_vocabs = target_vocab is not None
        self.specials = specials
        self.source.bundle = self.target.bundle = self  # stored with the pair

    @classmethod
    def from_dir(cls, src_dir: str) -> MarianTokenizer:
        """Reads source.spm, target.spm, vocab.json (+ tokenizer_config.json, target_vocab.json)."""
        tok_cfg = read_json(src_dir, "tokenizer_config.json", required=False) or {}
        specials = {}
        for key, default in (("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "<pad>")):
            value = tok_cfg.get(key, default)
            if isinstance(value, dict):  # a serialized AddedToken
                value = value.get("content", default)
            if not isinstance(value, str):
                raise ValueError(f"tokenizer_config.json: unsupported {key}={value!r}")
            specials[key] = value
        source_spm = _read_bytes(src_dir, "source.spm")
        target_spm = _read_bytes(src_dir, "target.spm")
        vocab = read_json(src_dir, "vocab.json")
        target_vocab = None
        if tok_cfg.get("separate_vocabs", False):
            target_vocab = read_json(src_dir, "target_vocab.json")
        return cls(source_spm, target_spm, vocab, target_vocab, **specials)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "marian",
            "source_spm": base64.b64encode(self.source.spm_bytes()).decode("ascii"),
            "target_spm": base64.b64encode(self.target.spm_bytes()).decode("ascii"),
            "vocab": self.source.vocab,
            "target_vocab": self.target.vocab if self.separate_vocabs else None,
            **self.specials,
        }

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> MarianTokenizer:
        if not isinstance(blob, dict) or blob.get("kind") != "marian":
            raise ValueError("not a Marian tokenizer blob (kind != 'marian')")
        missing = [k for k in ("source_spm", "target_spm", "vocab") if k not in blob]
        if missing:
            raise ValueError(f"Marian tokenizer blob lacks {missing}")

        def b64(key: str) -> bytes:
            try:
                return base64.b64decode(blob[key], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise ValueError(f"Marian tokenizer blob: {key} is not base64") from None

        specials = {k: blob[k] for k in ("eos_token", "unk_token", "pad_token") if k in blob}
        return cls(
            b64("source_spm"),
            b64("target_spm"),
            blob["vocab"],
            blob.get("target_vocab"),
            **specials,
        )


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def _read_bytes(src_dir: str, name: str) -> bytes:
    path = os.path.join(src_dir, name)
    if not os.path.isfile(path):
        raise ValueError(f"missing {name} in {src_dir}")
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------


def _int(hf: dict[str, Any], key: str, default: Any = ...) -> int:
    value = hf.get(key, default)
    if value is ...:
        raise ValueError(f"config.json has no {key}")
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"config.json: unsupported {key}={value!r} (need one integer)")
    return value


def _flag(hf: dict[str, Any], key: str, default: bool) -> bool:
    value = hf.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"config.json: unsupported {key}={value!r} (need true/false)")
    return value


def _check_marian_config(hf: dict[str, Any]) -> None:
    if not isinstance(hf, dict):
        raise ValueError("config.json must hold a JSON object")
    if hf.get("model_type", "marian") != "marian":
        raise ValueError(
            f"config.json: unsupported model_type={hf['model_type']!r} (need 'marian')"
        )
    arch = hf.get("architectures")
    if arch and "MarianMTModel" not in arch:
        raise ValueError(f"config.json: unsupported architectures={arch!r} (need MarianMTModel)")
    # Options of older configs that MarianMTModel never implemented.
    for key in (
        "normalize_before",
        "normalize_embedding",
        "add_final_layer_norm",
        "add_bias_logits",
    ):
        if hf.get(key):
            raise ValueError(
                f"config.json: unsupported {key}={hf[key]!r} (MarianMTModel is post-LN)"
            )
    if hf.get("static_position_embeddings") is False:
        raise ValueError("config.json: unsupported static_position_embeddings=False")


# Generation keys of a legacy config.json (read when there is no generation_config.json).
_GENERATION_KEYS = (
    "num_beams",
    "max_length",
    "max_new_tokens",
    "length_penalty",
    "early_stopping",
    "bad_words_ids",
    "decoder_start_token_id",
    "eos_token_id",
    "forced_eos_token_id",
    "forced_bos_token_id",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "repetition_penalty",
    "min_length",
    "min_new_tokens",
    "do_sample",
    "num_beam_groups",
    "diversity_penalty",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
)
# Settings this import cannot carry, with the values under which they change nothing.
_NEUTRAL = {
    "forced_bos_token_id": (None,),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "repetition_penalty": (None, 1, 1.0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "do_sample": (None, False),
    "num_beam_groups": (None, 1),
    "diversity_penalty": (None, 0, 0.0),
    "exponential_decay_length_penalty": (None,),
    "suppress_tokens": (None, []),
    "begin_suppress_tokens": (None, []),
}
# generate() without max_length or max_new_tokens makes this many new tokens.
HF_DEFAULT_NEW_TOKENS = 20


def _generation_settings(src_dir: str, hf: dict[str, Any]) -> dict[str, Any]:
    """Decoding defaults as `generate()` reads them: generation_config.json when there is
    one, else the generation keys of config.json. Unset (null) keys are left out."""
    gen = read_json(src_dir, "generation_config.json", required=False)
    if gen is None:
        gen = {k: hf[k] for k in _GENERATION_KEYS if k in hf}
    elif not isinstance(gen, dict):
        raise ValueError("generation_config.json must hold a JSON object")
    gen = {k: v for k, v in gen.items() if v is not None}
    for key, ok in _NEUTRAL.items():
        if key in gen and gen[key] not in ok:
            raise ValueError(f"generation settings: unsupported {key}={gen[key]!r}")
    return gen


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------

Entry = tuple[str, tuple[str, ...], tuple[int, ...], Callable[[np.ndarray], np.ndarray]]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _embedding_entries(weights, *, share: bool, tie: bool, V: int, Vt: int, D: int):
    """(entries, ignored names, share_embeddings, tie_output) for the token tables."""
    enc, dec, shared, lm = (
        "model.encoder.embed_tokens.weight",
        "model.decoder.embed_tokens.weight",
        "model.shared.weight",
        "lm_head.weight",
    )
    keep = lambda w: w  # noqa: E731
    transpose = lambda w: w.T  # noqa: E731
    if share and tie:
        first = next((n for n in (shared, enc, dec, lm) if n in weights), shared)
        ignored = {shared, enc, dec, lm} - {first}
        return [(first, ("embed", "embedding"), (V, D), keep)], ignored, True, True
    if share:  # one vocabulary, but the tables and the output projection are untied
        src = enc if enc in weights else shared
        tgt = dec if dec in weights else shared
        entries = [(lm, ("logits_dense", "kernel"), (V, D), transpose)]
        share_tables = src == tgt or (
            src in weights and tgt in weights and _same(weights[src], weights[tgt])
        )
        entries.append((src, ("embed", "embedding"), (V, D), keep))
        if not share_tables:
            entries.append((tgt, ("target_embed", "embedding"), (V, D), keep))
        ignored = {shared, enc, dec} - {src, tgt} | ({tgt} if share_tables else set())
        return entries, ignored, share_tables, False
    entries = [
        (enc, ("embed", "embedding"), (V, D), keep),
        (dec, ("target_embed", "embedding"), (Vt, D), keep),
    ]
    if tie:
        return entries, {lm}, False, True
    entries.append((lm, ("logits_dense", "kernel"), (Vt, D), transpose))
    return entries, set(), False, False


def _layer_entries(cfg) -> list[Entry]:
    D, N, H, F = cfg.d_model, cfg.num_heads, cfg.dim_per_head, cfg.d_ff
    out: list[Entry] = []

    def attention(hf: str, ours: tuple[str, ...]) -> None:
        for proj, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            out.append(
                (
                    f"{hf}.{proj}.weight",
                    ours + (name, "kernel"),
                    (N * H, D),
                    lambda w: w.T.reshape(D, N, H),
                )
            )
            out.append(
                (f"{hf}.{proj}.bias", ours + (name, "bias"), (N * H,), lambda b: b.reshape(N, H))
            )
        out.append(
            (
                f"{hf}.out_proj.weight",
                ours + ("out", "kernel"),
                (D, N * H),
                lambda w: w.T.reshape(N, H, D),
            )
        )
        out.append((f"{hf}.out_proj.bias", ours + ("out", "bias"), (D,), lambda b: b))

    def norm(hf: str, ours: tuple[str, ...]) -> None:
        out.append((f"{hf}.weight", ours + ("norm", "scale"), (D,), lambda w: w))
        out.append((f"{hf}.bias", ours + ("norm", "bias"), (D,), lambda b: b))

    def ffn(hf: str, ours: tuple[str, ...]) -> None:
        out.append((f"{hf}.fc1.weight", ours + ("mlp", "wi", "kernel"), (F, D), lambda w: w.T))
        out.append((f"{hf}.fc1.bias", ours + ("mlp", "wi", "bias"), (F,), lambda b: b))
        out.append((f"{hf}.fc2.weight", ours + ("mlp", "wo", "kernel"), (D, F), lambda w: w.T))
        out.append((f"{hf}.fc2.bias", ours + ("mlp", "wo", "bias"), (D,), lambda b: b))

    for i in range(cfg.num_encoder_layers):
        hf, ours = f"model.encoder.layers.{i}", ("encoder", f"layer_{i}")
        attention(f"{hf}.self_attn", ours + ("self_attention",))
        norm(f"{hf}.self_attn_layer_norm", ours + ("attention_block",))
        ffn(hf, ours)
        norm(f"{hf}.final_layer_norm", ours + ("mlp_block",))
    for i in range(cfg.num_decoder_layers):
        hf, ours = f"model.decoder.layers.{i}", ("decoder", f"layer_{i}")
        attention(f"{hf}.self_attn", ours + ("self_attention",))
        norm(f"{hf}.self_attn_layer_norm", ours + ("attention_block",))
        attention(f"{hf}.encoder_attn", ours + ("cross_attention",))
        norm(f"{hf}.encoder_attn_layer_norm", ours + ("cross_block",))
        ffn(hf, ours)
        norm(f"{hf}.final_layer_norm", ours + ("mlp_block",))
    return out


def _expected_shapes(cfg) -> dict[tuple[str, ...], tuple[int, ...]]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from transformer_jax.tasks.translation.model import EncoderDecoder

    model = EncoderDecoder(cfg)
    ids = jnp.ones((1, 2), jnp.int32)
    tree = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), ids, ids)["params"]))
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _convert_weights(
    weights: dict[str, np.ndarray], entries: list[Entry], ignored: set[str], cfg
) -> dict[str, Any]:
    missing = [name for name, *_ in entries if name not in weights]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ValueError(f"model.safetensors lacks weights {missing[:3]}{more}")
    known = {name for name, *_ in entries} | ignored
    known |= {"model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"}
    unexpected = sorted(set(weights) - known)
    if unexpected:
        more = f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
        raise ValueError(f"model.safetensors has unexpected weights {unexpected[:3]}{more}")
    expected = _expected_shapes(cfg)
    params: dict[str, Any] = {}
    filled = set()
    for name, path, hf_shape, transform in entries:
        array = weights[name]
        if tuple(array.shape) != hf_shape:
            raise ValueError(
                f"weight {name} has shape {tuple(array.shape)}, config.json implies {hf_shape}"
            )
        if not (np.issubdtype(array.dtype, np.floating) or array.dtype.name in _ML_FLOATS):
            raise ValueError(f"weight {name} has non-float dtype {array.dtype}")
        value = np.ascontiguousarray(transform(array.astype(np.float32)))
        if path not in expected or expected[path] != value.shape:
            raise ValueError(f"weight {name} does not fit parameter {'/'.join(path)}")
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        filled.add(path)
    unfilled = sorted(set(expected) - filled)
    if unfilled:
        raise ValueError(f"no weight for parameter {'/'.join(unfilled[0])}")
    return params


# ---------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------


def marian_model_config(
    hf: dict[str, Any],
    weights: dict[str, np.ndarray] | None = None,
    gen: dict[str, Any] | None = None,
):
    """(TransformerConfig, weight entries, ignored weight names) for a Marian config.json."""
    from transformer_jax.nn.config import TransformerConfig

    _check_marian_config(hf)
    gen = gen or {}
    D = _int(hf, "d_model")
    heads = _int(hf, "encoder_attention_heads")
    if _int(hf, "decoder_attention_heads") != heads:
        raise ValueError(
            "config.json: encoder_attention_heads != decoder_attention_heads is not supported"
        )
    d_ff = _int(hf, "encoder_ffn_dim")
    if _int(hf, "decoder_ffn_dim") != d_ff:
        raise ValueError("config.json: encoder_ffn_dim != decoder_ffn_dim is not supported")
    if D <= 0 or heads <= 0 or D % heads:
        raise ValueError(f"config.json: unsupported d_model={D} with {heads} attention heads")
    if D % 2:
        raise ValueError(f"config.json: unsupported odd d_model={D}")
    act = hf.get("activation_function", "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(
            f"config.json: unsupported activation_function={act!r} "
            f"(choose one of {sorted(_ACTIVATIONS)})"
        )
    V = _int(hf, "vocab_size")
    share = _flag(hf, "share_encoder_decoder_embeddings", True)
    tie = _flag(hf, "tie_word_embeddings", True)
    Vt = V if share else (hf.get("decoder_vocab_size") or V)
    if isinstance(Vt, bool) or not isinstance(Vt, int):
        raise ValueError(f"config.json: unsupported decoder_vocab_size={Vt!r}")
    pad = _int(hf, "pad_token_id")
    eos = _int(gen, "eos_token_id", _int(hf, "eos_token_id"))
    start = _int(gen, "decoder_start_token_id", _int(hf, "decoder_start_token_id", pad))
    for key, value in (
        ("pad_token_id", pad),
        ("eos_token_id", eos),
        ("decoder_start_token_id", start),
    ):
        if not 0 <= value < min(V, Vt):
            raise ValueError(f"config.json: {key}={value} is outside the vocabulary")
    max_pos = _int(hf, "max_position_embeddings")
    if max_pos < 2:
        raise ValueError(f"config.json: unsupported max_position_embeddings={max_pos}")
    dropout = hf.get("dropout", 0.1)
    if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"config.json: unsupported dropout={dropout!r}")

    entries, ignored, share_tables, tie_output = _embedding_entries(
        weights or {}, share=share, tie=tie, V=V, Vt=Vt, D=D
    )
    entries.append(("final_logits_bias", ("final_logits_bias",), (1, Vt), lambda b: b.reshape(-1)))
    try:
        cfg = TransformerConfig(
            vocab_size=V,
            target_vocab_size=None if share_tables else Vt,
            d_model=D,
            num_heads=heads,
            d_ff=d_ff,
            num_encoder_layers=_int(hf, "encoder_layers"),
            num_decoder_layers=_int(hf, "decoder_layers"),
            dropout_rate=float(dropout),
            activation=_ACTIVATIONS[act],
            norm_position="post",
            layer_norm_eps=1e-5,
            scale_embeddings=_flag(hf, "scale_embedding", False),
            share_embeddings=share_tables,
            tie_output=tie_output,
            final_logits_bias=True,
            attention_bias=True,
            position_layout="halves",
            max_position=max_pos,
            pad_id=pad,
            eos_id=eos,
            decoder_start_id=start,
        )
    except ValueError as e:
        raise ValueError(f"config.json: {e}") from None
    return cfg, entries + _layer_entries(cfg), ignored


def _ban_tokens(params: dict[str, Any], gen: dict[str, Any], vocab_size: int) -> list[int]:
    """Single-token `bad_words_ids` become a -1e9 final-logits bias (probability 0)."""
    bad = gen.get("bad_words_ids") or []
    if not isinstance(bad, list):
        raise ValueError(f"generation settings: unsupported bad_words_ids={bad!r}")
    banned = []
    for seq in bad:
        if not (isinstance(seq, list) and len(seq) == 1 and isinstance(seq[0], int)):
            raise ValueError(
                f"generation settings: unsupported bad_words_ids entry {seq!r} (only single tokens)"
            )
        if not 0 <= seq[0] < vocab_size:
            raise ValueError(
                f"generation settings: bad_words_ids token {seq[0]} is outside the vocabulary"
            )
        banned.append(seq[0])
    if banned:
        bias = params["final_logits_bias"].copy()
        bias[np.asarray(banned)] = BANNED_LOGIT
        params["final_logits_bias"] = bias
    return banned


def _check_tokenizer(tok: MarianTokenizer, cfg) -> None:
    sides = (("source", tok.source, cfg.vocab_size), ("target", tok.target, cfg.output_vocab_size))
    for side, t, size in sides:
        if t.vocab_size > size:
            raise ValueError(
                f"{side} vocabulary has id {t.vocab_size - 1}, the model has only {size} embeddings"
            )
        if t.eos_id != cfg.eos_id:
            raise ValueError(
                f"{side} vocabulary puts {t.eos_token} at {t.eos_id}, "
                f"config.json eos_token_id={cfg.eos_id}"
            )
        if t.pad_id != cfg.pad_id:
            raise ValueError(
                f"{side} vocabulary puts {t.pad_token} at {t.pad_id}, "
                f"config.json pad_token_id={cfg.pad_id}"
            )


def _forced_eos(gen: dict[str, Any], eos_id: int) -> bool:
    """Whether generation forces eos as the last token (`forced_eos_token_id`)."""
    forced = gen.get("forced_eos_token_id")
    if forced is None:
        return False
    if isinstance(forced, list) and len(forced) == 1:
        forced = forced[0]
    if forced != eos_id or isinstance(forced, bool):
        raise ValueError(
            f"generation settings: unsupported forced_eos_token_id={gen['forced_eos_token_id']!r}"
            f" (only the eos token {eos_id})"
        )
    return True


def _run_config(cfg, gen: dict[str, Any], vocab_size: int):
    from transformer_jax.config import validate
    from transformer_jax.tasks.translation.config import translation_base

    run = translation_base()
    run.data.max_length = cfg.max_position
    run.tokenizer.vocab_size = vocab_size
    m = run.model
    m.d_model, m.num_heads, m.num_kv_heads, m.d_ff = cfg.d_model, cfg.num_heads, 0, cfg.d_ff
    m.num_encoder_layers, m.num_decoder_layers = cfg.num_encoder_layers, cfg.num_decoder_layers
    m.dropout_rate, m.activation, m.norm_position = cfg.dropout_rate, cfg.activation, "post"
    m.layer_norm_eps, m.scale_embeddings = cfg.layer_norm_eps, cfg.scale_embeddings
    m.share_embeddings = cfg.share_embeddings
    m.tie_output = cfg.tie_output
    m.attention_bias = True
    m.position_layout, m.max_position = "halves", cfg.max_position

    # The settings keep Hugging Face's meaning: its beam scoring ("hf": logp / len**length_penalty,
    # its early_stopping), not the paper's GNMT penalty (decode.alpha is not used).
    beams = _int(gen, "num_beams", 1)
    if beams < 1:
        raise ValueError(f"generation settings: unsupported num_beams={beams}")
    lp = gen.get("length_penalty", 1.0)
    if isinstance(lp, bool) or not isinstance(lp, int | float) or not np.isfinite(lp):
        raise ValueError(f"generation settings: unsupported length_penalty={lp!r}")
    early = gen.get("early_stopping", False)
    if not (early is False or early is True or early == "never"):
        raise ValueError(f"generation settings: unsupported early_stopping={early!r}")
    run.decode.beam_size = beams
    run.decode.length_penalty_type = "hf"
    run.decode.length_penalty = float(lp)
    run.decode.early_stopping = {False: "false", True: "true"}.get(early, "never")
    run.decode.forced_eos = _forced_eos(gen, cfg.eos_id)
    # Hugging Face's max_length counts the decoder start token: max_length - 1 new tokens
    # (max_new_tokens, where set, wins; with neither, 20). Ours counts the new tokens only.
    # The position table bounds both.
    if "max_new_tokens" in gen:
        new_tokens = _int(gen, "max_new_tokens")
    elif "max_length" in gen:
        new_tokens = _int(gen, "max_length") - 1
    else:
        new_tokens = HF_DEFAULT_NEW_TOKENS
    max_decode_len = max(1, min(new_tokens, cfg.max_position - 1))
    run.decode.max_decode_len = max_decode_len
    run.decode.extra_length = max_decode_len  # no source-length-dependent cap
    validate(run)
    return run


def _sizes(tree: dict[str, Any]):
    for value in tree.values():
        if isinstance(value, dict):
            yield from _sizes(value)
        else:
            yield int(np.size(value))


def import_marian(src_dir: str, workdir: str) -> dict[str, Any]:
    """Converts a Marian checkpoint directory into a workdir checkpoint at step 0.

    Returns a summary: workdir, step, num_params, model (the model config as JSON),
    decode (the decoding settings stored in the run config) and banned_tokens.
    """
    from transformer_jax.nn.config import config_to_json
    from transformer_jax.train.checkpoint import check_import, save_imported

    src_dir = check_import(src_dir, workdir, "Marian model")
    hf = read_json(src_dir, "config.json")
    _check_marian_config(hf)
    gen = _generation_settings(src_dir, hf)
    weights = read_safetensors_dir(src_dir)
    tokenizer = MarianTokenizer.from_dir(src_dir)
    cfg, entries, ignored = marian_model_config(hf, weights, gen)
    if "final_logits_bias" not in weights:  # optional in MarianMTModel checkpoints (zeros)
        weights["final_logits_bias"] = np.zeros((1, cfg.output_vocab_size), np.float32)
    _check_tokenizer(tokenizer, cfg)
    params = _convert_weights(weights, entries, ignored, cfg)
    banned = _ban_tokens(params, gen, cfg.output_vocab_size)
    run = _run_config(cfg, gen, tokenizer.source.vocab_size)

    save_imported(
        workdir,
        params,
        config=run.to_dict(),
        model=config_to_json(cfg),
        tokenizer=tokenizer.to_json(),
    )
    return {
        "workdir": os.path.abspath(workdir),
        "step": 0,
        "num_params": sum(_sizes(params)),
        "model": config_to_json(cfg),
        "decode": dict(run.decode.to_dict()),
        "banned_tokens": banned,
    }


# ---------------------------------------------------------------------------------------
# Stored with checkpoints
# ---------------------------------------------------------------------------------------


def _side_to_json(side: MarianSideTokenizer) -> dict[str, Any]:
    pair = side.bundle
    return {"side": "source" if side is pair.source else "target", "pair": pair.to_json()}


def _side_from_json(blob: dict[str, Any]) -> MarianSideTokenizer:
    if blob.get("side") not in ("source", "target"):
        raise ValueError(f"Marian tokenizer blob: side {blob.get('side')!r}")
    return getattr(MarianTokenizer.from_json(blob["pair"]), blob["side"])


# "marian": the pair, as checkpoints written before processors had names hold it.
register_processor("marian", MarianTokenizer, MarianTokenizer.to_json, MarianTokenizer.from_json)
register_processor("marian_side", MarianSideTokenizer, _side_to_json, _side_from_json)
