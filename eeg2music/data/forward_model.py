"""The simulator's EEG forward model: auditory features → subject-specific responses → dipoles →
scalp, plus ongoing background EEG, alpha, blinks and (raw layout) line noise and drift.

Each feature is convolved with a P1–N1–P2-like temporal response function whose latency and gain are
subject-specific; the responses drive cortical sources modelled as current dipoles whose scalp patterns
are computed at MNE's GSN-HydroCel electrode positions (:class:`ForwardModel`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import fft as sfft
from scipy.signal import fftconvolve

from ..audio import FEATURE_BAND_EDGES_HZ, AuditoryFeatures
from .nmedt import hydrocel_montage, raw_channel_names

#: Music-driven cortical sources: name → (position in head coordinates (m), moment direction).
MUSIC_SOURCES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # superior temporal plane, moments pointing up and slightly inwards: fronto-central N1/P2
    "left auditory cortex": ((-0.050, -0.005, 0.020), (0.6, 0.35, 1.0)),
    "right auditory cortex": ((0.050, -0.005, 0.020), (-0.6, 0.35, 1.0)),
    # supplementary motor area: beat and onset tracking
    "central (SMA)": ((0.0, 0.010, 0.060), (0.0, 0.3, 1.0)),
    # frontal cortex: slower, broadband responses
    "frontal": ((0.0, 0.050, 0.040), (0.0, 0.8, 0.6)),
}


ALPHA_SOURCES = {
    "occipital alpha": ((0.0, -0.065, 0.020), (0.0, -0.7, 0.7)),
    "left parietal alpha": ((-0.030, -0.050, 0.045), (-0.3, -0.5, 0.8)),
    "right parietal alpha": ((0.030, -0.050, 0.045), (0.3, -0.5, 0.8)),
}


#: The eyes: a blink rotates the corneo-retinal dipoles (pointing forward).
EYE_SOURCES = {"left eye": ((-0.032, 0.075, -0.035), (0.0, 1.0, 0.2)), "right eye": ((0.032, 0.075, -0.035), (0.0, 1.0, 0.2))}


#: TRF components (latency s, width s, amplitude) of the P1–N1–P2 complex.
_TRF_COMPONENTS = ((0.050, 0.012, 0.5), (0.100, 0.020, -1.0), (0.180, 0.035, 0.7))


_BACKGROUND_RMS_UV = 10.0  # ongoing EEG in the 0.3–50 Hz band, typical of scalp recordings


#: The skull's low conductivity spreads scalp potentials; an infinite-medium dipole placed this much
#: closer to the head's centre than its anatomical position gives topographies of realistic width.
_SKULL_SPREAD_DEPTH = 0.6


def _dipole_pattern(positions: np.ndarray, source: np.ndarray, moment: np.ndarray, inside_skull: bool = True) -> np.ndarray:
    """Scalp potential of a current dipole (infinite homogeneous conductor; a source inside the
    skull is spread as if deeper)."""
    moment = moment / np.linalg.norm(moment)
    diff = positions - (_SKULL_SPREAD_DEPTH if inside_skull else 1.0) * np.asarray(source)
    return diff @ moment / np.linalg.norm(diff, axis=1) ** 3


@dataclass
class ForwardModel:
    """The EEG forward model of a simulated dataset (all parameters drawn from ``seed``).

    Attributes
    ----------
    channel_names : list of str
        ``E1`` … ``E128`` and ``Cz`` (potentials are computed at all 129 and re-referenced per layout).
    positions : ndarray (129, 3)
        Electrode positions (m), MNE's GSN-HydroCel-129 montage.
    source_names : list of str
        The music-driven sources.
    patterns : ndarray (n_subjects, n_sources, 129)
        Each source's scalp pattern per subject (unit RMS; subjects differ slightly in orientation).
    mixing : ndarray (n_sources, n_features)
        How strongly each auditory feature drives each source.
    feature_scales : ndarray (n_features,)
        Mean and std used to standardize the features (set from the dataset's songs).
    subjects : list of int
        Participant numbers.
    latency_s, gain : ndarray (n_subjects,)
        Subject-specific latency shift of the responses and their gain.
    alpha_hz, alpha_uv, blink_rate_hz : ndarray (n_subjects,)
        Alpha peak frequency and amplitude, blinks per second.
    signal_scale_uv : float
        Scale of the music-driven EEG that gives the requested SNR (set by calibration).
    """

    seed: int
    subjects: list[int]
    channel_names: list[str]
    positions: np.ndarray
    source_names: list[str]
    patterns: np.ndarray
    mixing: np.ndarray
    kernel_components: np.ndarray  # (n_features, 3 components, 3: latency, width, amplitude)
    latency_s: np.ndarray
    gain: np.ndarray
    alpha_hz: np.ndarray
    alpha_uv: np.ndarray
    blink_rate_hz: np.ndarray
    alpha_patterns: np.ndarray  # (n_alpha, 129)
    eye_pattern: np.ndarray  # (129,)
    background_patterns: np.ndarray  # (n_background, 129)
    feature_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    feature_std: np.ndarray = field(default_factory=lambda: np.ones(0))
    signal_scale_uv: float = 1.0
    feature_names: list[str] = field(default_factory=list)

    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    def kernels(self, subject_index: int, fs: float, seconds: float = 0.5) -> np.ndarray:
        """Response kernels (TRFs) of one subject, ``(n_features, round(seconds * fs))``."""
        tau = np.arange(int(round(seconds * fs))) / fs
        out = np.zeros((self.kernel_components.shape[0], len(tau)))
        for k, components in enumerate(self.kernel_components):
            for latency, width, amplitude in components:
                out[k] += amplitude * np.exp(-0.5 * ((tau - latency - self.latency_s[subject_index]) / width) ** 2)
        return out

    def source_activity(self, features: np.ndarray, subject_index: int, fs: float) -> np.ndarray:
        """Music-driven source time courses ``(n_sources, n_times)`` (unscaled) for standardized features."""

        kernels = self.kernels(subject_index, fs)
        standardized = (features - self.feature_mean[:, None]) / self.feature_std[:, None]
        # a convolution integral (× 1/fs), so responses have the same size at every sampling rate
        responses = fftconvolve(standardized, kernels, axes=1, mode="full")[:, : features.shape[1]] / fs
        return self.mixing @ responses

    def music_eeg(self, features: np.ndarray, subject_index: int, fs: float) -> np.ndarray:
        """Music-driven scalp potentials ``(129, n_times)`` in µV (before referencing)."""
        sources = self.source_activity(features, subject_index, fs)
        return self.signal_scale_uv * self.gain[subject_index] * (self.patterns[subject_index].T @ sources)

    def to_json(self) -> dict[str, Any]:
        """The ground truth worth recording (per-subject parameters, sources, mixing)."""
        return {
            "subjects": {
                str(s): {
                    "latency_ms": round(float(self.latency_s[i] * 1000), 3),
                    "gain": round(float(self.gain[i]), 4),
                    "alpha_hz": round(float(self.alpha_hz[i]), 3),
                    "alpha_uv": round(float(self.alpha_uv[i]), 3),
                    "blink_rate_hz": round(float(self.blink_rate_hz[i]), 4),
                }
                for i, s in enumerate(self.subjects)
            },
            "sources": {name: {"position_m": list(MUSIC_SOURCES[name][0]), "moment": list(MUSIC_SOURCES[name][1])} for name in self.source_names},
            "features": self.feature_names,
            "mixing": np.round(self.mixing, 4).tolist(),
            "trf_components": [{"latency_s": lat, "width_s": wid, "amplitude": amp} for lat, wid, amp in _TRF_COMPONENTS],
            "signal_scale_uv": float(self.signal_scale_uv),
            "background_rms_uv": _BACKGROUND_RMS_UV,
        }


def build_forward_model(seed: int, subjects: Sequence[int]) -> ForwardModel:
    """Draw a forward model: sources, subject-specific latencies, gains, orientations, alpha, blinks."""
    rng = np.random.default_rng([int(seed), 7])
    montage = hydrocel_montage()
    positions_by_name = montage.get_positions()["ch_pos"]
    names = raw_channel_names()
    positions = np.array([positions_by_name[name] for name in names])
    n_subjects = len(subjects)
    n_features = len(FEATURE_BAND_EDGES_HZ) - 1 + 2

    def unit_rms(pattern: np.ndarray) -> np.ndarray:
        referenced = pattern - pattern.mean()
        return pattern / np.sqrt(np.mean(referenced**2))

    source_names = list(MUSIC_SOURCES)
    patterns = np.zeros((n_subjects, len(source_names), len(names)))
    for s in range(n_subjects):
        for j, name in enumerate(source_names):
            position, moment = (np.array(v, dtype=float) for v in MUSIC_SOURCES[name])
            # anatomy differs: each subject's dipoles sit a few mm and degrees apart
            position = position + rng.normal(0, 0.004, 3)
            moment = moment / np.linalg.norm(moment) + rng.normal(0, 0.15, 3)
            patterns[s, j] = unit_rms(_dipole_pattern(positions, position, moment))
    n_bands = len(FEATURE_BAND_EDGES_HZ) - 1
    mixing = np.zeros((len(source_names), n_features))
    low_to_high = np.linspace(0.0, 1.0, n_bands)
    mixing[0, :n_bands] = 0.4 + 0.8 * low_to_high  # left AC: higher bands (temporal detail)
    mixing[1, :n_bands] = 1.2 - 0.8 * low_to_high  # right AC: lower bands (pitch, harmony)
    mixing[0, n_bands] = mixing[1, n_bands] = 0.8  # both follow onsets
    mixing[2, n_bands] = 0.6
    mixing[2, n_bands + 1] = 1.2  # SMA: the beat
    mixing[3, :n_bands] = 0.5 * np.sin(np.pi * (low_to_high + 0.2)) + 0.1  # frontal: mid bands
    mixing[3, n_bands + 1] = 0.3
    mixing *= 1.0 + 0.1 * rng.standard_normal(mixing.shape)
    # TRF shape per feature: the P1-N1-P2 complex with feature-specific latencies and weights, so the
    # features leave distinguishable temporal signatures (low bands respond later than high bands).
    kernel_components = np.zeros((n_features, 3, 3))
    for k in range(n_features):
        later = 0.015 * (1 - k / max(1, n_bands - 1)) if k < n_bands else (0.0 if k == n_bands else 0.04)
        for c, (latency, width, amplitude) in enumerate(_TRF_COMPONENTS):
            scale = 1.0 + 0.15 * rng.standard_normal()
            kernel_components[k, c] = (latency + later, width * (1.5 if k == n_bands + 1 else 1.0), amplitude * scale)
    alpha_patterns = np.stack([unit_rms(_dipole_pattern(positions, np.array(p), np.array(m))) for p, m in ALPHA_SOURCES.values()])
    eye = sum(_dipole_pattern(positions, np.array(p), np.array(m), inside_skull=False) for p, m in EYE_SOURCES.values())
    eye = eye - eye[names.index("Cz")]
    eye_pattern = eye / np.max(np.abs(eye))
    # ongoing background: many randomly placed and oriented dipoles inside the brain
    n_background = 48
    directions = rng.normal(size=(n_background, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = 0.07 * rng.uniform(0.3, 1.0, n_background) ** (1 / 3)
    centers = directions * radii[:, None] + np.array([0.0, -0.005, 0.015])
    background = np.stack([_dipole_pattern(positions, c, rng.normal(size=3)) for c in centers])
    background /= np.sqrt(np.mean((background - background.mean(axis=1, keepdims=True)) ** 2, axis=1, keepdims=True))
    return ForwardModel(
        seed=int(seed),
        subjects=[int(s) for s in subjects],
        channel_names=names,
        positions=positions,
        source_names=source_names,
        patterns=patterns,
        mixing=mixing,
        kernel_components=kernel_components,
        latency_s=rng.normal(0.0, 0.012, n_subjects),
        gain=np.exp(rng.normal(0.0, 0.2, n_subjects)),
        alpha_hz=rng.uniform(8.5, 11.5, n_subjects),
        alpha_uv=rng.uniform(2.0, 6.0, n_subjects),
        blink_rate_hz=rng.uniform(0.1, 0.33, n_subjects),
        alpha_patterns=alpha_patterns,
        eye_pattern=eye_pattern,
        background_patterns=background,
        feature_names=[f"band {lo:g}–{hi:g} Hz" for lo, hi in zip(FEATURE_BAND_EDGES_HZ[:-1], FEATURE_BAND_EDGES_HZ[1:])] + ["onsets", "beat"],
    )


def listener_differences(model: ForwardModel) -> dict[str, Any]:
    """How much the simulated listeners differ, in the three ways the forward model lets them.

    * ``topography_r``: per music source, the mean (and lowest) correlation between two listeners' scalp
      patterns of that source — what a per-listener channel mixing (the subject layer) can adapt to;
      ``shared_variance`` is the mean r² over sources and pairs.
    * ``latency_ms``: the spread (SD, range) of the listeners' response latencies.
    * ``gain``: the spread of the response gains (SD of the log gain, max/min ratio).

    Returns
    -------
    dict
        ``{"topography_r": {source: {"mean", "min"}}, "shared_variance", "latency_ms": {"sd", "range"},
        "gain": {"log_sd", "max_over_min"}}``.
    """
    n = model.n_subjects
    upper = np.triu_indices(n, k=1)
    topography, squared = {}, []
    for j, name in enumerate(model.source_names):
        r = np.corrcoef(model.patterns[:, j, :])[upper]
        topography[name] = {"mean": float(r.mean()), "min": float(r.min())}
        squared.append(r**2)
    latency_ms = np.asarray(model.latency_s) * 1000.0
    return {
        "topography_r": topography,
        "shared_variance": float(np.mean(np.concatenate(squared))),
        "latency_ms": {"sd": float(latency_ms.std()), "range": float(np.ptp(latency_ms))},
        "gain": {"log_sd": float(np.log(model.gain).std()), "max_over_min": float(model.gain.max() / model.gain.min())},
    }


def _colored_noise(rng, shape: tuple[int, int], fs: float, exponent: float, rms_band: tuple[float, float],
                   rms: float, fmin: float = 0.3, fmax: float | None = None) -> np.ndarray:
    """Noise with PSD ∝ 1/f**exponent between ``fmin`` and ``fmax``, whose RMS within ``rms_band`` is
    ``rms`` whatever the sampling rate (so both layouts share one spectral density)."""

    n = shape[-1]
    n_fft = sfft.next_fast_len(n, real=True)  # awkward lengths make FFTs slow
    freqs = np.fft.rfftfreq(n_fft, 1.0 / fs)
    lo, hi = rms_band
    # PSD P(f) = c / f**exponent; its integral over rms_band is rms**2
    if exponent == 1.0:
        integral = math.log(hi / lo)
    else:
        integral = (hi ** (1 - exponent) - lo ** (1 - exponent)) / (1 - exponent)
    c = rms**2 / integral
    psd = np.where(freqs >= fmin, c / np.maximum(freqs, fmin) ** exponent, 0.0)
    if fmax is not None:
        psd = np.where(freqs <= fmax, psd, 0.0)
    # white noise of unit variance has a one-sided PSD of 2/fs: shape it to P(f)
    white = rng.standard_normal((*shape[:-1], n_fft), dtype=np.float32)
    spectrum = sfft.rfft(white, axis=-1) * np.sqrt(psd * fs / 2.0).astype(np.float32)
    return sfft.irfft(spectrum, n=n_fft, axis=-1)[..., :n].astype(np.float64)


def _alpha(rng, n: int, fs: float, freq: float, amplitude_uv: float) -> np.ndarray:
    """Alpha: narrow-band noise around ``freq`` with slow waxing and waning, RMS ``amplitude_uv``."""
    freqs = np.fft.rfftfreq(n, 1.0 / fs)
    shape = np.exp(-0.5 * ((freqs - freq) / 0.6) ** 2)
    signal = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * shape, n=n)
    waxing = _colored_noise(rng, (1, n), fs, 2.0, (0.05, 0.5), 1.0, fmin=0.05, fmax=0.5)[0]
    signal *= np.exp(0.8 * waxing / (np.std(waxing) or 1))
    return amplitude_uv * signal / (np.std(signal) or 1.0)


def _blinks(rng, n: int, fs: float, rate_hz: float, amplitude_uv: float = 120.0) -> np.ndarray:
    """Blink time course: 250–400 ms bumps at Poisson times."""
    out = np.zeros(n)
    count = rng.poisson(rate_hz * n / fs)
    for start in rng.integers(0, n, size=count):
        width = rng.uniform(0.25, 0.4) * fs
        t = np.arange(int(width))
        bump = np.sin(np.pi * t / width) ** 2 * amplitude_uv * rng.uniform(0.6, 1.2)
        stop = min(n, start + len(bump))
        out[start:stop] += bump[: stop - start]
    return out


def _background_eeg(model: ForwardModel, subject_index: int, rng, n: int, fs: float, raw: bool) -> np.ndarray:
    """Ongoing EEG at the 129 electrodes (µV, unreferenced): 1/f sources, alpha, sensor noise."""
    n_background = model.background_patterns.shape[0]
    fmax = None if raw else min(50.0, fs / 2)  # the cleaned release was low-passed at 50 Hz
    # the background dipoles' patterns have unit RMS; dividing by sqrt(count) keeps the sum at `rms`
    sources = _colored_noise(rng, (n_background, n), fs, 1.0, (0.3, 50.0), _BACKGROUND_RMS_UV / math.sqrt(n_background), fmax=fmax)
    eeg = model.background_patterns.T @ sources
    alpha = np.stack([
        _alpha(rng, n, fs, model.alpha_hz[subject_index] + rng.normal(0, 0.2), model.alpha_uv[subject_index] * w)
        for w in (1.0, 0.6, 0.6)
    ])
    eeg += model.alpha_patterns.T @ alpha
    eeg += _colored_noise(rng, (eeg.shape[0], n), fs, 0.0, (0.3, 50.0), 1.0, fmax=fmax)  # electrode noise
    return eeg


def _reference(eeg: np.ndarray, layout: str) -> np.ndarray:
    """Raw: vertex reference (Cz row all zero), 129 rows. Cleaned: E1–E124 + Cz, average reference."""
    if layout == "raw":
        return eeg - eeg[-1:]
    kept = np.concatenate([eeg[:124], eeg[-1:]])
    return kept - kept.mean(axis=0, keepdims=True)


def calibrate(model: ForwardModel, features: dict[int, AuditoryFeatures], snr: float, fs: float, seed: int) -> None:
    """Standardize the features over the dataset and set the signal scale that gives ``snr``."""
    stacked = np.concatenate([f.matrix() for f in features.values()], axis=1)
    model.feature_mean = stacked.mean(axis=1)
    model.feature_std = stacked.std(axis=1) + 1e-8
    model.signal_scale_uv = 1.0
    rng = np.random.default_rng([int(seed), 11])
    music_power, background_power = [], []
    for song_id, feats in features.items():
        unit = np.ones_like(model.gain)
        saved_gain, model.gain = model.gain, unit  # SNR is defined at gain 1; subjects scatter around it
        music = _reference(model.music_eeg(feats.matrix(), 0, fs), "cleaned")
        model.gain = saved_gain
        background = _reference(_background_eeg(model, 0, rng, feats.n_times, fs, raw=False), "cleaned")
        music_power.append(np.mean(music**2))
        background_power.append(np.mean(background**2))
    music_rms = math.sqrt(np.mean(music_power))
    background_rms = math.sqrt(np.mean(background_power))
    model.signal_scale_uv = snr * background_rms / music_rms if music_rms > 0 else 0.0


def recording_eeg(model: ForwardModel, subject_index: int, rng, fs: float, layout: str,
                   segments: list[tuple[int, np.ndarray]], n_times: int) -> np.ndarray:
    """One continuous recording: background + music responses at their onsets + artifacts (µV)."""
    raw = layout == "raw"
    eeg = _background_eeg(model, subject_index, rng, n_times, fs, raw=raw)
    for onset, feature_matrix in segments:
        music = model.music_eeg(feature_matrix, subject_index, fs)
        eeg[:, onset : onset + music.shape[1]] += music
    blinks = _blinks(rng, n_times, fs, model.blink_rate_hz[subject_index])
    # the authors' cleaning removed most of the ocular activity; a residue stays in the cleaned layout
    eeg += np.outer(model.eye_pattern, blinks * (1.0 if raw else 0.25))
    if raw:
        t = np.arange(n_times) / fs
        # 60 Hz mains (US recordings) and its third harmonic; electrodes differ in impedance, hence
        # in amplitude and phase, so the pick-up survives re-referencing
        line_gain = rng.uniform(2.0, 15.0, (eeg.shape[0], 1))
        phase = rng.normal(0.0, 0.3, (eeg.shape[0], 1))
        wobble = 1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.01, 0.05) * t)
        eeg += line_gain * wobble * (np.sin(2 * np.pi * 60.0 * t + phase) + 0.3 * np.sin(2 * np.pi * 180.0 * t + 1.0 + 3 * phase))
        # slow drift: a random walk drawn at 2 Hz and interpolated (electrode potentials wander)
        knots = np.arange(0.0, n_times / fs + 1.0, 0.5)
        walk = np.cumsum(rng.standard_normal((eeg.shape[0], len(knots))), axis=1) * (30.0 / math.sqrt(len(knots)))
        times = np.arange(n_times) / fs
        eeg += np.stack([np.interp(times, knots, row) for row in walk])
        eeg += rng.normal(0.0, 300.0, (eeg.shape[0], 1))  # electrode offsets
    return _reference(eeg, layout)
