"""Embedders: real architectures at random init, loaded from checkpoint files in the released layouts.

No weights are downloaded: each test builds the real network (LAION-CLAP's HTSAT-tiny through
laion_clap's own ``CLAP`` class, EnCodec 24 kHz, a transformers ``ClapModel`` with the real audio
config), writes its random weights to a temporary file in the layout the released checkpoints use,
and loads them back through the embedder.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

from eeg2music.audio import SAMPLE_RATE
from eeg2music.evaluation.embedders import (
    AudioLDM2ClapEmbedder,
    Embedder,
    EncodecEmbedder,
    LaionClapEmbedder,
    MelEnvelopeEmbedder,
    MelStatsEmbedder,
    VAELatentEmbedder,
    embed_audio,
    load_clap_audio_state_dict,
    make_embedders,
    resample,
)

CLIP = int(3.5 * SAMPLE_RATE)


def clips(n: int = 2, seconds: float = 3.5, seed: int = 0) -> np.ndarray:
    """Distinct, music-like test clips at 16 kHz: a few partials with an amplitude envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    out = []
    for i in range(n):
        f0 = 110.0 * 2 ** (i * 5 / 12)
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (1.5 + i) * t) ** 2
        out.append(0.2 * tone * envelope + 0.01 * rng.normal(size=t.size))
    return np.stack(out).astype(np.float32)


# --- the import shims ----------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["torchvision", "torchaudio"])
def test_stand_in_still_needed(module):
    """Fails once the real module imports here: then delete its stand-in from eeg2music/_compat.py and this test."""
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert result.returncode != 0, (
        f"{module} now imports in this environment: remove the {module} stand-in from eeg2music/_compat.py "
        "(import_laion_clap / import_encodec become plain imports) and this test"
    )


def test_stand_ins_fail_loudly_and_leave_no_trace():
    from eeg2music import _compat

    working = [name for name in ("torchvision", "torchaudio") if _compat.real_import_error(name) is None]
    assert not working, f"{working} import here: the stand-ins are dead code; remove them from eeg2music/_compat.py and this test"
    clap = _compat.import_laion_clap()
    encodec = _compat.import_encodec()
    assert "torchvision" not in sys.modules and "torchaudio" not in sys.modules
    placeholder = clap.data.torchvision.transforms.Resize  # what laion_clap bound at import time
    with pytest.raises(_compat.MissingDependencyError, match="torchvision.transforms.Resize"):
        placeholder(size=[2, 2])
    with pytest.raises(_compat.MissingDependencyError, match="torchaudio"):
        sys.modules["encodec.utils"].torchaudio.functional.resample(torch.zeros(4), 1, 2)
    assert encodec.EncodecModel is not None


# --- LAION-CLAP ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def laion_clap_checkpoint(tmp_path_factory):
    """laion_clap's own CLAP (HTSAT-tiny audio tower, as 630k-audioset-best.pt) at random init, saved the
    way LAION's training script saves it; the text tower is shrunk (it is not loaded by the embedder)."""
    from eeg2music._compat import import_laion_clap

    clap = import_laion_clap()
    config = copy.deepcopy(clap.factory._MODEL_CONFIGS["HTSAT-tiny"])
    config["text_cfg"].update(model_type="transformer", width=32, heads=2, layers=1)
    torch.manual_seed(0)
    model = clap.model.CLAP(**config).eval()
    path = tmp_path_factory.mktemp("clap") / "630k-audioset-best.pt"
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 45, "name": "random-init", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path, model, config


def test_laion_clap_loads_audio_tower_and_matches_the_library(laion_clap_checkpoint):
    path, reference, config = laion_clap_checkpoint
    embedder = LaionClapEmbedder(path)
    assert embedder._model is None  # construction does not build the network
    waves = clips(2)
    out = embedder.embed(waves)
    assert out.shape == (2, 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert embedder.amodel_resolved == "HTSAT-tiny"
    # the library's own path (CLAP_Module.get_audio_embedding_from_data without the hub) on the same audio
    from eeg2music._compat import import_laion_clap

    clap = import_laion_clap()
    audio48k = resample(waves, SAMPLE_RATE, 48_000)
    quantized = clap.data.int16_to_float32(clap.data.float32_to_int16(audio48k))
    features = [clap.data.get_audio_features({}, torch.from_numpy(x), 480_000, data_truncating="rand_trunc",
                                             data_filling="repeatpad", audio_cfg=config["audio_cfg"]) for x in quantized]
    with torch.no_grad():
        expected = reference.get_audio_embedding(features).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert not np.allclose(out[0], out[1])


def test_laion_clap_rejects_bad_checkpoints(tmp_path, laion_clap_checkpoint):
    with pytest.raises(FileNotFoundError, match="clap_checkpoint"):
        LaionClapEmbedder(tmp_path / "missing.pt")
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1e-4)}, pickled)
    with pytest.raises(ValueError, match="weights_only"):
        load_clap_audio_state_dict(pickled)
    text_only = tmp_path / "text_only.pt"
    torch.save({"state_dict": {"module.text_branch.weight": torch.zeros(2)}}, text_only)
    with pytest.raises(ValueError, match="no LAION-CLAP audio branch"):
        load_clap_audio_state_dict(text_only)
    # a tensor of the wrong shape: named in the error, nothing half-loaded
    path, _, _ = laion_clap_checkpoint
    state = torch.load(path, weights_only=True)
    state["state_dict"]["module.audio_projection.2.bias"] = torch.zeros(7)
    reshaped = tmp_path / "reshaped.pt"
    torch.save(state, reshaped)
    with pytest.raises(ValueError, match=r"does not fit LAION-CLAP HTSAT-tiny.*1 of another shape.*audio_projection.2.bias"):
        LaionClapEmbedder(reshaped).model


# --- EnCodec --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encodec_model():
    from eeg2music._compat import import_encodec

    torch.manual_seed(0)
    return import_encodec().EncodecModel.encodec_model_24khz(pretrained=False)


def test_encodec_from_released_layout(tmp_path, encodec_model):
    released = tmp_path / "encodec_24khz-d7cc33bc.th"
    torch.save(encodec_model.state_dict(), released)  # the released file is a bare state dict
    converted = tmp_path / "encodec_24khz.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in encodec_model.state_dict().items()}, str(converted))
    waves = clips(2, seconds=1.0)  # the encoder's cost grows with length; shapes and values are what we test
    embedder = EncodecEmbedder(released)
    frames = embedder.embed_frames(waves)
    assert frames.shape == (2, 75, 128)  # 75 frames/s
    with torch.no_grad():
        direct = encodec_model.encoder(torch.from_numpy(resample(waves, SAMPLE_RATE, 24_000))[:, None])
    np.testing.assert_allclose(frames, direct.transpose(1, 2).numpy(), atol=1e-5)
    pooled = EncodecEmbedder(converted).embed(waves)
    assert pooled.shape == (2, 128)
    np.testing.assert_allclose(pooled, frames.mean(axis=1), atol=1e-6)


def test_encodec_rejects_foreign_weights(tmp_path):
    path = tmp_path / "other.th"
    torch.save({"encoder.model.0.conv.conv.bias": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="does not fit EnCodec 24 kHz"):
        EncodecEmbedder(path).model


# --- AudioLDM2's CLAP ----------------------------------------------------------------------------
def test_audioldm2_clap_from_folder(tmp_path):
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapTextConfig,
    )

    torch.manual_seed(0)
    text = ClapTextConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=37, max_position_embeddings=40)
    config = ClapConfig(text_config=text.to_dict(), audio_config=ClapAudioConfig().to_dict())  # the real audio tower
    model = ClapModel(config).eval()
    model.save_pretrained(tmp_path / "text_encoder")
    extractor = ClapFeatureExtractor(frequency_min=50, truncation="rand_trunc")  # laion/clap-htsat-unfused's
    extractor.save_pretrained(tmp_path / "feature_extractor")
    embedder = AudioLDM2ClapEmbedder(tmp_path)
    waves = clips(2)
    out = embedder.embed(waves)
    assert out.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    features = extractor(list(resample(waves, SAMPLE_RATE, 48_000)), sampling_rate=48_000, return_tensors="pt")
    with torch.no_grad():
        expected = model.get_audio_features(**features)
    expected = getattr(expected, "pooler_output", expected)
    np.testing.assert_allclose(out, torch.nn.functional.normalize(expected, dim=-1).numpy(), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="audioldm2_dir"):
        AudioLDM2ClapEmbedder(tmp_path / "text_encoder")


# --- the offline set ------------------------------------------------------------------------------
def test_mel_stats_are_interpretable():
    embedder = MelStatsEmbedder()
    t = np.arange(CLIP) / SAMPLE_RATE
    tone_a4 = 0.3 * np.sin(2 * np.pi * 440.0 * t)
    clicks = np.zeros(CLIP)
    clicks[(np.arange(0, 3.5, 0.5) * SAMPLE_RATE).astype(int)] = 1.0  # 120 BPM
    clicks = np.convolve(clicks, np.hanning(64), mode="same")
    silence = np.zeros(CLIP)
    out = embedder.embed(np.stack([tone_a4, clicks, silence]))
    assert out.shape == (3, embedder.dim) == (3, len(embedder.feature_names)) and np.all(np.isfinite(out))
    feature = dict(zip(embedder.feature_names, out[0]))
    chroma = {name: value for name, value in feature.items() if name.startswith("chroma_mean_")}
    assert max(chroma, key=chroma.get) == "chroma_mean_A"
    assert feature["centroid_mean"] == pytest.approx(440.0, rel=0.1)
    assert dict(zip(embedder.feature_names, out[1]))["tempo_bpm"] == pytest.approx(120.0, rel=0.05)
    # the same clips at 44.1 kHz give (nearly) the same statistics: input is resampled to 16 kHz
    at_44k = resample(np.stack([tone_a4, clicks]), SAMPLE_RATE, 44_100)
    np.testing.assert_allclose(embedder.embed(at_44k, sample_rate=44_100)[0, :128], out[0, :128], atol=0.05)


@pytest.fixture(scope="module")
def tiny_backbone():
    """The project's tiny backbone (eeg2music.models.backbone), untrained: its VAE gives (8, 88, 16) latents."""
    from eeg2music.models.tiny_backbone import build_tiny_backbone

    return build_tiny_backbone(seed=0)


def test_vae_latent_embedder(tiny_backbone):
    backbone = tiny_backbone
    embedder = VAELatentEmbedder(backbone)
    waves = clips(3)
    frames = embedder.embed_frames(waves)
    assert frames.shape == (3, 88, 128)
    pooled = embedder.embed(waves)
    with torch.no_grad():
        latents = backbone.encode(backbone.wave_to_mel(torch.from_numpy(waves)))
    np.testing.assert_allclose(pooled, latents.mean(dim=2).reshape(3, 128).numpy(), atol=1e-5)
    with pytest.raises(TypeError, match="backbone"):
        VAELatentEmbedder(object())


# --- the set and batching ---------------------------------------------------------------------------
def test_make_embedders_offline_default_and_paths(tmp_path, laion_clap_checkpoint, tiny_backbone):
    offline = make_embedders()
    assert [e.name for e in offline] == ["mel-stats", "mel-envelope"]
    with_backbone = make_embedders(backbone=tiny_backbone)
    assert [e.name for e in with_backbone] == ["mel-stats", "mel-envelope", "vae-latent"]
    assert all(isinstance(e, Embedder) for e in with_backbone)
    assert all("clap" not in e.name and "encodec" not in e.name for e in with_backbone)
    path, _, _ = laion_clap_checkpoint
    real = make_embedders(clap_checkpoint=path, backbone=tiny_backbone)
    assert [e.name for e in real] == ["laion-clap", "mel-envelope"] and real[0]._model is None
    with pytest.raises(FileNotFoundError, match="encodec_weights"):
        make_embedders(encodec_weights=tmp_path / "missing.th")


def test_embed_audio_batches_like_one_call():
    embedder = MelStatsEmbedder()
    waves = clips(5)
    np.testing.assert_allclose(embed_audio(embedder, waves, batch_size=2, progress=False),
                               embedder.embed(waves), rtol=1e-5)
    with pytest.raises(ValueError, match="embed_frames"):
        embed_audio(embedder, waves, frames=True, progress=False)
    with pytest.raises(ValueError, match="shape"):
        embedder.embed(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        embedder.embed(np.full((1, CLIP), np.nan))


def test_mel_envelope_is_the_band_time_course_without_the_clip_mean():
    rng = np.random.default_rng(0)
    sr, n = 16000, 56000
    t = np.arange(n) / sr
    # a 1 kHz tone gated on for the second half only, and the same tone with its gate moved: same timbre,
    # different time course
    tone = np.sin(2 * np.pi * 1000 * t)
    early, late = tone * (t < 1.75), tone * (t >= 1.75)
    noise = 1e-3 * rng.standard_normal((2, n))
    embedder = MelEnvelopeEmbedder()
    assert embedder.dim == 35 * 8 and len(embedder.feature_names) == embedder.dim
    out = embedder.embed(np.stack([early, late]) + noise, sr)
    assert out.shape == (2, 280) and out.dtype == np.float32
    envelope = out.reshape(2, 35, 8)
    np.testing.assert_allclose(envelope.mean(axis=1), 0, atol=1e-4)  # each band's clip mean removed
    band = int(np.argmax(np.abs(envelope[0]).sum(axis=0)))  # the band group holding 1 kHz
    assert envelope[0, :15, band].min() > 0 > envelope[0, 20:, band].max()  # loud early, quiet late
    assert envelope[1, :15, band].max() < 0 < envelope[1, 20:, band].min()
    # a louder copy has the same envelope (peak normalisation; the log turns gain into an offset)
    np.testing.assert_allclose(embedder.embed(4 * (late + noise[1])[None], sr)[0], out[1], atol=1e-3)
    with pytest.raises(ValueError, match="shorter"):
        embedder.embed(tone[None, : sr], sr)
    with pytest.raises(ValueError, match="band_groups"):
        MelEnvelopeEmbedder(band_groups=7)
