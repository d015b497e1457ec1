"""The multimodal model: media layout, row independence, cached answers, loss weights."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.nn.config import TransformerConfig
from transformer_jax.tasks.multimodal.config import (
    MultimodalConfig,
    from_json,
    mm_base,
    model_config,
    to_json,
)
from transformer_jax.tasks.multimodal.media_config import AudioConfig, VisionConfig, encoder_stack
from transformer_jax.tasks.multimodal.model import (
    MultimodalModel,
    answer,
    media_columns,
    media_layout,
)
from transformer_jax.tasks.multimodal.task import answer_targets

V = 40


def small_config(fusion="prefix", video_mode="tubelets", **text) -> MultimodalConfig:
    stack = encoder_stack(d_model=16, num_heads=2, d_ff=32, num_encoder_layers=1)
    t = TransformerConfig(
        vocab_size=V, d_model=32, num_heads=4, num_kv_heads=2, d_ff=64, num_encoder_layers=0,
        num_decoder_layers=2, norm_position="pre", norm_type="rms", activation="swiglu",
        position_type="rope", position_layout="halves", scale_embeddings=False,
        tie_output=False, dropout_rate=0.0, mlp_bias=False, pad_id=0, eos_id=1,
        decoder_start_id=2, **text,
    )  # fmt: skip
    return MultimodalConfig(
        text=t,
        vision=VisionConfig(
            stack=stack,
            image_size=16,
            patch_size=8,
            video_mode=video_mode,
            num_frames=4,
            tubelet_frames=2,
        ),  # fmt: skip
        audio=AudioConfig(stack=stack.replace(layer_norm_eps=1e-5), max_samples=3200),
        video=True,
        fusion=fusion,
        fusion_layers=1,
        max_images=2,
    )


def random_media(rng, B, config, *, num_images, audio_samples, num_frames):
    v = config.vision
    return {
        "images": rng.integers(0, 256, (B, 2, v.image_size, v.image_size, 3), dtype=np.uint8),
        "num_images": np.asarray(num_images, np.int32),
        "audio": rng.integers(-8000, 8000, (B, config.audio.max_samples)).astype(np.int16),
        "audio_samples": np.asarray(audio_samples, np.int32),
        "video": rng.integers(0, 256, (B, 4, v.image_size, v.image_size, 3), dtype=np.uint8),
        "num_frames": np.asarray(num_frames, np.int32),
    }


def _clean(media, config):
    """Zero every absent medium's data: a real row never carries data past its counts."""
    media = {k: np.array(v) for k, v in media.items()}
    for b in range(len(media["num_images"])):
        media["images"][b, media["num_images"][b] :] = 0
        media["audio"][b, media["audio_samples"][b] :] = 0
        if media["num_frames"][b] == 0:
            media["video"][b] = 0
    return media


def text_rows(rng, B, L, prefix_len, lengths):
    tokens = rng.integers(3, V, (B, L)).astype(np.int32)
    tokens[:, 0] = 2
    mask = (np.arange(L)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return tokens * mask, mask, np.asarray(prefix_len, np.int32)


@pytest.mark.parametrize("fusion", ["prefix", "cross"])
def test_row_is_independent_of_its_batch_neighbours(fusion):
    """A row's logits do not depend on the other rows' media or on absent slots' data."""
    config = small_config(fusion)
    rng = np.random.default_rng(0)
    B, L = 3, 8
    media = _clean(
        random_media(
            rng, B, config, num_images=[1, 2, 0], audio_samples=[0, 3200, 1700],
            num_frames=[4, 0, 0],
        ),
        config,
    )  # fmt: skip
    tokens, mask, prefix = text_rows(rng, B, L, [3, 2, 4], [6, 8, 5])
    model = MultimodalModel(config)
    params = model.init(jax.random.key(0), tokens, mask, prefix, media)["params"]
    full = model.apply({"params": params}, tokens, mask, prefix, media)
    for b in range(B):
        one = {k: v[b : b + 1] for k, v in media.items()}
        alone = model.apply({"params": params}, tokens[b : b + 1], mask[b : b + 1],
                            prefix[b : b + 1], one)  # fmt: skip
        n = mask[b].sum()
        np.testing.assert_allclose(full[b, :n], alone[0, :n], atol=2e-5, rtol=1e-5)
    # The media matter: another picture changes the image row's logits.
    other = dict(media)
    other["images"] = np.array(media["images"])
    other["images"][0, 0] = 255 - other["images"][0, 0]
    changed = model.apply({"params": params}, tokens, mask, prefix, other)
    assert np.abs(np.asarray(changed[0] - full[0])).max() > 1e-4
    np.testing.assert_allclose(changed[2], full[2], atol=1e-6)


def test_media_layout_counts_real_tokens():
    config = small_config()
    P = config.vision.image_tokens + 2
    A = config.audio.audio_tokens + 2
    Vt = config.vision.video_tokens + 2
    assert media_columns(config) == 2 * P + A + Vt
    media = {
        "num_images": jnp.asarray([2, 0]),
        "audio_samples": jnp.asarray([0, 1600]),  # 10 frames -> 5 tokens
        "num_frames": jnp.asarray([4, 0]),
    }
    layout = media_layout(config, media)
    valid = np.asarray(layout.valid_BM)
    assert valid[0].sum() == 2 * P + Vt
    assert valid[1].sum() == 5 + 2
    assert layout.modality_M.tolist().count(2) == A


@pytest.mark.parametrize(("fusion", "video_mode"), [("prefix", "frames"), ("cross", "tubelets")])
def test_cached_greedy_answers_equal_full_recomputation(fusion, video_mode):
    """`answer` (prefill + cached steps through the shared decoding loop) picks the same
    tokens as re-running the whole model on the growing text at every step."""
    config = small_config(fusion, video_mode)
    rng = np.random.default_rng(1)
    B, Lp, N = 3, 5, 6
    media = _clean(
        random_media(
            rng, B, config, num_images=[1, 0, 2], audio_samples=[3000, 0, 800],
            num_frames=[0, 4, 4],
        ),
        config,
    )  # fmt: skip
    prompts, pmask, _ = text_rows(rng, B, Lp, [0, 0, 0], [3, 5, 1])
    model = MultimodalModel(config)
    params = nn.unbox(model.init(jax.random.key(1), prompts, pmask, pmask.sum(1), media)["params"])
    # Scale the output so that greedy choices are far from ties.
    params["logits_dense"]["kernel"] = params["logits_dense"]["kernel"] * 20.0
    got = np.asarray(jax.jit(lambda p, m, t, k: answer(model, p, m, t, k, max_new_tokens=N))(
        params, media, prompts, pmask))  # fmt: skip
    # The reference: the whole model on the growing text, padded to one width (one program).
    full = jax.jit(lambda p, ids, mask, prefix, m: model.apply({"params": p}, ids, mask, prefix, m))
    W = Lp + N
    for b in range(B):
        n = int(pmask[b].sum())
        seq = list(prompts[b, :n])
        one = {k: v[b : b + 1] for k, v in media.items()}
        for i in range(N):
            ids = np.zeros((1, W), np.int32)
            ids[0, : len(seq)] = seq
            mask = (np.arange(W) < len(seq)).astype(np.int32)[None]
            logits = full(params, ids, mask, np.asarray([n], np.int32), one)
            nxt = int(np.argmax(logits[0, len(seq) - 1]))
            assert got[b, i] == nxt, (b, i, got[b], seq)
            if nxt == config.text.eos_id:
                break
            seq.append(nxt)


@pytest.mark.parametrize("fusion", ["prefix", "cross"])
def test_answers_over_the_decoding_layout_equal_the_plain_params(fusion):
    """The pipeline answers over its weights laid out for decoding (joined q/k/v in the
    text decoder): the same answers, and the joined kernels are what decoding reads."""
    from transformer_jax.nn.attention import FUSED_QKV
    from transformer_jax.tasks.multimodal.pipeline import _decoding_params

    config = small_config(fusion)
    rng = np.random.default_rng(2)
    B, Lp, N = 2, 5, 6
    media = _clean(
        random_media(
            rng, B, config, num_images=[2, 1], audio_samples=[0, 3200], num_frames=[4, 0]
        ),
        config,
    )  # fmt: skip
    prompts, pmask, _ = text_rows(rng, B, Lp, [0, 0], [4, 2])
    model = MultimodalModel(config)
    params = model.init(jax.random.key(2), prompts, pmask, pmask.sum(1), media)["params"]
    params = jax.tree.map(lambda x: x * 3.0, nn.unbox(params))  # decisive greedy choices
    laid = _decoding_params(params, config)
    joined = [p for p, _ in jax.tree_util.tree_leaves_with_path(laid) if FUSED_QKV in str(p)]
    assert joined and {p[0].key for p in joined} == {"decoder"}
    run = jax.jit(lambda p, m, t, k: answer(model, p, m, t, k, max_new_tokens=N))
    plain = np.asarray(run(params, media, prompts, pmask))
    np.testing.assert_array_equal(np.asarray(run(laid, media, prompts, pmask)), plain)
    spoiled = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 0 if FUSED_QKV in str(p) else x, laid
    )
    assert not np.array_equal(np.asarray(run(spoiled, media, prompts, pmask)), plain)


def test_loss_weights_cover_the_answer_and_eos_only():
    tokens = np.asarray([[2, 7, 8, 9, 10, 1, 0, 0]], np.int32)
    mask = (tokens != 0).astype(np.int32)
    mask[0, 0] = 1
    batch = {"tokens": tokens, "text_mask": mask, "prefix_len": np.asarray([3], np.int32)}
    targets, weights = answer_targets(batch)
    # [bos] 7 8 | answer 9 10 eos: columns 2, 3, 4 predict 9, 10, eos.
    np.testing.assert_array_equal(np.asarray(weights[0]), [0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(targets[0, 2:5]), [9, 10, 1])


def test_model_config_json_round_trip_and_errors():
    from transformer_jax.config import ConfigError

    cfg = mm_base()
    cfg.media = "image,video"
    tok = type("T", (), {"vocab_size": 100})()
    config = model_config(cfg, tok)
    assert config.audio is None and config.video and config.modalities == ("image", "video")
    assert from_json(to_json(config)) == config
    cfg.media = "image,smell"
    with pytest.raises(ConfigError, match="media"):
        model_config(cfg, tok)
    cfg.media = "image"
    cfg.image.patch_size = 7
    with pytest.raises(ConfigError, match="patch_size"):
        model_config(cfg, tok)


def test_text_only_rows_train_without_media():
    """A row without any medium (text-only examples) gives finite logits and loss."""
    config = dataclasses.replace(small_config("cross"))
    rng = np.random.default_rng(2)
    media = _clean(
        random_media(rng, 2, config, num_images=[0, 0], audio_samples=[0, 0], num_frames=[0, 0]),
        config,
    )
    tokens, mask, prefix = text_rows(rng, 2, 6, [1, 1], [6, 4])
    model = MultimodalModel(config)
    params = model.init(jax.random.key(0), tokens, mask, prefix, media)["params"]
    logits = model.apply({"params": params}, tokens, mask, prefix, media)
    assert np.isfinite(np.asarray(logits)).all()


def test_compacted_rows_compute_the_same_as_full_rows():
    """`max_tokens`: real tokens moved to the front of a shorter row give the same logits."""
    config = small_config("prefix")
    rng = np.random.default_rng(3)
    media = _clean(
        random_media(rng, 3, config, num_images=[1, 0, 0], audio_samples=[0, 3200, 0],
                     num_frames=[0, 0, 4]),
        config,
    )  # fmt: skip
    tokens, mask, prefix = text_rows(rng, 3, 8, [3, 2, 4], [6, 8, 5])
    real = np.asarray(media_layout(config, media).valid_BM).sum(1) + mask.sum(1)
    model = MultimodalModel(config)
    params = model.init(jax.random.key(0), tokens, mask, prefix, media)["params"]
    full = model.apply({"params": params}, tokens, mask, prefix, media)
    short = MultimodalModel(dataclasses.replace(config, max_tokens=int(real.max())))
    got = short.apply({"params": params}, tokens, mask, prefix, media)
    assert int(real.max()) < media_columns(config) + 8
    for b in range(3):
        n = mask[b].sum()
        np.testing.assert_allclose(got[b, :n], full[b, :n], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["mean", "concat"])
def test_pooled_tokens_follow_their_blocks(mode):
    """Token (f, r, c) of a frame's g x g grid merges patches (2r + i, 2c + j) of frame f:
    their mean, or their vectors joined in the order (0, 0), (0, 1), (1, 0), (1, 1)."""
    from transformer_jax.tasks.multimodal.model import _pool

    rng = np.random.default_rng(5)
    frames, grid, D = 2, 4, 3
    x = rng.normal(size=(2, frames * grid * grid, D)).astype(np.float32)
    out = np.asarray(_pool(jnp.asarray(x), grid, 2, mode))
    assert out.shape == (2, frames * 4, D if mode == "mean" else 4 * D)
    for f in range(frames):
        for r in range(2):
            for c in range(2):
                parts = [
                    x[:, f * grid * grid + (2 * r + i) * grid + 2 * c + j]
                    for i in (0, 1)
                    for j in (0, 1)
                ]
                want = np.mean(parts, 0) if mode == "mean" else np.concatenate(parts, -1)
                np.testing.assert_allclose(out[:, f * 4 + r * 2 + c], want, rtol=1e-6, atol=1e-6)


def test_unknown_pool_mode_is_refused():
    with pytest.raises(ValueError, match="pool_mode"):
        VisionConfig(stack=encoder_stack(d_model=16, num_heads=2, d_ff=32), pool_mode="max")


@pytest.mark.parametrize("fusion", ["prefix", "cross"])
def test_flop_count_pays_for_the_vocabulary_on_text_columns_only(fusion):
    """The model projects only the text columns onto the vocabulary, so a larger
    vocabulary adds 2 D per text column and nothing for the media columns."""
    from transformer_jax.tasks.multimodal.config import mm_base
    from transformer_jax.tasks.multimodal.task import MultimodalTask

    task = MultimodalTask(mm_base())
    B, L, extra = 3, 7, 1000
    batch = {"tokens": np.ones((B, L), np.int32), "text_mask": np.ones((B, L), np.int32)}
    counts = []
    for vocab in (V, V + extra):
        config = small_config(fusion)
        config = dataclasses.replace(config, text=config.text.replace(vocab_size=vocab))
        counts.append(float(task.batch_counts(batch, config)[1]))
    D = config.text.d_model
    assert counts[1] - counts[0] == pytest.approx(3 * B * L * 2 * D * extra)
