"""The multimodal model: media encoders, one text decoder, two ways to fuse them.

Every medium becomes a block of vectors of the text model's width, delimited by a
learned begin and end marker and tagged with a learned modality embedding:

    [<img> patches of image 1 </img>] [<img> ... image 2 </img>]
    [<aud> Whisper-stem audio tokens </aud>] [<vid> frame or tubelet tokens </vid>]

Blocks sit at fixed columns (one per image slot, one for audio, one for video), so a
batch has one shape whatever media each row holds; a medium a row lacks is padding
(segment id 0, never attended) and positions count each row's real tokens only, so a
row is computed exactly as its own media alone would be.

Fusion (`config.fusion`):
- "prefix": the media blocks and the text prompt are the bidirectional prefix of one
  decoder (PaliGemma); the answer is causal.
- "cross": the media blocks go through a media encoder of `fusion_layers` layers; the
  text decoder (prompt bidirectional, answer causal) reads it through cross-attention.

Media arrive raw: images and video as uint8 pixels, audio as int16 samples at 16 kHz;
normalisation and the log-mel front end run inside the model (on the device).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from transformer_jax.nn.embed import Embed, output_projection
from transformer_jax.nn.transformer import Decoder, Encoder
from transformer_jax.tasks.multimodal.config import MultimodalConfig
from transformer_jax.tasks.multimodal.media_config import HOP_LENGTH

MODALITY_IDS = {"text": 0, "image": 1, "audio": 2, "video": 3}
MEDIA_KEYS = ("images", "num_images", "audio", "audio_samples", "video", "num_frames")


class MediaLayout(NamedTuple):
    valid_BM: Any  # bool[B, M]: real media tokens (markers included)
    modality_M: np.ndarray  # int32[M]: the modality id of each column


def audio_token_count(samples_B, config: MultimodalConfig):
    """Real audio tokens per row: log-mel frames (samples // hop) after the stride-2 stem."""
    frames_B = jnp.minimum(samples_B, config.audio.max_samples) // HOP_LENGTH
    return (frames_B + 1) // 2


def media_columns(config: MultimodalConfig) -> int:
    """M: the columns of all media blocks of a row."""
    M = 0
    if config.max_images:
        M += config.max_images * (config.vision.image_out_tokens + 2)
    if config.audio is not None:
        M += config.audio.audio_tokens + 2
    if config.video:
        M += config.vision.video_out_tokens + 2
    return M


def media_layout(config: MultimodalConfig, media: dict[str, Any]) -> MediaLayout:
    """Which media columns of each row are real, from the counts alone (no parameters)."""
    parts, kinds = [], []
    B = _batch_size(media)
    if config.max_images:
        P = config.vision.image_out_tokens + 2
        slots_BN = jnp.arange(config.max_images)[None, :] < media["num_images"][:, None]
        parts.append(jnp.repeat(slots_BN, P, axis=1))
        kinds.append(np.full(config.max_images * P, MODALITY_IDS["image"]))
    if config.audio is not None:
        A = config.audio.audio_tokens
        samples_B = media["audio_samples"]
        count_B = audio_token_count(samples_B, config)
        present_B1 = (samples_B > 0)[:, None]
        tokens_BA = jnp.arange(A)[None, :] < count_B[:, None]
        parts.append(jnp.concatenate([present_B1, tokens_BA & present_B1, present_B1], axis=1))
        kinds.append(np.full(A + 2, MODALITY_IDS["audio"]))
    if config.video:
        V = config.vision.video_out_tokens + 2
        present_B1 = (media["num_frames"] > 0)[:, None]
        parts.append(jnp.broadcast_to(present_B1, (B, V)))
        kinds.append(np.full(V, MODALITY_IDS["video"]))
    if not parts:
        return MediaLayout(jnp.zeros((B, 0), bool), np.zeros(0, np.int32))
    return MediaLayout(jnp.concatenate(parts, axis=1), np.concatenate(kinds).astype(np.int32))


def _batch_size(media: dict[str, Any]) -> int:
    for key in ("num_images", "audio_samples", "num_frames"):
        if key in media:
            return media[key].shape[0]
    raise ValueError("no media counts in the batch")


def _pool(x_NPD, grid: int, pool: int, mode: str = "mean"):
    """Merges each pool x pool block of [N, frames * grid * grid, D] tokens (row-major
    patches per frame) into one token: their mean [.., D], or ("concat") their vectors
    joined in row-major order [.., pool * pool * D]."""
    if pool == 1:
        return x_NPD
    N, P, D = x_NPD.shape
    g = grid // pool
    x = x_NPD.reshape(N, P // (grid * grid), g, pool, g, pool, D)
    if mode == "mean":
        return x.mean(axis=(3, 5)).reshape(N, -1, D)
    return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(N, -1, pool * pool * D)


def _compact(max_tokens: int, seg_BT, *arrays):
    """Each row's real tokens (segment id != 0) moved to its front, in order, and the
    first `max_tokens` columns kept; padding carries over with segment id 0. Positions
    counted over real tokens are unchanged, so the result computes the same as the full
    row (while its real tokens fit)."""
    order_BT = jnp.argsort(seg_BT == 0, axis=1, stable=True)[:, :max_tokens]

    def take(x):
        index = order_BT.reshape(order_BT.shape + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, index, axis=1)

    return take(seg_BT), *(take(a) for a in arrays)


def _pixels(x_uint8):
    """uint8 pixels -> ViT-normalised float32 in [-1, 1]."""
    return (x_uint8.astype(jnp.float32) / 255.0 - 0.5) / 0.5


def _positions(seg_BL):
    return jnp.maximum(jnp.cumsum(seg_BL, axis=1) - 1, 0).astype(jnp.int32)


class MultimodalModel(nn.Module):
    """Media + text ids [B, L] -> next-token logits over the text columns [B, L, V]."""

    config: MultimodalConfig

    def setup(self) -> None:
        from transformer_jax.tasks.multimodal.audio import AudioEncoder
        from transformer_jax.tasks.multimodal.vision import ImageEncoder, TubeletEncoder

        cfg, t = self.config, self.config.text
        D = t.d_model
        init = nn.initializers.normal(stddev=0.02)
        self.embed = Embed(t.vocab_size, t, name="embed")
        self.modality_embed = self.param("modality_embed", init, (len(MODALITY_IDS), D))
        # Begin/end markers of the image, audio and video blocks (rows 2k, 2k + 1).
        self.markers = self.param("markers", init, (6, D))

        def proj(name):
            return nn.Dense(D, dtype=t.dtype, name=name)

        if cfg.vision is not None:
            self.image_encoder = ImageEncoder(cfg.vision, name="image_encoder")
            self.image_proj = proj("image_proj")
            if cfg.video and cfg.vision.video_mode == "tubelets":
                self.video_encoder = TubeletEncoder(cfg.vision, name="video_encoder")
                self.video_proj = proj("video_proj")
            elif cfg.video:
                shape = (cfg.vision.num_frames, cfg.vision.stack.d_model)
                self.time_embed = self.param("time_embed", init, shape)
        if cfg.audio is not None:
            self.audio_encoder = AudioEncoder(cfg.audio, name="audio_encoder")
            self.audio_proj = proj("audio_proj")
        if cfg.fusion == "cross":
            enc = t.replace(num_encoder_layers=cfg.fusion_layers)
            self.media_encoder = Encoder(enc, name="media_encoder")
        self.decoder = Decoder(
            t, num_memories=int(cfg.fusion == "cross"), slot_cache=True, name="decoder"
        )
        if not t.tie_output:
            self.logits_dense = output_projection(t, t.vocab_size)

    # -- media -----------------------------------------------------------------------------

    def _block(self, tokens_BXD, marker: int):
        """[begin marker, tokens..., end marker] of one medium."""
        B, _, D = tokens_BXD.shape
        m = jnp.asarray(self.markers, tokens_BXD.dtype)
        begin = jnp.broadcast_to(m[2 * marker], (B, 1, D))
        end = jnp.broadcast_to(m[2 * marker + 1], (B, 1, D))
        return jnp.concatenate([begin, tokens_BXD, end], axis=1)

    def media_tokens(self, media: dict[str, Any]):
        """(tokens [B, M, D], layout) of all media blocks of a batch."""
        from transformer_jax.tasks.multimodal.audio import log_mel

        cfg, t = self.config, self.config.text
        blocks = []
        if cfg.max_images:
            images = media["images"]
            B, N = images.shape[:2]
            v = cfg.vision
            x = self.image_encoder(_pixels(images.reshape((B * N,) + images.shape[2:])))
            x = _pool(x, v.image_size // v.patch_size, v.pool, v.pool_mode)
            x = self.image_proj(x).reshape(B * N, -1, t.d_model)
            x = self._block(x, 0).reshape(B, -1, t.d_model)
            blocks.append(x)
        if cfg.audio is not None:
            wave_BS = media["audio"].astype(jnp.float32) / 32768.0
            samples_B = jnp.minimum(media["audio_samples"], wave_BS.shape[1])
            mel_BFM, frames_BF = log_mel(wave_BS, samples_B, cfg.audio.n_mels)
            x, _ = self.audio_encoder(mel_BFM, frames_BF)
            blocks.append(self._block(self.audio_proj(x), 1))
        if cfg.video:
            video = _pixels(media["video"])
            v = cfg.vision
            grid = v.image_size // v.patch_size
            if v.video_mode == "tubelets":
                x = self.video_proj(_pool(self.video_encoder(video), grid, v.pool, v.pool_mode))
            else:
                B, F = video.shape[:2]
                x = self.image_encoder(video.reshape((B * F,) + video.shape[2:]))
                x = x.reshape(B, F, -1, x.shape[-1])
                x = x + jnp.asarray(self.time_embed, x.dtype)[None, :, None, :]
                x = _pool(x.reshape(B, -1, x.shape[-1]), grid, v.pool, v.pool_mode)
                x = self.image_proj(x)
            blocks.append(self._block(x, 2))
        layout = media_layout(cfg, media)
        x_BMD = jnp.concatenate(blocks, axis=1).astype(t.dtype)
        kinds = jnp.asarray(self.modality_embed, t.dtype)[layout.modality_M]
        return x_BMD + kinds[None], layout

    # -- text ------------------------------------------------------------------------------

    def _text(self, ids_BL):
        t = self.config.text
        x = self.embed(ids_BL)
        return x + jnp.asarray(self.modality_embed[MODALITY_IDS["text"]], t.dtype)[None, None]

    def logits(self, y_BTD):
        if self.config.text.tie_output:
            out = self.embed.attend(y_BTD)
        else:
            out = self.logits_dense(y_BTD)
        return out.astype(jnp.float32)

    def __call__(self, tokens_BL, text_mask_BL, prefix_len_B, media: dict[str, Any]):
        """Teacher forcing: logits[b, t] predicts tokens[b, t + 1].

        `text_mask_BL` marks real text tokens; the first `prefix_len_B` of them ([bos] and
        the prompt) attend bidirectionally, with the media.
        """
        cfg = self.config
        L = tokens_BL.shape[1]
        text_BLD = self._text(tokens_BL)
        text_seg_BL = text_mask_BL.astype(jnp.int32)
        text_prefix_BL = (jnp.arange(L)[None, :] < prefix_len_B[:, None]) & (text_seg_BL != 0)
        media_BMD, layout = self.media_tokens(media)
        media_seg_BM = layout.valid_BM.astype(jnp.int32)
        if cfg.fusion == "prefix":
            M = media_BMD.shape[1]
            x_BTD = jnp.concatenate([media_BMD, text_BLD], axis=1)
            seg_BT = jnp.concatenate([media_seg_BM, text_seg_BL], axis=1)
            prefix_BT = jnp.concatenate([layout.valid_BM, text_prefix_BL], axis=1)
            K = cfg.max_tokens
            if not K or K >= M + L:
                y_BTD = self.decoder(x_BTD, None, seg_BT, _positions(seg_BT), None, prefix_BT)
                return self.logits(y_BTD[:, M:])
            seg_BK, x_BKD, prefix_BK = _compact(K, seg_BT, x_BTD, prefix_BT)
            y_BKD = self.decoder(x_BKD, None, seg_BK, _positions(seg_BK), None, prefix_BK)
            # Text column j sits after the row's real media tokens and real text before it.
            before_BL = jnp.sum(media_seg_BM, axis=1)[:, None] + jnp.cumsum(text_seg_BL, 1) - 1
            index_BL1 = jnp.clip(before_BL, 0, K - 1)[:, :, None]
            return self.logits(jnp.take_along_axis(y_BKD, index_BL1, axis=1))
        memory_BMD = self.media_encoder(media_BMD, media_seg_BM, _positions(media_seg_BM))
        y_BLD = self.decoder(
            text_BLD, memory_BMD, text_seg_BL, _positions(text_seg_BL), media_seg_BM,
            text_prefix_BL,
        )  # fmt: skip
        return self.logits(y_BLD)

    # -- cached decoding (config.text.decode=True, apply with mutable=["cache"]) ----------

    def init_cache(self, batch_size: int, max_length: int, media: dict[str, Any]):
        """An empty cache of `max_length` slots per row ("cross": with the media's keys
        and values, computed once here)."""
        t = self.config.text
        x_BTD = jnp.zeros((batch_size, max_length, t.d_model), t.dtype)
        ones_BT = jnp.ones((batch_size, max_length), jnp.int32)
        pos_BT = _positions(ones_BT)
        if self.config.fusion == "prefix":
            self.decoder(x_BTD, None, ones_BT, pos_BT, None)
            return
        media_BMD, layout = self.media_tokens(media)
        seg_BM = layout.valid_BM.astype(jnp.int32)
        memory_BMD = self.media_encoder(media_BMD, seg_BM, _positions(seg_BM))
        self.decoder(x_BTD, memory_BMD, ones_BT, pos_BT, seg_BM)

    def forward_cached(
        self, ids_BT, positions_BT, segment_ids_BT=None, prefix_BT=None, logits_index_B=None,
        media=None,
    ):  # fmt: skip
        """Appends T tokens to the cache and returns their logits ([B, 1, V] with
        `logits_index_B`). In "prefix" fusion a prefill passes `media`: its first M
        columns are then the media blocks (their ids are ignored)."""
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones(ids_BT.shape, jnp.int32)
        if media is not None and self.config.fusion == "prefix":
            media_BMD, _ = self.media_tokens(media)
            M = media_BMD.shape[1]
            x_BTD = jnp.concatenate([media_BMD, self._text(ids_BT[:, M:])], axis=1)
        else:
            x_BTD = self._text(ids_BT)
        y_BTD = self.decoder(x_BTD, None, segment_ids_BT, positions_BT, None, prefix_BT)
        if logits_index_B is not None:
            index_B11 = jnp.asarray(logits_index_B, jnp.int32)[:, None, None]
            y_BTD = jnp.take_along_axis(y_BTD, index_B11, axis=1)
        return self.logits(y_BTD)


def decoding_fns(model: MultimodalModel, media: dict[str, Any]):
    """`(init_cache, prefill, step)` for `transformer_jax.decode.cached.generate`, bound to
    one batch's media (traced arrays inside a jitted program are fine)."""
    config = model.config.with_text(decode=True, deterministic=True)
    model = model.clone(config=config)

    def init_cache(params, batch_size: int, max_length: int):
        _, variables = model.apply(
            {"params": params}, batch_size, max_length, media,
            method=MultimodalModel.init_cache, mutable=["cache"],
        )  # fmt: skip
        return variables["cache"]

    def prefill(
        params, cache, tokens_BT, positions_BT, segment_ids_BT, prefix_BT=None, logits_index_B=None
    ):
        logits, variables = model.apply(
            {"params": params, "cache": cache}, tokens_BT, positions_BT, segment_ids_BT,
            prefix_BT, logits_index_B, media, method=MultimodalModel.forward_cached,
            mutable=["cache"],
        )  # fmt: skip
        return logits, variables["cache"]

    def step(params, cache, tokens_B1, positions_B1):
        logits, variables = model.apply(
            {"params": params, "cache": cache}, tokens_B1, positions_B1,
            method=MultimodalModel.forward_cached, mutable=["cache"],
        )  # fmt: skip
        return logits, variables["cache"]

    return init_cache, prefill, step


def answer(
    model: MultimodalModel,
    params,
    media: dict[str, Any],
    prompts_BL,
    prompt_mask_BL,
    *,
    max_new_tokens: int,
):
    """Greedy answers int32[B, max_new_tokens] (eos kept, then padding) to text prompts
    ([bos] prompt, right-padded) about each row's media. Jittable with the sizes static."""
    from transformer_jax.decode.cached import generate

    cfg = model.config
    init_cache, prefill, step = decoding_fns(model, media)
    prompts_BL = jnp.asarray(prompts_BL, jnp.int32)
    text_mask_BL = jnp.asarray(prompt_mask_BL) != 0
    B, L = prompts_BL.shape
    text_len_B = jnp.sum(text_mask_BL, axis=1)
    if cfg.fusion == "prefix":
        layout = media_layout(cfg, media)
        M = layout.valid_BM.shape[1]
        ids_BT = jnp.concatenate([jnp.zeros((B, M), jnp.int32), prompts_BL], axis=1)
        mask_BT = jnp.concatenate([layout.valid_BM, text_mask_BL], axis=1)
        prefix_B = jnp.sum(layout.valid_BM, axis=1) + text_len_B
    else:
        ids_BT, mask_BT, prefix_B = prompts_BL, text_mask_BL, text_len_B
    cache = init_cache(params, B, ids_BT.shape[1] + max_new_tokens)
    return generate(
        prefill,
        step,
        params,
        cache,
        ids_BT,
        mask_BT,
        max_new_tokens=max_new_tokens,
        eos_id=cfg.text.eos_id,
        prefix_lengths=prefix_B,
    )


def encoder_flops(config: MultimodalConfig, batch: int) -> float:
    """Matmul FLOPs (forward x3) of the media encoders and projections for one batch."""
    total = 0.0

    def stack(c, tokens):
        D, F, L = c.d_model, c.d_ff, c.num_encoder_layers
        return tokens * L * (2 * 4 * D * D + 2 * 2 * tokens * D + 2 * 2 * D * F)

    D = config.text.d_model
    if config.max_images:
        v, n = config.vision, config.max_images
        P = v.image_tokens
        patch = 2 * P * v.patch_size**2 * v.channels * v.stack.d_model
        total += n * (stack(v.stack, P) + patch + 2 * P * v.stack.d_model * D)
    if config.audio is not None:
        a = config.audio
        A, Dm = a.audio_tokens, a.stack.d_model
        stem = 2 * 3 * a.num_frames * (a.n_mels * Dm) + 2 * 3 * A * Dm * Dm
        total += stack(a.stack, A) + stem + 2 * A * Dm * D
    if config.video:
        v = config.vision
        V = v.video_tokens
        if v.video_mode == "frames":
            total += v.num_frames * stack(v.stack, v.image_tokens)
        else:
            total += stack(v.stack, V)
        total += 2 * V * v.stack.d_model * D
    return float(3 * batch * total)


__all__ = [
    "MultimodalModel",
    "answer",
    "decoding_fns",
    "media_columns",
    "media_layout",
]
