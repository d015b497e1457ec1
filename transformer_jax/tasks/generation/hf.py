"""Hugging Face causal language models (GPT-2, Llama, Mistral, Qwen2) in this stack, both ways.

    from transformer_jax.tasks.generation.hf import export_hf, import_hf
    import_hf("gpt2", "runs/gpt2")          # a Hub folder -> a "causal_lm" workdir at step 0
    export_hf("runs/gpt2", "out/gpt2")      # a workdir -> a folder transformers loads
    config, params = convert(hf_config, tensors)  # in memory: our CausalLM's config, params

A Hub folder holds `config.json` (`model_type` "gpt2", "llama", "mistral" or "qwen2"),
`model.safetensors` (or shards; pickle files are never loaded) and the tokenizer:
`tokenizer.json` (GPT-2 also: `vocab.json` + `merges.txt`), with `tokenizer_config.json`
(and config.json's / generation_config.json's token ids) for the special tokens.

Settings this stack cannot run exactly (RoPE scaling, a sliding attention window shorter
than the context, GPT-2's per-layer attention scaling, ...) are refused with one line.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers import processors as tk_processors
from tokenizers.models import BPE

from transformer_jax.convert.params import (
    Entry,
    convert_entries,
    flatten,
    param_shapes,
    set_path,
    shown,
)
from transformer_jax.convert.safetensors_io import (
    export_destination,
    read_json,
    read_safetensors_dir,
    write_hf_folder,
)
from transformer_jax.data.hf_tokenizer import CAUSAL_TYPES, HFTokenizer, add_specials, token_str

MODEL_TYPES = CAUSAL_TYPES
_ARCH = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
_GPT2_ACT_IN = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_GPT2_ACT_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------


def _first_id(value: Any) -> int | None:
    """A token id of config.json (an int, or a list whose first id is taken)."""
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def tokenizer_from_dir(src_dir: str, model_type: str, hf: dict[str, Any]) -> HFTokenizer:
    """The tokenizer of a causal LM's Hub folder with its special tokens: bos, pad and unk
    from tokenizer_config.json (else config.json's ids); eos from generation_config.json or
    config.json (the id `generate()` stops at), else tokenizer_config.json."""
    tok_cfg = read_json(src_dir, "tokenizer_config.json", required=False) or {}
    if not isinstance(tok_cfg, dict):
        raise ValueError("tokenizer_config.json must hold a JSON object")
    gen_cfg = read_json(src_dir, "generation_config.json", required=False) or {}
    if not isinstance(gen_cfg, dict):
        raise ValueError("generation_config.json must hold a JSON object")
    path = lambda name: os.path.join(src_dir, name)  # noqa: E731
    if os.path.isfile(path("tokenizer.json")):
        try:
            tok = Tokenizer.from_file(path("tokenizer.json"))
        except Exception as e:  # the library's own exception type
            raise ValueError(f"{path('tokenizer.json')} is not a tokenizer: {e}") from None
        fresh = False
    elif model_type == "gpt2" and os.path.isfile(path("vocab.json")):
        if not os.path.isfile(path("merges.txt")):
            raise ValueError(f"missing merges.txt in {src_dir} (next to vocab.json)")
        vocab, merges = BPE.read_file(path("vocab.json"), path("merges.txt"))
        prefix = bool(tok_cfg.get("add_prefix_space", False))
        tok = Tokenizer(
            BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
        )
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = tk_processors.ByteLevel(trim_offsets=False)
        fresh = True
    else:
        other = " or vocab.json + merges.txt" if model_type == "gpt2" else ""
        raise ValueError(f"no tokenizer in {src_dir}: need tokenizer.json{other}")

    def from_id(key: str, *sources: dict[str, Any]) -> str | None:
        for source in sources:
            i = _first_id(source.get(key))
            if i is not None:
                token = tok.id_to_token(i)
                if token is None:
                    raise ValueError(f"{key}={i} is not in the tokenizer's vocabulary")
                return token
        return None

    specials: dict[str, str] = {}
    for role in _ROLES:
        named = token_str(tok_cfg.get(role))
        by_id = from_id(f"{role}_id", gen_cfg, hf)
        value = by_id if role == "eos_token" and by_id is not None else (named or by_id)
        if value is not None:
            specials[role] = value
    if "eos_token" not in specials:
        raise ValueError("no eos token: config.json has no eos_token_id, nor tokenizer_config")
    missing = [v for v in specials.values() if tok.token_to_id(v) is None]
    if missing:
        raise ValueError(f"the tokenizer's vocabulary lacks the special token(s) {missing}")
    if fresh:
        add_specials(tok, tok_cfg, specials)
    return HFTokenizer(tok, model_type=model_type, specials=specials)


def _adds_bos(src_dir: str, tok: HFTokenizer) -> bool:
    """Whether transformers' tokenizer starts an input with bos (Llama's does, GPT-2's and
    Qwen2's do not): tokenizer_config.json's add_bos_token, else what tokenizer.json does."""
    if tok.bos_id < 0:
        return False
    flag = (read_json(src_dir, "tokenizer_config.json", required=False) or {}).get("add_bos_token")
    if isinstance(flag, bool):
        return flag
    return tok.backend.encode("a", add_special_tokens=True).ids[:1] == [tok.bos_id]


# ---------------------------------------------------------------------------------------
# Weights: (HF name, our path, HF shape, to ours, to HF)
# ---------------------------------------------------------------------------------------

_keep = (lambda w: w, lambda w: w)
_linear = (lambda w: w.T, lambda w: w.T)
_QKV = ("query", "key", "value")


def _gpt2_entries(*, prefix: str, D: int, N: int, F: int, layers: int, V: int, P: int, tied: bool):
    """GPT-2's tensors; its fused `c_attn` appears split as `c_attn.{q,k,v}.{weight,bias}`
    (Conv1D weights are [in, out])."""
    H = D // N
    out: list[Entry] = [
        (f"{prefix}wte.weight", ("embed", "embedding"), (V, D), *_keep),
        (f"{prefix}wpe.weight", ("positions", "positions", "embedding"), (P, D), *_keep),
    ]

    def norm(hf, ours):
        out.append((f"{hf}.weight", ours + ("scale",), (D,), *_keep))
        out.append((f"{hf}.bias", ours + ("bias",), (D,), *_keep))

    head_in = (lambda w: w.reshape(D, N, H), lambda k: k.reshape(D, N * H))
    head_bias = (lambda b: b.reshape(N, H), lambda b: b.reshape(N * H))
    head_out = (lambda w: w.reshape(N, H, D), lambda k: k.reshape(N * H, D))
    for i in range(layers):
        hf, ours = f"{prefix}h.{i}.", ("decoder", f"layer_{i}")
        att = ours + ("self_attention",)
        norm(f"{hf}ln_1", ours + ("attention_block", "norm"))
        for part, name in zip("qkv", _QKV, strict=True):
            c = f"{hf}attn.c_attn.{part}"
            out.append((f"{c}.weight", att + (name, "kernel"), (D, D), *head_in))
            out.append((f"{c}.bias", att + (name, "bias"), (D,), *head_bias))
        out.append((f"{hf}attn.c_proj.weight", att + ("out", "kernel"), (D, D), *head_out))
        out.append((f"{hf}attn.c_proj.bias", att + ("out", "bias"), (D,), *_keep))
        norm(f"{hf}ln_2", ours + ("mlp_block", "norm"))
        mlp = ours + ("mlp",)
        out.append((f"{hf}mlp.c_fc.weight", mlp + ("wi", "kernel"), (D, F), *_keep))
        out.append((f"{hf}mlp.c_fc.bias", mlp + ("wi", "bias"), (F,), *_keep))
        out.append((f"{hf}mlp.c_proj.weight", mlp + ("wo", "kernel"), (F, D), *_keep))
        out.append((f"{hf}mlp.c_proj.bias", mlp + ("wo", "bias"), (D,), *_keep))
    norm(f"{prefix}ln_f", ("decoder", "final_norm"))
    if not tied:
        out.append(("lm_head.weight", ("logits_dense", "kernel"), (V, D), *_linear))
    return out


def _split_c_attn(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GPT-2's fused q/k/v projection as three tensors (see `_gpt2_entries`)."""
    out = {}
    for name, value in weights.items():
        base, _, kind = name.rpartition(".")
        if base.endswith("attn.c_attn") and kind in ("weight", "bias"):
            if value.shape[-1] % 3:
                raise ValueError(f"weight {name} has shape {value.shape}: not three equal parts")
            for part, piece in zip("qkv", np.split(value, 3, axis=-1), strict=True):
                out[f"{base}.{part}.{kind}"] = piece
        else:
            out[name] = value
    return out


def _join_c_attn(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in tensors.items():
        base, _, kind = name.rpartition(".")
        if base.endswith(("attn.c_attn.q", "attn.c_attn.k", "attn.c_attn.v")):
            fused = f"{base[:-2]}.{kind}"
            if fused not in out:
                parts = [tensors[f"{base[:-1]}{p}.{kind}"] for p in "qkv"]
                out[fused] = np.ascontiguousarray(np.concatenate(parts, axis=-1))
        else:
            out[name] = value
    return out


def _llama_entries(
    *,
    prefix: str,
    D: int,
    N: int,
    K: int,
    Hd: int,
    F: int,
    layers: int,
    V: int,
    tied: bool,
    qkv_bias: bool,
    out_bias: bool,
    mlp_bias: bool,
):
    out: list[Entry] = [(f"{prefix}embed_tokens.weight", ("embed", "embedding"), (V, D), *_keep)]

    def dense(hf, ours, n_out, n_in, bias):
        out.append((f"{hf}.weight", ours + ("kernel",), (n_out, n_in), *_linear))
        if bias:
            out.append((f"{hf}.bias", ours + ("bias",), (n_out,), *_keep))

    for i in range(layers):
        hf, ours = f"{prefix}layers.{i}.", ("decoder", f"layer_{i}")
        att = ours + ("self_attention",)
        out.append((f"{hf}input_layernorm.weight", ours + ("attention_block", "norm", "scale"),
                    (D,), *_keep))  # fmt: skip
        for proj, name, heads in (("q_proj", "query", N), ("k_proj", "key", K), ("v_proj", "value", K)):  # fmt: skip
            kernel = (
                lambda w, h=heads: w.T.reshape(D, h, Hd),
                lambda k, h=heads: k.reshape(D, h * Hd).T,
            )
            bias = (lambda b, h=heads: b.reshape(h, Hd), lambda b, h=heads: b.reshape(h * Hd))
            c = f"{hf}self_attn.{proj}"
            out.append((f"{c}.weight", att + (name, "kernel"), (heads * Hd, D), *kernel))
            if qkv_bias:
                out.append((f"{c}.bias", att + (name, "bias"), (heads * Hd,), *bias))
        o = (lambda w: w.T.reshape(N, Hd, D), lambda k: k.reshape(N * Hd, D).T)
        out.append((f"{hf}self_attn.o_proj.weight", att + ("out", "kernel"), (D, N * Hd), *o))
        if out_bias:
            out.append((f"{hf}self_attn.o_proj.bias", att + ("out", "bias"), (D,), *_keep))
        out.append((f"{hf}post_attention_layernorm.weight", ours + ("mlp_block", "norm", "scale"),
                    (D,), *_keep))  # fmt: skip
        mlp = ours + ("mlp",)
        dense(f"{hf}mlp.gate_proj", mlp + ("wi_0",), F, D, mlp_bias)
        dense(f"{hf}mlp.up_proj", mlp + ("wi_1",), F, D, mlp_bias)
        dense(f"{hf}mlp.down_proj", mlp + ("wo",), D, F, mlp_bias)
    out.append((f"{prefix}norm.weight", ("decoder", "final_norm", "scale"), (D,), *_keep))
    if not tied:
        out.append(("lm_head.weight", ("logits_dense", "kernel"), (V, D), *_linear))
    return out


# ---------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------


def _int(hf: dict[str, Any], key: str, default: Any = ...) -> int:
    value = hf.get(key, default)
    if value is None and default is not ...:
        value = default
    if value is ...:
        raise ValueError(f"config.json has no {key}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"config.json: unsupported {key}={value!r} (need one integer)")
    return value


def _positive(hf: dict[str, Any], key: str, default: float) -> float:
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"config.json: unsupported {key}={value!r} (need a number > 0)")
    return float(value)


def _rate(hf: dict[str, Any], key: str, default: float) -> float:
    value = hf.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"config.json: unsupported {key}={value!r} (need a rate in [0, 1))")
    return float(value)


def _rope_theta(hf: dict[str, Any]) -> float:
    """rope_theta of config.json (top level, or in transformers' `rope_parameters`);
    any RoPE scaling is refused."""
    params = hf.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"config.json: unsupported rope_parameters={params!r}")
    for key in ("rope_scaling", "rope_parameters"):
        scaling = hf.get(key) or {}
        if not isinstance(scaling, dict):
            raise ValueError(f"config.json: unsupported {key}={scaling!r}")
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in (None, "default"):
            raise ValueError(f"config.json: unsupported {key} of type {kind!r} (only plain RoPE)")
    factor = hf.get("partial_rotary_factor", (params or {}).get("partial_rotary_factor"))
    if factor not in (None, 1, 1.0):
        raise ValueError(f"config.json: unsupported partial_rotary_factor={factor!r}")
    theta = hf.get("rope_theta", (params or {}).get("rope_theta", 10000.0))
    return _positive({"rope_theta": theta}, "rope_theta", 10000.0)


def _check_window(hf: dict[str, Any], model_type: str, P: int) -> None:
    """A sliding attention window shorter than the context cannot be run here."""
    window = hf.get("sliding_window")
    used = {"mistral": True, "qwen2": bool(hf.get("use_sliding_window", False))}.get(
        model_type, False
    )
    kinds = set(hf.get("layer_types") or ())
    if model_type == "qwen2" and kinds - {"full_attention"}:
        used = True
    if used and window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < P:
            raise ValueError(
                f"config.json: sliding_window={window!r} is shorter than the context "
                f"max_position_embeddings={P} (sliding-window attention is not supported)"
            )


def _gpt2_model(hf: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    for key, need in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if hf.get(key, need) != need:
            raise ValueError(f"config.json: unsupported {key}={hf[key]!r} (need {need!r})")
    act = hf.get("activation_function", "gelu_new")
    if act not in _GPT2_ACT_IN:
        raise ValueError(
            f"config.json: unsupported activation_function={act!r} "
            f"(choose one of {sorted(_GPT2_ACT_IN)})"
        )
    D, N, layers = _int(hf, "n_embd"), _int(hf, "n_head"), _int(hf, "n_layer")
    F = _int(hf, "n_inner", 4 * D)
    sizes = dict(D=D, N=N, K=N, Hd=D // N if N else 0, F=F, layers=layers)
    sizes.update(V=_int(hf, "vocab_size"), P=_int(hf, "n_positions"))
    model = dict(
        d_model=D, num_heads=N, num_kv_heads=0, head_dim=0, d_ff=F, num_decoder_layers=layers,
        activation=_GPT2_ACT_IN[act], norm_type="layer", norm_position="pre",
        layer_norm_eps=_positive(hf, "layer_norm_epsilon", 1e-5),
        mlp_bias=True, attention_bias=True, position_type="learned",
        dropout_rate=_rate(hf, "resid_pdrop", 0.1),
    )  # fmt: skip
    return model, sizes


def _llama_model(hf: dict[str, Any], model_type: str) -> tuple[dict[str, Any], dict[str, int]]:
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"config.json: unsupported hidden_act={act!r} (need 'silu')")
    D, N = _int(hf, "hidden_size"), _int(hf, "num_attention_heads")
    K = _int(hf, "num_key_value_heads", N)
    Hd = _int(hf, "head_dim", D // N if N else 0)
    F, layers = _int(hf, "intermediate_size"), _int(hf, "num_hidden_layers")
    P = _int(hf, "max_position_embeddings")
    if N and K and N % K:
        raise ValueError(
            f"config.json: num_attention_heads={N} is not a multiple of num_key_value_heads={K}"
        )
    _check_window(hf, model_type, P)
    if model_type == "qwen2":
        attention_bias, mlp_bias = True, False  # q/k/v biases; o_proj has none (zeros here)
    elif model_type == "mistral":
        attention_bias, mlp_bias = False, False
    else:
        attention_bias = bool(hf.get("attention_bias", False))
        mlp_bias = bool(hf.get("mlp_bias", False))
    sizes = dict(D=D, N=N, K=K, Hd=Hd, F=F, layers=layers, V=_int(hf, "vocab_size"), P=P)
    model = dict(
        d_model=D, num_heads=N, num_kv_heads=K, head_dim=Hd, d_ff=F, num_decoder_layers=layers,
        activation="swiglu", norm_type="rms", norm_position="pre",
        layer_norm_eps=_positive(hf, "rms_norm_eps", 1e-6),
        mlp_bias=mlp_bias, attention_bias=attention_bias, position_type="rope",
        position_layout="halves", rope_theta=_rope_theta(hf),
        dropout_rate=_rate(hf, "attention_dropout", 0.0),
    )  # fmt: skip
    return model, sizes


def _run_config(model: dict[str, Any], *, P: int, add_bos: bool):
    from transformer_jax.config import validate
    from transformer_jax.tasks.generation.config import lm_base

    run = lm_base()
    run.model.update(
        num_encoder_layers=0, num_token_types=0, scale_embeddings=False,
        final_logits_bias=False, max_position=P, scan_layers=False, **model,
    )  # fmt: skip
    run.data.max_length = min(run.data.max_length, P)
    run.generate.add_bos = add_bos
    validate(run)
    return run


def _expected_shapes(config) -> dict[tuple[str, ...], tuple[int, ...]]:
    from transformer_jax.nn.lm import CausalLM

    return param_shapes(CausalLM(config), np.ones((1, 2), np.int32))


def _convert(weights, entries: list[Entry], ignored: set[str], config) -> dict[str, Any]:
    expected = _expected_shapes(config)
    params = convert_entries(weights, entries, ignored, expected)
    have = flatten(params)
    # Parameters HF lacks that are zero there (Qwen2's o_proj bias).
    for path, shape in expected.items():
        if path not in have and path[-2:] == ("out", "bias"):
            set_path(params, path, np.zeros(shape, np.float32))
            have[path] = None
    absent = ["/".join(p) for p in expected if p not in have]
    if absent:
        raise ValueError(f"the converted weights lack parameter(s) {shown(absent)}")
    return params


def _settings(hf: Any) -> tuple[str, dict[str, Any], dict[str, int]]:
    """config.json as (model_type, our model settings, sizes D N K Hd F layers V P);
    refuses what this stack cannot run exactly."""
    if not isinstance(hf, dict):
        raise ValueError("config.json must hold a JSON object")
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"config.json: unsupported model_type={model_type!r} (choose one of {MODEL_TYPES})"
        )
    if model_type == "gpt2":
        model, sizes = _gpt2_model(hf)
    else:
        model, sizes = _llama_model(hf, model_type)
    if min(sizes.values()) < 1:
        raise ValueError("config.json: every size (hidden_size, num_layers, ...) must be >= 1")
    if model_type == "gpt2" and sizes["D"] % sizes["N"]:
        raise ValueError(
            f"config.json: n_embd={sizes['D']} is not a multiple of n_head={sizes['N']}"
        )
    tied = hf.get("tie_word_embeddings", model_type == "gpt2")
    if not isinstance(tied, bool):
        raise ValueError(f"config.json: unsupported tie_word_embeddings={tied!r}")
    model["tie_output"] = tied
    return model_type, model, sizes


def _model_config(run, V: int, *, pad_id: int, eos_id: int, bos_id: int):
    from transformer_jax.nn.config import TransformerConfig, from_settings

    return from_settings(
        run.model,
        TransformerConfig,
        vocab_size=V,  # the embedding rows (may exceed the tokenizer's vocabulary)
        pad_id=pad_id,
        eos_id=eos_id,
        decoder_start_id=bos_id,
        num_encoder_layers=0,
    )


def _params(hf: dict[str, Any], weights: dict[str, np.ndarray], config) -> dict[str, Any]:
    """The tensors of a checkpoint (names as in its safetensors files) as our params."""
    model_type, model, s = _settings(hf)
    D, N, K, Hd, F, layers, V, P = (s[k] for k in ("D", "N", "K", "Hd", "F", "layers", "V", "P"))
    tied = model["tie_output"]
    base = "transformer." if model_type == "gpt2" else "model."
    prefix = base if any(k.startswith(base) for k in weights) else ""
    if model_type == "gpt2":
        weights = _split_c_attn(weights)
        entries = _gpt2_entries(prefix=prefix, D=D, N=N, F=F, layers=layers, V=V, P=P, tied=tied)
        ignored = {
            f"{prefix}h.{i}.attn.{b}" for i in range(layers) for b in ("bias", "masked_bias")
        }
    else:
        qkv_bias = bool(model["attention_bias"])
        entries = _llama_entries(
            prefix=prefix, D=D, N=N, K=K, Hd=Hd, F=F, layers=layers, V=V, tied=tied,
            qkv_bias=qkv_bias, out_bias=qkv_bias and model_type != "qwen2",
            mlp_bias=bool(model["mlp_bias"]),
        )  # fmt: skip
        ignored = {f"{prefix}layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(layers)}
    if tied and "lm_head.weight" in weights:
        table = weights.get(entries[0][0])
        if table is not None and not np.array_equal(weights["lm_head.weight"], table):
            raise ValueError(
                "lm_head.weight differs from the token embedding, yet tie_word_embeddings is true"
            )
        ignored.add("lm_head.weight")
    return _convert(weights, entries, ignored, config)


def config_from_hf(
    hf: dict[str, Any],
    *,
    pad_id: int | None = None,
    eos_id: int | None = None,
    bos_id: int | None = None,
):
    """A transformers config (config.json's object) as our `CausalLM`'s `TransformerConfig`,
    as `import_hf` makes it. Special ids not given are config.json's (the first of a
    list); as `import_hf` does with a tokenizer, a missing pad or bos id is the eos id."""
    from transformer_jax.nn.config import TransformerConfig

    _, model, sizes = _settings(hf)
    run = _run_config(model, P=sizes["P"], add_bos=False)
    given = {"eos": eos_id, "bos": bos_id, "pad": pad_id}
    ids = {k: _first_id(hf.get(f"{k}_token_id")) if v is None else v for k, v in given.items()}
    if ids["eos"] is None:
        ids["eos"] = TransformerConfig.eos_id
    for k in ("bos", "pad"):
        if ids[k] is None:
            ids[k] = ids["eos"]
    return _model_config(run, sizes["V"], pad_id=ids["pad"], eos_id=ids["eos"], bos_id=ids["bos"])


def convert(
    hf: dict[str, Any],
    weights: dict[str, np.ndarray],
    *,
    pad_id: int | None = None,
    eos_id: int | None = None,
    bos_id: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """A transformers model (config.json's object and its tensors by safetensors name) as
    our `CausalLM`: (`TransformerConfig`, params), what `import_hf` saves. The special ids
    are `config_from_hf`'s."""
    config = config_from_hf(hf, pad_id=pad_id, eos_id=eos_id, bos_id=bos_id)
    return config, _params(hf, weights, config)


def import_hf(src_dir: str, workdir: str) -> dict[str, Any]:
    """Converts a Hub GPT-2 / Llama / Mistral / Qwen2 folder into a "causal_lm" workdir
    checkpoint at step 0. Returns a summary: workdir, step, model_type, num_params."""
    from transformer_jax.data.processors import processors_to_json
    from transformer_jax.nn.config import config_to_json
    from transformer_jax.tasks.generation.text import lm_specials
    from transformer_jax.train.checkpoint import check_import, save_imported

    src_dir = check_import(src_dir, workdir)
    hf = read_json(src_dir, "config.json")
    model_type, model, sizes = _settings(hf)
    V, tied = sizes["V"], model["tie_output"]
    tokenizer = tokenizer_from_dir(src_dir, model_type, hf)
    if tokenizer.vocab_size > V:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens, the model only {V} embeddings"
        )
    weights = read_safetensors_dir(src_dir)
    run = _run_config(model, P=sizes["P"], add_bos=_adds_bos(src_dir, tokenizer))
    specials = lm_specials(tokenizer)
    config = _model_config(
        run, V, pad_id=specials.pad_id, eos_id=specials.eos_id, bos_id=specials.bos_id
    )
    params = _params(hf, weights, config)
    save_imported(
        workdir,
        params,
        config=run.to_dict(),
        model=config_to_json(config),
        tokenizer=processors_to_json({"tokenizer": tokenizer}),
    )
    return {
        "workdir": os.path.abspath(workdir),
        "step": 0,
        "model_type": model_type,
        "num_params": int(sum(np.size(v) for v in flatten(params).values())),
        "vocab_size": V,
        "tie_word_embeddings": tied,
    }


# ---------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------


def _need(key: str, value: Any, need: Any, family: str) -> None:
    if value != need:
        raise ValueError(f"model.{key}={value!r}: a {family} export needs {need!r}")


def _export_family(config, tok, params) -> str:
    """The Hugging Face model_type a decoder-only config exports to; one line naming the
    first setting none can express."""
    c = config
    if c.num_encoder_layers or c.num_token_types:
        raise ValueError("only decoder-only models (model.num_encoder_layers=0) export here")
    _need("norm_position", c.norm_position, "pre", "causal LM")
    _need("scale_embeddings", c.scale_embeddings, False, "causal LM")
    _need("final_logits_bias", c.final_logits_bias, False, "causal LM")
    _need("layer_scale_init", c.layer_scale_init, 0.0, "causal LM")
    if c.position_type == "learned":
        family = "GPT-2"
        _need("norm_type", c.norm_type, "layer", family)
        _need("attention_bias", c.attention_bias, True, family)
        _need("mlp_bias", c.mlp_bias, True, family)
        if c.activation not in _GPT2_ACT_OUT:
            raise ValueError(
                f"model.activation={c.activation!r}: a GPT-2 export needs one of "
                f"{sorted(_GPT2_ACT_OUT)}"
            )
        if c.num_kv_heads not in (None, 0, c.num_heads):
            raise ValueError(f"model.num_kv_heads={c.num_kv_heads}: a GPT-2 export needs MHA")
        if c.head_dim not in (None, 0, c.d_model // c.num_heads):
            raise ValueError(f"model.head_dim={c.head_dim}: a GPT-2 export needs d_model/heads")
        return "gpt2"
    if c.position_type != "rope":
        raise ValueError(
            f"model.position_type={c.position_type!r}: exports need 'learned' (GPT-2) or "
            "'rope' (Llama)"
        )
    family = "Llama"
    _need("norm_type", c.norm_type, "rms", family)
    _need("activation", c.activation, "swiglu", family)
    _need("position_layout", c.position_layout, "halves", family)
    wanted = getattr(tok, "model_type", "llama")
    if wanted == "qwen2" and c.attention_bias and not c.mlp_bias:
        outs = [v for p, v in params.items() if p[-2:] == ("out", "bias")]
        if all(not np.any(np.asarray(v)) for v in outs):
            return "qwen2"
    if wanted == "mistral" and not c.attention_bias and not c.mlp_bias:
        return "mistral"
    return "llama"


def _tokenizer_files(tok: HFTokenizer, P: int) -> tuple[dict[str, Any], Tokenizer]:
    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": P,
        **tok.specials,
        **tok.options,
    }
    return tok_config, Tokenizer.from_str(tok.backend.to_str())


def export_hf(workdir: str, out_dir: str, *, step: int | None = None) -> dict[str, Any]:
    """Writes a causal-LM workdir's latest good checkpoint as a Hugging Face folder:
    config.json, generation_config.json, model.safetensors, tokenizer.json and
    tokenizer_config.json (GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM or
    Qwen2ForCausalLM)."""
    from transformer_jax.train.restore import load_for_inference

    out_dir = export_destination(out_dir)
    loaded = load_for_inference(workdir, step=step)
    config = loaded.model_config
    tok = loaded.processors.get("tokenizer")
    if tok is None:
        raise ValueError(f"the checkpoint in {workdir} has no tokenizer processor")
    if not isinstance(tok, HFTokenizer):
        raise ValueError(
            f"cannot export a {type(tok).__name__} tokenizer to tokenizer.json "
            "(only a Hugging Face tokenizer, from an imported model)"
        )
    params = {k: np.asarray(v, np.float32) for k, v in flatten(loaded.params).items()}
    if any(p[:2] == ("decoder", "layers") for p in params):
        raise ValueError("model.scan_layers=True checkpoints cannot be exported; train unscanned")
    model_type = _export_family(config, tok, params)
    D, N, V, F = config.d_model, config.num_heads, config.vocab_size, config.d_ff
    K = config.num_kv_heads or N
    Hd = config.head_dim or D // N
    layers, P, tied = config.num_decoder_layers, config.max_position, config.tie_output
    specials = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    ids = {k: (None if v < 0 else v) for k, v in specials.items()}
    if model_type == "gpt2":
        entries = _gpt2_entries(prefix="transformer.", D=D, N=N, F=F, layers=layers, V=V, P=P,
                                tied=tied)  # fmt: skip
        hf_config: dict[str, Any] = {
            "vocab_size": V, "n_positions": P, "n_embd": D, "n_layer": layers, "n_head": N,
            "n_inner": F, "activation_function": _GPT2_ACT_OUT[config.activation],
            "resid_pdrop": config.dropout_rate, "embd_pdrop": config.dropout_rate,
            "attn_pdrop": config.dropout_rate, "layer_norm_epsilon": config.layer_norm_eps,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
        }  # fmt: skip
    else:
        qkv_bias = config.attention_bias
        entries = _llama_entries(
            prefix="model.", D=D, N=N, K=K, Hd=Hd, F=F, layers=layers, V=V, tied=tied,
            qkv_bias=qkv_bias, out_bias=qkv_bias and model_type != "qwen2",
            mlp_bias=config.mlp_bias,
        )  # fmt: skip
        hf_config = {
            "vocab_size": V, "hidden_size": D, "intermediate_size": F,
            "num_hidden_layers": layers, "num_attention_heads": N, "num_key_value_heads": K,
            "head_dim": Hd, "hidden_act": "silu", "max_position_embeddings": P,
            "rms_norm_eps": config.layer_norm_eps, "rope_theta": config.rope_theta,
            "rope_scaling": None, "attention_dropout": config.dropout_rate,
        }  # fmt: skip
        if model_type == "llama":
            hf_config.update(attention_bias=config.attention_bias, mlp_bias=config.mlp_bias)
        elif model_type == "mistral":
            hf_config["sliding_window"] = None
        else:
            hf_config.update(use_sliding_window=False, sliding_window=None)
    hf_config.update(
        architectures=[_ARCH[model_type]], model_type=model_type, tie_word_embeddings=tied, **ids
    )
    tensors = {}
    for name, path, hf_shape, _, to_hf in entries:
        value = np.ascontiguousarray(to_hf(params[path]))
        if value.shape != hf_shape:
            raise ValueError(f"parameter {'/'.join(path)} has shape {value.shape}, need {hf_shape}")
        tensors[name] = value
    if model_type == "gpt2":
        tensors = _join_c_attn(tensors)
    gen_config = {k: v for k, v in ids.items() if v is not None}
    tok_config, backend = _tokenizer_files(tok, P)
    files = {
        "config.json": hf_config,
        "generation_config.json": gen_config,
        "tokenizer_config.json": tok_config,
    }
    write_hf_folder(out_dir, tensors, files, backend)
    return {
        "out_dir": os.path.abspath(out_dir),
        "step": loaded.step,
        "model_type": model_type,
        "architecture": _ARCH[model_type],
    }
