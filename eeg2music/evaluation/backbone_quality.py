"""Does a backbone generate the dataset's music? Reconstruction of held-out clips through the VAE,
and unconditional samples against real clips: Fréchet distances on mel and latent statistics over a
real-vs-real floor, per-channel latent statistics, loudness (:func:`evaluate_backbone`, notebook 00).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..audio import (
    CLIP_FRAMES_PADDED,
    CLIP_SAMPLES,
    N_MELS,
    log_mel_to_db,
    n_frames,
)
from ..data.song_audio import SongSplit, random_clips
from ..models.backbone import Backbone
from ..models.tiny_backbone import reconstruction_metrics
from .metrics import frechet_distance


def mel_statistics(mel: torch.Tensor | np.ndarray, bands: int = 8) -> np.ndarray:
    """Per-clip features: mean and standard deviation over time of the log-mel in ``bands`` equal mel bands.

    Parameters
    ----------
    mel : (N, 1, frames, 64)
        Log-mels; only the 350 frames of a clip are used (the padding frames are dropped).
    bands : int
        Groups of adjacent mel bins (64 / bands bins each).

    Returns
    -------
    ndarray, shape (N, 2 * bands)
    """
    mel = torch.as_tensor(mel).float()[:, 0, : n_frames(CLIP_SAMPLES)]  # (N, frames, 64)
    grouped = mel.reshape(mel.shape[0], mel.shape[1], bands, N_MELS // bands).mean(-1)  # (N, frames, bands)
    return torch.cat([grouped.mean(1), grouped.std(1)], dim=1).numpy().astype(np.float64)


def latent_statistics(latents: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-clip features: mean and standard deviation of each latent channel over time and frequency.

    A second view of a clip next to :func:`mel_statistics`: what the UNet itself produces, before the
    VAE's decoder can smooth it. ``(N, C, T, F)`` → ``(N, 2C)``.
    """
    latents = torch.as_tensor(latents).float()
    return torch.cat([latents.mean(dim=(2, 3)), latents.std(dim=(2, 3))], dim=1).numpy().astype(np.float64)


def mel_level_db(mel: torch.Tensor | np.ndarray, bands: int = 8) -> tuple[float, np.ndarray]:
    """Loudness and spectral balance of a set of clips: mean mel power and mean level per band, in dB.

    Returns ``(level_db, band_db)``: 10·log10 of the mean squared mel magnitude over clips, frames and
    bins, and 20·log10(e)·mean log-mel in each of ``bands`` equal mel bands (``(bands,)``).
    """
    mel = torch.as_tensor(mel).float()[:, 0, : n_frames(CLIP_SAMPLES)]
    level = 10.0 * math.log10(float((2.0 * mel).exp().mean()))
    band = mel.reshape(mel.shape[0], mel.shape[1], bands, N_MELS // bands).mean(dim=(0, 1, 3))
    return level, log_mel_to_db(band.numpy().astype(np.float64))


def rms_dbfs(waves: torch.Tensor | np.ndarray) -> float:
    """Mean over clips of each clip's RMS level in dB re full scale."""
    waves = np.asarray(torch.as_tensor(waves).float().cpu().numpy(), np.float64)
    rms = np.sqrt((waves**2).mean(axis=-1)).clip(1e-10)
    return float(np.mean(20.0 * np.log10(rms)))


@dataclass
class BackboneEvaluation:
    """What :func:`evaluate_backbone` measured, with the mels to show."""

    metrics: dict[str, Any]
    real_mels: torch.Tensor
    real_songs: np.ndarray
    reconstructed_mels: torch.Tensor
    sample_mels: torch.Tensor
    sample_latents: torch.Tensor = field(repr=False)
    reference_mels: torch.Tensor = field(repr=False, default=None)


@torch.no_grad()
def evaluate_backbone(
    backbone: Backbone,
    split: SongSplit,
    *,
    n_samples: int = 128,
    num_inference_steps: int = 50,
    seed: int = 0,
    batch_size: int = 32,
    n_vocoded: int = 32,
    progress: bool = True,
) -> BackboneEvaluation:
    """Does the backbone generate the dataset's music? Unconditional samples against real clips, several ways.

    Parameters
    ----------
    backbone : Backbone
    split : SongSplit
        The songs' audio; its held-out tails are reconstructed, its training heads give the real sets.
    n_samples : int
        Unconditional samples to draw, and the size of every compared set (two independent sets of real
        training crops, Gaussian latents, white noise).
    num_inference_steps : int
        DDIM steps for the samples.
    seed : int
        Seeds the samples, the real crops and the baselines.
    batch_size : int
        Clips per UNet / VAE batch.
    n_vocoded : int
        Clips of each set vocoded to measure waveform loudness (the vocoder is the slow part).
    progress : bool

    Returns
    -------
    BackboneEvaluation
        ``metrics`` holds:

        * ``reconstruction``: the held-out VAE round trip (:func:`reconstruction_metrics`);
        * ``frechet``: per feature set (``mel_statistics``, ``latent_statistics``), the Fréchet distance
          from a reference set of real crops to another real set (the floor at this size), the samples,
          Gaussian latents decoded without the UNet, white noise (mel features only) and the held-out
          clips, plus ``samples_over_real`` and ``gaussian_over_real`` (each distance / the floor);
        * ``latents``: per-channel mean and std of real latents and of the samples, the std ratio and the
          mean difference in units of the real channel's std;
        * ``loudness``: mean mel power (dB), per-band level (spectral balance, dB) and vocoded RMS (dBFS)
          of real clips and samples, and their differences;
        * ``song_classifier``: a logistic regression on real clips' per-bin mel statistics — held-out
          accuracy and how confidently it assigns the samples to one song.
    """

    rng = np.random.default_rng(seed)
    heldout, heldout_songs = split.heldout_clips()

    def batched(function, items) -> torch.Tensor:
        return torch.cat([function(items[i : i + batch_size]).float().cpu() for i in range(0, len(items), batch_size)])

    def mels_of(clips: np.ndarray) -> torch.Tensor:
        return batched(lambda chunk: backbone.wave_to_mel(torch.from_numpy(np.ascontiguousarray(chunk))), clips)

    # 1. Real sets: a reference, a second independent set (the floor), the held-out tails.
    reference_clips, _ = random_clips(split.train, n_samples, rng)
    other_clips, _ = random_clips(split.train, n_samples, rng)
    reference_mels, other_mels = mels_of(reference_clips), mels_of(other_clips)
    reference_latents, other_latents = batched(backbone.encode, reference_mels), batched(backbone.encode, other_mels)
    heldout_mels = mels_of(heldout) if len(heldout) else torch.zeros(0, 1, CLIP_FRAMES_PADDED, N_MELS)
    reconstructed = batched(lambda m: backbone.decode(backbone.encode(m)), heldout_mels) if len(heldout) else heldout_mels
    reconstruction = reconstruction_metrics(backbone, heldout, batch_size) if len(heldout) else {}

    # 2. Unconditional samples, and what the VAE makes of Gaussian latents without the UNet.
    generator = torch.Generator().manual_seed(int(seed))
    latents = torch.cat([
        backbone.sample_latents(min(batch_size, n_samples - i), num_inference_steps, generator=generator,
                                progress=progress).float().cpu()
        for i in range(0, n_samples, batch_size)
    ])
    sample_mels = batched(backbone.decode, latents)
    gaussian = torch.randn(latents.shape, generator=generator)
    gaussian_mels = batched(backbone.decode, gaussian)
    noise_mels = mels_of(rng.standard_normal((n_samples, CLIP_SAMPLES)).astype(np.float32))

    # 3. Fréchet distances on two feature sets, each over the distance between two real sets.
    def distances(features, sets: dict[str, Any]) -> dict[str, float]:
        reference = features(sets.pop("reference"))
        values = {name: (frechet_distance(features(x), reference) if len(x) > 2 else float("nan"))
                  for name, x in sets.items()}
        floor = max(values["real_vs_real"], 1e-12)
        values.update(samples_over_real=values["samples"] / floor, gaussian_over_real=values["gaussian_latents"] / floor)
        return values

    frechet = {
        "mel_statistics": distances(mel_statistics, {
            "reference": reference_mels, "real_vs_real": other_mels, "samples": sample_mels,
            "gaussian_latents": gaussian_mels, "white_noise": noise_mels, "heldout": heldout_mels}),
        "latent_statistics": distances(latent_statistics, {
            "reference": reference_latents, "real_vs_real": other_latents, "samples": latents,
            "gaussian_latents": gaussian}),
    }

    # 4. The latents themselves, channel by channel.
    real = torch.cat([reference_latents, other_latents])
    real_mean, real_std = real.mean(dim=(0, 2, 3)), real.std(dim=(0, 2, 3))
    sample_mean, sample_std = latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3))
    latent_stats = {
        "real_mean": real_mean.tolist(), "real_std": real_std.tolist(),
        "sample_mean": sample_mean.tolist(), "sample_std": sample_std.tolist(),
        "std_ratio": (sample_std / real_std).tolist(),
        "mean_difference_in_real_std": ((sample_mean - real_mean) / real_std).tolist(),
    }
    latent_stats["max_std_error"] = float(np.max(np.abs(np.asarray(latent_stats["std_ratio"]) - 1.0)))
    latent_stats["max_mean_error"] = float(np.max(np.abs(latent_stats["mean_difference_in_real_std"])))

    # 5. Loudness and spectral balance: mel power, per-band level, and the vocoded waveform's RMS.
    real_level, real_bands = mel_level_db(reference_mels)
    sample_level, sample_bands = mel_level_db(sample_mels)
    k = min(n_vocoded, n_samples)
    real_rms, sample_rms = rms_dbfs(backbone.mel_to_wave(reference_mels[:k])), rms_dbfs(backbone.mel_to_wave(sample_mels[:k]))
    loudness = {
        "real_mel_level_db": real_level, "sample_mel_level_db": sample_level, "mel_level_difference_db": sample_level - real_level,
        "real_band_db": real_bands.tolist(), "sample_band_db": sample_bands.tolist(),
        "band_difference_db": (sample_bands - real_bands).tolist(),
        "max_band_difference_db": float(np.max(np.abs(sample_bands - real_bands))),
        "real_vocoded_rms_dbfs": real_rms, "sample_vocoded_rms_dbfs": sample_rms,
        "vocoded_rms_difference_db": sample_rms - real_rms, "n_vocoded": int(k),
    }

    # 6. Does a song classifier trained on real clips recognise the samples as one of the songs?
    train_clips, train_songs = random_clips(split.train, max(20 * len(split.train), 200), rng)

    def bin_features(mels: torch.Tensor) -> np.ndarray:
        mel = mels[:, 0, : n_frames(CLIP_SAMPLES)]
        return torch.cat([mel.mean(1), mel.std(1)], 1).numpy()

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    classifier.fit(bin_features(mels_of(train_clips)), train_songs)
    sample_probabilities = classifier.predict_proba(bin_features(sample_mels))
    classes = classifier.classes_
    song_classifier = {
        "heldout_accuracy": float((classifier.predict(bin_features(heldout_mels)) == heldout_songs).mean())
        if len(heldout_mels) else float("nan"),
        "chance": 1.0 / len(classes),
        "samples_mean_max_probability": float(sample_probabilities.max(1).mean()),
        "samples_confident_fraction": float((sample_probabilities.max(1) >= 0.5).mean()),
        "samples_per_song": {str(int(song)): int(count) for song, count in
                             zip(classes, np.bincount(sample_probabilities.argmax(1), minlength=len(classes)))},
        "noise_mean_max_probability": float(classifier.predict_proba(bin_features(noise_mels)).max(1).mean()),
    }
    metrics = {
        "reconstruction": reconstruction,
        "frechet": frechet,
        "frechet_features": {
            "mel_statistics": "per clip: mean and std over time of the log-mel in 8 mel bands (16 dims)",
            "latent_statistics": "per clip: mean and std over time and frequency of each of the 8 latent channels (16 dims)",
        },
        "latents": latent_stats,
        "loudness": loudness,
        "n_samples": int(n_samples),
        "num_inference_steps": int(num_inference_steps),
        "scheduler": {"prediction_type": backbone.scheduler.config.get("prediction_type"),
                      "rescale_betas_zero_snr": bool(backbone.scheduler.config.get("rescale_betas_zero_snr", False))},
        "song_classifier": song_classifier,
    }
    return BackboneEvaluation(metrics, heldout_mels, heldout_songs, reconstructed, sample_mels, latents, reference_mels)


@torch.no_grad()
def time_sampling(backbone: Backbone, steps: Sequence[int] = (20, 200), *, seed: int = 0) -> dict[str, float]:
    """Wall time to generate one 3.5 s clip (batch 1): DDIM for each step count, then VAE decode and vocoder.

    Returns
    -------
    dict
        ``{"ddim_<n>_steps_seconds": ..., ...}`` (noise → waveform) and ``"decode_and_vocode_seconds"``.
    """
    timings = {}
    generator = torch.Generator().manual_seed(int(seed))
    latents = backbone.sample_latents(1, 2, generator=generator, progress=False)  # warm-up
    for n in steps:
        start = time.perf_counter()
        latents = backbone.sample_latents(1, int(n), generator=generator, progress=False)
        sampling = time.perf_counter() - start
        start = time.perf_counter()
        backbone.latents_to_wave(latents)
        decoding = time.perf_counter() - start
        timings[f"ddim_{int(n)}_steps_seconds"] = sampling + decoding
        timings["decode_and_vocode_seconds"] = decoding
    return timings
