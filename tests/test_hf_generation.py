"""Hugging Face causal LMs (GPT-2, Llama, Qwen2, Mistral): import, logits, decoding, export.

The references are tiny, randomly initialised transformers models saved with safetensors
next to byte-level / Metaspace BPE tokenizers trained here on a few sentences (no download).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from tokenizers import (  # noqa: E402
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)

from transformer_jax.__main__ import main as cli_main  # noqa: E402
from transformer_jax.data.hf_tokenizer import HFTokenizer  # noqa: E402
from transformer_jax.data.processors import processors_from_json, processors_to_json  # noqa: E402
from transformer_jax.decode import cached  # noqa: E402
from transformer_jax.nn.lm import CausalLM, cached_decoding_fns  # noqa: E402
from transformer_jax.tasks.generation.hf import convert, export_hf, import_hf  # noqa: E402
from transformer_jax.train.restore import load_for_inference  # noqa: E402

CORPUS = [
    "The cat sleeps on the sofa.",
    "A dog runs in the park!",
    "We walk to the old market, don't we?",
    "Birds sing in the garden every morning.",
    "El niño come pan y queso.",
] * 4
PROMPTS = ["The cat runs in", "A bird sings on"]
TEXTS = ["The café was naïve!", "  two  spaces ", "zebra☃ 日本", "<|endoftext|> after"]
D, N, LAYERS = 32, 4, 2


def _gpt2_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _llama_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def _save_tokenizer(tok: Tokenizer, folder: str, **specials) -> None:
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    fast.save_pretrained(folder)


def _make(kind: str, folder: str, **overrides):
    """A tiny random `kind` model saved in `folder` with its tokenizer; the model."""
    torch.manual_seed({"gpt2": 0, "llama": 1, "qwen2": 2, "mistral": 3}[kind])
    if kind == "gpt2":
        tok = _gpt2_tokenizer()
        _save_tokenizer(tok, folder, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
        eos = tok.token_to_id("<|endoftext|>")
        cfg = transformers.GPT2Config(
            vocab_size=tok.get_vocab_size(), n_positions=48, n_embd=D, n_layer=LAYERS,
            n_head=N, bos_token_id=eos, eos_token_id=eos, initializer_range=0.2,
            **overrides,
        )  # fmt: skip
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        if kind == "qwen2":  # no bos token; eos "<|endoftext|>" (config.json's eos_token_id)
            tok = _gpt2_tokenizer()
            _save_tokenizer(tok, folder, eos_token="<|endoftext|>")
            ids = dict(bos_token_id=None, eos_token_id=tok.token_to_id("<|endoftext|>"))
        else:
            tok = _llama_tokenizer()
            _save_tokenizer(tok, folder, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
            ids = dict(bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"))
        common = dict(
            vocab_size=tok.get_vocab_size() + 8,  # padded embedding rows, as in real models
            hidden_size=D, intermediate_size=48, num_hidden_layers=LAYERS,
            num_attention_heads=N, num_key_value_heads=2, max_position_embeddings=48,
            rms_norm_eps=1e-6, rope_theta=500.0, initializer_range=0.2, **ids,
        )  # fmt: skip
        common.update(overrides)
        if kind == "llama":
            cfg = transformers.LlamaConfig(tie_word_embeddings=False, **common)
            model = transformers.LlamaForCausalLM(cfg)
        elif kind == "qwen2":
            cfg = transformers.Qwen2Config(tie_word_embeddings=True, **common)
            model = transformers.Qwen2ForCausalLM(cfg)
            with torch.no_grad():  # nonzero q/k/v biases, so that their mapping is checked
                for layer in model.model.layers:
                    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                        proj.bias.normal_(0.0, 0.5)
                    layer.self_attn.v_proj.bias.normal_(0.0, 0.5)
        else:
            cfg = transformers.MistralConfig(tie_word_embeddings=False, **common)
            model = transformers.MistralForCausalLM(cfg)
    model.eval().save_pretrained(folder)
    model.config._attn_implementation = "eager"
    return model


@pytest.fixture(scope="module", params=["gpt2", "llama", "qwen2"])
def hub(request, tmp_path_factory):
    """(kind, Hub folder, transformers model, imported workdir)."""
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    folder = str(root / "hub")
    model = _make(kind, folder, **({"sliding_window": None} if kind == "mistral" else {}))
    workdir = str(root / "run")
    summary = import_hf(folder, workdir)
    assert summary["model_type"] == kind and summary["step"] == 0
    return kind, folder, model, workdir


def _hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


def _our_logits(loaded, ids: np.ndarray) -> np.ndarray:
    ids_j = jnp.asarray(ids, jnp.int32)
    out = CausalLM(loaded.model_config).apply(
        {"params": loaded.params}, ids_j, segment_ids=jnp.ones_like(ids_j)
    )
    return np.asarray(out)


def _prompt_ids(kind: str, tok: HFTokenizer, loaded) -> np.ndarray:
    add_bos = bool(loaded.run_config.generate.add_bos)
    assert add_bos == (kind == "llama")  # Llama's tokenizer adds BOS, GPT-2's and Qwen2's not
    rows = [([tok.bos_id] if add_bos else []) + tok.encode(p) for p in PROMPTS]
    n = min(len(r) for r in rows)  # one length: no padding on the transformers side
    assert n >= 3
    return np.asarray([r[:n] for r in rows], np.int64)


def test_tokenizer_matches_transformers(hub):
    kind, folder, _, workdir = hub
    tok = load_for_inference(workdir).processors["tokenizer"]
    assert isinstance(tok, HFTokenizer) and tok.model_type == kind
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert tok.eos_id == theirs.eos_token_id >= 0
    assert tok.bos_id == (theirs.bos_token_id if theirs.bos_token_id is not None else -1)
    assert tok.pad_id == -1  # none of these tokenizers has a pad token
    for text in TEXTS + PROMPTS:
        ids = tok.encode(text)
        assert ids == theirs(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
        with_specials = theirs(text)["input_ids"]
        assert with_specials == ([tok.bos_id] if kind == "llama" else []) + ids
    back = processors_from_json(processors_to_json({"tokenizer": tok}))["tokenizer"]
    assert back == tok and back.encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_logits_match_transformers(hub):
    kind, _, model, workdir = hub
    loaded = load_for_inference(workdir)
    assert loaded.run_config.task == "causal_lm"
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 11))
    expected = _hf_logits(model, ids)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(_our_logits(loaded, ids), expected, atol=1e-4, rtol=1e-4)


def test_convert_in_memory_matches_the_import(hub):
    """`convert` of the live model's config and state dict (GPT-2's tied `lm_head.weight`
    present, no file read) gives the imported checkpoint's config (special ids from the
    config instead of the tokenizer, the same here) and weights, and the model's logits."""
    kind, _, model, workdir = hub
    loaded = load_for_inference(workdir)
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    config, params = convert(model.config.to_dict(), tensors)
    assert config == loaded.model_config
    assert convert(model.config.to_dict(), tensors, eos_id=5)[0].eos_id == 5
    assert jax.tree.structure(params) == jax.tree.structure(loaded.params)
    for ours, saved in zip(jax.tree.leaves(params), jax.tree.leaves(loaded.params), strict=True):
        np.testing.assert_array_equal(ours, saved)
    tokens = np.random.default_rng(1).integers(0, model.config.vocab_size, (2, 9))
    out = CausalLM(config).apply({"params": params}, jnp.asarray(tokens, jnp.int32))
    np.testing.assert_allclose(np.asarray(out), _hf_logits(model, tokens), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="weights lack"):
        del tensors[next(k for k in tensors if k.endswith("mlp.c_fc.weight") or "up_proj" in k)]
        convert(model.config.to_dict(), tensors)


def _decode(loaded, prompts: np.ndarray, max_new: int, beams: int = 0):
    args = _decoding_args(loaded, prompts, max_new)
    eos = loaded.model_config.eos_id
    if not beams:
        return np.asarray(cached.generate(*args, max_new_tokens=max_new, eos_id=eos))
    seqs, _ = cached.beam_generate(
        *args, max_new_tokens=max_new, eos_id=eos, beam_size=beams, alpha=1.0,
        length_penalty_type="hf", early_stopping="false",
    )  # fmt: skip
    return np.asarray(seqs[:, 0])


def _hf_generate(model, prompts: np.ndarray, max_new: int, **kw) -> np.ndarray:
    with torch.no_grad():
        out = model.generate(
            torch.from_numpy(prompts), attention_mask=torch.ones_like(torch.from_numpy(prompts)),
            max_new_tokens=max_new, min_new_tokens=0, do_sample=False,
            pad_token_id=model.config.eos_token_id, **kw,
        )  # fmt: skip
    return out[:, prompts.shape[1] :].numpy()


def _same_tokens(ours: np.ndarray, theirs: np.ndarray, eos: int) -> None:
    """Token for token up to and including each row's eos (both pad differently after)."""
    for a, b in zip(ours, theirs, strict=True):
        b = list(b)
        n = b.index(eos) + 1 if eos in b else len(b)
        assert list(a[:n]) == b[:n]


def test_greedy_and_beam_match_generate(hub):
    kind, _, model, workdir = hub
    loaded = load_for_inference(workdir)
    tok = loaded.processors["tokenizer"]
    prompts = _prompt_ids(kind, tok, loaded)
    eos = model.config.eos_token_id
    assert loaded.model_config.eos_id == eos
    theirs = _hf_generate(model, prompts, 8)
    _same_tokens(_decode(loaded, prompts, 8), theirs, eos)
    theirs = _hf_generate(model, prompts, 6, num_beams=4, length_penalty=1.0, early_stopping=False)
    _same_tokens(_decode(loaded, prompts, 6, beams=4), theirs, eos)


def test_export_loads_in_transformers(hub, tmp_path):
    kind, folder, model, workdir = hub
    out = str(tmp_path / "out")
    summary = export_hf(workdir, out)
    assert summary["model_type"] == kind
    assert "pytorch_model.bin" not in os.listdir(out)
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(back) is type(model)
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, (2, 9))
    np.testing.assert_allclose(_hf_logits(back, ids), _hf_logits(model, ids), atol=1e-5)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    exported = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert exported(text)["input_ids"] == theirs(text)["input_ids"]
    assert exported.eos_token_id == theirs.eos_token_id
    # The export imports again to the same weights.
    again = load_for_inference(import_hf(out, str(tmp_path / "again"))["workdir"])
    first = load_for_inference(workdir)
    assert again.model_config == first.model_config
    np.testing.assert_array_equal(
        np.asarray(again.params["embed"]["embedding"]),
        np.asarray(first.params["embed"]["embedding"]),
    )


def test_cli_import_and_export(tmp_path, capsys):
    hub = str(tmp_path / "hub")
    model = _make("gpt2", hub)
    run, out = str(tmp_path / "run"), str(tmp_path / "out")
    assert cli_main(["import-hf", "--from", hub, "--to", run]) == 0
    assert json.loads(capsys.readouterr().out)["model_type"] == "gpt2"
    # A fresh interpreter reads the imported workdir (its task registers the tokenizer kind).
    code = (
        "import sys; from transformer_jax.train.restore import load_for_inference; "
        "print(type(load_for_inference(sys.argv[1]).processors['tokenizer']).__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, run], capture_output=True, text=True, timeout=300
    )
    assert done.stdout.strip() == "HFTokenizer", done.stderr[-500:]
    assert cli_main(["export-hf", "--workdir", run, "--to", out]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "GPT2LMHeadModel"
    back = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = np.arange(12, dtype=np.int64).reshape(2, 6)
    np.testing.assert_allclose(_hf_logits(back, ids), _hf_logits(model, ids), atol=1e-5)


def test_mistral_with_a_window_covering_the_context(tmp_path):
    hub = str(tmp_path / "hub")
    model = _make("mistral", hub, sliding_window=64)  # >= max_position_embeddings=48
    loaded = load_for_inference(import_hf(hub, str(tmp_path / "run"))["workdir"])
    ids = np.random.default_rng(2).integers(0, model.config.vocab_size, (1, 10))
    np.testing.assert_allclose(_our_logits(loaded, ids), _hf_logits(model, ids), atol=1e-4)


def _edited(src: str, dst: str, **changes) -> str:
    shutil.copytree(src, dst)
    path = os.path.join(dst, "config.json")
    with open(path) as f:
        blob = json.load(f)
    for key, value in changes.items():
        if value is None:
            blob.pop(key, None)
        else:
            blob[key] = value
    with open(path, "w") as f:
        json.dump(blob, f)
    return dst


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}},
            "unsupported rope_parameters of type 'linear'",
        ),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling of type 'dynamic'"),
        ({"hidden_act": "gelu"}, "unsupported hidden_act='gelu'"),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
        ({"model_type": "mistral", "sliding_window": 16}, "sliding_window=16 is shorter"),
        ({"model_type": "falcon"}, "unsupported model_type='falcon'"),
        ({"hidden_size": 64}, "weight model.embed_tokens.weight has shape"),
    ],
)
def test_unsupported_configs_are_refused(tmp_path, changes, message):
    hub = str(tmp_path / "hub")
    _make("llama", hub)
    bad = _edited(hub, str(tmp_path / "bad"), **changes)
    with pytest.raises(ValueError, match=message) as e:
        import_hf(bad, str(tmp_path / "run"))
    assert "\n" not in str(e.value)


def test_cli_refuses_with_one_line(tmp_path, capsys):
    hub = str(tmp_path / "hub")
    _make("gpt2", hub)
    bad = _edited(hub, str(tmp_path / "bad"), scale_attn_by_inverse_layer_idx=True)
    capsys.readouterr()  # what building the reference printed
    assert cli_main(["import-hf", "--from", bad, "--to", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "scale_attn_by_inverse_layer_idx=True" in err and "\n" not in err


BEAM_VARIANTS = [  # (length_penalty, early_stopping) as generate() takes them
    (1.0, False),
    (2.0, True),
    (0.5, "never"),
]


@pytest.mark.parametrize("kind", ["llama"])
def test_decoding_that_reaches_eos_matches_generate(tmp_path, kind):
    """The eos id is a token the model often picks, so rows and beams end early."""
    hub = str(tmp_path / "hub")
    model = _make(kind, hub)
    prompt = np.asarray([[5, 9, 17, 3]], np.int64)
    free = _hf_generate(model, prompt, 6, eos_token_id=None)[0]
    eos = int(free[2])  # greedy decoding emits it as its third token
    model.config.eos_token_id = eos
    model.generation_config.eos_token_id = eos
    _edited(hub, str(tmp_path / "hub2"), eos_token_id=eos)
    for name in ("generation_config.json",):
        os.remove(os.path.join(tmp_path / "hub2", name))
    loaded = load_for_inference(import_hf(str(tmp_path / "hub2"), str(tmp_path / "run"))["workdir"])
    assert loaded.model_config.eos_id == eos
    prompts = np.asarray([[5, 9, 17, 3], [7, 2, 11, 30]], np.int64)
    theirs = _hf_generate(model, prompts, 8)
    assert eos in theirs[0]
    ours = _decode(loaded, prompts, 8)
    _same_tokens(ours, theirs, eos)
    assert eos in list(ours[0])  # the row ended early
    ended = 0
    for penalty, early in BEAM_VARIANTS:
        theirs = _hf_generate(
            model, prompts, 7, num_beams=4, length_penalty=penalty, early_stopping=early
        )
        seqs, _ = cached.beam_generate(
            *_decoding_args(loaded, prompts, 7), max_new_tokens=7, eos_id=eos, beam_size=4,
            alpha=penalty, length_penalty_type="hf",
            early_stopping={False: "false", True: "true", "never": "never"}[early],
        )  # fmt: skip
        _same_tokens(np.asarray(seqs[:, 0]), theirs, eos)
        ended += int(np.sum(theirs == eos))
    assert ended  # some best beams end with eos


def _decoding_args(loaded, prompts: np.ndarray, max_new: int):
    init_cache, prefill, step = cached_decoding_fns(CausalLM(loaded.model_config))
    B, T = prompts.shape
    cache = init_cache(loaded.params, B, T + max_new - 1)
    ids = jnp.asarray(prompts, jnp.int32)
    return prefill, step, loaded.params, cache, ids, jnp.ones_like(ids)


@pytest.mark.parametrize("hub", ["gpt2"], indirect=True)
def test_pipeline_continues_prompts_of_any_length_like_generate(hub):
    """Prompts of different lengths in one batch (padded here) continue as each one alone
    does in transformers."""
    from transformer_jax.tasks.generation.pipeline import TextGenerationPipeline

    kind, _, model, workdir = hub
    loaded = load_for_inference(workdir)
    pipe = TextGenerationPipeline.from_loaded(loaded, max_new_tokens=6)
    texts = ["The cat", "Birds sing in the garden every", "A"]
    prompt_ids = [pipe.encode(t) for t in texts]
    assert len({len(p) for p in prompt_ids}) == 3
    ours = pipe.generate_ids(prompt_ids)
    eos = model.config.eos_token_id
    for ids, got in zip(prompt_ids, ours, strict=True):
        theirs = _hf_generate(model, np.asarray([ids], np.int64), 6)
        _same_tokens(np.asarray([got[0]]), theirs, eos)
    beams = pipe.generate_ids(prompt_ids, num_beams=3)
    for ids, got in zip(prompt_ids, beams, strict=True):
        theirs = _hf_generate(model, np.asarray([ids], np.int64), 6, num_beams=3)
        _same_tokens(np.asarray([got[0]]), theirs, eos)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"position_type": "sinusoid"}, "model.position_type='sinusoid'"),
        ({"norm_position": "post"}, "model.norm_position='post'"),
        ({"position_type": "rope", "norm_type": "layer"}, "model.norm_type='layer'"),
        ({"num_kv_heads": 2}, "model.num_kv_heads=2: a GPT-2 export needs MHA"),
        ({"activation": "swiglu"}, "model.activation='swiglu'"),
    ],
)
def test_settings_hugging_face_cannot_express_are_refused(overrides, message):
    from transformer_jax.nn.config import TransformerConfig
    from transformer_jax.tasks.generation.hf import _export_family

    gpt2 = dict(
        vocab_size=64, d_model=D, num_heads=N, d_ff=64, num_encoder_layers=0,
        num_decoder_layers=1, norm_position="pre", activation="gelu_tanh",
        attention_bias=True, position_type="learned", scale_embeddings=False,
    )  # fmt: skip
    assert _export_family(TransformerConfig(**gpt2), None, {}) == "gpt2"
    with pytest.raises(ValueError, match=message) as e:
        _export_family(TransformerConfig(**{**gpt2, **overrides}), None, {})
    assert "\n" not in str(e.value)
