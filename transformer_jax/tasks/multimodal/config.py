"""The run config of the multimodal task and its typed model config.

Configs start from `mm_base()`: a Llama-style text decoder (RMSNorm, SwiGLU, RoPE) that
reads images, audio and video either as a bidirectional prefix (`model.fusion="prefix"`,
PaliGemma style) or through cross-attention to a media encoder (`model.fusion="cross"`,
Whisper/CapPa style). `image.*` and `audio.*` size the media encoders; `media` lists the
modalities the model has (a request with another one is refused).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections

from transformer_jax.config import ConfigError, base, checker
from transformer_jax.nn.config import (
    ACTIVATIONS,
    NORM_POSITIONS,
    NORM_TYPES,
    POSITION_TYPES,
    TransformerConfig,
    config_from_json,
    config_to_json,
    from_settings,
    settings_of,
)
from transformer_jax.tasks.generation.text import lm_specials
from transformer_jax.tasks.multimodal.media_config import (
    IMAGE_POSITIONS,
    IMAGE_STEMS,
    VIDEO_MODES,
    AudioConfig,
    VisionConfig,
    encoder_stack,
)

MODALITIES = ("image", "audio", "video")
FUSIONS = ("prefix", "cross")
DATA_FORMATS = ("corpus", "coco_captions")


def mm_base() -> ml_collections.ConfigDict:
    """Everything a multimodal run can set (a small model by default)."""
    shared = base()
    c = ml_collections.ConfigDict()
    c.task = "multimodal"
    c.seed = shared.seed
    c.media = "image,audio,video"  # the modalities the model reads (comma-separated)

    c.data = ml_collections.ConfigDict()
    c.data.name = "multimodal_corpus"
    c.data.data_dir = ""
    # "corpus": the embedded set's records; "coco_captions": tfds coco_captions records
    # (image + captions: a captioning example per image, a random caption while training).
    c.data.format = "corpus"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.test_split = "test"
    c.data.max_text_length = 32  # text tokens per row: [bos] prompt answer [eos]
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.data.tokens_per_batch = 0  # unused (rows are examples); kept for shared tooling
    c.data.eval_tokens_per_batch = 0

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.vocab_size = 256
    c.tokenizer.model_type = "bpe"
    c.tokenizer.max_train_sentences = 100_000
    c.tokenizer.path = ""

    c.model = ml_collections.ConfigDict(settings_of(TransformerConfig))
    c.model.update(
        d_model=128,
        num_heads=4,
        d_ff=384,
        num_encoder_layers=0,
        num_decoder_layers=4,
        activation="swiglu",
        norm_position="pre",
        norm_type="rms",
        mlp_bias=False,
        position_type="rope",
        position_layout="halves",
        scale_embeddings=False,
        tie_output=False,
        max_position=512,
        dropout_rate=0.0,
    )
    for key in ("attention_impl", "dtype", "remat"):
        c.model[key] = shared.model[key]
    c.model.fusion = "prefix"  # "prefix" (one decoder) | "cross" (media encoder + cross-attn)
    c.model.fusion_layers = 2  # "cross": layers of the media encoder over all media tokens
    c.model.max_images = 2  # image slots per example
    # "prefix" training: decoder columns per row (its real media and text tokens moved to
    # the front; 0 = all media slots of every row, real or not). A row that does not fit
    # is an error naming it.
    c.model.max_tokens = 0

    c.image = ml_collections.ConfigDict()
    c.image.image_size = 32
    c.image.patch_size = 8
    c.image.positions = "learned"
    c.image.cls_token = False
    c.image.stem = "patch"  # "patch" (ViT) | "conv" (3x3 stride-2 convolutions, then 1x1)
    c.image.stem_extra = 0  # conv stem: 3x3 stride-1 convolutions added at the token grid
    c.image.d_model = 128
    c.image.num_heads = 4
    c.image.d_ff = 256
    c.image.num_layers = 1
    c.image.video_mode = "frames"
    c.image.num_frames = 8
    c.image.tubelet_frames = 2
    c.image.pool = 1  # merge pool x pool blocks of the encoder's patch grid for the decoder
    c.image.pool_mode = "mean"  # "mean" | "concat" (the block's vectors joined, then projected)
    c.image.hf_path = ""  # a Hugging Face ViT directory (safetensors) to start from

    c.audio = ml_collections.ConfigDict()
    c.audio.max_samples = 12_000  # longest clip at 16 kHz (longer ones keep their start)
    c.audio.n_mels = 80
    c.audio.d_model = 128
    c.audio.num_heads = 4
    c.audio.d_ff = 256
    c.audio.num_layers = 1
    c.audio.max_positions = 1500
    c.audio.hf_path = ""  # a Hugging Face Whisper directory (safetensors) to start from

    c.optimizer = shared.optimizer
    c.optimizer.update(
        schedule="cosine",
        peak_lr=1e-3,
        warmup_steps=100,
        b1=0.9,
        b2=0.98,
        eps=1e-9,
        weight_decay=0.01,
        grad_clip_norm=1.0,
        final_lr_fraction=0.05,
    )
    c.train = shared.train
    c.train.label_smoothing = 0.0

    g = c.generate = ml_collections.ConfigDict()
    g.max_new_tokens = 16
    g.batch_size = 64
    g.eval_examples = 240  # validation examples answered at each evaluation (0 = all)

    c.mesh = shared.mesh
    return c


CHOICES: dict[str, tuple[str, ...]] = {
    "tokenizer.model_type": ("unigram", "bpe"),
    "data.format": DATA_FORMATS,
    "model.activation": ACTIVATIONS,
    "model.norm_position": NORM_POSITIONS,
    "model.norm_type": NORM_TYPES,
    "model.position_type": POSITION_TYPES,
    "model.fusion": FUSIONS,
    "image.positions": IMAGE_POSITIONS,
    "image.stem": IMAGE_STEMS,
    "image.video_mode": VIDEO_MODES,
}


def modalities(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    names = tuple(m.strip() for m in str(cfg.media).split(",") if m.strip())
    bad = [m for m in names if m not in MODALITIES]
    if bad or not names or len(set(names)) != len(names):
        raise ConfigError(
            f"config key 'media'={cfg.media!r}: a comma-separated subset of {', '.join(MODALITIES)}"
        )
    return names


def validate_mm(cfg: ml_collections.ConfigDict) -> None:
    need, get = checker(cfg)
    for key, choices in CHOICES.items():
        need(key, lambda v, c=choices: v in c, f"choose one of {', '.join(choices)}")
    modalities(cfg)

    def at_least(low):
        return lambda v: v >= low

    need("data.max_text_length", at_least(4), "must be >= 4")
    need("data.batch_size", at_least(1), "must be >= 1")
    need("data.eval_batch_size", at_least(1), "must be >= 1")
    need("tokenizer.vocab_size", at_least(8), "must be >= 8")
    need("model.num_decoder_layers", at_least(1), "must be >= 1")
    need("model.num_encoder_layers", lambda v: v == 0, "must be 0 (see model.fusion_layers)")
    need("model.fusion_layers", at_least(0), "must be >= 0")
    need("model.max_images", at_least(1), "must be >= 1")
    need("model.max_tokens", at_least(0), "must be >= 0 (0 = all columns)")
    for group in ("image", "audio"):
        need(f"{group}.num_layers", at_least(0), "must be >= 0")
        for key in ("d_model", "num_heads", "d_ff"):
            need(f"{group}.{key}", at_least(1), "must be >= 1")
    need("audio.max_samples", at_least(400), "must be >= 400 (one 25 ms window)")
    need("generate.max_new_tokens", at_least(1), "must be >= 1")
    need("generate.batch_size", at_least(1), "must be >= 1")
    need("generate.eval_examples", at_least(0), "must be >= 0")
    names = modalities(cfg)
    # An encoder import for a medium the run does not read would be silently dropped.
    uses = {"image": ("image" in names or "video" in names), "audio": "audio" in names}
    for group, used in uses.items():
        need(
            f"{group}.hf_path",
            lambda v, used=used: not v or used,
            f"the run reads no {group} (media={cfg.media!r}): add {group} to media or clear it",
        )
    need(
        "image.stem",
        lambda v: v == "patch" or not get("image.hf_path"),
        "a ViT import (image.hf_path) has a patch stem: set image.stem='patch'",
    )
    model_config(cfg, _StandIn(get("tokenizer.vocab_size")))


class _StandIn:
    """Tokenizer stand-in for config checks before a tokenizer exists."""

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size if isinstance(vocab_size, int) and vocab_size > 0 else 8


@dataclasses.dataclass(frozen=True)
class MultimodalConfig:
    """The typed model config: a text decoder plus the media encoders it reads."""

    text: TransformerConfig
    vision: VisionConfig | None = None  # images (and video: `video`)
    audio: AudioConfig | None = None
    video: bool = False  # video clips through `vision` (frames or tubelets)
    fusion: str = "prefix"
    fusion_layers: int = 2
    max_images: int = 2
    # "prefix": the decoder's columns while training (each row's real media and text
    # tokens first); 0 = every media column of every row. Rows must fit (checked).
    max_tokens: int = 0

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"model.fusion={self.fusion!r}: choose one of {FUSIONS}")
        if self.video and self.vision is None:
            raise ValueError("media: video needs the image encoder (model.image.*)")

    @property
    def modalities(self) -> tuple[str, ...]:
        out = []
        if self.vision is not None and self.max_images:
            out.append("image")
        if self.audio is not None:
            out.append("audio")
        if self.video:
            out.append("video")
        return tuple(out)

    # The trainer reads these of any model config.
    @property
    def d_model(self) -> int:
        return self.text.d_model

    @property
    def attention_impl(self) -> str:
        return self.text.attention_impl

    @property
    def dtype(self):
        return self.text.dtype

    @property
    def pad_id(self) -> int:
        return self.text.pad_id

    def replace(self, **changes: Any) -> MultimodalConfig:
        """Changes fields of this config; other names go to the text stack's config (and
        the compute fields dtype, deterministic, decode, attention_impl, remat and
        dropout_rate to the media stacks' too)."""
        own = {f.name for f in dataclasses.fields(self)}
        mine = {k: v for k, v in changes.items() if k in own}
        theirs = {k: v for k, v in changes.items() if k not in own}
        out = dataclasses.replace(self, **mine)
        if theirs:
            out = out.with_text(**theirs)
        return out

    def with_text(self, **changes: Any) -> MultimodalConfig:
        """The same config with text-stack fields changed (see `replace`)."""
        shared = {
            k: v
            for k, v in changes.items()
            if k in ("dtype", "deterministic", "decode", "attention_impl", "remat", "dropout_rate")
        }
        shared.pop("decode", None)  # the media encoders never decode
        out = dataclasses.replace(self, text=self.text.replace(**changes))
        for key in ("vision", "audio"):
            media = getattr(out, key)
            if media is not None and shared:
                stack = media.stack.replace(**shared)
                out = dataclasses.replace(out, **{key: dataclasses.replace(media, stack=stack)})
        return out


def _stack_of(group, text: TransformerConfig) -> TransformerConfig:
    return encoder_stack(
        d_model=group.d_model,
        num_heads=group.num_heads,
        d_ff=group.d_ff,
        num_encoder_layers=group.num_layers,
        dtype=text.dtype,
        attention_impl=text.attention_impl,
        remat=text.remat,
        scan_layers=text.scan_layers,
        dropout_rate=text.dropout_rate,
        layer_scale_init=text.layer_scale_init,
    )


def model_config(cfg: ml_collections.ConfigDict, tokenizer) -> MultimodalConfig:
    """The one place where a run config becomes the typed multimodal model config."""
    s = lm_specials(tokenizer)
    names = modalities(cfg)
    try:
        text = from_settings(
            cfg.model,
            TransformerConfig,
            vocab_size=int(tokenizer.vocab_size),
            pad_id=s.pad_id,
            eos_id=s.eos_id,
            decoder_start_id=s.bos_id,
            num_encoder_layers=0,
        )
        vision = audio = None
        if "image" in names or "video" in names:
            i = cfg.image
            vision = VisionConfig(
                stack=_stack_of(i, text),
                image_size=i.image_size,
                patch_size=i.patch_size,
                positions=i.positions,
                cls_token=i.cls_token,
                stem=i.stem,
                stem_extra=i.stem_extra,
                video_mode=i.video_mode,
                num_frames=i.num_frames,
                tubelet_frames=i.tubelet_frames,
                pool=i.pool,
                pool_mode=i.pool_mode,
            )
        if "audio" in names:
            a = cfg.audio
            audio = AudioConfig(
                stack=_stack_of(a, text).replace(layer_norm_eps=1e-5),
                n_mels=a.n_mels,
                max_samples=a.max_samples,
                max_positions=a.max_positions,
            )
            if audio.audio_tokens > audio.max_positions:
                raise ValueError(
                    f"audio.max_samples={a.max_samples}: {audio.audio_tokens} tokens exceed "
                    f"audio.max_positions={a.max_positions}"
                )
        return MultimodalConfig(
            text=text,
            vision=vision,
            audio=audio,
            video="video" in names,
            fusion=cfg.model.fusion,
            fusion_layers=cfg.model.fusion_layers,
            max_images=cfg.model.max_images if "image" in names else 0,
            max_tokens=cfg.model.max_tokens,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


# -- JSON (saved with every checkpoint) ----------------------------------------------------


def to_json(config: MultimodalConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "text": config_to_json(config.text),
        "video": config.video,
        "fusion": config.fusion,
        "fusion_layers": config.fusion_layers,
        "max_images": config.max_images,
        "max_tokens": config.max_tokens,
        "vision": None,
        "audio": None,
    }
    for key in ("vision", "audio"):
        media = getattr(config, key)
        if media is not None:
            blob = dataclasses.asdict(media)
            blob["stack"] = config_to_json(media.stack)
            out[key] = blob
    return out


def from_json(blob: dict[str, Any]) -> MultimodalConfig:
    blob = dict(blob)
    blob["text"] = config_from_json(blob["text"])
    for key, cls in (("vision", VisionConfig), ("audio", AudioConfig)):
        if blob.get(key) is not None:
            media = dict(blob[key])
            media["stack"] = config_from_json(media["stack"])
            blob[key] = cls(**media)
    return MultimodalConfig(**blob)


def compute_dtype(config: MultimodalConfig):
    return jnp.dtype(config.text.dtype)
