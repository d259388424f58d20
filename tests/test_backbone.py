"""The backbone (eeg2music.models.backbone): the real AudioLDM2-music configuration on the meta device, the
loading path of a diffusers AudioLDM2 folder (a tiny one written here with save_pretrained, offline),
the tiny backbone's save/load, shapes, constant conditioning, a training smoke run and the metrics."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eeg2music.audio import CLIP_SAMPLES, HOP_LENGTH, SAMPLE_RATE
from eeg2music.data.song_audio import SongSplit, audio_fingerprint
from eeg2music.evaluation.backbone_quality import (
    evaluate_backbone,
    latent_statistics,
    mel_level_db,
    mel_statistics,
    rms_dbfs,
)
from eeg2music.evaluation.metrics import frechet_distance
from eeg2music.models.backbone import (
    BACKBONE_MARKER,
    SHIPPED_BACKBONE_DIR,
    TRAINING_FILE,
    Backbone,
    audioldm2_scheduler_config,
    build_audioldm2_music_on_meta,
    diffusion_target,
    encode_constant_prompt,
    load_backbone,
    min_snr_weight,
    tiny_scheduler_config,
)
from eeg2music.models.tiny_backbone import (
    TinyTrainingSettings,
    build_tiny_backbone,
    install_shipped_backbone,
    prepare_backbone_folder,
    tiny_backbone_config,
    tiny_conditioning,
    train_tiny_backbone,
)

# --------------------------------------------------------------------------------------------------
# A tiny AudioLDM2Pipeline in the real diffusers layout (every component, tokenizers built offline)
# --------------------------------------------------------------------------------------------------

GPT2_WIDTH, T5_WIDTH = 16, 32


def tiny_audioldm2_pipeline():
    from diffusers import (
        AudioLDM2Pipeline,
        AudioLDM2ProjectionModel,
        AudioLDM2UNet2DConditionModel,
        AutoencoderKL,
        DDIMScheduler,
    )
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapTextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        RobertaTokenizer,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
        T5Config,
        T5EncoderModel,
        T5Tokenizer,
    )

    torch.manual_seed(0)
    letters = list("abcdefghijklmnopqrstuvwxyz ")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for token in letters + ["Ġ" + c for c in letters]:
        vocab.setdefault(token, len(vocab))
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[], model_max_length=16)
    t5_vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + c, -1.0) for c in letters] + [
        (c, -2.0) for c in letters
    ]
    tokenizer_2 = T5Tokenizer(vocab=t5_vocab, extra_ids=0, model_max_length=16)
    clap = ClapModel(ClapConfig(
        text_config=ClapTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=24, num_attention_heads=2,
                                   num_hidden_layers=1, projection_dim=8, pad_token_id=1, bos_token_id=0,
                                   eos_token_id=2, max_position_embeddings=40),
        audio_config=ClapAudioConfig(spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=24, depths=[1, 1],
                                     num_attention_heads=[2, 2], num_hidden_layers=2, hidden_size=32, projection_dim=8,
                                     patch_size=2, patch_stride=2, patch_embed_input_channels=4),
        projection_dim=8,
    ))
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_vocab), d_model=T5_WIDTH, d_ff=24, d_kv=8, num_heads=2,
                                 num_layers=1))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=GPT2_WIDTH, n_head=2, n_layer=1, vocab_size=32, n_positions=64))
    gpt2.config.max_new_tokens = 8
    projection = AudioLDM2ProjectionModel(text_encoder_dim=8, text_encoder_1_dim=T5_WIDTH, langauge_model_dim=GPT2_WIDTH)
    unet = AudioLDM2UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=8, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=[[None, GPT2_WIDTH, T5_WIDTH]] * 2, attention_head_dim=2, norm_num_groups=8,
    )
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=8, block_out_channels=(8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=4, mid_block_add_attention=False, scaling_factor=0.5)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=64, sampling_rate=SAMPLE_RATE, upsample_initial_channel=32, upsample_rates=[5, 4, 4, 2],
        upsample_kernel_sizes=[10, 8, 8, 4], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        normalize_before=False,
    ))
    return AudioLDM2Pipeline(
        vae=vae, text_encoder=clap, text_encoder_2=t5, projection_model=projection, language_model=gpt2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, feature_extractor=ClapFeatureExtractor(), unet=unet,
        scheduler=DDIMScheduler(**audioldm2_scheduler_config()), vocoder=vocoder,
    )


@pytest.fixture(scope="module")
def audioldm2_folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audioldm2") / "audioldm2-music-tiny"
    tiny_audioldm2_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Backbone:
    return build_tiny_backbone(seed=3, size="smoke")


def synthetic_songs(seconds: float = 12.0) -> dict[int, np.ndarray]:
    """Two "songs": different pitches and tempi of plucked tones (float32, 16 kHz)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    songs = {}
    for song, (pitch, bpm) in {21: (220.0, 90.0), 22: (330.0, 140.0)}.items():
        phase = (t * bpm / 60.0) % 1.0
        songs[song] = (0.3 * np.sin(2 * np.pi * pitch * t) * np.exp(-6 * phase)).astype(np.float32)
    return songs


# --------------------------------------------------------------------------------------------------
# The real configuration, without weights
# --------------------------------------------------------------------------------------------------


def test_audioldm2_music_configuration_on_meta():
    real = build_audioldm2_music_on_meta()
    assert real.kind == "audioldm2" and real.unet.device.type == "meta" and real.vae.device.type == "meta"
    assert tuple(real.unet.config.block_out_channels) == (128, 256, 384, 640)
    assert real.latent_shape == (8, 88, 16) and real.vae_scale_factor == 4
    # the published UNet has ~350 M parameters (AudioLDM2 base / music)
    assert 340e6 < real.parameter_counts()["unet"] < 355e6
    assert int(np.prod(real.vocoder.config.upsample_rates)) == HOP_LENGTH
    assert real.vocoder.config.model_in_dim == 64
    with torch.device("meta"):
        mel = torch.zeros(2, 1, 352, 64)
    latents = real.vae.encode(mel).latent_dist.mean
    assert latents.shape == (2, 8, 88, 16)
    out = real.unet(latents, 10, **real.unet_conditioning(2)).sample
    assert out.shape == (2, 8, 88, 16)
    assert real.unet_conditioning(2)["encoder_hidden_states"].shape == (2, 8, 768)
    assert real.unet_conditioning(2)["encoder_hidden_states_1"].shape == (2, 1, 1024)
    with pytest.raises(ValueError, match="meta"):
        real.save("/nonexistent/never-written")


# --------------------------------------------------------------------------------------------------
# Loading: errors, the AudioLDM2 folder, the saved backbone
# --------------------------------------------------------------------------------------------------


def test_missing_folder_says_what_to_download_and_where(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_backbone(tmp_path / "audioldm2-music")
    message = str(error.value)
    assert "cvssp/audioldm2-music" in message and "model_index.json" in message and "audioldm2-music" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="backbone.json"):
        load_backbone(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        load_backbone(tmp_path / "file")


def test_audioldm2_folder_loads_offline_and_caches_the_constant_conditioning(audioldm2_folder, tmp_path, monkeypatch):
    from diffusers import AudioLDM2Pipeline

    cache = tmp_path / "cache"
    real = load_backbone(audioldm2_folder, conditioning_cache=cache)
    assert real.kind == "audioldm2" and real.vocoder is not None and real.latent_shape == (8, 88, 16)
    assert set(real.conditioning) == {"encoder_hidden_states", "encoder_hidden_states_1", "encoder_attention_mask_1"}
    assert real.conditioning["encoder_hidden_states"].shape == (1, 8, GPT2_WIDTH)
    assert real.conditioning["encoder_hidden_states_1"].shape[-1] == T5_WIDTH
    cached = list(cache.glob("*.safetensors"))
    assert len(cached) == 1

    # the cache holds exactly what the pipeline's own text stack gives for the empty prompt
    pipeline = AudioLDM2Pipeline.from_pretrained(audioldm2_folder, local_files_only=True)
    expected = encode_constant_prompt(pipeline, "")
    for name, tensor in expected.items():
        torch.testing.assert_close(real.conditioning[name], tensor)

    # a second load never runs the text stack
    def refuse(*args, **kwargs):
        raise AssertionError("the text encoders ran although the conditioning is cached")

    monkeypatch.setattr(AudioLDM2Pipeline, "from_pretrained", refuse)
    again = load_backbone(audioldm2_folder, conditioning_cache=cache)
    for name in expected:
        torch.testing.assert_close(again.conditioning[name], real.conditioning[name])
    # a different prompt is a different cache entry (and would need the text stack)
    with pytest.raises(AssertionError, match="text encoders ran"):
        load_backbone(audioldm2_folder, conditioning_cache=cache, prompt="a song")

    # the whole chain runs with the HiFi-GAN vocoder: noise → UNet (with the conditioning) → VAE → waveform
    latents = torch.randn(2, *real.latent_shape)
    eps = real.unet(latents, 500, **real.unet_conditioning(2)).sample
    assert eps.shape == latents.shape
    wave = real.latents_to_wave(latents)
    assert wave.shape == (2, CLIP_SAMPLES) and torch.isfinite(wave).all()


def test_audioldm2_backbone_saves_without_its_text_stack(audioldm2_folder, tmp_path):
    real = load_backbone(audioldm2_folder, conditioning_cache=tmp_path / "cache")
    saved = real.save(tmp_path / "saved")
    assert (saved / "vocoder").is_dir() and not (saved / "text_encoder").exists()
    again = load_backbone(saved)
    assert again.kind == "audioldm2" and again.vocoder is not None
    mel = torch.randn(1, 1, 352, 64)
    torch.testing.assert_close(again.mel_to_wave(mel), real.mel_to_wave(mel))


def test_not_an_audioldm2_pipeline_is_refused(audioldm2_folder, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(audioldm2_folder, other)
    index = json.loads((other / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not an AudioLDM2 pipeline"):
        load_backbone(other)


def test_tiny_backbone_round_trip_is_exact_and_safetensors(tiny, tmp_path):
    path = tiny.save(tmp_path / "tiny")
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert "backbone.json" in files and "conditioning.safetensors" in files
    assert "vae/diffusion_pytorch_model.safetensors" in files and "unet/diffusion_pytorch_model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt")) for name in files)
    info = json.loads((path / "backbone.json").read_text())
    assert info["kind"] == "tiny" and info["latent_shape"] == [8, 88, 16]
    loaded = load_backbone(path)
    assert loaded.kind == "tiny" and loaded.vocoder is None
    for name in ("vae", "unet"):
        ours, theirs = getattr(tiny, name).state_dict(), getattr(loaded, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(tiny.scheduler.config)
    torch.testing.assert_close(loaded.conditioning, tiny.conditioning)
    # saving over an existing folder replaces it atomically; an interrupted folder is refused
    tiny.save(path)
    (path / "backbone.json").unlink()
    with pytest.raises(FileNotFoundError, match="interrupted"):
        load_backbone(path)


def test_tiny_backbone_shapes_from_waveform_to_waveform(tiny):
    waves = torch.from_numpy(np.stack([synthetic_songs()[21][:CLIP_SAMPLES], synthetic_songs()[22][:CLIP_SAMPLES]]))
    mel = tiny.wave_to_mel(waves)
    assert mel.shape == (2, 1, 352, 64)
    latents = tiny.encode(mel)
    assert latents.shape == (2, *tiny.latent_shape) == (2, 8, 88, 16)
    # encode is the posterior mean × scaling factor: deterministic
    torch.testing.assert_close(tiny.encode(mel), latents)
    expected = tiny.vae.encode(mel).latent_dist.mean * tiny.vae.config.scaling_factor
    torch.testing.assert_close(latents, expected)
    decoded = tiny.decode(latents)
    assert decoded.shape == (2, 1, 352, 64)
    wave = tiny.mel_to_wave(decoded)
    assert wave.shape == (2, 56000) and wave.dtype == torch.float32
    assert tiny.latent_shape_for(1.0) == (8, 25, 16)


def test_constant_conditioning_is_cached_with_the_weights_and_expanded_without_copies(tiny, tmp_path):
    conditioning = tiny.unet_conditioning(5)
    tokens = conditioning["encoder_hidden_states"]
    assert tokens.shape == (5, 8, 32) and tokens.stride(0) == 0  # a view of the batch-1 tensor
    torch.testing.assert_close(tokens[3], tiny.conditioning["encoder_hidden_states"][0])
    # fixed seeded tokens: the same seed gives the same conditioning, another seed another one
    torch.testing.assert_close(tiny_conditioning(3)["encoder_hidden_states"], tiny.conditioning["encoder_hidden_states"])
    assert not torch.equal(tiny_conditioning(4)["encoder_hidden_states"], tiny.conditioning["encoder_hidden_states"])
    from safetensors.torch import load_file

    saved = load_file(str(tiny.save(tmp_path / "t") / "conditioning.safetensors"))
    torch.testing.assert_close(saved["encoder_hidden_states"], tiny.conditioning["encoder_hidden_states"])


def test_sampling_is_reproducible_with_a_generator(tiny):
    first = tiny.sample_latents(2, 3, generator=torch.Generator().manual_seed(1), progress=False)
    second = tiny.sample_latents(2, 3, generator=torch.Generator().manual_seed(1), progress=False)
    assert first.shape == (2, 8, 88, 16)
    torch.testing.assert_close(first, second)


# --------------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------------


def test_song_split_holds_out_each_songs_tail():
    songs = synthetic_songs(12.0)
    split = SongSplit.from_audio(songs, holdout_seconds=7.0)
    assert all(len(split.train[s]) == 5 * SAMPLE_RATE for s in songs)
    clips, labels = split.heldout_clips()
    assert clips.shape == (4, CLIP_SAMPLES) and labels.tolist() == [21, 21, 22, 22]
    np.testing.assert_array_equal(clips[0], songs[21][5 * SAMPLE_RATE : 5 * SAMPLE_RATE + CLIP_SAMPLES])
    with pytest.raises(ValueError, match="less than one"):
        SongSplit.from_audio(songs, holdout_seconds=10.0)


def test_frechet_distance_and_mel_statistics():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 3))
    a -= a.mean(0)  # centred: scaling then leaves the mean where it is
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shifted = a + np.array([3.0, 0.0, 4.0])
    assert frechet_distance(a, shifted) == pytest.approx(25.0, rel=1e-6)
    scaled = 2.0 * a  # same mean; Tr(Σ + 4Σ − 2·2Σ) = Tr(Σ)
    assert frechet_distance(a, scaled) == pytest.approx(np.trace(np.cov(a, rowvar=False)), rel=1e-6)
    mel = torch.randn(4, 1, 352, 64)
    features = mel_statistics(mel)
    assert features.shape == (4, 16)
    np.testing.assert_allclose(features[:, 0], mel[:, 0, :350, :8].mean((1, 2)).numpy(), rtol=1e-5, atol=1e-6)


def test_train_tiny_backbone_smoke_writes_a_complete_folder(tmp_path, monkeypatch):
    songs = synthetic_songs(12.0)
    monkeypatch.setattr("eeg2music.models.tiny_backbone.load_song_audio", lambda data_root, songs_=None: songs)
    settings = TinyTrainingSettings.preset("smoke", vae_steps=3, unet_steps=3, steps_per_epoch=2)
    initial = build_tiny_backbone(seed=0, size="smoke")
    path = train_tiny_backbone(tmp_path / "data", tmp_path / "tiny", seed=0, device="cpu", settings=settings,
                                 progress=False, command="pytest")
    assert (path / "backbone.json").is_file() and not list(tmp_path.glob(".tiny.*"))
    trained = load_backbone(path)
    assert trained.kind == "tiny" and trained.metadata["trained"] is True
    record = json.loads((path / "training.json").read_text())
    assert record["settings"]["vae_steps"] == 3 and record["command"] == "pytest"
    assert record["data"]["songs"] == [21, 22] and record["data"]["fingerprint"] == audio_fingerprint(songs)
    assert [entry["step"] for entry in record["log"] if entry["stage"] == "unet"] == [2, 3]
    assert np.isfinite(record["heldout_reconstruction"]["mel_l1"])
    # the VAE and the UNet moved away from their initial weights, and the latent scale was measured
    for name in ("vae", "unet"):
        before, after = getattr(initial, name).state_dict(), getattr(trained, name).state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
    assert trained.scaling_factor == pytest.approx(record["latent_scaling_factor"]) and trained.scaling_factor != 0.18215
    with pytest.raises(ValueError, match="multiple of 4"):
        train_tiny_backbone(tmp_path / "data", tmp_path / "bad", settings=settings.__class__(vae_crop_frames=30))


def test_evaluate_backbone_reports_reconstruction_and_distances(tiny):
    split = SongSplit.from_audio(synthetic_songs(12.0), holdout_seconds=7.0)
    evaluation = evaluate_backbone(tiny, split, n_samples=4, num_inference_steps=2, batch_size=4, progress=False)
    metrics = evaluation.metrics
    assert metrics["reconstruction"]["n_clips"] == 4 and np.isfinite(metrics["reconstruction"]["snr_db"])
    frechet = metrics["frechet"]["mel_statistics"]
    for key in ("real_vs_real", "heldout", "samples", "gaussian_latents", "white_noise"):
        assert np.isfinite(frechet[key]) and frechet[key] >= -1e-6
    # two synthetic songs are far closer to each other than white noise is to them
    assert frechet["real_vs_real"] < frechet["white_noise"]
    assert frechet["samples_over_real"] == pytest.approx(frechet["samples"] / frechet["real_vs_real"])
    latent = metrics["frechet"]["latent_statistics"]
    for key in ("real_vs_real", "samples", "gaussian_latents", "samples_over_real", "gaussian_over_real"):
        assert np.isfinite(latent[key]) and latent[key] >= -1e-6
    stats = metrics["latents"]
    assert len(stats["real_std"]) == 8 and len(stats["sample_std"]) == 8
    np.testing.assert_allclose(stats["std_ratio"], np.asarray(stats["sample_std"]) / np.asarray(stats["real_std"]), rtol=1e-6)
    np.testing.assert_allclose(stats["sample_std"], evaluation.sample_latents.std(dim=(0, 2, 3)).numpy(), rtol=1e-5)
    loudness = metrics["loudness"]
    assert len(loudness["band_difference_db"]) == 8 and loudness["n_vocoded"] == 4
    assert loudness["mel_level_difference_db"] == pytest.approx(loudness["sample_mel_level_db"] - loudness["real_mel_level_db"])
    assert evaluation.sample_mels.shape == (4, 1, 352, 64) and evaluation.real_mels.shape == (4, 1, 352, 64)
    assert metrics["song_classifier"]["chance"] == 0.5


def test_latent_statistics_and_levels():
    latents = torch.randn(3, 8, 88, 16) * torch.arange(1, 9).view(1, 8, 1, 1) + 2.0
    features = latent_statistics(latents)
    assert features.shape == (3, 16)
    np.testing.assert_allclose(features[:, :8], latents.mean(dim=(2, 3)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(features[:, 8:], latents.std(dim=(2, 3)).numpy(), rtol=1e-5)
    # a mel 1 natural-log unit louder everywhere is 20·log10(e) ≈ 8.69 dB louder in every band and overall
    mel = torch.randn(2, 1, 352, 64)
    level, bands = mel_level_db(mel)
    louder_level, louder_bands = mel_level_db(mel + 1.0)
    assert louder_level - level == pytest.approx(8.6859, abs=1e-3)
    np.testing.assert_allclose(louder_bands - bands, 8.6859, atol=1e-3)
    assert rms_dbfs(np.full((2, 100), 0.1)) == pytest.approx(-20.0)


def test_v_prediction_schedule_reaches_zero_snr_and_learns_the_clip():
    scheduler_config = tiny_scheduler_config()
    assert scheduler_config["prediction_type"] == "v_prediction" and scheduler_config["rescale_betas_zero_snr"]
    tiny = build_tiny_backbone(seed=0, size="smoke")
    scheduler = tiny.scheduler
    assert float(scheduler.alphas_cumprod[-1]) == 0.0  # the last training step is pure noise
    z0, noise = torch.randn(2, 8, 88, 16), torch.randn(2, 8, 88, 16)
    t = torch.tensor([999, 999])
    # at zero SNR the v-target is −z0: the model is asked for the clip itself, not the (free) noise
    torch.testing.assert_close(diffusion_target(scheduler, z0, noise, t), -z0)
    assert torch.isfinite(min_snr_weight(scheduler, t, 5.0)).all()
    epsilon = build_tiny_backbone(seed=0, size="smoke", prediction_type="epsilon", zero_terminal_snr=False)
    torch.testing.assert_close(diffusion_target(epsilon.scheduler, z0, noise, t), noise)
    with pytest.raises(ValueError, match="zero_terminal_snr"):
        tiny_scheduler_config("epsilon", zero_terminal_snr=True)
    # DDIM with trailing spacing starts where training's noise is pure
    sampler = __import__("diffusers").DDIMScheduler.from_config(scheduler.config)
    sampler.set_timesteps(20)
    assert int(sampler.timesteps[0]) == 999


def test_training_presets_and_unknown_settings():
    smoke = TinyTrainingSettings.preset("smoke")
    assert smoke.size == "smoke" and smoke.vae_steps < TinyTrainingSettings.preset("default").vae_steps
    assert TinyTrainingSettings.preset("shipped").unet_steps > TinyTrainingSettings.preset("default").unet_steps
    with pytest.raises(ValueError, match="unknown training preset"):
        TinyTrainingSettings.preset("huge")
    with pytest.raises(ValueError, match="unknown training setting"):
        TinyTrainingSettings.preset("smoke", epochs=3)
    with pytest.raises(ValueError, match="size"):
        tiny_backbone_config("large")


def test_shipped_backbone_installs_and_loads(tmp_path, monkeypatch):
    target = tmp_path / "installed"
    # make demo starts from it: a checkout without it cannot run the default chain in its budget
    assert (SHIPPED_BACKBONE_DIR / BACKBONE_MARKER).is_file(), f"{SHIPPED_BACKBONE_DIR} is missing"
    weights = sum(p.stat().st_size for p in SHIPPED_BACKBONE_DIR.rglob("*.safetensors"))
    assert weights <= 20 * 2**20, "the shipped backbone must stay within 20 MB"
    shipped = load_backbone(install_shipped_backbone(target))
    assert shipped.kind == "tiny" and shipped.latent_shape == (8, 88, 16) and shipped.metadata["trained"]
    record = json.loads((target / TRAINING_FILE).read_text())
    assert record["command"] and "seed" in record and record["settings"]["unet_steps"] > 0
    assert record["settings"] == dataclasses.asdict(TinyTrainingSettings.preset("shipped"))  # the recipe it documents
    # notebook 00's rule: an existing complete folder is reused, not overwritten
    folder, source = prepare_backbone_folder("", target, tmp_path / "unused-data")
    assert (folder, source) == (target.resolve(), "existing")


def test_without_a_shipped_backbone_the_error_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setattr("eeg2music.models.tiny_backbone.SHIPPED_BACKBONE_DIR", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no shipped tiny backbone"):
        install_shipped_backbone(tmp_path / "installed")
