"""The catalog-dataset classification configs (SST-2, IMDB) on mocked TFDS data.

The real datasets need a download; `tfds.testing.mock_data` (USE_CODE: the builder's
features, random examples) serves `as_data_source`, which the pipelines read.
"""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import compilation_cache

from transformer_jax.__main__ import main
from transformer_jax.config import load_config, make_task
from transformer_jax.data import catalog
from transformer_jax.tasks.classification.text import specials

NUM_EXAMPLES = 48
# config -> (the dataset's label names, its text feature)
DATASETS = {
    "classify_sst2_base": (("negative", "positive"), "sentence"),
    "classify_imdb_base": (("neg", "pos"), "text"),
}
SMALL = ["tokenizer.vocab_size=40", "data.max_length=24", "data.batch_size=16"]
TINY_MODEL = [
    "model.d_model=16",
    "model.num_heads=2",
    "model.d_ff=32",
    "model.num_encoder_layers=1",
    "model.max_position=26",
    "model.dtype=float32",
]


def mocked():
    return tfds.testing.mock_data(
        num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE
    )


@pytest.fixture(scope="module", params=sorted(DATASETS))
def run(request):
    """(config name, config with small data settings, task, processors)."""
    name = request.param
    cfg = load_config(name, SMALL)
    task = make_task(cfg)
    with mocked():
        processors = task.make_processors("")
    return name, cfg, task, processors


def test_the_configs_read_their_dataset(run):
    name, cfg, task, processors = run
    full = load_config(name)
    names, text_key = DATASETS[name]
    assert (full.data.text_key, full.data.label_key) == (text_key, "label")
    assert full.task == "classification" and full.head.type == "roberta"
    # roberta-base's positions: 2 + max_length fit its 514 embeddings.
    assert full.model.position_offset == 2 and full.model.max_position == 514
    assert full.data.max_length + full.model.position_offset <= full.model.max_position
    assert full.data.max_length == (128 if "sst2" in name else 512)
    assert processors["labels"].names == names  # the ClassLabel's, in its order
    assert task.label_map().names == names


def test_the_recipe_is_three_epochs_with_six_percent_warmup(run):
    name = run[0]
    cfg = load_config(name)
    train_examples = 67_349 if "sst2" in name else 22_500
    o = cfg.optimizer
    assert cfg.data.batch_size == 32 and cfg.model.dropout_rate == 0.1
    assert cfg.train.num_steps == -(-3 * train_examples // 32)
    assert abs(o.warmup_steps / cfg.train.num_steps - 0.06) < 0.001
    assert (o.schedule, o.final_lr_fraction, o.weight_decay) == ("linear", 0.0, 0.01)
    assert o.peak_lr == 2e-5


def test_sst2_evaluates_on_validation_imdb_on_a_slice_of_train():
    sst2, imdb = load_config("classify_sst2_base"), load_config("classify_imdb_base")
    # GLUE's test labels are hidden (-1).
    assert (sst2.data.eval_split, sst2.data.test_split) == ("validation", "validation")
    assert (imdb.data.train_split, imdb.data.eval_split) == ("train[:90%]", "train[90%:]")
    assert imdb.data.test_split == "test"


def test_catalog_reads_percent_slices_of_a_split(tmp_path):
    """What the IMDB config relies on: `train[:90%]` and `train[90%:]` split train."""
    data_dir = str(tmp_path / "tfds")
    whole = catalog.data_source("sentiment_reviews/tiny", "train", data_dir)
    head = catalog.data_source("sentiment_reviews/tiny", "train[:90%]", data_dir)
    tail = catalog.data_source("sentiment_reviews/tiny", "train[90%:]", data_dir)
    assert (len(head), len(tail)) == (len(whole) * 9 // 10, len(whole) - len(whole) * 9 // 10)
    assert head[0]["text"] == whole[0]["text"]
    assert tail[0]["text"] == whole[len(head)]["text"]
    with pytest.raises(ValueError, match="Unknown split 'trian"):
        catalog.data_source("sentiment_reviews/tiny", "trian[:90%]", data_dir)


def _check_batch(batch, cfg, processors, rows):
    L = cfg.data.max_length
    cls_id = specials(processors["tokenizer"]).cls_id
    assert set(batch) == {"inputs", "labels", "weights"}
    assert batch["inputs"].shape == (rows, L) and batch["inputs"].dtype == np.int32
    assert batch["labels"].shape == (rows,) and batch["labels"].dtype == np.int32
    assert batch["weights"].shape == (rows,) and batch["weights"].dtype == np.float32
    real = batch["weights"] > 0
    assert real.any()
    assert (batch["inputs"][real, 0] == cls_id).all()
    labels = batch["labels"][real]
    assert ((labels >= 0) & (labels < processors["labels"].num_labels)).all()


def test_train_and_eval_batches_have_the_documented_shapes(run):
    name, cfg, task, processors = run
    with mocked():
        train = next(iter(task.train_dataset(processors, 0, 1)))
        evals = list(task.eval_dataset(processors, cfg.data.eval_split, 0, 1))
    _check_batch(train, cfg, processors, cfg.data.batch_size)
    assert train["weights"].all()  # training batches are full
    # The eval batches cover the split once (the last one padded with weight-0 rows).
    rows = cfg.data.eval_batch_size // jax.local_device_count() * jax.local_device_count()
    for batch in evals:
        _check_batch(batch, cfg, processors, rows)
    assert sum(int(b["weights"].sum()) for b in evals) == NUM_EXAMPLES


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_a_short_training_run_then_classify(name, tmp_path, tmp_path_factory, capsys):
    workdir = str(tmp_path / "run")
    overrides = SMALL + TINY_MODEL
    overrides += [
        "data.eval_batch_size=16",
        "optimizer.warmup_steps=1",
        "train.num_steps=2",
        "train.checkpoint_every=2",
        "train.eval_every=2",
        "train.log_every=1",
        "train.progress=False",
    ]
    argv = ["train", "--config", name, "--workdir", workdir]
    with mocked(), compilation_cache(tmp_path_factory):
        assert main(argv + [f"--config.{o}" for o in overrides]) == 0
    assert os.path.isdir(os.path.join(workdir, "checkpoints"))
    names, _ = DATASETS[name]
    texts = ["a fine film", "dull"]
    capsys.readouterr()
    assert main(["classify", "--workdir", workdir, "--top-k", "2", "--json", *texts]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(answers) == 2
    for ranked in answers:  # both of the dataset's labels, best first
        assert sorted(r["label"] for r in ranked) == sorted(names)
        assert ranked[0]["score"] >= ranked[1]["score"]
        assert abs(sum(r["score"] for r in ranked) - 1.0) < 0.01
    # The plain answer: the top label and its probability, one line per text.
    assert main(["classify", "--workdir", workdir, *texts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [r[0]["label"] for r in answers]
    assert all(0.5 <= float(line.split()[1]) <= 1.0 for line in lines)


def _tiny_roberta_folder(path) -> None:
    """A Hub folder laid out as roberta-base's: RobertaForMaskedLM, no id2label, a
    byte-level BPE tokenizer (vocab.json + merges.txt)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.train_from_iterator(
        ["a fine film", "a dull film", "abc defg hij"] * 4,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    model = json.loads(t.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = transformers.RobertaTokenizer(vocab=model["vocab"], merges=merges)
    tok.save_pretrained(str(path))
    config = transformers.RobertaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=26 + tok.pad_token_id + 1,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        layer_norm_eps=1e-5,
    )
    transformers.RobertaForMaskedLM(config).save_pretrained(str(path))
    with open(path / "config.json") as f:
        blob = json.load(f)
    for key in ("id2label", "label2id"):  # as the Hub's roberta-base: no labels
        blob.pop(key, None)
    with open(path / "config.json", "w") as f:
        json.dump(blob, f)


@pytest.mark.slow
def test_the_documented_start_from_an_imported_roberta(tmp_path, tmp_path_factory, capsys):
    """`tjax import-hf` of a roberta-base-like folder, then the SST-2 config with
    `train.init_from`: the labels are the dataset's, the head gets one row per label."""
    _tiny_roberta_folder(tmp_path / "hub")
    imported, workdir = str(tmp_path / "roberta"), str(tmp_path / "sst2")
    assert main(["import-hf", "--from", str(tmp_path / "hub"), "--to", imported]) == 0
    overrides = [
        "data.max_length=24",
        "data.batch_size=16",
        "optimizer.warmup_steps=1",
        "train.num_steps=2",
        "train.checkpoint_every=2",
        "train.eval_every=1000",
        "train.progress=False",
        f"train.init_from={imported}",
    ]
    argv = ["train", "--config", "classify_sst2_base", "--workdir", workdir]
    with mocked(), compilation_cache(tmp_path_factory):
        assert main(argv + [f"--config.{o}" for o in overrides]) == 0
    capsys.readouterr()
    assert main(["classify", "--workdir", workdir, "--top-k", "2", "--json", "a fine film"]) == 0
    (ranked,) = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert sorted(r["label"] for r in ranked) == ["negative", "positive"]
