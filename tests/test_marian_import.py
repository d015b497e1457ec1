"""Importing a Marian checkpoint: logits, greedy decoding and the pipeline match transformers.

The reference is a small, randomly initialised `transformers.MarianMTModel` saved
with safetensors next to SentencePiece models trained here on a few sentences.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from transformer_jax.tasks.translation.decoding import translate_ids  # noqa: E402
from transformer_jax.tasks.translation.marian import MarianTokenizer, import_marian  # noqa: E402
from transformer_jax.tasks.translation.model import EncoderDecoder  # noqa: E402
from transformer_jax.tasks.translation.pipeline import TranslationPipeline  # noqa: E402
from transformer_jax.train.restore import load_for_inference  # noqa: E402

SOURCE_TEXTS = [
    "the cat sleeps on the sofa",
    "a dog runs in the park",
    "the children read a book",
    "my sister drinks green tea",
    "we walk to the old market",
    "the bird sings in the morning",
    "the teacher opens the window",
    "they eat bread and cheese",
]
TARGET_TEXTS = [
    "el gato duerme en el sofá",
    "un perro corre en el parque",
    "los niños leen un libro",
    "mi hermana bebe té verde",
    "caminamos al mercado viejo",
    "el pájaro canta por la mañana",
    "el profesor abre la ventana",
    "ellos comen pan y queso",
]

QUERIES = ["the cat reads a book", "a bird in the park", "my old teacher", "tea"]
MAX_NEW = 24


def _train_spm(texts: list[str], vocab_size: int) -> bytes:
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 4),
        model_writer=writer,
        vocab_size=vocab_size,
        model_type="unigram",
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return writer.getvalue()


def _pieces(model: bytes) -> list[str]:
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model)
    return [
        sp.id_to_piece(i)
        for i in range(sp.get_piece_size())
        if not (sp.is_control(i) or sp.is_unknown(i))
    ]


def _write_marian(src_dir, *, separate_vocabs: bool = False, **overrides):
    """Writes a Marian checkpoint directory; returns the torch model."""
    source_spm = _train_spm(SOURCE_TEXTS, 48)
    target_spm = _train_spm(TARGET_TEXTS, 48)
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in _pieces(source_spm) + _pieces(target_spm):
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    V = len(vocab)
    (src_dir / "source.spm").write_bytes(source_spm)
    (src_dir / "target.spm").write_bytes(target_spm)
    (src_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    if separate_vocabs:
        (src_dir / "target_vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (src_dir / "tokenizer_config.json").write_text(json.dumps({"separate_vocabs": True}))

    torch.manual_seed(0)
    settings = dict(
        vocab_size=V,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        activation_function="swish",
        max_position_embeddings=64,
        pad_token_id=V - 1,
        decoder_start_token_id=V - 1,
        eos_token_id=0,
        forced_eos_token_id=None,
        scale_embedding=True,
        init_std=0.15,
    )
    settings.update(overrides)
    model = transformers.MarianMTModel(transformers.MarianConfig(**settings)).eval()
    with torch.no_grad():  # non-trivial norms and bias, so a mis-mapped one shows up
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
        model.final_logits_bias.normal_(0.0, 0.5)
        model.final_logits_bias[0, 0] += 2.0  # some sentences end (in eos) before the limit
    gen = model.generation_config
    gen.bad_words_ids = [[V - 1]]
    gen.num_beams = 4
    gen.max_length = MAX_NEW + 1
    gen.forced_eos_token_id = None
    model.save_pretrained(str(src_dir), safe_serialization=True)
    assert os.path.isfile(src_dir / "model.safetensors")
    return model


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    """(source dir, torch model, import summary, workdir)."""
    src_dir = tmp_path_factory.mktemp("opus-mt-tiny")
    model = _write_marian(src_dir)
    workdir = tmp_path_factory.mktemp("work") / "run"
    summary = import_marian(str(src_dir), str(workdir))
    return src_dir, model, summary, str(workdir)


@pytest.fixture(scope="module")
def marian_one_layer(tmp_path_factory):
    """Like `marian` with one encoder and one decoder layer: the fine-tuning tests compile
    its train step (a fraction of the two-layer one's compile time)."""
    src_dir = tmp_path_factory.mktemp("opus-mt-one-layer")
    model = _write_marian(src_dir, encoder_layers=1, decoder_layers=1)
    workdir = tmp_path_factory.mktemp("work") / "run"
    summary = import_marian(str(src_dir), str(workdir))
    return src_dir, model, summary, str(workdir)


def _batch(tok, texts: list[str], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    rows = [tok.encode(t) for t in texts]
    S = max(map(len, rows))
    ids = np.full((len(rows), S), pad_id, np.int32)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
    return ids, (ids != pad_id).astype(np.int32)


def test_summary_and_config(marian):
    _, model, summary, workdir = marian
    cfg = summary["model"]
    assert summary["step"] == 0
    assert summary["num_params"] > 0
    assert cfg["position_layout"] == "halves" and cfg["final_logits_bias"] is True
    assert cfg["attention_bias"] is True and cfg["layer_norm_eps"] == 1e-5
    assert cfg["activation"] == "swish" and cfg["norm_position"] == "post"
    assert cfg["pad_id"] == cfg["decoder_start_id"] == model.config.pad_token_id
    assert cfg["eos_id"] == 0 and cfg["share_embeddings"] and cfg["tie_output"]
    assert summary["decode"]["beam_size"] == 4
    assert summary["decode"]["max_decode_len"] == MAX_NEW
    assert summary["banned_tokens"] == [model.config.pad_token_id]
    with pytest.raises(ValueError, match="already holds checkpoints"):
        import_marian(str(marian[0]), workdir)


def test_tokenizer_matches_transformers_and_round_trips(marian):
    src_dir, _, _, workdir = marian
    ours = MarianTokenizer.from_dir(str(src_dir))
    theirs = transformers.MarianTokenizer(
        str(src_dir / "source.spm"), str(src_dir / "target.spm"), str(src_dir / "vocab.json")
    )
    texts = QUERIES + ["zebra xylophone", ""]
    assert [ours.source.encode(t) for t in texts] == theirs(texts)["input_ids"]
    assert ours.source.encode("zebra")[-1] == ours.source.eos_id
    assert ours.source.unk_id in ours.source.encode("zebra")

    again = MarianTokenizer.from_json(json.loads(json.dumps(ours.to_json())))
    assert again.to_json() == ours.to_json()
    for text in TARGET_TEXTS[:3]:
        ids = again.target.encode(text)
        assert again.target.decode(ids) == text
        assert again.target.decode(ids + [ours.target.pad_id, 5]) == text  # stops at eos

    loaded = load_for_inference(workdir)
    assert loaded.processors["src_tokenizer"].encode(QUERIES[0]) == ours.source.encode(QUERIES[0])
    assert loaded.processors["tgt_tokenizer"].bos_id == loaded.model_config.decoder_start_id


def _compare_logits(model, workdir: str) -> None:
    loaded = load_for_inference(workdir)
    cfg, pad = loaded.model_config, loaded.model_config.pad_id
    inputs, mask = _batch(loaded.processors["src_tokenizer"], QUERIES, pad)
    rng = np.random.default_rng(0)
    dec_in = rng.integers(0, cfg.output_vocab_size, (len(QUERIES), 7)).astype(np.int32)
    dec_in[:, 0] = cfg.decoder_start_id

    module = EncoderDecoder(cfg)
    variables = {"params": loaded.params}
    seg = jnp.asarray(mask)
    encoded = module.apply(variables, jnp.asarray(inputs), seg, method=EncoderDecoder.encode)
    ours = np.asarray(
        module.apply(variables, encoded, seg, jnp.asarray(dec_in), method=EncoderDecoder.decode)
    )
    with torch.no_grad():
        theirs = model(
            input_ids=torch.from_numpy(inputs).long(),
            attention_mask=torch.from_numpy(mask).long(),
            decoder_input_ids=torch.from_numpy(dec_in).long(),
        ).logits.numpy()
    assert ours.shape == theirs.shape
    keep = np.arange(cfg.output_vocab_size) != pad  # <pad> is banned from generation
    np.testing.assert_allclose(ours[..., keep], theirs[..., keep], atol=1e-4, rtol=1e-5)
    assert np.all(ours[..., pad] < -1e8)
    assert np.ptp(theirs[..., keep]) > 1.0  # the comparison is not trivially flat


def test_logits_match_transformers(marian):
    _, model, _, workdir = marian
    _compare_logits(model, workdir)


@pytest.mark.parametrize(
    "share, tie", [(False, True), (True, False)], ids=["separate-tables", "untied-output"]
)
def test_untied_embeddings(tmp_path, share, tie):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    model = _write_marian(
        src_dir,
        separate_vocabs=not share,
        share_encoder_decoder_embeddings=share,
        tie_word_embeddings=tie,
        encoder_layers=1,
        decoder_layers=1,
    )
    summary = import_marian(str(src_dir), str(tmp_path / "run"))
    assert summary["model"]["share_embeddings"] is False
    assert summary["model"]["tie_output"] is tie
    _compare_logits(model, str(tmp_path / "run"))


def _hf_generate(model, inputs, mask, num_beams=1):
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.from_numpy(inputs).long(),
            attention_mask=torch.from_numpy(mask).long(),
            num_beams=num_beams,
            do_sample=False,
            max_new_tokens=MAX_NEW,
        ).numpy()
    return out[:, 1:]  # drop the decoder start token


def _until_eos(ids, eos: int) -> list[int]:
    ids = [int(t) for t in ids]
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_greedy_matches_generate(marian):
    _, model, _, workdir = marian
    loaded = load_for_inference(workdir)
    cfg = loaded.model_config
    inputs, mask = _batch(loaded.processors["src_tokenizer"], QUERIES, cfg.pad_id)
    ours = np.asarray(
        translate_ids(
            loaded.params,
            jnp.asarray(inputs),
            jnp.full((len(QUERIES),), MAX_NEW, jnp.int32),
            config=cfg,
            beam_size=1,
            alpha=1.0,
            max_decode_len=MAX_NEW,
        )
    )
    theirs = _hf_generate(model, inputs, mask)
    for r in range(len(QUERIES)):
        assert _until_eos(ours[r], cfg.eos_id) == _until_eos(theirs[r], cfg.eos_id), r
    # Random weights still give sentences of several lengths, some ending in eos.
    assert any(cfg.eos_id in _until_eos(row, cfg.eos_id) for row in theirs)


def test_beam_search_shortcuts_change_no_hypothesis(marian):
    # translate_ids leaves the encoder memory of a row's beams un-gathered, appends each
    # beam's self-attention keys and values to its own row (read through an ancestry
    # table) and reads the tied output table transposed; a plain beam search over the same
    # model (every cache leaf gathered, logits from the table as stored) must find the
    # same hypotheses.
    from transformer_jax.decode.search import beam_search
    from transformer_jax.tasks.translation.model import EncoderDecoder

    _, _, _, workdir = marian
    loaded = load_for_inference(workdir)
    cfg = loaded.model_config
    assert cfg.tie_output
    inputs, _ = _batch(loaded.processors["src_tokenizer"], QUERIES, cfg.pad_id)
    limits = jnp.full((len(QUERIES),), MAX_NEW, jnp.int32)
    settings = dict(max_decode_len=MAX_NEW, banned_ids=(cfg.vocab_size - 1,))
    settings.update(length_penalty_type="hf", early_stopping="false")
    ours = translate_ids(
        loaded.params, jnp.asarray(inputs), limits, config=cfg, beam_size=4, alpha=0.6,
        length_penalty=1.0, **settings,
    )  # fmt: skip
    model = EncoderDecoder(cfg.replace(decode=True, deterministic=True))
    params = loaded.params
    _, variables = model.apply(
        {"params": params}, jnp.asarray(inputs), MAX_NEW, method=EncoderDecoder.init_cache,
        mutable=["cache"],
    )  # fmt: skip

    def step(ids_B1, cache):
        logits, new = model.apply(
            {"params": params, "cache": cache}, ids_B1, method=EncoderDecoder.decode_step,
            mutable=["cache"],
        )  # fmt: skip
        return logits, new["cache"]

    plain, _ = beam_search(
        step, variables["cache"], batch_size=len(QUERIES), beam_size=4,
        alpha=1.0, start_id=cfg.decoder_start_id, eos_id=cfg.eos_id, max_lengths=limits,
        **settings,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(plain[:, 0]))
    assert len({tuple(r) for r in np.asarray(ours)}) > 1


def test_decoding_weights_are_reused_only_for_the_same_parameters(marian):
    import flax.linen as nn

    from transformer_jax.nn.attention import FUSED_QKV
    from transformer_jax.nn.embed import TRANSPOSED_TABLE
    from transformer_jax.tasks.translation import decoding

    _, _, _, workdir = marian
    loaded = load_for_inference(workdir)
    cfg, params = loaded.model_config, loaded.params
    assert cfg.share_embeddings and cfg.tie_output
    first = decoding._DECODING_LAYOUT(params, cfg)
    again = decoding._DECODING_LAYOUT(params, cfg)  # the kept copies, not new ones
    assert again["embed"][TRANSPOSED_TABLE] is first["embed"][TRANSPOSED_TABLE]
    other = jax.tree.map(lambda x: x * 2.0, params)
    weights = decoding._DECODING_LAYOUT(other, cfg)
    assert weights is not first
    table = np.asarray(weights["embed"][TRANSPOSED_TABLE])
    np.testing.assert_array_equal(table, np.asarray(nn.unbox(other)["embed"]["embedding"]).T)
    assert not np.array_equal(table, np.asarray(first["embed"][TRANSPOSED_TABLE]))
    # Each decoder attention's query, key and value (Marian's have biases) joined along the
    # heads; the encoder's are not (it never decodes step by step).
    joined = [
        (path, x) for path, x in jax.tree_util.tree_leaves_with_path(weights)
        if FUSED_QKV in jax.tree_util.keystr(path)
    ]  # fmt: skip
    assert {jax.tree_util.keystr(p[-1:]) for p, _ in joined} == {"['kernel']", "['bias']"}
    assert {p[0].key for p, _ in joined} == {"decoder"}
    for path, x in joined:
        module = weights
        for key in path[:-2]:
            module = module[key.key]
        field = path[-1].key
        parts = [np.asarray(module[name][field]) for name in ("query", "key", "value")]
        np.testing.assert_array_equal(np.asarray(x), np.concatenate(parts, axis=-2))


def test_pipeline_from_workdir(marian):
    _, model, _, workdir = marian
    greedy = TranslationPipeline.from_workdir(workdir, beam_size=1)
    cfg = greedy.model_config
    out = greedy(QUERIES)
    assert isinstance(out, list) and len(out) == len(QUERIES)
    assert all(isinstance(o, dict) and isinstance(o["translation_text"], str) for o in out)
    inputs, mask = _batch(greedy.src_tokenizer, QUERIES, cfg.pad_id)
    theirs = _hf_generate(model, inputs, mask)
    expected = [greedy.tgt_tokenizer.decode(row) for row in theirs]
    assert [o["translation_text"] for o in out] == expected

    beam = TranslationPipeline.from_workdir(workdir)
    assert beam.beam_size == 4
    texts = beam(QUERIES[:2] + [""])
    assert len(texts) == 3 and texts[2] == {"translation_text": ""}
    assert all(isinstance(t["translation_text"], str) for t in texts)


def _copy_without(src_dir, dst, *names):
    shutil.copytree(src_dir, dst)
    for name in names:
        os.remove(os.path.join(dst, name))
    return str(dst)


def _one_line_error(src_dir: str, workdir: str, match: str) -> str:
    with pytest.raises(ValueError, match=match) as err:
        import_marian(src_dir, workdir)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_and_pickle_only_weights_are_refused(marian, tmp_path):
    src_dir = marian[0]
    no_weights = _copy_without(src_dir, tmp_path / "no_weights", "model.safetensors")
    _one_line_error(no_weights, str(tmp_path / "w1"), "missing model.safetensors")

    pickle_only = _copy_without(src_dir, tmp_path / "pickle_only", "model.safetensors")
    with open(os.path.join(pickle_only, "pytorch_model.bin"), "wb") as f:
        f.write(b"never read")
    msg = _one_line_error(pickle_only, str(tmp_path / "w2"), "pickle files are not loaded")
    assert "pytorch_model.bin" in msg
    assert not os.path.exists(tmp_path / "w1") and not os.path.exists(tmp_path / "w2")


def test_bad_inputs_are_refused(marian, tmp_path):
    src_dir = marian[0]
    no_spm = _copy_without(src_dir, tmp_path / "no_spm", "target.spm")
    _one_line_error(no_spm, str(tmp_path / "w1"), "missing target.spm")

    bad_act = _copy_without(src_dir, tmp_path / "bad_act")
    cfg = json.loads((tmp_path / "bad_act" / "config.json").read_text())
    cfg["activation_function"] = "quick_gelu"
    (tmp_path / "bad_act" / "config.json").write_text(json.dumps(cfg))
    _one_line_error(bad_act, str(tmp_path / "w2"), "activation_function='quick_gelu'")

    wrong_shape = _copy_without(src_dir, tmp_path / "wrong_shape")
    cfg["activation_function"] = "swish"
    cfg["encoder_ffn_dim"] = cfg["decoder_ffn_dim"] = 48
    (tmp_path / "wrong_shape" / "config.json").write_text(json.dumps(cfg))
    _one_line_error(wrong_shape, str(tmp_path / "w3"), r"fc1\.weight has shape")

    from safetensors.numpy import load_file, save_file

    extra = _copy_without(src_dir, tmp_path / "extra")
    weights = load_file(os.path.join(extra, "model.safetensors"))
    weights["model.encoder.layer_norm.weight"] = np.ones(32, np.float32)
    save_file(weights, os.path.join(extra, "model.safetensors"))
    _one_line_error(extra, str(tmp_path / "w4"), "unexpected weights")

    del weights["model.encoder.layer_norm.weight"], weights["model.decoder.layers.1.fc2.bias"]
    save_file(weights, os.path.join(extra, "model.safetensors"))
    _one_line_error(extra, str(tmp_path / "w5"), r"lacks weights \['model.decoder.layers.1.fc2")


def test_imported_model_fine_tunes_and_resumes(
    marian_one_layer, tmp_path, tmp_path_factory, data_dir
):
    """`tjax train` on an imported workdir keeps Marian's architecture and tokenizers,
    starts from the imported weights with a fresh optimizer, and resumes like any run."""
    import shutil

    import jax
    import orbax.checkpoint as ocp
    from helpers import tiny_config, train

    workdir = str(tmp_path / "finetune")
    shutil.copytree(marian_one_layer[3], workdir)
    imported = ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).restore(0)
    imported_params = jax.tree.map(np.asarray, imported["state"]["params"])

    cfg = tiny_config(
        data_dir, train__num_steps=2, train__checkpoint_every=2, decode__bleu_examples=4
    )
    train(cfg, workdir, tmp_path_factory)
    after = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    assert after.all_steps() == [0, 2]
    saved = after.restore(2)
    assert saved["model"]["activation"] == "swish"  # Marian's, not the run config's relu
    assert saved["model"]["position_layout"] == "halves"
    kinds = {p.get("kind") for p in saved["tokenizer"]["processors"].values()}
    assert kinds <= {"marian", "marian_side", None} and kinds & {"marian", "marian_side"}, kinds
    moved = jax.tree.map(
        lambda a, b: not np.array_equal(a, np.asarray(b)), imported_params, saved["state"]["params"]
    )
    assert any(jax.tree.leaves(moved))  # the weights were trained
    same_shapes = jax.tree.map(
        lambda a, b: a.shape == np.asarray(b).shape, imported_params, saved["state"]["params"]
    )
    assert all(jax.tree.leaves(same_shapes))

    cfg4 = tiny_config(
        data_dir, train__num_steps=4, train__checkpoint_every=2, decode__bleu_examples=4
    )
    train(cfg4, workdir, tmp_path_factory)  # resumes from step 2 with the saved optimizer
    assert ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).latest_step() == 4
    out = TranslationPipeline.from_workdir(workdir, beam_size=1)(QUERIES[:2])
    assert len(out) == 2 and all(isinstance(o["translation_text"], str) for o in out)


def _smoothed_loss_reference(logits, targets, weights, eps, allowed):
    """Float64 KL(q || softmax(logits)) summed over tokens, q = 1 - eps on the target and
    eps / (n - 1) on each of the other n - 1 allowed tokens."""
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    q = np.where(allowed, eps / (allowed.sum() - 1), 0.0) * np.ones(logits.shape)
    np.put_along_axis(q, targets[..., None], 1.0 - eps, axis=-1)
    safe_q = np.where(q > 0, q, 1.0)
    kl = (q * (np.log(safe_q) - np.where(q > 0, logp, 0.0))).sum(-1)
    return float((kl * weights).sum())


def test_smoothed_loss_of_an_imported_model_skips_its_banned_tokens(marian):
    import jax

    from transformer_jax.tasks.translation.task import TranslationTask

    _, model, _, workdir = marian
    loaded = load_for_inference(workdir)
    cfg, pad = loaded.model_config, loaded.model_config.pad_id
    eps = loaded.run_config.train.label_smoothing
    assert eps > 0
    inputs, _ = _batch(loaded.processors["src_tokenizer"], SOURCE_TEXTS[:4], pad)
    targets, weights = _batch(loaded.processors["tgt_tokenizer"], TARGET_TEXTS[:4], pad)
    module = EncoderDecoder(cfg)
    batch = {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets)}
    _, metrics = TranslationTask(loaded.run_config).loss(
        module, loaded.params, batch, jax.random.key(0)
    )
    logits = module.apply({"params": loaded.params}, batch["inputs"], batch["targets"])
    allowed = np.arange(cfg.output_vocab_size) != model.config.pad_token_id  # <pad> is banned
    want = _smoothed_loss_reference(logits, targets, weights, eps, allowed)
    assert float(metrics["loss_sum"]) == pytest.approx(want, rel=1e-4)
    # Of the order of log(V) per token, not eps / (V - 1) * 1e9.
    per_token = float(metrics["loss_sum"] / metrics["weight_sum"])
    assert 0 < per_token < 3 * np.log(cfg.output_vocab_size)


def test_fine_tuning_an_imported_model_logs_a_sane_loss(
    marian_one_layer, tmp_path, tmp_path_factory, data_dir, capsys
):
    from helpers import tiny_config, train, train_losses

    workdir = str(tmp_path / "finetune")
    shutil.copytree(marian_one_layer[3], workdir)
    V = marian_one_layer[2]["model"]["vocab_size"]  # shared embeddings
    cfg = tiny_config(
        data_dir, train__num_steps=1, train__checkpoint_every=1, decode__bleu_examples=2
    )
    train(cfg, workdir, tmp_path_factory)
    loss = train_losses(workdir)[1]
    assert 0 < loss < 3 * np.log(V), loss
    out = capsys.readouterr().out
    assert "starting from imported weights (step 0 of " in out
    assert "starting from scratch" not in out


# Generation settings as generation_config.json gives them (None removes a key); "legacy"
# moves them into config.json, which generate() reads when generation_config.json is absent.
GENERATION_VARIANTS = {
    "greedy-cap": dict(num_beams=1, max_length=6, forced_eos_token_id=0),
    "greedy-default-length": dict(num_beams=1, max_length=None, forced_eos_token_id=0),
    "beam-lp2": dict(num_beams=4, length_penalty=2.0, max_length=12, forced_eos_token_id=0),
    "beam-never": dict(
        num_beams=4, length_penalty=0.5, early_stopping="never", max_length=8, forced_eos_token_id=0
    ),
    "beam-true-legacy": dict(num_beams=3, early_stopping=True, max_length=9, legacy=True),
}


def _variant_dir(src_dir, dst, settings: dict) -> str:
    settings = dict(settings)
    legacy = settings.pop("legacy", False)
    shutil.copytree(src_dir, dst)
    gen_path = dst / "generation_config.json"
    gen = json.loads(gen_path.read_text())
    gen.update(settings)
    gen = {k: v for k, v in gen.items() if v is not None}
    if legacy:
        os.remove(gen_path)
        hf = json.loads((dst / "config.json").read_text())
        hf.update({k: v for k, v in gen.items() if not k.startswith("_")})
        (dst / "config.json").write_text(json.dumps(hf))
    else:
        gen_path.write_text(json.dumps(gen))
    return str(dst)


def _our_ids(pipe: TranslationPipeline, inputs: np.ndarray, **changes) -> np.ndarray:
    settings = dict(
        config=pipe.model_config,
        beam_size=pipe.beam_size,
        alpha=pipe.alpha,
        max_decode_len=pipe.max_decode_len,
        length_penalty_type=pipe.length_penalty_type,
        length_penalty=pipe.length_penalty,
        early_stopping=pipe.early_stopping,
        forced_eos=pipe.forced_eos,
    )
    settings.update(changes)
    lengths = np.full((len(inputs),), pipe.max_decode_len, np.int32)
    return np.asarray(
        translate_ids(pipe.params, jnp.asarray(inputs), jnp.asarray(lengths), **settings)
    )


@pytest.mark.parametrize("variant", list(GENERATION_VARIANTS))
def test_imported_generation_settings_decode_like_generate(marian, tmp_path, variant):
    """The imported settings keep Hugging Face's meaning: read back with their kind, they
    decode token for token as `generate()` does with the same checkpoint's defaults."""
    from transformer_jax.tasks.translation.config import translation_base

    settings = GENERATION_VARIANTS[variant]
    src_dir = _variant_dir(marian[0], tmp_path / "src", settings)
    workdir = str(tmp_path / "run")
    summary = import_marian(src_dir, workdir)
    model = transformers.MarianMTModel.from_pretrained(src_dir).eval()
    gen = model.generation_config
    assert gen.num_beams == settings["num_beams"]  # generate() reads the same settings

    pipe = TranslationPipeline.from_workdir(workdir)
    decode = load_for_inference(workdir).run_config.decode
    assert summary["decode"] == decode.to_dict()
    assert decode.length_penalty_type == pipe.length_penalty_type == "hf"
    assert decode.length_penalty == pipe.length_penalty == settings.get("length_penalty", 1.0)
    early = settings.get("early_stopping", False)
    assert pipe.early_stopping == {False: "false", True: "true", "never": "never"}[early]
    assert pipe.forced_eos is ("forced_eos_token_id" in settings)
    assert pipe.beam_size == settings["num_beams"]
    # HF's max_length counts the decoder start token; without it, 20 new tokens.
    new_tokens = 20 if settings["max_length"] is None else settings["max_length"] - 1
    assert pipe.max_decode_len == new_tokens
    # The paper's GNMT alpha is neither set from nor used for Hugging Face's length_penalty.
    assert decode.alpha == pipe.alpha == translation_base().decode.alpha

    cfg = pipe.model_config
    texts = QUERIES + SOURCE_TEXTS
    inputs, mask = _batch(pipe.src_tokenizer, texts, cfg.pad_id)
    with torch.no_grad():
        theirs = model.generate(
            input_ids=torch.from_numpy(inputs).long(),
            attention_mask=torch.from_numpy(mask).long(),
        ).numpy()[:, 1:]
    assert theirs.shape[1] <= new_tokens
    ours = _our_ids(pipe, inputs)
    for r in range(len(texts)):
        assert _until_eos(ours[r], cfg.eos_id) == _until_eos(theirs[r], cfg.eos_id), r
    expected = [pipe.tgt_tokenizer.decode(row) for row in theirs]
    assert [o["translation_text"] for o in pipe(texts)] == expected

    if pipe.forced_eos and pipe.beam_size == 1:
        # Where the cap is reached, forced eos replaces the last token and nothing else.
        unforced = _our_ids(pipe, inputs, forced_eos=False)
        capped = [r for r in range(len(texts)) if cfg.eos_id not in unforced[r].tolist()]
        assert capped or variant != "greedy-cap"
        for r in capped:
            assert ours[r, new_tokens - 1] == cfg.eos_id != unforced[r, new_tokens - 1]
            assert ours[r, : new_tokens - 1].tolist() == unforced[r, : new_tokens - 1].tolist()
    if variant == "beam-lp2":  # "hf" decodes with length_penalty; the GNMT alpha is unused
        np.testing.assert_array_equal(_our_ids(pipe, inputs, alpha=0.0), ours)
        shorter = _our_ids(pipe, inputs, length_penalty=-2.0)
        assert any(
            _until_eos(shorter[r], cfg.eos_id) != _until_eos(ours[r], cfg.eos_id)
            for r in range(len(texts))
        )


def test_unsupported_generation_settings_are_refused(marian, tmp_path):
    for i, (key, value) in enumerate(
        [("forced_eos_token_id", 3), ("early_stopping", "sometimes"), ("length_penalty", "x")]
    ):
        src_dir = _variant_dir(marian[0], tmp_path / f"src{i}", {key: value})
        _one_line_error(src_dir, str(tmp_path / f"w{i}"), f"unsupported {key}=")


def test_decode_settings_of_an_older_run_config_keep_the_paper_scoring():
    from transformer_jax.tasks.translation.config import translation_base
    from transformer_jax.tasks.translation.pipeline import decode_settings

    run = translation_base()
    for key in ("length_penalty_type", "length_penalty", "early_stopping", "forced_eos"):
        del run.decode[key]  # saved before these settings existed
    settings = decode_settings(run)
    assert settings["length_penalty_type"] == "gnmt" and settings["alpha"] == 0.6
    assert settings["forced_eos"] is False and settings["early_stopping"] == "false"
    pipe = TranslationPipeline(
        params=None, model_config=None, src_tokenizer=None, tgt_tokenizer=None, **settings
    )
    assert pipe.length_penalty_type == "gnmt"
