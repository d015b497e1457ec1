"""The COCO captioning config on mocked TFDS data, and media encoders started from
Hugging Face ViT and Whisper weights (`image.hf_path`, `audio.hf_path`).

The real dataset needs a download, and TFDS runs the coco_captions builder's code only
with TensorFlow; the config therefore names a version, which reads a prepared dataset's
files. Here those files are its metadata alone, and `tfds.testing.mock_data`
(USE_FILES) serves random examples of its features through `as_data_source`: images of
5 to 49 pixels a side, 5 to 49 random captions each.
"""

import json
import os
import types

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import compilation_cache, read_metrics

from transformer_jax.__main__ import main
from transformer_jax.config import ConfigError, load_config, make_task
from transformer_jax.convert.params import flatten
from transformer_jax.tasks.multimodal.data import canonical, resize_square

NAME = "multimodal_coco_captions"
NUM_EXAMPLES = 24
SIZE = 32  # the mock images (5-49 pixels a side) are cropped and resized to this
SMALL = [
    "tokenizer.vocab_size=60",
    "tokenizer.model_type=unigram",
    "data.max_text_length=32",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    f"image.image_size={SIZE}",
]
TINY_MODEL = [
    "model.d_model=32",
    "model.num_heads=2",
    "model.d_ff=64",
    "model.num_decoder_layers=1",
    "model.max_position=128",
    "model.dtype=float32",
    "model.remat=none",
    "image.d_model=32",
    "image.num_heads=2",
    "image.d_ff=64",
    "image.num_layers=1",
    "mesh.rules=data_parallel",
    "mesh.fsdp=1",
    "mesh.data=-1",
]


def _write_coco_metadata(data_dir: str) -> None:
    """dataset_info.json and features.json of a prepared coco_captions/2014:1.1.0 (the
    features of tfds 4.9's builder, the Karpathy splits), as `tfds build` writes them."""
    from tensorflow_datasets.core import features as F

    path = os.path.join(data_dir, "coco_captions", "2014", "1.1.0")
    os.makedirs(path, exist_ok=True)
    objects = {
        "id": np.int64,
        "area": np.int64,
        "bbox": F.BBoxFeature(),
        "label": F.ClassLabel(num_classes=80),
        "is_crowd": np.bool_,
    }
    F.FeaturesDict(
        {
            "image": F.Image(encoding_format="jpeg"),
            "image/filename": F.Text(),
            "image/id": np.int64,
            "objects": F.Sequence(objects),
            "captions": F.Sequence({"text": np.str_, "id": np.int64}),
        }
    ).save_config(path)
    template = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
    splits = [
        {"name": name, "shardLengths": [str(n)], "numBytes": "0", "filepathTemplate": template}
        for name, n in (("train", 82783), ("val", 5000), ("test", 5000), ("restval", 30504))
    ]
    info = {
        "name": "coco_captions",
        "configName": "2014",
        "version": "1.1.0",
        "fileFormat": "array_record",
        "moduleName": "tensorflow_datasets.object_detection.coco_captions",
        "splits": splits,
    }
    with open(os.path.join(path, "dataset_info.json"), "w") as f:
        json.dump(info, f)


@pytest.fixture(scope="module")
def coco_meta(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("coco_meta"))
    _write_coco_metadata(path)
    return path


def mocked(meta: str):
    """Random examples of the prepared dataset's features (USE_FILES: its metadata)."""
    return tfds.testing.mock_data(
        num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=meta
    )


def _stand_in(vocab_size):
    return types.SimpleNamespace(vocab_size=vocab_size, bos_id=2, eos_id=1, pad_id=0)


def _words(text: str) -> str:
    return " ".join(text.split())


# -- the config ------------------------------------------------------------------------


def test_coco_config_is_a_vit_b16_captioner_on_karpathy_splits():
    cfg = load_config(NAME)
    assert cfg.task == "multimodal" and cfg.media == "image"
    assert (cfg.data.name, cfg.data.format) == ("coco_captions/2014:1.1.0", "coco_captions")
    d = cfg.data
    assert (d.train_split, d.eval_split, d.test_split) == ("train+restval", "val", "test")
    task = make_task(cfg)
    config = task.model_config({"tokenizer": _stand_in(cfg.tokenizer.vocab_size)})
    v = config.vision
    assert config.modalities == ("image",) and config.max_images == 1
    assert (v.image_size, v.patch_size, v.image_tokens, v.cls_token) == (224, 16, 197, True)
    s = v.stack
    assert (s.d_model, s.num_heads, s.d_ff, s.num_encoder_layers) == (768, 12, 3072, 12)
    # The docstring's parameter counts: ViT-B/16 about 86M, the decoder about 55M.
    model = task.build_model(config)
    shapes = jax.eval_shape(
        lambda rng: task.init_variables(model, rng, task.example_batch(config)),
        jax.random.key(0),
    )["params"]
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    vit = count(shapes["image_encoder"])
    assert abs(vit / 1e6 - 86) < 1.5, vit
    assert abs((count(shapes) - vit) / 1e6 - 55) < 3, count(shapes) - vit
    # A mistyped or out-of-range key is a one-line error naming it.
    with pytest.raises(ConfigError, match="data.format"):
        load_config(NAME, ["data.format=coco"])


def test_caption_batches_from_mocked_coco(coco_meta):
    cfg = load_config(NAME, SMALL + TINY_MODEL)
    task = make_task(cfg)
    with mocked(coco_meta):
        processors = task.make_processors("")
        train = next(iter(task.train_dataset(processors, 0, 1)))
        evals = list(task.eval_dataset(processors, cfg.data.eval_split, 0, 1))
        source = task._source(cfg.data.eval_split)
        records = [canonical(source[i], "coco_captions") for i in range(len(source))]
    tok = processors["tokenizer"]
    keys = {"tokens", "text_mask", "prefix_len", "task_id", "images", "num_images"}
    for batch in [train, *evals]:
        assert set(batch) == keys
        assert batch["tokens"].shape == batch["text_mask"].shape == (8, 32)
        assert batch["images"].shape == (8, 1, SIZE, SIZE, 3)
        assert batch["images"].dtype == np.uint8 and batch["tokens"].dtype == np.int32
        for key in ("num_images", "prefix_len", "task_id"):
            assert batch[key].shape == (8,) and batch[key].dtype == np.int32, key
        np.testing.assert_array_equal(batch["num_images"], 1)
        np.testing.assert_array_equal(batch["prefix_len"], 1)  # [bos] alone: no prompt
        np.testing.assert_array_equal(batch["tokens"][:, 0], tok.bos_id)
        assert batch["images"].reshape(8, -1).std(axis=1).min() > 0  # real pixels, every row

    def caption(row_tokens, row_mask) -> str:
        ids = row_tokens[row_mask != 0].tolist()
        assert ids[-1] == tok.eos_id  # short mock captions: never cut
        return _words(tok.decode(ids[1:-1]))

    # Evaluation: the records in order, each with its first caption and its own image.
    rows = [(b, i) for b in evals for i in range(len(b["tokens"]))]
    assert len(rows) == len(records) == NUM_EXAMPLES
    for (b, i), ex in zip(rows, records, strict=True):
        assert caption(b["tokens"][i], b["text_mask"][i]) == _words(ex["answer"])
        assert _words(ex["answer"]) == _words(ex["references"][0])
        np.testing.assert_array_equal(b["images"][i, 0], resize_square(ex["images"][0], SIZE))
    # Training: a random caption of an image, not always its first one.
    every = {_words(r) for ex in records for r in ex["references"]}
    firsts = {_words(ex["answer"]) for ex in records}
    train_captions = [caption(train["tokens"][i], train["text_mask"][i]) for i in range(8)]
    assert set(train_captions) <= every
    assert not set(train_captions) <= firsts


def test_a_short_coco_run_then_the_pipeline_captions_an_image(
    tmp_path, tmp_path_factory, coco_meta
):
    from transformer_jax import pipeline

    workdir = str(tmp_path / "run")
    overrides = SMALL + TINY_MODEL
    overrides += [
        "optimizer.warmup_steps=1",
        "train.num_steps=2",
        "train.checkpoint_every=2",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.log_every=1",
        "train.progress=False",
        "generate.eval_examples=4",
        "generate.max_new_tokens=4",
        "generate.batch_size=4",
    ]
    argv = ["train", "--config", NAME, "--workdir", workdir]
    with mocked(coco_meta), compilation_cache(tmp_path_factory):
        assert main(argv + [f"--config.{o}" for o in overrides]) == 0
    assert os.path.isdir(os.path.join(workdir, "checkpoints"))
    bleu = [r[k] for r in read_metrics(workdir) for k in r if k.endswith("image_caption_bleu")]
    assert bleu and all(0 <= b <= 100 for b in bleu), bleu
    pipe = pipeline("image-text-to-text", workdir=workdir)
    image = np.random.default_rng(0).integers(0, 256, (40, 24, 3), dtype=np.uint8)
    out = pipe({"text": "", "images": [image]})
    assert len(out) == 1 and out[0]["input_text"] == ""
    assert isinstance(out[0]["generated_text"], str)
    json.dumps(out)  # plain values only


# -- encoders from Hugging Face weights ------------------------------------------------

VIT = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=16,
)
WHISPER_POSITIONS = 16
# The run config's image.* and audio.* keys that match VIT and the Whisper model below.
MATCHING = [
    "media=image,audio",
    "tokenizer.vocab_size=64",
    "model.d_model=32",
    "model.num_heads=2",
    "model.d_ff=64",
    "model.num_decoder_layers=1",
    "image.image_size=32",
    "image.patch_size=16",
    "image.cls_token=True",
    "image.positions=learned",
    "image.pool=1",
    "image.stem=patch",
    "model.max_tokens=0",
    "image.d_model=32",
    "image.num_heads=2",
    "image.d_ff=64",
    "image.num_layers=1",
    "audio.d_model=32",
    "audio.num_heads=2",
    "audio.d_ff=64",
    "audio.num_layers=1",
    "audio.n_mels=80",
    f"audio.max_positions={WHISPER_POSITIONS}",
    f"audio.max_samples={WHISPER_POSITIONS * 320}",  # 2 frames a position, 160 samples a frame
]


def _perturbed(model):
    """Every parameter moved (LayerNorms and biases too), so no value equals an init's."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """(ViT folder, Whisper folder): small random transformers models as safetensors."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    vit_dir = str(tmp_path_factory.mktemp("vit"))
    vit = _perturbed(transformers.ViTModel(transformers.ViTConfig(**VIT)))
    vit.save_pretrained(vit_dir, safe_serialization=True)
    whisper = transformers.WhisperConfig(
        d_model=32,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=WHISPER_POSITIONS,
        max_target_positions=16,
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    whisper_dir = str(tmp_path_factory.mktemp("whisper"))
    _perturbed(transformers.WhisperModel(whisper)).save_pretrained(
        whisper_dir, safe_serialization=True
    )
    return vit_dir, whisper_dir


def _init(overrides, jit=False):
    cfg = load_config("multimodal_tiny", overrides)
    task = make_task(cfg)
    config = task.model_config({"tokenizer": _stand_in(cfg.tokenizer.vocab_size)})
    model = task.build_model(config)
    batch = task.example_batch(config)

    def init(rng):
        return nn.unbox(task.init_variables(model, rng, batch))["params"]

    return (jax.jit(init) if jit else init)(jax.random.key(0))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_encoders_start_from_hugging_face_weights(hf_dirs, jit):
    from transformer_jax.tasks.multimodal.hf_vit import import_vit
    from transformer_jax.tasks.multimodal.hf_whisper import import_whisper_encoder

    vit_dir, whisper_dir = hf_dirs
    paths = [f"image.hf_path={vit_dir}", f"audio.hf_path={whisper_dir}"]
    params = _init(MATCHING + paths, jit=jit)
    fresh = _init(MATCHING, jit=jit)
    for name, (_, imported) in (
        ("image_encoder", import_vit(vit_dir)),
        ("audio_encoder", import_whisper_encoder(whisper_dir)),
    ):
        ours, theirs = flatten(params[name]), flatten(imported)
        assert set(ours) == set(theirs), name
        for key, value in theirs.items():
            assert ours[key].dtype == np.float32, key
            np.testing.assert_array_equal(np.asarray(ours[key]), value, err_msg=str(key))
        # A fresh init differs: the comparison above can fail.
        assert any(
            not np.array_equal(np.asarray(v), theirs[k]) for k, v in flatten(fresh[name]).items()
        )
    # Everything else is the run's own initialisation.
    for name in ("decoder", "embed", "image_proj", "audio_proj", "markers"):
        chex.assert_trees_all_equal(params[name], fresh[name])


@pytest.mark.parametrize(
    "override, key",
    [
        ("image.d_ff=128", "image.d_ff"),
        ("image.num_layers=2", "image.num_layers"),
        ("image.cls_token=False", "image.cls_token"),
        ("audio.num_heads=4", "audio.num_heads"),
        ("audio.max_positions=32", "audio.max_positions"),
    ],
)
def test_a_mismatched_encoder_size_is_a_one_line_error_naming_the_key(hf_dirs, override, key):
    vit_dir, whisper_dir = hf_dirs
    paths = [f"image.hf_path={vit_dir}", f"audio.hf_path={whisper_dir}"]
    with pytest.raises(ConfigError) as err:
        _init(MATCHING + paths + [override])
    message = str(err.value)
    assert key in message and "hf_path" in message and "\n" not in message, message


def test_a_missing_hf_path_is_a_one_line_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        _init(MATCHING + [f"image.hf_path={tmp_path / 'nowhere'}"])
    message = str(err.value)
    assert "image.hf_path" in message and "config.json" in message and "\n" not in message


@pytest.mark.parametrize(
    "media, key", [("audio", "image.hf_path"), ("image,video", "audio.hf_path")]
)
def test_an_encoder_import_for_a_medium_the_run_does_not_read_is_refused(tmp_path, media, key):
    """Refused when the config loads, before any file is read (the import would be
    silently dropped)."""
    with pytest.raises(ConfigError) as err:
        load_config("multimodal_tiny", [f"media={media}", f"{key}={tmp_path}"])
    message = str(err.value)
    assert message.startswith(f"config key '{key}'=") and "\n" not in message, message
    assert f"reads no {key.split('.')[0]}" in message
    # With the medium read, the same setting passes the config check.
    ok = load_config("multimodal_tiny", [f"{key}={tmp_path}", "image.stem=patch"])
    assert ok.media == "image,audio,video"


def test_a_vit_import_with_the_conv_stem_is_refused(tmp_path):
    """An imported ViT has a patch stem; the conv stem would leave it half loaded."""
    with pytest.raises(ConfigError) as err:
        load_config("multimodal_tiny", [f"image.hf_path={tmp_path}", "image.stem=conv"])
    message = str(err.value)
    assert message.startswith("config key 'image.stem'=") and "\n" not in message, message
    assert "image.stem='patch'" in message
