"""AudioLDM2's mel front end (eeg2music.audio) against a hand computation, and Griffin-Lim's way back."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from eeg2music.audio import (
    CLIP_FRAMES,
    CLIP_FRAMES_PADDED,
    CLIP_SAMPLES,
    CLIP_SECONDS,
    SAMPLE_RATE,
    griffin_lim,
    mel_filterbank,
    mel_to_linear_magnitude,
    n_frames,
    normalize_waveform,
    padded_frames,
    waveform_to_mel,
)

SR = SAMPLE_RATE


def tone_clip(seed: int = 0, samples: int = CLIP_SAMPLES) -> np.ndarray:
    """A few partials switching on and off, plus a little noise: energy across the mel bands."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SR
    wave = np.zeros(samples)
    for freq in (110.0, 220.0, 440.0, 1234.0, 3100.0):
        gate = (np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 6)) > 0).astype(float)
        wave += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * freq * t) * gate
    wave += 0.01 * rng.standard_normal(samples)
    return (wave + 0.3).astype(np.float32)  # a DC offset, which AudioLDM's normalisation removes


def hand_mel(wave: np.ndarray) -> np.ndarray:
    """AudioLDM's TacotronSTFT.mel_spectrogram written out in float64 NumPy: (frames, 64)."""
    import librosa

    pad = (1024 - 160) // 2
    padded = np.pad(wave.astype(np.float64), (pad, pad), mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)  # periodic Hann, torch.hann_window
    n_frames = 1 + (len(padded) - 1024) // 160
    frames = np.stack([padded[i * 160 : i * 160 + 1024] * window for i in range(n_frames)])
    magnitude = np.abs(np.fft.rfft(frames, axis=1)).T  # (513, frames)
    basis = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0.0, fmax=8000.0)  # Slaney, area-normalised
    return np.log(np.maximum(basis @ magnitude, 1e-5)).T


def test_clip_geometry_constants():
    assert (SAMPLE_RATE, CLIP_SECONDS, CLIP_SAMPLES) == (16000, 3.5, 56000)
    assert CLIP_FRAMES == 350 and CLIP_FRAMES_PADDED == 352
    assert n_frames(16000) == 100 and padded_frames(350) == 352 and padded_frames(352) == 352
    with pytest.raises(ValueError, match="too short"):
        n_frames(100)


def test_mel_matches_hand_computation():
    wave = tone_clip()
    mel = waveform_to_mel(wave, normalize=False)
    assert mel.shape == (1, 1, 352, 64) and mel.dtype == torch.float32
    expected = hand_mel(wave)
    assert expected.shape == (350, 64)
    ours = mel[0, 0, :350].numpy()
    loud = expected > np.log(1e-3)  # float32 STFT noise only matters near the 1e-5 floor
    assert loud.mean() > 0.5
    np.testing.assert_allclose(ours[loud], expected[loud], atol=2e-3)
    np.testing.assert_allclose(ours, expected, atol=5e-2)
    # AudioLDM's _pad_spec pads the log-mel with zeros up to the VAE's multiple of 4
    assert torch.count_nonzero(mel[0, 0, 350:]) == 0


def test_normalisation_is_audioldms():
    wave = tone_clip(1)
    normalized = normalize_waveform(wave)
    assert abs(float(normalized.mean())) < 1e-6
    assert float(normalized.abs().max()) == pytest.approx(0.5, abs=1e-6)
    np.testing.assert_allclose(
        waveform_to_mel(wave).numpy(), waveform_to_mel(normalized, normalize=False).numpy(), atol=1e-5
    )
    # normalised, a clip's level no longer matters
    np.testing.assert_allclose(waveform_to_mel(wave).numpy(), waveform_to_mel(3.0 * wave).numpy(), atol=1e-4)


def test_batch_layout_and_independence():
    waves = np.stack([tone_clip(0), tone_clip(2)])
    batch = waveform_to_mel(torch.from_numpy(waves))
    assert batch.shape == (2, 1, 352, 64)
    for i in range(2):
        np.testing.assert_allclose(batch[i : i + 1].numpy(), waveform_to_mel(waves[i]).numpy(), atol=1e-4)
    unpadded = waveform_to_mel(waves, pad_to_multiple=1)
    assert unpadded.shape == (2, 1, 350, 64)
    with pytest.raises(ValueError, match="batch, samples"):
        waveform_to_mel(np.zeros((1, 2, 56000), np.float32))


def test_mel_filters_are_slaney_up_to_8_khz():
    basis = mel_filterbank()
    assert basis.shape == (64, 513) and basis.dtype == np.float32
    freqs = np.fft.rfftfreq(1024, 1 / 16000)
    assert basis[:, freqs >= 8000].max() == 0.0
    peaks = freqs[basis.argmax(axis=1)]
    assert np.all(np.diff(peaks) >= 0) and peaks[0] < 100 and peaks[-1] > 6000


def test_mel_to_linear_magnitude_solves_the_nonnegative_least_squares():
    mel = waveform_to_mel(tone_clip(3))
    magnitude = mel_to_linear_magnitude(mel)
    assert magnitude.shape == (1, 513, 352) and float(magnitude.min()) >= 0.0
    target = mel[0, 0].exp().T.double()
    projected = torch.from_numpy(mel_filterbank()).double() @ magnitude[0].double()
    assert float((projected - target).norm() / target.norm()) < 0.05


def test_griffin_lim_is_librosas_algorithm_batched():
    """The torch implementation follows librosa.griffinlim step for step (same phase, same momentum)."""
    mel = torch.cat([waveform_to_mel(tone_clip(k)) for k in (2, 5)])
    ours = griffin_lim(mel, n_iter=8, length=None, seed=3).numpy()
    magnitude = mel_to_linear_magnitude(mel).numpy()
    frames = magnitude.shape[-1]
    for clip in range(2):  # librosa inverts each clip from the seed's phase
        theirs = librosa.griffinlim(magnitude[clip], n_iter=8, hop_length=160, win_length=1024, n_fft=1024,
                                    window="hann", center=False, length=(frames - 1) * 160 + 1024,
                                    random_state=np.random.default_rng(3))[432 : 432 + frames * 160]
        assert ours[clip].shape == theirs.shape == (352 * 160,)
        assert np.abs(ours[clip] - theirs).max() < 1e-3 * np.abs(theirs).max()
    # the batch does not change a clip
    np.testing.assert_array_equal(griffin_lim(mel[1:], n_iter=8, length=None, seed=3).numpy()[0], ours[1])
    # a different seed is a different phase, hence a different waveform with the same magnitudes
    other = griffin_lim(mel, n_iter=8, length=None, seed=4).numpy()
    assert np.abs(other - ours).max() > 0.1 * np.abs(ours).max()


def test_griffin_lim_returns_aligned_clips_with_the_same_mel():
    wave = tone_clip(4)
    wave[: CLIP_SAMPLES // 2] = 0.3  # silence (after the mean is removed) then music
    mel = waveform_to_mel(wave)
    rebuilt = griffin_lim(mel, n_iter=32)
    assert rebuilt.shape == (1, 56000) and rebuilt.dtype == torch.float32
    # aligned to the sample: the music starts where it started (± a quarter hop)
    energy = np.convolve(rebuilt[0].numpy() ** 2, np.ones(80) / 80, mode="same")
    onset = int(np.argmax(energy > 0.05 * energy.max()))
    assert abs(onset - 28000) < 200
    # and its mel is close to the one it was made from where there is signal
    again = waveform_to_mel(rebuilt)[0, 0, :350]
    loud = mel[0, 0, :350] > -6.0
    assert float((again - mel[0, 0, :350])[loud].abs().mean()) < 0.6
    assert griffin_lim(mel, n_iter=2, length=None).shape == (1, 352 * 160)
    with pytest.raises(ValueError, match="n_iter"):
        griffin_lim(mel, n_iter=0)
