"""Hugging Face BERT / RoBERTa / XLM-R encoders: import, tokenizer ids, logits, export.

The references are small, randomly initialised transformers models saved with
safetensors next to tokenizers trained here on a few sentences (no download).
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
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: E402

from transformer_jax.__main__ import main as cli_main  # noqa: E402
from transformer_jax.data.processors import processors_from_json, processors_to_json  # noqa: E402
from transformer_jax.tasks.classification.hf import (  # noqa: E402
    HFTokenizer,
    _expected_shapes,
    export_hf,
    import_hf,
    tokenizer_from_dir,
)
from transformer_jax.tasks.classification.model import TextEncoderModel  # noqa: E402
from transformer_jax.tasks.classification.text import encode_input, word_starts  # noqa: E402
from transformer_jax.train.restore import load_for_inference  # noqa: E402

CORPUS = [
    "The cat sleeps on the sofa.",
    "A dog runs in the park!",
    "El niño come pan y queso por la mañana.",
    "¿Dónde está la estación? Über café naïve résumé.",
    "We walk to the old market, don't we?",
    "Los pájaros cantan en el jardín.",
] * 3
TEXTS = [
    "The CAFÉ was naïve!",
    "El niño está aquí, ¿verdad?",
    "zebra☃ quux 日本",  # characters the vocabularies lack
    "  double  spaces  ",
    "a <mask> b [MASK]",
    "the cat sleeps " * 30,  # truncated
]
MAX_LENGTH = 24
LABELS = ["NEGATIVE", "NEUTRAL", "POSITIVE"]


# -- tokenizers, trained here and saved through transformers' classes ----------------------


def _wordpiece(d):
    t = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    t.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=150, special_tokens=specials)
    )
    tok = transformers.BertTokenizer(vocab=t.get_vocab(), do_lower_case=True)
    tok.save_pretrained(d)
    return tok


def _byte_bpe(d):
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    t.train_from_iterator(CORPUS, trainer)
    model = json.loads(t.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = transformers.RobertaTokenizer(vocab=model["vocab"], merges=merges)
    tok.save_pretrained(d)
    return tok


def _unigram(d):
    """XLM-R's layout: a SentencePiece model with <unk> <s> </s> first (nmt_nfkc)."""
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=writer,
        vocab_size=70,
        model_type="unigram",
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
        num_threads=1,
    )
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "sentencepiece.bpe.model"), "wb") as f:
        f.write(writer.getvalue())
    return transformers.XLMRobertaTokenizer.from_pretrained(d)


FAMILIES = {
    "bert": (_wordpiece, transformers.BertConfig, "Bert"),
    "roberta": (_byte_bpe, transformers.RobertaConfig, "Roberta"),
    "xlm-roberta": (_unigram, transformers.XLMRobertaConfig, "XLMRoberta"),
}


def _write_model(d, model_type: str, head: str = "ForSequenceClassification", **overrides):
    """Writes a Hub folder (tokenizer files, config.json, model.safetensors); returns
    (torch model, transformers tokenizer)."""
    make_tok, config_cls, arch = FAMILIES[model_type]
    tok = make_tok(str(d))
    pad = tok.pad_token_id
    settings = dict(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40 if model_type == "bert" else 40 + pad + 1,
        type_vocab_size=2 if model_type == "bert" else 1,
        pad_token_id=pad,
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
        initializer_range=0.2,
    )
    if model_type != "bert":
        settings.update(bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    settings.update(overrides)
    torch.manual_seed(0)
    model = getattr(transformers, arch + head)(config_cls(**settings)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mis-mapped one shows up
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0.0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    model.save_pretrained(str(d))
    return model, tok


def _batch(tok, texts):
    enc = tok(texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="np")
    return enc["input_ids"], enc["attention_mask"]


def _torch_logits(model, ids, mask, key="logits"):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return getattr(out, key).numpy()


def _our_outputs(workdir, ids):
    loaded = load_for_inference(workdir)
    model = TextEncoderModel(loaded.model_config)
    apply = jax.jit(model.apply)  # one compilation (eager ops would compile one by one)
    return apply({"params": loaded.params}, jnp.asarray(ids, jnp.int32)), loaded


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """{model_type: (folder, torch model, tokenizer, workdir)}, imported once."""
    base = tmp_path_factory.mktemp("hub")
    out = {}
    for model_type in FAMILIES:
        d = base / model_type
        model, tok = _write_model(d, model_type)
        out[model_type] = (d, model, tok, import_hf(d, base / f"{model_type}-run"))
    return out


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_import_matches_transformers_logits(hub, model_type):
    d, model, tok, summary = hub[model_type]
    assert summary["labels"] == LABELS and summary["new"] == []
    ids, mask = _batch(tok, TEXTS)
    assert (mask == 0).any()  # a padded batch
    ours, loaded = _our_outputs(summary["workdir"], ids)
    want = _torch_logits(model, ids, mask)
    diff = float(np.max(np.abs(np.asarray(ours["logits"]) - want)))
    print(f"{model_type}: max |logit difference| {diff:.2e}")
    assert diff < 1e-4
    np.testing.assert_array_equal(np.asarray(ours["logits"]).argmax(-1), want.argmax(-1))
    assert loaded.processors["labels"].names == tuple(LABELS)
    assert loaded.run_config.head.type == ("bert" if model_type == "bert" else "roberta")


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_tokenizer_ids_match_transformers(hub, model_type):
    d, _, ref, summary = hub[model_type]
    ours = load_for_inference(summary["workdir"]).processors["tokenizer"]
    assert isinstance(ours, HFTokenizer)
    for text in TEXTS:
        want = ref(text, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        got, cut = encode_input(ours, text, MAX_LENGTH)
        assert got.tolist() == want, text
        assert cut == (len(ours.encode(text)) > MAX_LENGTH - 2)
        assert cut or text != TEXTS[-1]
    assert (ours.cls_id, ours.sep_id, ours.pad_id, ours.mask_id) == (
        ref.cls_token_id,
        ref.sep_token_id,
        ref.pad_token_id,
        ref.mask_token_id,
    )
    # Stored as JSON and read back: the same ids.
    again = processors_from_json(json.loads(json.dumps(processors_to_json({"t": ours}))))["t"]
    assert again.encode(TEXTS[1]) == ours.encode(TEXTS[1])


def _vocab_file_variant(src, dst, model_type):
    """The same tokenizer as the files older Hub folders hold instead of tokenizer.json."""
    shutil.copytree(src, dst)
    blob = json.loads((dst / "tokenizer.json").read_text())
    vocab = blob["model"]["vocab"]
    os.remove(dst / "tokenizer.json")
    if model_type == "bert":
        (dst / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    else:
        (dst / "vocab.json").write_text(json.dumps(vocab))
        merges = [" ".join(m) if isinstance(m, list) else m for m in blob["model"]["merges"]]
        (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_tokenizer_from_vocabulary_files(hub, tmp_path, model_type):
    """vocab.txt (BERT), vocab.json + merges.txt (RoBERTa), sentencepiece.bpe.model (XLM-R)."""
    src = hub[model_type][0]
    if model_type == "xlm-roberta":
        d = src  # its folder has only the SentencePiece model
        assert not (d / "tokenizer.json").exists()
    else:
        d = tmp_path / "vocab"
        _vocab_file_variant(src, d, model_type)
    ref = transformers.AutoTokenizer.from_pretrained(str(d))
    ours = tokenizer_from_dir(str(d), model_type)
    for text in TEXTS:
        want = ref(text, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        assert encode_input(ours, text, MAX_LENGTH)[0].tolist() == want, text


def test_word_starts(hub):
    expect = {"bert": "##", "roberta": "\u0120", "xlm-roberta": "\u2581"}
    for model_type, (d, *_) in hub.items():
        ours = tokenizer_from_dir(str(d), model_type)
        ids, _ = encode_input(ours, "los pájaros cantaban zumbando", MAX_LENGTH)
        pieces = [ours.id_to_piece(i) for i in ids]
        starts = word_starts(ours, ids)
        assert starts[0] and starts[-1]  # [CLS] / [SEP]
        marker = expect[model_type]
        for i, piece in enumerate(pieces[1:-1], 1):
            if model_type == "bert":
                assert starts[i] == (not piece.startswith(marker)), pieces
            else:
                assert starts[i] == (i == 1 or piece.startswith(marker)), pieces
        assert not all(starts), pieces  # some word is split into pieces


def test_masked_lm_import(tmp_path):
    model, tok = _write_model(tmp_path / "mlm", "roberta", head="ForMaskedLM")
    summary = import_hf(tmp_path / "mlm", tmp_path / "run")
    assert summary["mlm_head"] and summary["new"] == []  # no classifier: a masked-LM run
    assert load_for_inference(summary["workdir"]).run_config.task == "masked_lm"
    ids, mask = _batch(tok, TEXTS[:3])
    ours, _ = _our_outputs(summary["workdir"], ids)
    want = _torch_logits(model, ids, mask)
    real = mask.astype(bool)
    diff = float(np.max(np.abs(np.asarray(ours["mlm_logits"])[real] - want[real])))
    print(f"roberta masked LM: max |logit difference| {diff:.2e}")
    assert diff < 1e-4


def test_bare_encoder_imports_without_a_head(tmp_path):
    model, _ = _write_model(tmp_path / "bare", "bert", head="Model")
    summary = import_hf(tmp_path / "bare", tmp_path / "run")
    assert summary["new"] == [] and summary["labels"] == []
    loaded = load_for_inference(summary["workdir"])
    assert loaded.model_config.num_labels == 0 and "head" not in loaded.params
    assert "labels" not in loaded.processors  # a fine-tuning run brings its own
    np.testing.assert_array_equal(
        np.asarray(loaded.params["embed"]["embedding"]),
        model.embeddings.word_embeddings.weight.detach().numpy(),
    )


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_export_round_trip(hub, tmp_path, model_type):
    d, model, tok, summary = hub[model_type]
    out = tmp_path / "export"
    result = export_hf(summary["workdir"], out)
    assert result["model_type"] == model_type
    back = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    back_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert back.config.id2label == dict(enumerate(LABELS))
    for text in TEXTS:
        want = tok(text, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        assert back_tok(text, truncation=True, max_length=MAX_LENGTH)["input_ids"] == want
    ids, mask = _batch(tok, TEXTS)
    diff = np.max(np.abs(_torch_logits(back, ids, mask) - _torch_logits(model, ids, mask)))
    assert diff < 1e-5


def test_cli_import_and_export(hub, tmp_path, capsys):
    d = hub["roberta"][0]
    assert cli_main(["import-hf", "--from", str(d), "--to", str(tmp_path / "run")]) == 0
    assert json.loads(capsys.readouterr().out)["model_type"] == "roberta"
    out = tmp_path / "out"
    assert cli_main(["export-hf", "--workdir", str(tmp_path / "run"), "--to", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    # An unknown model_type: one line listing the supported ones.
    bad = tmp_path / "falcon"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "falcon"}))
    assert cli_main(["import-hf", "--from", str(bad), "--to", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'falcon'" in err and "bert" in err and "marian" in err


def _broken(src, dst, change):
    shutil.copytree(src, dst)
    change(dst)


def _edit_config(**changes):
    def change(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(changes)
        (d / "config.json").write_text(json.dumps(cfg))

    return change


def _pickle_only(d):
    (d / "model.safetensors").rename(d / "pytorch_model.bin")


@pytest.mark.parametrize(
    "change, message",
    [
        (_pickle_only, "pytorch_model.bin"),
        (_edit_config(hidden_size=64, num_attention_heads=4), "has shape"),
        (_edit_config(num_hidden_layers=3), "lack"),
        (_edit_config(id2label={"0": "a", "1": "b"}), r"id2label has 2 label\(s\)"),
        (_edit_config(model_type="gpt2"), "unsupported model_type='gpt2'"),
    ],
    ids=["pickle", "dims", "layers", "id2label", "model_type"],
)
def test_bad_folders_fail_in_one_line_and_write_nothing(hub, tmp_path, change, message):
    src = tmp_path / "src"
    _broken(hub["bert"][0], src, change)
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=message) as e:
        import_hf(src, workdir)
    assert "\n" not in str(e.value)
    assert not workdir.exists()
    if change is _pickle_only:
        assert str(src) in str(e.value) and "safetensors" in str(e.value)


def _sentencepiece_run(workdir, model_type: str = "unigram", head: str = "roberta"):
    """A workdir as a classification run trained here writes it (random weights):
    a SentencePiece tokenizer with a "<mask>" piece, post-LN encoder, offset 0."""
    from transformer_jax.data.tokenizer import train_sentencepiece
    from transformer_jax.tasks.classification.config import (
        classification_base,
        config_to_json,
        model_config,
    )
    from transformer_jax.tasks.classification.text import LabelMap
    from transformer_jax.train.checkpoint import Checkpointer, checkpoint_dir

    tok = train_sentencepiece(CORPUS, 60, model_type, user_defined_symbols=("<mask>",))
    run = classification_base()
    run.model.update(d_model=32, num_heads=4, d_ff=64, num_encoder_layers=2, max_position=32)
    run.data.max_length = MAX_LENGTH
    run.head.type = head
    labels = LabelMap(tuple(LABELS))
    config = model_config(run, vocab_size=tok.vocab_size, pad_id=tok.pad_id, num_labels=3,
                          mlm_head=False)  # fmt: skip
    rng = np.random.default_rng(1)
    params = {}  # random values of the model's shapes (no compiled init)
    for path, shape in _expected_shapes(config).items():
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = rng.normal(0.0, 0.2, shape).astype(np.float32)
    ckpt = Checkpointer(checkpoint_dir(str(workdir)), keep=1)
    try:
        ckpt.save(0, state={"step": 0, "params": params, "opt_state": {}}, data={},
                  config=run.to_dict(), model=config_to_json(config),
                  tokenizer=processors_to_json({"tokenizer": tok, "labels": labels}),
                  force=True)  # fmt: skip
    finally:
        ckpt.close()
    return tok


@pytest.mark.parametrize("head", ["roberta", "bert"])
def test_export_of_a_sentencepiece_run(tmp_path, head):
    tok = _sentencepiece_run(tmp_path / "run", head=head)
    result = export_hf(tmp_path / "run", tmp_path / "out")
    assert result["model_type"] == ("bert" if head == "bert" else "roberta")
    back = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"))
    back_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    # Not the literal "<mask>": transformers splits the text at it first (its space
    # before stays with the word), where SentencePiece keeps a "▁" piece.
    for text in [t for t in TEXTS if "<mask>" not in t]:
        want = encode_input(tok, text, MAX_LENGTH)[0].tolist()
        assert back_tok(text, truncation=True, max_length=MAX_LENGTH)["input_ids"] == want, text
    ids, mask = _batch(back_tok, TEXTS)
    ours, _ = _our_outputs(str(tmp_path / "run"), ids)
    diff = np.max(np.abs(_torch_logits(back.eval(), ids, mask) - np.asarray(ours["logits"])))
    assert diff < 1e-4


def test_export_of_a_bpe_sentencepiece_run_fails_in_one_line(tmp_path):
    _sentencepiece_run(tmp_path / "run", model_type="bpe")
    with pytest.raises(ValueError, match="only Unigram") as e:
        export_hf(tmp_path / "run", tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
