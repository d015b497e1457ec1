"""Hugging Face BERT, RoBERTa and XLM-RoBERTa encoders in this stack, both ways.

    from transformer_jax.tasks.classification.hf import export_hf, import_hf
    import_hf("bert-base-sst2", "runs/sst2")    # a Hub folder -> a workdir at step 0
    export_hf("runs/sst2", "out/sst2")          # a workdir -> a folder transformers loads

A Hub folder holds `config.json` (`model_type` "bert", "roberta" or "xlm-roberta"),
`model.safetensors` (or shards; pickle files are never loaded) and the tokenizer:
`tokenizer.json`, else `vocab.txt` (BERT's WordPiece), `vocab.json` + `merges.txt`
(RoBERTa's byte-level BPE) or `sentencepiece.bpe.model` (XLM-R's Unigram), with
`tokenizer_config.json` for the special tokens and options.

The tokenizer runs on the `tokenizers` library (never `transformers`): `HFTokenizer`
meets the classification tokenizer protocol (`text.py`) and is stored in checkpoints
as its `tokenizer.json`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE, Unigram, WordPiece

from transformer_jax.convert.params import (
    Entry,
    convert_entries,
    flatten,
    param_shapes,
    set_path,
)
from transformer_jax.convert.safetensors_io import (
    export_destination,
    read_json,
    read_safetensors_dir,
    write_hf_folder,
)
from transformer_jax.data.hf_tokenizer import HFTokenizer
from transformer_jax.data.hf_tokenizer import add_specials as _add_specials
from transformer_jax.data.hf_tokenizer import token_str as _token_str
from transformer_jax.tasks.classification.text import MASK_PIECE, LabelMap

MODEL_TYPES = ("bert", "roberta", "xlm-roberta")

# Special tokens of each family (tokenizer_config.json may rename them).
_SPECIALS = {
    "bert": dict(
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        unk_token="[UNK]",
    ),
    "roberta": dict(
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        mask_token="<mask>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    ),
}
_SPECIALS["xlm-roberta"] = _SPECIALS["roberta"]
_ARCH_PREFIX = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}
_ACT_IN = {
    "gelu": "gelu",
    "relu": "relu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "silu": "silu",
    "swish": "swish",
}
_ACT_OUT = {
    "gelu": "gelu",
    "relu": "relu",
    "gelu_tanh": "gelu_new",
    "silu": "silu",
    "swish": "silu",
}
_PROBLEM_IN = {
    None: "single_label",
    "single_label_classification": "single_label",
    "multi_label_classification": "multi_label",
    "regression": "regression",
}
_PROBLEM_OUT = {v: k for k, v in _PROBLEM_IN.items() if k}


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------


def _spm_proto(model_bytes: bytes, what: str):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(bytes(model_bytes))
    except Exception as e:  # protobuf's DecodeError and friends
        raise ValueError(f"{what} is not a SentencePiece model: {e}") from None
    if not proto.pieces:
        raise ValueError(f"{what} is not a SentencePiece model (no pieces)")
    return proto


def _xlmr_from_spm(path: str, specials: dict[str, str]) -> Tokenizer:
    """XLM-R's tokenizer from its sentencepiece.bpe.model, as transformers converts it:
    <s> <pad> </s> <unk>, the model's pieces after its first three, then <mask>."""
    with open(path, "rb") as f:
        proto = _spm_proto(f.read(), path)
    if proto.trainer_spec.model_type != 1:
        raise ValueError(f"{path}: only Unigram SentencePiece models are supported")
    s = specials
    vocab = [(s["bos_token"], 0.0), (s["pad_token"], 0.0), (s["eos_token"], 0.0)]
    vocab += [(s["unk_token"], 0.0)]
    vocab += [(p.piece, p.score) for p in proto.pieces[3:]] + [(s["mask_token"], 0.0)]
    tok = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        tok.normalizer = normalizers.Precompiled(charsmap)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    return tok


def tokenizer_from_dir(src_dir: str, model_type: str) -> HFTokenizer:
    """The tokenizer of a Hub folder (see the module docstring for the files read)."""
    tok_cfg = read_json(src_dir, "tokenizer_config.json", required=False) or {}
    if not isinstance(tok_cfg, dict):
        raise ValueError("tokenizer_config.json must hold a JSON object")
    specials = dict(_SPECIALS[model_type])
    for role in specials:
        value = _token_str(tok_cfg.get(role))
        if value is not None:
            specials[role] = value
    options: dict[str, Any] = {}
    path = lambda name: os.path.join(src_dir, name)  # noqa: E731
    if os.path.isfile(path("tokenizer.json")):
        try:
            tok = Tokenizer.from_file(path("tokenizer.json"))
        except Exception as e:  # the library's own exception type
            raise ValueError(f"{path('tokenizer.json')} is not a tokenizer: {e}") from None
        missing = [v for v in specials.values() if tok.token_to_id(v) is None]
        if missing:
            raise ValueError(f"tokenizer.json lacks the special token(s) {missing}")
        return HFTokenizer(tok, model_type=model_type, specials=specials, options=options)
    if model_type == "bert" and os.path.isfile(path("vocab.txt")):
        vocab = WordPiece.read_file(path("vocab.txt"))
        lower = bool(tok_cfg.get("do_lower_case", True))
        strip = tok_cfg.get("strip_accents")
        chinese = bool(tok_cfg.get("tokenize_chinese_chars", True))
        options = dict(do_lower_case=lower, strip_accents=strip, tokenize_chinese_chars=chinese)
        if specials["unk_token"] not in vocab:
            raise ValueError(f"vocab.txt lacks the unknown token {specials['unk_token']!r}")
        tok = Tokenizer(WordPiece(vocab, unk_token=specials["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=chinese, strip_accents=strip, lowercase=lower
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
    elif model_type == "roberta" and os.path.isfile(path("vocab.json")):
        if not os.path.isfile(path("merges.txt")):
            raise ValueError(f"missing merges.txt in {src_dir} (next to vocab.json)")
        vocab, merges = BPE.read_file(path("vocab.json"), path("merges.txt"))
        prefix = bool(tok_cfg.get("add_prefix_space", False))
        options = dict(
            add_prefix_space=prefix, trim_offsets=bool(tok_cfg.get("trim_offsets", True))
        )
        tok = Tokenizer(
            BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
        )
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
        tok.decoder = decoders.ByteLevel()
    elif model_type == "xlm-roberta" and os.path.isfile(path("sentencepiece.bpe.model")):
        tok = _xlmr_from_spm(path("sentencepiece.bpe.model"), specials)
    else:
        files = {
            "bert": "vocab.txt",
            "roberta": "vocab.json + merges.txt",
            "xlm-roberta": "sentencepiece.bpe.model",
        }
        raise ValueError(f"no tokenizer in {src_dir}: need tokenizer.json or {files[model_type]}")
    _add_specials(tok, tok_cfg, specials)
    s = specials
    tok.post_processor = processors.TemplateProcessing(
        single=f"{s['cls_token']} $A {s['sep_token']}",
        special_tokens=[
            (s["cls_token"], tok.token_to_id(s["cls_token"])),
            (s["sep_token"], tok.token_to_id(s["sep_token"])),
        ],
    )
    return HFTokenizer(tok, model_type=model_type, specials=specials, options=options)


# ---------------------------------------------------------------------------------------
# Weights: (HF name, our path, HF shape, to ours, to HF)
# ---------------------------------------------------------------------------------------

_keep = (lambda w: w, lambda w: w)
_linear = (lambda w: w.T, lambda w: w.T)


def _entries(
    *, prefix: str, D: int, N: int, F: int, layers: int, V: int, P: int, T: int
) -> list[Entry]:
    H = D // N
    e = f"{prefix}embeddings."
    out: list[Entry] = [
        (f"{e}word_embeddings.weight", ("embed", "embedding"), (V, D), *_keep),
        (f"{e}position_embeddings.weight", ("positions", "positions", "embedding"), (P, D), *_keep),
        (f"{e}token_type_embeddings.weight", ("token_types", "embedding"), (T, D), *_keep),
        (f"{e}LayerNorm.weight", ("embed_norm", "scale"), (D,), *_keep),
        (f"{e}LayerNorm.bias", ("embed_norm", "bias"), (D,), *_keep),
    ]
    qkv_kernel = (lambda w: w.T.reshape(D, N, H), lambda k: k.reshape(D, N * H).T)
    qkv_bias = (lambda b: b.reshape(N, H), lambda b: b.reshape(N * H))
    out_kernel = (lambda w: w.T.reshape(N, H, D), lambda k: k.reshape(N * H, D).T)

    def dense(hf, ours, shape_out, shape_in):
        out.append((f"{hf}.weight", ours + ("kernel",), (shape_out, shape_in), *_linear))
        out.append((f"{hf}.bias", ours + ("bias",), (shape_out,), *_keep))

    def norm(hf, ours):
        out.append((f"{hf}.weight", ours + ("scale",), (D,), *_keep))
        out.append((f"{hf}.bias", ours + ("bias",), (D,), *_keep))

    for i in range(layers):
        hf, ours = f"{prefix}encoder.layer.{i}.", ("encoder", f"layer_{i}")
        for name in ("query", "key", "value"):
            att = ours + ("self_attention", name)
            out.append(
                (f"{hf}attention.self.{name}.weight", att + ("kernel",), (D, D), *qkv_kernel)
            )
            out.append((f"{hf}attention.self.{name}.bias", att + ("bias",), (D,), *qkv_bias))
        att = ours + ("self_attention", "out")
        out.append((f"{hf}attention.output.dense.weight", att + ("kernel",), (D, D), *out_kernel))
        out.append((f"{hf}attention.output.dense.bias", att + ("bias",), (D,), *_keep))
        norm(f"{hf}attention.output.LayerNorm", ours + ("attention_block", "norm"))
        dense(f"{hf}intermediate.dense", ours + ("mlp", "wi"), F, D)
        dense(f"{hf}output.dense", ours + ("mlp", "wo"), D, F)
        norm(f"{hf}output.LayerNorm", ours + ("mlp_block", "norm"))
    return out


def _head_entries(model_type: str, prefix: str, D: int, K: int) -> list[Entry]:
    """The classification head's weights (BERT: the pooler and `classifier`)."""
    if model_type == "bert":
        pooler, classifier = f"{prefix}pooler.dense", "classifier"
    else:
        pooler, classifier = "classifier.dense", "classifier.out_proj"
    return [
        (f"{pooler}.weight", ("head", "pooler", "kernel"), (D, D), *_linear),
        (f"{pooler}.bias", ("head", "pooler", "bias"), (D,), *_keep),
        (f"{classifier}.weight", ("head", "classifier", "kernel"), (K, D), *_linear),
        (f"{classifier}.bias", ("head", "classifier", "bias"), (K,), *_keep),
    ]


def _mlm_entries(model_type: str, D: int, V: int) -> list[Entry]:
    if model_type == "bert":
        dense, norm, bias = (
            "cls.predictions.transform.dense",
            "cls.predictions.transform.LayerNorm",
            "cls.predictions.bias",
        )
    else:
        dense, norm, bias = "lm_head.dense", "lm_head.layer_norm", "lm_head.bias"
    return [
        (f"{dense}.weight", ("mlm", "dense", "kernel"), (D, D), *_linear),
        (f"{dense}.bias", ("mlm", "dense", "bias"), (D,), *_keep),
        (f"{norm}.weight", ("mlm", "norm", "scale"), (D,), *_keep),
        (f"{norm}.bias", ("mlm", "norm", "bias"), (D,), *_keep),
        (bias, ("mlm", "bias"), (V,), *_keep),
    ]


def _mlm_tied_names(model_type: str) -> tuple[str, str]:
    """The output projection's weight (tied to the token embedding) and its bias copy."""
    if model_type == "bert":
        return "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"
    return "lm_head.decoder.weight", "lm_head.decoder.bias"


# ---------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------


def _int(hf: dict[str, Any], key: str, default: Any = ...) -> int:
    value = hf.get(key, default)
    if value is ...:
        raise ValueError(f"config.json has no {key}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"config.json: unsupported {key}={value!r} (need one integer)")
    return value


def _rate(hf: dict[str, Any], key: str, default: float) -> float:
    value = hf.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"config.json: unsupported {key}={value!r} (need a rate in [0, 1))")
    return float(value)


def _labels(hf: dict[str, Any], problem_type: str) -> LabelMap:
    id2label = hf.get("id2label") or {}
    if not isinstance(id2label, dict):
        raise ValueError("config.json: id2label must be an object {id: name}")
    try:
        pairs = sorted((int(k), str(v)) for k, v in id2label.items())
    except ValueError:
        raise ValueError("config.json: id2label keys must be integers") from None
    if [k for k, _ in pairs] != list(range(len(pairs))):
        raise ValueError("config.json: id2label ids must be 0, 1, ... without gaps")
    names = tuple(v for _, v in pairs)
    if problem_type == "regression" and len(names) <= 1:
        names = ()
    try:
        return LabelMap(names, problem_type)
    except ValueError as e:
        raise ValueError(f"config.json: id2label: {e}") from None


def _arch_kind(hf: dict[str, Any]) -> str:
    """ "classification", "masked_lm" or "bare" by config.json's architectures."""
    arch = hf.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in arch):
        return "classification"
    if any(a.endswith("ForMaskedLM") for a in arch):
        return "masked_lm"
    return "bare"


def _run_config(hf, *, D, N, F, layers, P, T, offset, labels, head):
    from transformer_jax.config import validate
    from transformer_jax.tasks.classification.config import classification_base

    act = hf.get("hidden_act", "gelu")
    if act not in _ACT_IN:
        raise ValueError(
            f"config.json: unsupported hidden_act={act!r} (choose one of {sorted(_ACT_IN)})"
        )
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"config.json: unsupported position_embedding_type={hf['position_embedding_type']!r}"
        )
    eps = hf.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or eps <= 0:
        raise ValueError(f"config.json: unsupported layer_norm_eps={eps!r}")
    if P <= offset:
        raise ValueError(f"config.json: max_position_embeddings={P} leaves no position")
    run = classification_base()
    m = run.model
    m.d_model, m.num_heads, m.num_kv_heads, m.d_ff = D, N, 0, F
    m.num_encoder_layers, m.num_decoder_layers = layers, 0
    m.activation = _ACT_IN[act]
    m.layer_norm_eps = float(eps)
    m.max_position, m.num_token_types, m.position_offset = P, T, offset
    m.dropout_rate = _rate(hf, "hidden_dropout_prob", 0.1)
    dropout = hf.get("classifier_dropout")
    run.head.dropout = -1.0 if dropout is None else _rate(hf, "classifier_dropout", 0.1)
    run.head.type = head
    run.head.problem_type = labels.problem_type
    run.data.labels = ",".join(labels.names)
    run.data.max_length = min(run.data.max_length, P - offset)
    validate(run)
    return run


def _expected_shapes(config) -> dict[tuple[str, ...], tuple[int, ...]]:
    from transformer_jax.tasks.classification.model import TextEncoderModel

    return param_shapes(TextEncoderModel(config), np.ones((1, 2), np.int32))


def _fresh_params(config, paths: list[tuple[str, ...]], seed: int) -> dict:
    """Initial values (the head's own initialisers) of the head parameters at `paths`."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from transformer_jax.tasks.classification.model import ClassificationHead

    head = ClassificationHead(config)
    cls_BD = jnp.zeros((1, config.d_model), config.dtype)
    # One jitted init (eager init would compile every initialiser separately).
    tree = {"head": nn.unbox(jax.jit(head.init)(jax.random.key(seed), cls_BD)["params"])}
    out = {}
    for path in paths:
        node = tree
        for key in path:
            node = node[key]
        out[path] = np.asarray(node, np.float32)
    return out


def import_hf(src_dir: str, workdir: str) -> dict[str, Any]:
    """Converts a Hub BERT / RoBERTa / XLM-R folder into a workdir checkpoint at step 0.

    A *ForSequenceClassification model brings its head and labels (id2label); a
    *ForMaskedLM model its masked-LM head (the run is then a "masked_lm" one, for
    `tjax fill-mask`). A model without a classification head gets none: a fine-tuning
    run that starts from it (`train.init_from`) adds one for its own labels. Returns a summary:
    workdir, step, model_type, num_params, labels, new.
    """
    from transformer_jax.data.processors import processors_to_json
    from transformer_jax.tasks.classification.config import config_to_json, model_config
    from transformer_jax.train.checkpoint import check_import, save_imported

    src_dir = check_import(src_dir, workdir)
    hf = read_json(src_dir, "config.json")
    if not isinstance(hf, dict):
        raise ValueError("config.json must hold a JSON object")
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"config.json: unsupported model_type={model_type!r} (choose one of {MODEL_TYPES})"
        )
    weights = _modern_names(read_safetensors_dir(src_dir))
    tokenizer = tokenizer_from_dir(src_dir, model_type)

    D, N, F = (
        _int(hf, "hidden_size"),
        _int(hf, "num_attention_heads"),
        _int(hf, "intermediate_size"),
    )
    layers, V = _int(hf, "num_hidden_layers"), _int(hf, "vocab_size")
    P, T = _int(hf, "max_position_embeddings"), _int(hf, "type_vocab_size", 2)
    if min(D, N, F, layers, V, P, T) < 1:
        raise ValueError(
            "config.json: every size (hidden_size, num_hidden_layers, ...) must be >= 1"
        )
    if D % N:
        raise ValueError(
            f"config.json: hidden_size={D} is not a multiple of num_attention_heads={N}"
        )
    pad = _int(hf, "pad_token_id", 0 if model_type == "bert" else 1)
    if tokenizer.pad_id != pad:
        raise ValueError(
            f"the tokenizer puts {tokenizer.specials['pad_token']} at {tokenizer.pad_id}, "
            f"config.json pad_token_id={pad}"
        )
    if tokenizer.vocab_size > V:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens, the model only {V} embeddings"
        )
    problem = hf.get("problem_type")
    if problem not in _PROBLEM_IN:
        raise ValueError(f"config.json: unsupported problem_type={problem!r}")
    if problem is None and len(hf.get("id2label") or {}) == 1:
        problem = "regression"  # transformers' reading of one label without a problem_type
    labels = _labels(hf, _PROBLEM_IN[problem])

    # Which weights are there: a prefixed encoder ("bert." / "roberta.") or a bare one.
    base = "bert." if model_type == "bert" else "roberta."
    prefix = base if any(k.startswith(base) for k in weights) else ""
    kind = _arch_kind(hf)
    head_names = _head_entries(model_type, prefix, D, labels.num_labels)
    mlm_names = _mlm_entries(model_type, D, V)
    has_head = kind == "classification" or any(name in weights for name, *_ in head_names[2:])
    has_mlm = kind == "masked_lm" or any(name in weights for name, *_ in mlm_names)
    if has_head:
        rows = weights.get(head_names[2][0])
        if rows is not None and rows.ndim == 2 and rows.shape[0] != labels.num_labels:
            raise ValueError(
                f"config.json: id2label has {labels.num_labels} label(s), "
                f"{head_names[2][0]} has {rows.shape[0]} rows"
            )
    entries = _entries(prefix=prefix, D=D, N=N, F=F, layers=layers, V=V, P=P, T=T)
    ignored = {f"{prefix}embeddings.position_ids", f"{prefix}embeddings.token_type_ids"}
    ignored |= {"cls.seq_relationship.weight", "cls.seq_relationship.bias"}  # BERT's NSP head
    new_paths: list[tuple[str, ...]] = []
    if has_head:
        entries += head_names
    else:  # no head: a fine-tuning run adds one for its own labels (train.init_from)
        labels = LabelMap((), labels.problem_type)
    if model_type != "bert" or not has_head:  # the pooler belongs to the classification head
        ignored |= {f"{prefix}pooler.dense.weight", f"{prefix}pooler.dense.bias"}
    if has_mlm:
        entries += _mlm_entries(model_type, D, V)
        tied, tied_bias = _mlm_tied_names(model_type)
        table = weights.get(entries[0][0])
        if tied in weights and table is not None and not np.array_equal(weights[tied], table):
            raise ValueError(f"{tied} differs from the token embedding (untied: not supported)")
        ignored |= {tied, tied_bias}
    offset = 0 if model_type == "bert" else pad + 1
    head = "bert" if model_type == "bert" else "roberta"
    run = _run_config(
        hf, D=D, N=N, F=F, layers=layers, P=P, T=T, offset=offset,
        labels=labels, head=head,
    )  # fmt: skip
    if not has_head:  # what the imported model can do: fill masks, or be fine-tuned
        run.task = "masked_lm" if has_mlm else "classification"
    config = model_config(
        run,
        vocab_size=V,
        pad_id=pad,
        num_labels=labels.num_labels if has_head else 0,
        mlm_head=has_mlm,
        mask_id=tokenizer.mask_id,
    )
    params = convert_entries(weights, entries, ignored, _expected_shapes(config))
    if new_paths:
        for path, value in _fresh_params(config, new_paths, run.seed).items():
            set_path(params, path, value)
    processors = {"tokenizer": tokenizer}
    if has_head:
        processors["labels"] = labels

    save_imported(
        workdir,
        params,
        config=run.to_dict(),
        model=config_to_json(config),
        tokenizer=processors_to_json(processors),
    )
    return {
        "workdir": os.path.abspath(workdir),
        "step": 0,
        "model_type": model_type,
        "num_params": int(sum(np.size(v) for v in flatten(params).values())),
        "labels": list(labels.names),
        "mlm_head": has_mlm,
        "new": ["/".join(p) for p in new_paths],
    }


def _modern_names(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Older BERT checkpoints name LayerNorm parameters gamma/beta (weight/bias now)."""
    out = {}
    for name, value in weights.items():
        for old, new in ((".gamma", ".weight"), (".beta", ".bias")):
            if name.endswith(old) and "LayerNorm" in name:
                name = name[: -len(old)] + new
        out[name] = value
    return out


def _export_checks(config) -> None:
    """Settings a BERT/RoBERTa config.json cannot express: one line naming the first."""
    c, e = config, config.encoder
    bad = [
        ("model.norm_position", e.norm_position, "post"),
        ("model.norm_type", e.norm_type, "layer"),
        ("model.position_type", e.position_type, "learned"),
        ("model.scale_embeddings", e.scale_embeddings, False),
        ("model.attention_bias", e.attention_bias, True),
        ("model.mlp_bias", e.mlp_bias, True),
        ("model.layer_scale_init", e.layer_scale_init, 0.0),
        ("model.embedding_norm", c.embedding_norm, True),
    ]
    for key, value, need in bad:
        if value != need:
            raise ValueError(f"{key}={value!r}: a BERT/RoBERTa export needs {need!r}")
    if e.activation not in _ACT_OUT:
        raise ValueError(
            f"model.activation={e.activation!r}: a BERT/RoBERTa export needs one of "
            f"{sorted(_ACT_OUT)}"
        )
    if e.num_kv_heads not in (None, 0, e.num_heads):
        raise ValueError(f"model.num_kv_heads={e.num_kv_heads}: a BERT/RoBERTa export needs MHA")
    if e.head_dim not in (None, 0, e.d_model // e.num_heads):
        raise ValueError(f"model.head_dim={e.head_dim}: must be d_model / num_heads to export")
    if not c.num_labels:
        raise ValueError("the model has no classification head to export")


def _sentencepiece_to_hf(tok) -> HFTokenizer:
    """A Unigram `tokenizers` tokenizer equal to a SentencePiece model trained here
    (<s> text </s>, "<mask>" as the mask token)."""
    proto = _spm_proto(tok.to_bytes(), "the run's SentencePiece model")
    if proto.trainer_spec.model_type != 1:
        raise ValueError(
            "the run's SentencePiece model is BPE: only Unigram models export to tokenizer.json"
        )
    norm = proto.normalizer_spec
    if norm.name not in ("identity", "") and not norm.precompiled_charsmap:
        raise ValueError(f"SentencePiece normalization {norm.name!r} cannot be exported")
    unk = tok.unk_id
    vocab = [(p.piece, p.score) for p in proto.pieces]
    t = Tokenizer(Unigram(vocab, unk_id=unk, byte_fallback=proto.trainer_spec.byte_fallback))
    seq = []
    if norm.precompiled_charsmap:
        seq.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        seq += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if seq:
        t.normalizer = normalizers.Sequence(seq)
    scheme = "always" if norm.add_dummy_prefix else "never"
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme)
    t.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=scheme)
    piece = lambda i: proto.pieces[i].piece  # noqa: E731
    specials = dict(
        cls_token=piece(tok.bos_id),
        sep_token=piece(tok.eos_id),
        bos_token=piece(tok.bos_id),
        eos_token=piece(tok.eos_id),
        pad_token=piece(tok.pad_id),
        unk_token=piece(unk),
    )
    if tok.piece_to_id(MASK_PIECE) != unk:
        specials["mask_token"] = MASK_PIECE
    control = [p.piece for p in proto.pieces if p.type in (2, 3)]  # UNKNOWN, CONTROL
    t.add_special_tokens(
        [AddedToken(p, normalized=False, special=True) for p in dict.fromkeys(control)]
    )
    if "mask_token" in specials:
        t.add_special_tokens([AddedToken(MASK_PIECE, normalized=False, special=True)])
    s = specials
    t.post_processor = processors.TemplateProcessing(
        single=f"{s['cls_token']} $A {s['sep_token']}",
        special_tokens=[(s["cls_token"], tok.bos_id), (s["sep_token"], tok.eos_id)],
    )
    return HFTokenizer(t, model_type="roberta", specials=specials)


def export_hf(workdir: str, out_dir: str, *, step: int | None = None) -> dict[str, Any]:
    """Writes a classification workdir's latest good checkpoint as a Hugging Face folder:
    config.json, model.safetensors, tokenizer.json and tokenizer_config.json."""
    from transformer_jax.train.restore import load_for_inference

    out_dir = export_destination(out_dir)
    loaded = load_for_inference(workdir, step=step)
    config = loaded.model_config
    _export_checks(config)
    tok = loaded.processors.get("tokenizer")
    labels = loaded.processors.get("labels")
    if tok is None:
        raise ValueError(f"the checkpoint in {workdir} has no tokenizer processor")
    if isinstance(tok, HFTokenizer):  # imported: the family it came from
        model_type = tok.model_type
    elif hasattr(tok, "to_bytes"):  # a SentencePiece model trained here: by the head
        tok = _sentencepiece_to_hf(tok)
        model_type = "bert" if config.head == "bert" else "roberta"
    else:
        raise ValueError(f"cannot export a {type(tok).__name__} tokenizer to tokenizer.json")
    e = config.encoder
    D, N, V = e.d_model, e.num_heads, e.vocab_size
    K = config.num_labels
    pad = e.pad_id
    params = {k: np.asarray(v) for k, v in flatten(loaded.params).items()}
    ours_pos = params[("positions", "positions", "embedding")]
    offset = config.position_offset
    usable = ours_pos.shape[0] - offset
    if model_type == "bert":
        table = ours_pos[offset:]
    else:  # RoBERTa counts positions from pad_token_id + 1
        table = np.zeros((pad + 1 + usable, D), np.float32)
        if offset == pad + 1:
            table[:] = ours_pos
        else:
            table[pad + 1 :] = ours_pos[offset:]
    P = table.shape[0]
    T = max(e.num_token_types, 1)
    if not e.num_token_types:
        params[("token_types", "embedding")] = np.zeros((1, D), np.float32)
    params[("positions", "positions", "embedding")] = table
    prefix = "bert." if model_type == "bert" else "roberta."
    entries = _entries(
        prefix=prefix, D=D, N=N, F=e.d_ff,
        layers=e.num_encoder_layers, V=V, P=P, T=T,
    )  # fmt: skip
    entries += _head_entries(model_type, prefix, D, K)  # (a masked-LM head is not exported)
    tensors = {}
    for name, path, hf_shape, _, to_hf in entries:
        value = np.ascontiguousarray(to_hf(np.asarray(params[path], np.float32)))
        if value.shape != hf_shape:
            raise ValueError(f"parameter {'/'.join(path)} has shape {value.shape}, need {hf_shape}")
        tensors[name] = value
    arch = _ARCH_PREFIX[model_type] + "ForSequenceClassification"
    names = list(labels.names) if labels is not None and labels.names else []
    if len(names) != K:
        names = [f"LABEL_{i}" for i in range(K)]
    problem = labels.problem_type if labels is not None else config.problem_type
    hf_config = {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": V,
        "hidden_size": D,
        "num_hidden_layers": e.num_encoder_layers,
        "num_attention_heads": N,
        "intermediate_size": e.d_ff,
        "hidden_act": _ACT_OUT[e.activation],
        "hidden_dropout_prob": e.dropout_rate,
        "attention_probs_dropout_prob": e.dropout_rate,
        "max_position_embeddings": P,
        "type_vocab_size": T,
        "layer_norm_eps": e.layer_norm_eps,
        "pad_token_id": pad,
        "classifier_dropout": config.classifier_dropout,
        "problem_type": _PROBLEM_OUT[problem],
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
        "tie_word_embeddings": True,
    }
    if model_type != "bert":
        hf_config.update(bos_token_id=tok.cls_id, eos_token_id=tok.sep_id)
    # The tokenizer: tokenizer.json as it is (TokenizersBackend loads it unchanged).
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": min(P - (0 if model_type == "bert" else pad + 1), 10**6),
        **{k: v for k, v in tok.specials.items()},
        **tok.options,
    }
    backend = Tokenizer.from_str(tok.backend.to_str())
    s = tok.specials
    backend.post_processor = processors.TemplateProcessing(
        single=f"{s['cls_token']} $A {s['sep_token']}",
        pair=f"{s['cls_token']} $A {s['sep_token']} $B {s['sep_token']}",
        special_tokens=[(s["cls_token"], tok.cls_id), (s["sep_token"], tok.sep_id)],
    )
    files = {"config.json": hf_config, "tokenizer_config.json": tok_config}
    write_hf_folder(out_dir, tensors, files, backend)
    return {
        "out_dir": os.path.abspath(out_dir),
        "step": loaded.step,
        "model_type": model_type,
        "architecture": arch,
        "labels": names,
    }
