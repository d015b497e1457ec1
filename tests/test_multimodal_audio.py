"""Whisper log-mel front end, AudioEncoder and the Hugging Face Whisper encoder import."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax.tasks.multimodal.audio import AudioEncoder, log_mel, mel_filters, sinusoids
from transformer_jax.tasks.multimodal.hf_whisper import import_whisper_encoder
from transformer_jax.tasks.multimodal.media_config import AudioConfig, encoder_stack

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SR = 16_000


def _wave(kind: str, n: int, seed: int = 0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(n) / SR
    if kind == "noise":
        w = np.random.default_rng(seed).standard_normal(n) * 0.2
    elif kind == "sweep":  # 200 Hz -> ~6 kHz chirp
        w = np.sin(2 * np.pi * (200 + 3000 * t) * t)
    elif kind == "tone":
        w = np.sin(2 * np.pi * 440.0 * t)
    else:
        raise ValueError(kind)
    return (amp * w).astype(np.float32)


def _hf_features(wave: np.ndarray, max_length: int | None = None) -> np.ndarray:
    """WhisperFeatureExtractor's features [F, 80] of one waveform: unpadded ("longest" with
    one waveform pads nothing), or zero-padded to `max_length` samples."""
    fe = transformers.WhisperFeatureExtractor(feature_size=80)
    kw = dict(padding="longest") if max_length is None else dict(max_length=max_length)
    out = fe(wave, sampling_rate=SR, return_tensors="np", **kw)["input_features"]
    return out[0].T


def test_mel_filters_match_transformers():
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=80,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SR,
        norm="slaney",
        mel_scale="slaney",
    )
    np.testing.assert_allclose(mel_filters(80), ref.astype(np.float32), rtol=1e-6, atol=1e-9)
    assert mel_filters(128).shape == (201, 128)


@pytest.mark.parametrize("n", [4000, 12000, 12345, 16000])
@pytest.mark.parametrize("kind", ["noise", "sweep", "tone"])
def test_log_mel_matches_whisper_feature_extractor(kind, n):
    wave = _wave(kind, n, seed=n)
    mel, mask = log_mel(jnp.asarray(wave[None]), jnp.asarray([n], jnp.int32))
    ref = _hf_features(wave)
    assert mel.shape == (1, n // 160, 80) == (1,) + ref.shape
    assert mel.dtype == jnp.float32
    assert bool(mask.all())
    np.testing.assert_allclose(np.asarray(mel[0]), ref, atol=1e-4, rtol=0)


def test_log_mel_batch_rows_equal_each_row_alone():
    S = 12000
    lengths = [12000, 4000, 7777, 0]
    # A loud row next to quiet ones: the clamp is per row, over the row's own frames.
    waves = [_wave("noise", 12000, 1), _wave("sweep", 4000, amp=1e-5), _wave("noise", 7777, 2)]
    batch = np.zeros((len(lengths), S), np.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    fn = jax.jit(log_mel)
    mel, mask = fn(jnp.asarray(batch), jnp.asarray(lengths, jnp.int32))
    assert mel.shape == (4, 75, 80) and mask.shape == (4, 75)
    np.testing.assert_array_equal(
        np.asarray(mask), np.arange(75)[None, :] < (np.asarray(lengths) // 160)[:, None]
    )
    assert np.isfinite(np.asarray(mel)).all()
    for i, n in enumerate(lengths):
        alone, alone_mask = fn(jnp.asarray(batch[i : i + 1]), jnp.asarray([n], jnp.int32))
        np.testing.assert_allclose(np.asarray(mel[i]), np.asarray(alone[0]), atol=1e-6, rtol=0)
        np.testing.assert_array_equal(np.asarray(mask[i]), np.asarray(alone_mask[0]))
        if n:  # = transformers on the same zero-padded row (its max lies in the valid frames)
            ref = _hf_features(waves[i], max_length=S)
            valid = n // 160
            np.testing.assert_allclose(np.asarray(mel[i, :valid]), ref[:valid], atol=1e-4, rtol=0)
    # The quiet row clamps at its own maximum, not the loud row's.
    quiet = np.asarray(mel[1, :25])
    assert quiet.max() - quiet.min() <= 2.0 + 1e-6
    assert quiet.max() < np.asarray(mel[0]).max() - 1.0
    # Shorter than one hop: no frames.
    empty, empty_mask = log_mel(jnp.ones((2, 100)), jnp.asarray([100, 0], jnp.int32))
    assert empty.shape == (2, 0, 80) and empty_mask.shape == (2, 0)


def _audio_config(layers: int = 2, max_positions: int = 64) -> AudioConfig:
    stack = encoder_stack(
        d_model=32, num_heads=4, d_ff=64, num_encoder_layers=layers, layer_norm_eps=1e-5
    )
    return AudioConfig(stack=stack, max_samples=max_positions * 320, max_positions=max_positions)


def test_audio_encoder_shapes_mask_and_padding():
    cfg = _audio_config()
    F = 75  # odd: 38 tokens, the last one from frame 74 alone
    rng = np.random.default_rng(0)
    mel = jnp.asarray(rng.standard_normal((2, F, 80)), jnp.float32)
    frames = jnp.asarray([75, 30])
    frame_mask = jnp.arange(F)[None, :] < frames[:, None]
    model = AudioEncoder(cfg)
    params = model.init(jax.random.key(0), mel, frame_mask)["params"]
    assert set(params) == {"conv1", "conv2", "positions", "encoder"}
    assert params["conv1"]["kernel"].shape == (3, 80, 32)
    pos = np.asarray(params["positions"])
    assert pos.shape == (64, 32)
    np.testing.assert_allclose(pos, sinusoids(64, 32))
    from transformers.models.whisper.modeling_whisper import sinusoids as hf_sinusoids

    np.testing.assert_allclose(pos, hf_sinusoids(64, 32).numpy(), atol=1e-5)
    apply = jax.jit(model.apply)
    tokens, mask = apply({"params": params}, mel, frame_mask)
    assert tokens.shape == (2, 38, 32) and mask.shape == (2, 38)
    np.testing.assert_array_equal(np.asarray(mask[1]), np.arange(38) < 15)
    assert bool(mask[0].all())
    # Row 1's valid tokens read frames < 32 only (conv receptive field), and attention
    # never reads its padding tokens: other values past frame 32 change nothing.
    changed = mel.at[1, 32:].set(5.0)
    tokens2, _ = apply({"params": params}, changed, frame_mask)
    np.testing.assert_allclose(np.asarray(tokens2[1, :15]), np.asarray(tokens[1, :15]), atol=1e-6)
    assert not np.allclose(np.asarray(tokens2[1, 15:]), np.asarray(tokens[1, 15:]), atol=1e-3)
    # Each row as if alone.
    alone, _ = apply({"params": params}, mel[1:], frame_mask[1:])
    np.testing.assert_allclose(np.asarray(alone[0, :15]), np.asarray(tokens[1, :15]), atol=1e-5)
    with pytest.raises(ValueError, match="max_positions=64"):
        model.apply({"params": params}, jnp.zeros((1, 130, 80)), jnp.ones((1, 130), bool))


def _hf_config(**kw):
    values = dict(
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        num_mel_bins=80,
        max_source_positions=64,
        max_target_positions=32,
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    values.update(kw)
    return transformers.WhisperConfig(**values)


def _save(model, path) -> str:
    model.eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return str(path)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """A small random WhisperModel (encoder + decoder) saved as safetensors, and its encoder."""
    torch.manual_seed(0)
    model = transformers.WhisperModel(_hf_config()).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters and biases
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return _save(model, tmp_path_factory.mktemp("whisper")), model.encoder


def _hf_encode(encoder, mel_BFM: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(mel_BFM.transpose(0, 2, 1)))
        return encoder(x).last_hidden_state.numpy()


def test_import_whisper_matches_transformers(whisper_dir):
    src, hf_encoder = whisper_dir
    cfg, params = import_whisper_encoder(src)
    s = cfg.stack
    assert (s.d_model, s.num_heads, s.d_ff, s.num_encoder_layers) == (64, 4, 128, 2)
    assert (cfg.n_mels, cfg.max_positions, cfg.max_samples) == (80, 64, 64 * 320)
    assert s.layer_norm_eps == 1e-5 and s.activation == "gelu"
    assert cfg.num_frames == 128 and cfg.audio_tokens == 64
    mel = np.random.default_rng(0).standard_normal((2, 128, 80)).astype(np.float32)
    ours, mask = AudioEncoder(cfg).apply(
        {"params": params}, jnp.asarray(mel), jnp.ones((2, 128), bool)
    )
    assert bool(mask.all())
    np.testing.assert_allclose(np.asarray(ours), _hf_encode(hf_encoder, mel), atol=1e-4, rtol=0)


def test_full_chain_waveform_matches_transformers(whisper_dir):
    src, hf_encoder = whisper_dir
    cfg, params = import_whisper_encoder(src)
    S = cfg.max_samples  # the HF encoder takes exactly 2 * max_source_positions frames
    wave = np.zeros(S, np.float32)
    wave[:15000] = _wave("noise", 15000, 3) + _wave("sweep", 15000)
    mel, frame_mask = log_mel(jnp.asarray(wave[None]), jnp.asarray([S], jnp.int32))
    ours, _ = AudioEncoder(cfg).apply({"params": params}, mel, frame_mask)
    ref_mel = _hf_features(wave, max_length=S)[None]
    np.testing.assert_allclose(np.asarray(mel), ref_mel, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(ours), _hf_encode(hf_encoder, ref_mel), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["conditional_generation", "bare_encoder"])
def test_import_whisper_prefixes(kind, tmp_path):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(1)
    if kind == "bare_encoder":
        model = WhisperEncoder(_hf_config(encoder_layers=1))
        encoder = model
    else:
        model = transformers.WhisperForConditionalGeneration(_hf_config(encoder_layers=1))
        encoder = model.model.encoder
    cfg, params = import_whisper_encoder(_save(model, tmp_path / kind))
    assert cfg.stack.num_encoder_layers == 1
    mel = np.random.default_rng(1).standard_normal((1, 128, 80)).astype(np.float32)
    ours, _ = AudioEncoder(cfg).apply(
        {"params": params}, jnp.asarray(mel), jnp.ones((1, 128), bool)
    )
    np.testing.assert_allclose(np.asarray(ours), _hf_encode(encoder, mel), atol=1e-4, rtol=0)


def test_import_whisper_rejects_unsupported_activation(whisper_dir, tmp_path):
    src, _ = whisper_dir
    for name in os.listdir(src):
        os.symlink(os.path.join(src, name), tmp_path / name)
    with open(os.path.join(src, "config.json")) as f:
        hf = json.load(f)
    hf["activation_function"] = "relu"
    os.unlink(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match="activation_function='relu'") as err:
        import_whisper_encoder(str(tmp_path))
    assert "\n" not in str(err.value)


def test_import_whisper_rejects_a_checkpoint_without_encoder(whisper_dir, tmp_path):
    from safetensors.numpy import save_file

    src, _ = whisper_dir
    os.symlink(os.path.join(src, "config.json"), tmp_path / "config.json")
    save_file({"decoder.w": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="no Whisper encoder"):
        import_whisper_encoder(str(tmp_path))
