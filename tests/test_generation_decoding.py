"""Text generation (tasks/generation: Generator, TextGenerationPipeline) vs references:
full recomputation, a NumPy repetition penalty, per-row sampling keys, compile counts."""

from __future__ import annotations

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from transformer_jax.decode import cached, search
from transformer_jax.nn.config import TransformerConfig
from transformer_jax.nn.embed import TRANSPOSED_TABLE
from transformer_jax.nn.lm import CausalLM, cached_decoding_fns
from transformer_jax.tasks.generation.decoding import GenerateOptions, Generator, prompt_bucket
from transformer_jax.tasks.generation.pipeline import TextGenerationPipeline
from transformer_jax.train.task import InputError

V = 32
PAD, EOS, BOS = 0, 1, 2
PROMPTS = [[BOS, 5, 9, 17, 3, 22, 8, 30], [BOS, 11, 4], [BOS, 7, 7, 19, 13], [BOS]]
NEW = 6


def config(style: str, **overrides) -> TransformerConfig:
    common = dict(
        vocab_size=V,
        d_model=32,
        num_heads=4,
        d_ff=48,
        num_decoder_layers=2,
        dropout_rate=0.0,
        norm_position="pre",
        scale_embeddings=False,
        max_position=48,
        pad_id=PAD,
        eos_id=EOS,
        decoder_start_id=BOS,
    )
    if style == "llama":
        common |= dict(
            num_kv_heads=2,
            norm_type="rms",
            activation="swiglu",
            mlp_bias=False,
            position_type="rope",
            position_layout="halves",
            tie_output=False,
        )
    else:  # gpt
        common |= dict(activation="gelu_tanh", attention_bias=True, position_type="learned")
    return TransformerConfig(**(common | overrides))


@functools.cache
def init_params(cfg: TransformerConfig, seed: int = 0):
    """Random weights drawn by NumPy, large enough that greedy choices have no near-ties."""
    ids = jnp.zeros((1, 4), jnp.int32)
    shapes = nn.unbox(jax.eval_shape(CausalLM(cfg).init, jax.random.key(0), ids)["params"])
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if leaf.ndim == 1:
            return 1.0 + 0.2 * rng.standard_normal(leaf.shape, np.float32)
        std = 1.0 if "embedding" in jax.tree_util.keystr(path) else leaf.shape[0] ** -0.5
        return jnp.asarray(std * rng.standard_normal(leaf.shape, np.float32))

    return jax.tree_util.tree_map_with_path(draw, shapes)


def np_penalize(logits: np.ndarray, seen: set[int], p: float) -> np.ndarray:
    out = logits.copy()
    for t in seen:
        out[t] = out[t] / p if out[t] > 0 else out[t] * p
    return out


@functools.cache
def shared_generator(style: str, padding_side: str = "left") -> Generator:
    """One generator per model (batch size 4), so that tests reuse compiled programs."""
    cfg = config(style)
    return Generator(cfg, init_params(cfg), batch_size=4, padding_side=padding_side)


def _last_logits_fn(cfg: TransformerConfig):
    return _last_logits_jit(cfg.replace(eos_id=EOS))  # one compilation whatever the eos


@functools.cache
def _last_logits_jit(cfg: TransformerConfig):
    def last_logits(params, ids_1L, length):
        seg_1L = (jnp.arange(ids_1L.shape[1])[None] < length).astype(jnp.int32)
        return CausalLM(cfg).apply({"params": params}, ids_1L, seg_1L)[0, length - 1]

    return jax.jit(last_logits)


def recompute_greedy(cfg, params, prompt, n, eos_id, penalty=1.0) -> list[int]:
    """Greedy continuation by re-running CausalLM.__call__ on the growing sequence."""
    buf = np.zeros((1, 32), np.int32)
    buf[0, : len(prompt)] = prompt
    length, out = len(prompt), []
    for _ in range(n):
        logits = np.asarray(_last_logits_fn(cfg)(params, buf, length))
        tok = int(np.argmax(np_penalize(logits, set(prompt) | set(out), penalty)))
        out.append(tok)
        buf[0, length] = tok
        length += 1
        if tok == eos_id:
            break
    return out


class CharTokenizer:
    """Letters and space as ids 3..29; ids 0, 1, 2 are pad, eos, bos."""

    chars = "abcdefghijklmnopqrstuvwxyz "
    pad_id, eos_id, bos_id = PAD, EOS, BOS
    vocab_size = V

    def encode(self, text: str) -> list[int]:
        return [3 + self.chars.index(c) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 3] if 3 <= i < 30 else "#" for i in ids if i > BOS)


def pipeline(**options) -> TextGenerationPipeline:
    """A pipeline over the shared llama-style generator (its continuations vary)."""
    cfg = config("llama")
    pipe = TextGenerationPipeline(init_params(cfg), cfg, CharTokenizer(), **options)
    pipe.generator = shared_generator("llama")
    return pipe


# ---- cached decoding == recomputation ----------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "side", "penalty"),
    [("gpt", "left", 1.0), ("llama", "right", 1.0), ("llama", "left", 1.8)],
)
def test_batched_greedy_equals_recompute(style, side, penalty) -> None:
    cfg = config(style)
    params = init_params(cfg)
    if style == "gpt":  # an eos that a row produces mid-way, so that stopping is exercised
        eos = recompute_greedy(cfg, params, PROMPTS[0], NEW, -1, penalty)[2]
        cfg = cfg.replace(eos_id=eos)
        gen = Generator(cfg, params, batch_size=4, padding_side=side)
    else:
        gen = shared_generator(style, side)
    expected = [[recompute_greedy(cfg, params, p, NEW, cfg.eos_id, penalty)] for p in PROMPTS]
    assert len({tuple(r[0]) for r in expected}) > 1
    if style == "gpt":
        assert any(len(r[0]) < NEW for r in expected)
    out = gen.generate_ids(PROMPTS, max_new_tokens=NEW, repetition_penalty=penalty)
    assert out == expected


def test_repetition_penalty_matches_numpy_on_one_step() -> None:
    """Prompt tokens and generated ones are penalized, logits of either sign, per row."""
    rng = np.random.default_rng(0)
    B, p = 3, 1.7
    logits = rng.standard_normal((B, V)).astype(np.float32) * 3
    prompts = np.array([[4, 9, 9, 0], [0, 0, 1, 5], [7, 3, 2, 6]], np.int32)
    mask = np.array([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]], np.int32)
    # Make each row's best token a prompt token, so that the penalty decides.
    for b in range(B):
        logits[b, prompts[b][mask[b] != 0][0]] = logits[b].max() + 0.5
    seen = cached.prompt_tokens_seen(prompts, mask, V)
    sets = [set(prompts[b][mask[b] != 0].tolist()) for b in range(B)]
    np.testing.assert_array_equal(np.asarray(seen), [[t in s for t in range(V)] for s in sets])
    got = np.asarray(search.penalize_repetitions(jnp.asarray(logits), seen, p))
    want = np.stack([np_penalize(logits[b], sets[b], p) for b in range(B)])
    np.testing.assert_allclose(got, want, rtol=1e-6)

    # Two greedy steps of a model whose logits are always `logits`: the first token is
    # chosen among penalized prompt tokens, the second also penalizes the first.
    seqs = search.greedy_search(
        lambda ids, c: (jnp.asarray(logits)[:, None], c),
        {},
        batch_size=B,
        max_decode_len=2,
        start_id=0,
        eos_id=-1,
        initial_logits=jnp.asarray(logits),
        repetition_penalty=p,
        seen=seen,
    )
    for b in range(B):
        first = int(np.argmax(want[b]))
        second = int(np.argmax(np_penalize(logits[b], sets[b] | {first}, p)))
        assert first != int(np.argmax(logits[b]))
        np.testing.assert_array_equal(np.asarray(seqs[b]), [first, second])


def test_beam_search_with_one_beam_equals_greedy() -> None:
    cfg = config("llama")
    params = init_params(cfg)
    gen = shared_generator("llama")
    greedy = gen.generate_ids(PROMPTS, max_new_tokens=NEW)
    init_cache, prefill, step = cached_decoding_fns(CausalLM(cfg))
    ids = np.zeros((len(PROMPTS), 16), np.int32)
    mask = np.zeros_like(ids)
    for b, p in enumerate(PROMPTS):
        ids[b, 16 - len(p) :], mask[b, 16 - len(p) :] = p, 1

    @jax.jit
    def beam(params, ids, mask):
        cache = init_cache(params, ids.shape[0], ids.shape[1] + NEW)
        return cached.beam_generate(
            prefill, step, params, cache, ids, mask, max_new_tokens=NEW, eos_id=EOS,
            beam_size=1, alpha=0.0, length_penalty_type="hf",
        )[0]  # fmt: skip

    seqs = np.asarray(beam(params, ids, mask))[:, 0]
    assert [[gen._cut(s)] for s in seqs] == greedy


def test_beam_search_returns_the_best_beams() -> None:
    gen = Generator(config("llama"), init_params(config("llama")), batch_size=8)
    opts = dict(max_new_tokens=NEW, num_beams=3, length_penalty=0.5)
    two = gen.generate_ids(PROMPTS[:2], num_return_sequences=2, **opts)
    one = gen.generate_ids(PROMPTS[:2], **opts)
    assert [len(r) for r in two] == [2, 2]
    assert [r[0] for r in two] == [r[0] for r in one]
    assert all(r[0] != r[1] for r in two)
    penalized = gen.generate_ids(PROMPTS[:2], repetition_penalty=5.0, **opts)
    assert penalized != one


# ---- sampling ------------------------------------------------------------------------------


def test_sampling_is_reproducible_and_independent_of_the_batch() -> None:
    gen = shared_generator("llama")
    hot = dict(max_new_tokens=NEW, temperature=3.0, seed=7)
    alone = gen.generate_ids([PROMPTS[1]], **hot)
    again = gen.generate_ids([PROMPTS[1]], **hot)
    crowd = gen.generate_ids([PROMPTS[0], PROMPTS[2], PROMPTS[1], PROMPTS[3]], **hot)
    assert alone == again == [crowd[2]]
    other_seed = gen.generate_ids([PROMPTS[1]], **(hot | {"seed": 8}))
    greedy = gen.generate_ids([PROMPTS[1]], max_new_tokens=NEW)
    assert other_seed != alone and greedy != alone
    # Copies draw from distinct keys; the first is the single sample.
    three = gen.generate_ids([PROMPTS[1]], num_return_sequences=3, **hot)[0]
    assert three[0] == alone[0][0] and len({tuple(s) for s in three}) == 3
    # Per-prompt seeds.
    seeded = gen.generate_ids([PROMPTS[1]] * 4, seeds=[7, 8, 8, 7], **hot)
    assert seeded == [alone[0], other_seed[0], other_seed[0], alone[0]]


def test_per_row_keys_in_search_sample_each_row_alone() -> None:
    logits = jnp.asarray(np.random.default_rng(1).standard_normal((4, V)), jnp.float32)
    keys = jax.random.split(jax.random.key(3), 4)

    def run(logits, keys):
        return search.greedy_search(
            lambda ids, c: (logits[:, None], c), {}, batch_size=logits.shape[0],
            max_decode_len=5, start_id=0, eos_id=-1, temperature=2.0, rng=keys,
            initial_logits=logits,
        )  # fmt: skip

    batch = np.asarray(run(logits, keys))
    for b in range(4):
        np.testing.assert_array_equal(
            np.asarray(run(logits[b : b + 1], keys[b : b + 1]))[0], batch[b]
        )
    assert len({tuple(r) for r in batch}) > 1
    with pytest.raises(ValueError, match="one per row"):
        run(logits, keys[:3])


# ---- compilation ---------------------------------------------------------------------------


def test_new_prompt_length_in_a_bucket_does_not_recompile() -> None:
    cfg = config("gpt", max_position=40)  # a fresh generator: nothing compiled yet
    gen = Generator(cfg, init_params(cfg), batch_size=4)
    assert [prompt_bucket(n, 48) for n in (1, 16, 17, 33, 48)] == [16, 16, 32, 48, 48]
    gen.generate_ids([[BOS, 4, 5]], max_new_tokens=3)
    gen.generate_ids([[BOS] + [6] * 12], max_new_tokens=3)
    assert gen.traces == 1
    gen.generate_ids([[BOS, 3], [4] * 9, [5]], max_new_tokens=3)  # 3 rows -> batch of 4
    gen.generate_ids([[BOS, 3], [4] * 2, [5], [6] * 15], max_new_tokens=3)
    assert gen.traces == 2
    gen.generate_ids([[BOS] + [6] * 20], max_new_tokens=3)  # the next bucket
    assert gen.traces == 3
    gen.generate_ids([[BOS, 4, 5]], max_new_tokens=3, temperature=0.5, seed=1)
    gen.generate_ids([[BOS, 4, 5, 6]], max_new_tokens=3, temperature=1.5, seed=2)
    assert gen.traces == 4  # temperature and seed are not compiled in


# ---- the pipeline --------------------------------------------------------------------------


def test_pipeline_shapes_batches_and_full_text() -> None:
    pipe = pipeline(max_new_tokens=NEW)
    texts = ["hello world", "a", "", "the cat", "zebra"]  # two batches of up to 4
    out = pipe(texts)
    assert [len(r) for r in out] == [1, 1, 1, 1, 1]
    tok = CharTokenizer()
    ids = pipe.generate_ids([[BOS, *tok.encode(t)] for t in texts])
    for text, r, new in zip(texts, out, ids, strict=True):
        new = new[0][:-1] if new[0][-1:] == [EOS] else new[0]
        assert r[0]["generated_text"] == text + tok.decode(new)
    assert len({r[0]["generated_text"][len(t) :] for t, r in zip(texts, out, strict=True)}) > 2
    assert pipe("the cat") == out[3]
    assert pipe("the cat", return_full_text=False) == [
        {"generated_text": out[3][0]["generated_text"][len("the cat") :]}
    ]
    # An empty prompt generates from [bos], with or without add_bos.
    assert pipeline(max_new_tokens=NEW, add_bos=False)("") == out[2]
    many = pipe(["ab", "cd"], num_return_sequences=2, temperature=2.0)
    assert [len(r) for r in many] == [2, 2]
    assert many[0][0] != many[0][1]
    assert len(pipe("ab", num_return_sequences=2, num_beams=2)) == 2


def test_pipeline_stop_strings() -> None:
    pipe = pipeline(max_new_tokens=NEW)
    full = pipe("the cat", return_full_text=False)[0]["generated_text"]
    assert len(set(full)) >= 3
    stop = full[2]
    cut = full[: full.index(stop)]
    assert pipe("the cat", stop=[stop], return_full_text=False)[0]["generated_text"] == cut
    assert pipe("the cat", stop=f'["{stop}", "zzz"]')[0]["generated_text"] == "the cat" + cut
    with_stop = pipeline(max_new_tokens=NEW, stop=[full[3:5]])
    assert with_stop("the cat")[0]["generated_text"] == "the cat" + full[: full.index(full[3:5])]


def test_pipeline_from_loaded_reads_the_generate_group() -> None:
    cfg = config("gpt")
    run_config = ml_collections.ConfigDict(
        {
            "generate": dict(
                max_new_tokens=4,
                temperature=0.0,
                top_k=0,
                stop="",
                batch_size=2,
                add_bos=True,
                truncation="left",
                eval_examples=8,
            )
        }  # fmt: skip
    )
    loaded = types.SimpleNamespace(
        params=init_params(cfg),
        model_config=cfg,
        processors={"tokenizer": CharTokenizer()},
        run_config=run_config,
    )
    pipe = TextGenerationPipeline.from_loaded(loaded, max_new_tokens=3, top_k=5)
    assert pipe.options.max_new_tokens == 3 and pipe.options.top_k == 5
    assert pipe.generator.batch_size == 2 and pipe.stop == []
    pipe.generator = shared_generator("gpt")  # compiled programs of the same model
    assert len(pipe("abc", return_full_text=False)[0]["generated_text"]) <= 3


def test_long_prompt_keeps_its_end_with_one_warning(capsys) -> None:
    gen = shared_generator("gpt")
    long = [BOS] + [3 + i % 20 for i in range(60)]
    out = gen.generate_ids([long, long[:5], long], max_new_tokens=NEW)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "2 prompt(s)" in err and "last 42" in err
    assert out[0] == out[2] == gen.generate_ids([long[-42:]], max_new_tokens=NEW)[0]


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"temperature": -0.1}, "temperature"),
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
        ({"num_beams": 2, "temperature": 1.0}, "temperature"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 48}, "max_new_tokens=48 exceeds .* max_position=48"),
        ({"max_new_tokens": 40, "truncation": "error"}, "prompt of 12 tokens"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"num_return_sequences": 0}, "num_return_sequences"),
        ({"length_penalty_type": "x"}, "length_penalty_type"),
        ({"truncation": "right"}, "truncation"),
        ({"seed": -1}, "seed"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"beams": 2}, "unknown generation option"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_bad_options_are_one_line_input_errors(options, match) -> None:
    pipe = pipeline()
    with pytest.raises(InputError, match=match) as info:
        pipe("hello world", **options)
    assert "\n" not in str(info.value)


def test_bad_prompts_are_input_errors() -> None:
    pipe = pipeline()
    with pytest.raises(InputError, match="expected text"):
        pipe(["ok", 3])
    with pytest.raises(InputError, match="outside the vocabulary"):
        pipe.generate_ids([[BOS, V]])
    with pytest.raises(InputError, match="batch_size"):
        Generator(config("gpt"), None, batch_size=0)
    assert GenerateOptions().validate() is None


# ---- parity with transformers' generate() ----------------------------------------------------


@pytest.mark.parametrize("num_beams", [1, 3])
def test_repetition_penalty_matches_transformers_generate(num_beams) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from test_decoder_only import gpt2_config, gpt2_params

    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3, bos_token_id=BOS,
        eos_token_id=EOS, pad_token_id=PAD,
    )  # fmt: skip
    hf_cfg._attn_implementation = "eager"
    ref = transformers.GPT2LMHeadModel(hf_cfg).eval()
    cfg = gpt2_config(pad_id=PAD, eos_id=EOS, decoder_start_id=BOS)
    gen = Generator(cfg, gpt2_params(ref), batch_size=4)
    prompts = [[BOS, 5, 9, 17, 9, 22], [BOS, 11], [BOS, 7, 7, 19]]
    opts = dict(max_new_tokens=NEW, repetition_penalty=1.6, num_beams=num_beams)
    ours = gen.generate_ids(prompts, **opts)
    plain = gen.generate_ids(prompts, **(opts | {"repetition_penalty": 1.0}))
    assert ours != plain  # the penalty changes something
    for prompt, got in zip(prompts, ours, strict=True):
        with torch.no_grad():
            out = ref.generate(
                torch.tensor([prompt]), attention_mask=torch.ones((1, len(prompt)), dtype=int),
                do_sample=False, num_beams=num_beams, max_new_tokens=NEW, min_new_tokens=0,
                repetition_penalty=1.6, length_penalty=1.0,
            )[0, len(prompt) :].tolist()  # fmt: skip
        n = out.index(EOS) + 1 if EOS in out else len(out)
        assert got[0] == out[:n]


def test_new_params_replace_the_laid_out_copy() -> None:
    """The generator lays its weights out for decoding once, and again for new ones."""
    cfg = config("gpt")
    # Device arrays, as loaded params are (NumPy ones can change in place: never kept).
    first, second = (jax.tree.map(jnp.asarray, init_params(cfg, seed=s)) for s in (0, 1))
    gen = Generator(cfg, first, batch_size=4)
    want = {
        name: [[recompute_greedy(cfg, p, prompt, NEW, cfg.eos_id)] for prompt in PROMPTS]
        for name, p in (("first", first), ("second", second))
    }
    assert want["first"] != want["second"]
    assert gen.generate_ids(PROMPTS, max_new_tokens=NEW) == want["first"]
    laid = gen._decoding_params([4])  # kept from the call: greedy over one batch of 4
    assert cfg.tie_output and TRANSPOSED_TABLE not in laid["embed"]  # 4 rows never read it
    laid = jax.tree.leaves(laid)
    again = jax.tree.leaves(gen._decoding_params([2]))
    assert len(again) == len(laid) and all(a is b for a, b in zip(again, laid))  # kept
    assert TRANSPOSED_TABLE in gen._decoding_params([1])["embed"]  # one row reads it
    assert gen.generate_ids(PROMPTS[:1], max_new_tokens=NEW) == want["first"][:1]
    gen.params = second
    assert gen.generate_ids(PROMPTS, max_new_tokens=NEW) == want["second"]
