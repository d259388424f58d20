"""AudioLDM2's audio front end: waveform → log-mel spectrogram → waveform (Griffin-Lim).

The latent diffusion backbone never sees audio: its VAE encodes a *log-mel spectrogram* computed
exactly as AudioLDM / AudioLDM2 compute it when they train (``TacotronSTFT.mel_spectrogram`` in the
authors' code, the convention diffusers' ``AudioLDM2Pipeline`` and its ``SpeechT5HifiGan`` vocoder
inherit):

1. **Waveform normalisation** (AudioLDM's ``normalize_wav``, applied per clip when the training data
   are read): remove the mean, scale the peak to 0.5.
2. **Reflect padding** of ``(n_fft - hop) / 2 = 432`` samples on each side, then an STFT with
   ``center=False`` (n_fft 1024, hop 160, Hann window 1024), so a clip of ``S`` samples gives
   ``S // 160`` frames: 3.5 s at 16 kHz → 350 frames at 100 frames/s.
3. **Magnitude** (not power) spectrum, projected on 64 mel filters (librosa's Slaney-style filters,
   0–8 kHz).
4. **Log compression** ``log(clamp(x, 1e-5))`` (natural log; -11.51 is silence).
5. **Layout** ``(B, 1, frames, 64)``: time is the VAE's "height", mel bins its "width". Frames are
   zero-padded at the end to a multiple of the VAE's downsampling factor (4), as AudioLDM's
   ``_pad_spec`` pads and ``AudioLDM2Pipeline`` rounds its spectrogram height up: 350 → 352, so the
   latent of a clip is ``(8, 88, 16)``.

The way back, for a backbone without a neural vocoder, is Griffin-Lim (librosa's algorithm, batched in
torch): the mel magnitudes are mapped back to a linear-frequency magnitude spectrogram by non-negative
least squares and a phase is estimated iteratively.

The module also holds the *auditory features* of a stimulus (:func:`auditory_features`: band envelopes,
spectral-flux onsets, beat pulse at an EEG rate), which drive the simulator's EEG
(:mod:`eeg2music.data.simulate`) and give the note onsets of :func:`eeg2music.data.summary.note_onsets`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import librosa
import numpy as np
import soxr
import torch
import torch.nn.functional as F
from scipy.ndimage import uniform_filter1d
from scipy.signal import istft, stft

#: Sample rate of every waveform the backbone reads or writes (Hz).
SAMPLE_RATE = 16000


#: Length of one EEG/music clip (s) — every demo clip of the paper's authors is 3.5 s.
CLIP_SECONDS = 3.5


#: Samples in one clip at :data:`SAMPLE_RATE`.
CLIP_SAMPLES = int(round(CLIP_SECONDS * SAMPLE_RATE))


#: STFT size (samples).
N_FFT = 1024


#: STFT hop (samples): 10 ms, i.e. 100 mel frames per second.
HOP_LENGTH = 160


#: STFT window length (samples; Hann).
WIN_LENGTH = 1024


#: Number of mel bins.
N_MELS = 64


#: Lowest and highest mel filter edge (Hz).
FMIN = 0.0


FMAX = 8000.0


#: Floor applied before the log (AudioLDM's ``dynamic_range_compression``); log(1e-5) ≈ -11.51 is silence.
LOG_FLOOR = 1e-5


#: Peak amplitude after AudioLDM's per-clip waveform normalisation.
NORMALIZED_PEAK = 0.5


#: The VAE of AudioLDM2 (and of the tiny backbone) halves time and frequency twice.
VAE_DOWNSAMPLING = 4


#: Reflect padding on each side before the ``center=False`` STFT (AudioLDM's convention).
STFT_PADDING = (N_FFT - HOP_LENGTH) // 2


def n_frames(n_samples: int) -> int:
    """Mel frames of a waveform of ``n_samples`` samples (before padding to the VAE factor).

    With AudioLDM's padding this is ``n_samples // HOP_LENGTH`` (350 for a 3.5 s clip).
    """
    padded = n_samples + 2 * STFT_PADDING
    if padded < N_FFT:
        raise ValueError(f"a waveform of {n_samples} samples is too short for one STFT frame")
    return 1 + (padded - N_FFT) // HOP_LENGTH


def padded_frames(frames: int, multiple: int = VAE_DOWNSAMPLING) -> int:
    """Round a number of mel frames up to a multiple of the VAE's downsampling factor (350 → 352)."""
    return int(math.ceil(frames / multiple) * multiple)


#: Mel frames of one clip (350) and after padding for the VAE (352).
CLIP_FRAMES = n_frames(CLIP_SAMPLES)


CLIP_FRAMES_PADDED = padded_frames(CLIP_FRAMES)


@lru_cache(maxsize=4)
def mel_filterbank() -> np.ndarray:
    """AudioLDM's mel filters, ``(64, 513)`` float32: librosa's Slaney mel scale and area normalisation."""

    return librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX, htk=False, norm="slaney"
    ).astype(np.float32)


def normalize_waveform(wave: torch.Tensor | np.ndarray) -> torch.Tensor:
    """AudioLDM's per-clip normalisation: subtract the mean, scale the peak to 0.5.

    Parameters
    ----------
    wave : Tensor or ndarray, shape (..., samples)
        Waveforms; every row is normalised on its own.

    Returns
    -------
    Tensor
        Float32 tensor of the same shape (a silent row stays silent).
    """
    wave = torch.as_tensor(wave, dtype=torch.float32)
    centered = wave - wave.mean(dim=-1, keepdim=True)
    peak = centered.abs().amax(dim=-1, keepdim=True)
    return centered / (peak + 1e-8) * NORMALIZED_PEAK


class MelFrontEnd(torch.nn.Module):
    """Waveform → AudioLDM2 log-mel spectrogram, as a torch module (runs on any device, batched).

    Parameters
    ----------
    normalize : bool
        Apply AudioLDM's per-clip waveform normalisation first (what the backbones were trained on).
    pad_to_multiple : int
        Zero-pad the frame axis at the end to a multiple of this (the VAE factor, 4); 1 disables it.

    Notes
    -----
    Input ``(B, samples)`` (or ``(samples,)``) at 16 kHz; output ``(B, 1, frames, 64)`` float32 with
    ``frames = padded_frames(samples // 160)``.
    """

    def __init__(self, normalize: bool = True, pad_to_multiple: int = VAE_DOWNSAMPLING):
        super().__init__()
        self.normalize = normalize
        self.pad_to_multiple = int(pad_to_multiple)
        self.register_buffer("mel_basis", torch.from_numpy(mel_filterbank()), persistent=False)
        self.register_buffer("window", torch.hann_window(WIN_LENGTH), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.ndim == 1:
            wave = wave[None]
        if wave.ndim != 2:
            raise ValueError(f"expected a waveform of shape (batch, samples), got {tuple(wave.shape)}")
        wave = wave.to(device=self.mel_basis.device, dtype=torch.float32)
        if self.normalize:
            wave = normalize_waveform(wave)
        padded = torch.nn.functional.pad(wave[:, None], (STFT_PADDING, STFT_PADDING), mode="reflect")[:, 0]
        spectrum = torch.stft(
            padded,
            N_FFT,
            hop_length=HOP_LENGTH,
            win_length=WIN_LENGTH,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        ).abs()
        mel = torch.log(torch.clamp(self.mel_basis @ spectrum, min=LOG_FLOOR))  # (B, 64, frames)
        mel = mel.transpose(1, 2)[:, None]  # (B, 1, frames, 64): time is the image height
        frames = mel.shape[2]
        target = padded_frames(frames, self.pad_to_multiple) if self.pad_to_multiple > 1 else frames
        if target > frames:
            # AudioLDM's _pad_spec pads the log-mel with zeros (not with silence).
            mel = torch.nn.functional.pad(mel, (0, 0, 0, target - frames))
        return mel


_FRONT_ENDS: dict[tuple[str, bool, int], MelFrontEnd] = {}


def waveform_to_mel(
    wave: torch.Tensor | np.ndarray, *, normalize: bool = True, pad_to_multiple: int = VAE_DOWNSAMPLING
) -> torch.Tensor:
    """AudioLDM2's log-mel spectrogram of 16 kHz waveforms.

    Parameters
    ----------
    wave : Tensor or ndarray, shape (B, samples) or (samples,)
        Mono audio at 16 kHz (a 3.5 s clip has 56 000 samples).
    normalize : bool
        Apply AudioLDM's per-clip normalisation (mean removed, peak 0.5) first, as the backbones saw in
        training. Set False for the bare transform.
    pad_to_multiple : int
        Zero-pad frames at the end to this multiple (4 = the VAE factor; 1 = no padding).

    Returns
    -------
    Tensor, shape (B, 1, frames, 64)
        Natural-log mel magnitudes, float32, on the input's device (CPU for NumPy input);
        ``(B, 1, 352, 64)`` for 3.5 s clips.
    """
    tensor = torch.as_tensor(wave)
    key = (str(tensor.device), bool(normalize), int(pad_to_multiple))
    front_end = _FRONT_ENDS.get(key)
    if front_end is None:
        front_end = MelFrontEnd(normalize=normalize, pad_to_multiple=pad_to_multiple).to(tensor.device)
        _FRONT_ENDS[key] = front_end
    with torch.no_grad():
        return front_end(tensor)


def log_mel_to_db(mel: torch.Tensor | np.ndarray):
    """Natural-log mel magnitudes (what :func:`waveform_to_mel` returns) in dB: ``20 / ln 10`` × log-mel."""
    return mel * (20.0 / math.log(10.0))


def mel_db(wave: np.ndarray) -> np.ndarray:
    """The backbone's view of a clip: AudioLDM2 log-mel (per-clip normalised), in dB, ``(frames, 64)``."""
    mel = waveform_to_mel(np.asarray(wave, np.float32)[None], normalize=True)[0, 0, :CLIP_FRAMES]
    return log_mel_to_db(mel.numpy())


def display_mel_db(audio: np.ndarray, sr: int, n_mels: int = 64, fmax: float = 8000.0) -> np.ndarray:
    """A log-mel spectrogram to look at, of audio at any rate: power in dB below its maximum (80 dB range), hop 10 ms.

    Not the backbone's view (that is :func:`mel_db`): librosa's centred power mel spectrogram at the
    audio's own rate, for figures of a stimulus.
    """

    mel = librosa.feature.melspectrogram(y=np.asarray(audio, dtype=np.float32), sr=sr, n_fft=1024,
                                         hop_length=max(1, sr // 100), n_mels=n_mels, fmax=min(fmax, sr / 2))
    return librosa.power_to_db(mel, ref=np.max, top_db=80)


def _as_mel_array(mel: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B, 1, frames, 64) / (B, frames, 64) / (frames, 64) log-mel → float64 array (B, 64, frames)."""
    array = mel.detach().float().cpu().numpy() if isinstance(mel, torch.Tensor) else np.asarray(mel, dtype=np.float64)
    if array.ndim == 4:
        if array.shape[1] != 1:
            raise ValueError(f"expected a mel of shape (B, 1, frames, {N_MELS}), got {array.shape}")
        array = array[:, 0]
    elif array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[-1] != N_MELS:
        raise ValueError(f"expected a mel of shape (B, 1, frames, {N_MELS}), got {np.shape(mel)}")
    return np.ascontiguousarray(array.transpose(0, 2, 1), dtype=np.float64)


@lru_cache(maxsize=1)
def _sparse_filterbanks() -> tuple[torch.Tensor, torch.Tensor]:
    """The mel filters and their transpose as sparse CSR tensors (3 % of the entries are non-zero)."""
    dense = torch.from_numpy(mel_filterbank())
    with warnings.catch_warnings():  # torch marks sparse CSR "beta"; the two products used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return dense.to_sparse_csr(), dense.T.contiguous().to_sparse_csr()


def mel_to_linear_magnitude(mel: torch.Tensor | np.ndarray, n_iter: int = 100) -> torch.Tensor:
    """Linear-frequency STFT magnitudes whose mel projection best matches a log-mel spectrogram.

    Solves the non-negative least-squares problem ``min_S ||mel_basis @ S - exp(mel)||²``, ``S ≥ 0``
    (what ``librosa.feature.inverse.mel_to_stft`` solves) with multiplicative updates, batched in torch:
    librosa's L-BFGS-B solver takes about a second per clip here, these updates reach a lower residual
    in a few tens of milliseconds. Each mel filter spans a few linear bins, so the filterbank is applied
    as a sparse matrix (a third of the time of the dense products, to float precision).

    Parameters
    ----------
    mel : Tensor or ndarray, shape (B, 1, frames, 64)
        Natural-log mel magnitudes.
    n_iter : int
        Multiplicative-update iterations.

    Returns
    -------
    Tensor, shape (B, 513, frames)
        Non-negative float32 magnitudes on the CPU.
    """
    target = torch.from_numpy(np.exp(_as_mel_array(mel))).float()  # (B, 64, frames)
    batch, _, frames = target.shape
    basis, basis_t = _sparse_filterbanks()
    # Every frame of every clip is one column: (64, B·frames).
    numerator = basis_t @ target.permute(1, 0, 2).reshape(N_MELS, batch * frames)
    # The transposed filterbank is a positive start; every update keeps the estimate non-negative.
    magnitude = numerator.clamp_min(1e-12)
    for _ in range(n_iter):
        magnitude = magnitude * numerator / (basis_t @ (basis @ magnitude) + 1e-12)
    return magnitude.reshape(-1, batch, frames).permute(1, 0, 2).contiguous()


#: Hops one STFT frame spans, rounded up (1024 / 160 → 7): frames are overlap-added hop by hop.
_HOPS_PER_FRAME = -(-N_FFT // HOP_LENGTH)


def _overlap_add(frames: torch.Tensor) -> torch.Tensor:
    """(B, frames, n_fft) windowed frames → (B, (frames - 1) * hop + n_fft) waveform, summed where they overlap."""
    batch, count, _ = frames.shape
    # Pad each frame to a whole number of hops; hop k of frame f then lands on output hop f + k.
    chunks = F.pad(frames, (0, _HOPS_PER_FRAME * HOP_LENGTH - N_FFT)).reshape(batch, count, _HOPS_PER_FRAME, HOP_LENGTH)
    out = frames.new_zeros(batch, count + _HOPS_PER_FRAME - 1, HOP_LENGTH)
    for k in range(_HOPS_PER_FRAME):
        out[:, k : k + count] += chunks[:, :, k]
    return out.reshape(batch, -1)[:, : (count - 1) * HOP_LENGTH + N_FFT]


def _istft(spectrum: torch.Tensor, window: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_stft`: (B, frames, 513) → waveform, divided by the summed squared window."""
    return _overlap_add(torch.fft.irfft(spectrum, n=N_FFT, dim=-1) * window) / norm


def _stft(wave: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """``center=False`` STFT, (B, samples) → (B, frames, 513) complex (frames first: the FFT runs on the last axis)."""
    return torch.fft.rfft(wave.unfold(-1, N_FFT, HOP_LENGTH) * window, dim=-1)


def griffin_lim(
    mel: torch.Tensor | np.ndarray,
    n_iter: int = 32,
    *,
    length: int | None = CLIP_SAMPLES,
    seed: int = 0,
    momentum: float = 0.99,
) -> torch.Tensor:
    """Invert AudioLDM2 log-mel spectrograms to waveforms with Griffin-Lim.

    Parameters
    ----------
    mel : Tensor or ndarray, shape (B, 1, frames, 64)
        Natural-log mel magnitudes as :func:`waveform_to_mel` returns them (padding frames included).
    n_iter : int
        Griffin-Lim iterations.
    length : int or None
        Samples to return per clip (default one clip, 56 000); None → ``frames * 160``.
    seed : int
        Seed of the random initial phase.
    momentum : float
        The fast Griffin-Lim's momentum (Perraudin et al. 2013; librosa's default 0.99).

    Returns
    -------
    Tensor, shape (B, length)
        Float32 waveforms at 16 kHz on the CPU (peak about 0.5 for a normalised clip).

    Notes
    -----
    The mel magnitudes are first mapped to linear-frequency magnitudes
    (:func:`mel_to_linear_magnitude`). Griffin-Lim then runs with ``center=False`` and the result is
    shifted by the 432 samples of reflect padding, so the waveform lines up sample for sample with the
    clip the mel was computed from.

    This is ``librosa.griffinlim`` on each clip, step for step (the same random phase from
    ``numpy.random.default_rng(seed)``, the same momentum update and window normalisation), batched in
    torch's FFT; every clip starts from the same phase, so the batch does not change a clip's waveform.
    On real clips the two waveforms agree to about 1e-3 of the peak after 32 iterations, with the same
    distance to the target mel. It is two to three times as fast on two CPU cores
    (``benchmarks/bench_vocoder.py``), where librosa's made the tiny backbone's vocoder cost more than
    its 20 denoising steps.
    """

    if n_iter < 1:
        raise ValueError(f"n_iter must be at least 1, got {n_iter}")
    magnitude = mel_to_linear_magnitude(mel)  # (B, 513, frames)
    frames = magnitude.shape[-1]
    out_length = frames * HOP_LENGTH if length is None else int(length)
    # librosa's random initial phase for one clip, the same for every clip of the batch: a clip's
    # waveform must not depend on its neighbours. Drawn in librosa's (513, frames) layout, then frames first.
    rng = np.random.default_rng(seed)
    phase = np.exp(2j * np.pi * rng.random(size=magnitude.shape[1:])).astype(np.complex64)
    angles = torch.from_numpy(phase).T.expand(len(magnitude), -1, -1).contiguous()
    magnitude = magnitude.transpose(1, 2).contiguous()  # (B, frames, 513)
    window = torch.hann_window(WIN_LENGTH, periodic=True)
    # Where no frame overlaps (the first and last samples) the squared-window sum is 0: divide by 1 there.
    window_sum = _overlap_add((window**2).expand(1, frames, -1))[0]
    norm = torch.where(window_sum > torch.finfo(torch.float32).tiny, window_sum, torch.ones_like(window_sum))
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        rebuilt = _stft(_istft(magnitude * angles, window, norm), window)
        # Fast Griffin-Lim: step past the projection by the momentum, then keep only the phase.
        angles = torch.sgn(rebuilt - (momentum / (1 + momentum)) * previous)
        previous = rebuilt
    wave = _istft(magnitude * angles, window, norm)[..., STFT_PADDING : STFT_PADDING + out_length]
    if wave.shape[-1] < out_length:
        wave = F.pad(wave, (0, out_length - wave.shape[-1]))
    return wave.float().contiguous()


def player(wave: torch.Tensor | np.ndarray, rate: int = SAMPLE_RATE):
    """An ``IPython.display.Audio`` player that keeps the clip's loudness (``normalize=False``).

    A generated clip may overshoot ±1 (the decoder and vocoder are not bounded); it is clipped for
    playback only — as writing it to a 16-bit WAV would — instead of being rescaled, so that quiet and
    loud reconstructions still sound quiet and loud next to each other.
    """
    from IPython.display import Audio

    array = wave.detach().float().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave, dtype=np.float32)
    return Audio(np.clip(array.reshape(-1), -1.0, 1.0), rate=rate, normalize=False)


#: Sample rate the auditory features are computed at (Hz).
FEATURE_SR = 16000


FEATURE_HOP = 64  # 4 ms frames: 250 Hz feature rate before resampling to the EEG rate


#: Edges of the octave-wide bands of :attr:`AuditoryFeatures.bands` (Hz).
FEATURE_BAND_EDGES_HZ = (40.0, 120.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0)


@dataclass
class AuditoryFeatures:
    """What the auditory cortex follows in music, sampled at the EEG rate.

    Attributes
    ----------
    fs : float
        Sampling rate of the features (Hz).
    band_edges_hz : tuple of float
        Edges of the frequency bands of :attr:`bands`.
    bands : ndarray, shape (n_bands, n_times)
        Compressed band envelopes (amplitude ** 0.6): which instruments are playing.
    envelope : ndarray, shape (n_times,)
        The broadband envelope (compressed amplitude), the classic target of envelope decoding.
    onsets : ndarray, shape (n_times,)
        Spectral flux (half-wave rectified change of the log band energies): note onsets.
    beat : ndarray, shape (n_times,)
        Predominant local pulse (:func:`predominant_local_pulse`): peaks on the beat, in [0, 1].
    """

    fs: float
    band_edges_hz: tuple[float, ...]
    bands: np.ndarray
    envelope: np.ndarray
    onsets: np.ndarray
    beat: np.ndarray

    @property
    def names(self) -> list[str]:
        edges = self.band_edges_hz
        return [f"band {edges[i]:g}–{edges[i + 1]:g} Hz" for i in range(len(edges) - 1)] + ["onsets", "beat"]

    @property
    def n_times(self) -> int:
        return self.bands.shape[1]

    def matrix(self) -> np.ndarray:
        """All features as rows, ``(n_bands + 2, n_times)``: the bands, then onsets and beat."""
        return np.vstack([self.bands, self.onsets[None], self.beat[None]])


def predominant_local_pulse(novelty: np.ndarray, frame_rate: float, tempo_min: float = 40.0, tempo_max: float = 200.0,
                            window_s: float = 6.0) -> np.ndarray:
    """Predominant local pulse (Grosche & Müller, 2011), as ``librosa.beat.plp`` computes it.

    Each window of the novelty curve is reduced to its strongest periodicity between ``tempo_min``
    and ``tempo_max`` BPM (a windowed sinusoid with that tempo and phase); overlap-adding them gives a
    pulse that peaks on the beat. Unlike librosa's, the sinusoids keep their relative strength, so the
    pulse fades where the music has no beat. Computed with scipy's STFT (librosa's inverse STFT needs
    a numba compilation that costs seconds in every new process).

    Returns
    -------
    ndarray
        Half-wave rectified pulse, same length as ``novelty``, maximum 1 (0 for a silent input).
    """

    n = len(novelty)
    # the pulse lives below 4 Hz: work at ~50 Hz, then interpolate back
    step = max(1, int(frame_rate // 50))
    coarse = novelty[::step] - np.mean(novelty)
    rate = frame_rate / step
    window = max(16, int(window_s * rate))
    window = min(window, max(16, len(coarse)))
    nfft = 1 << int(math.ceil(math.log2(window * 4)))
    hop = max(1, window // 16)
    freqs, _, spectrum = stft(coarse, fs=rate, window="hann", nperseg=window, noverlap=window - hop, nfft=nfft, boundary="even", padded=True)
    in_range = (freqs >= tempo_min / 60.0) & (freqs <= tempo_max / 60.0)
    spectrum = np.where(in_range[:, None], spectrum, 0.0)
    peak = np.argmax(np.abs(spectrum), axis=0)
    kept = np.zeros_like(spectrum)
    columns = np.arange(spectrum.shape[1])
    kept[peak, columns] = spectrum[peak, columns]
    _, pulse = istft(kept, fs=rate, window="hann", nperseg=window, noverlap=window - hop, nfft=nfft, boundary=True)
    pulse = np.maximum(pulse[: len(coarse)], 0.0)
    pulse = np.pad(pulse, (0, max(0, len(coarse) - len(pulse))))
    top = np.max(pulse)
    pulse = pulse / top if top > 0 else pulse
    return np.interp(np.arange(n) / frame_rate, np.arange(len(pulse)) / rate, pulse)


def auditory_features(audio: np.ndarray, sr: int, fs: float, n_times: int | None = None) -> AuditoryFeatures:
    """Band envelopes, onsets and beat of ``audio``, at the EEG sampling rate ``fs``.

    The audio is resampled to 16 kHz; a 1024-point STFT with 4 ms hops gives the power in seven
    octave-wide bands (40 Hz – 8 kHz). Envelopes are compressed (amplitude ** 0.6, as in the
    envelope-tracking literature), onsets are the half-wave rectified change of the log band energies
    (spectral flux), the beat is the predominant local pulse of the onsets. Everything is then
    averaged and resampled to ``fs``.

    Parameters
    ----------
    audio : ndarray, shape (n_samples,)
        Mono audio.
    sr : int
        Its sampling rate.
    fs : float
        The rate of the returned features (e.g. 125 Hz for cleaned NMED-T, 1000 Hz for raw).
    n_times : int, optional
        Number of feature samples; default ``round(len(audio) / sr * fs)``.
    """

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {audio.shape}")
    if int(sr) != FEATURE_SR:
        audio = soxr.resample(audio, int(sr), FEATURE_SR, quality="HQ")
    freqs, _, spectrum = stft(audio, fs=FEATURE_SR, window="hann", nperseg=1024, noverlap=1024 - FEATURE_HOP, boundary="even", padded=True)
    power = np.abs(spectrum) ** 2
    edges = FEATURE_BAND_EDGES_HZ
    band_power = np.stack([power[(freqs >= lo) & (freqs < hi)].sum(axis=0) for lo, hi in zip(edges[:-1], edges[1:])])
    bands = np.sqrt(band_power) ** 0.6
    envelope = np.sqrt(band_power.sum(axis=0)) ** 0.6
    log_bands = np.log1p(band_power / 1e-6)
    onsets = np.maximum(np.diff(log_bands, axis=1, prepend=log_bands[:, :1]), 0.0).mean(axis=0)
    frame_rate = FEATURE_SR / FEATURE_HOP
    beat = predominant_local_pulse(onsets, frame_rate)
    frame_times = np.arange(bands.shape[1]) / frame_rate
    n_times = int(round(len(audio) / FEATURE_SR * fs)) if n_times is None else int(n_times)
    times = np.arange(n_times) / fs

    def to_fs(x: np.ndarray) -> np.ndarray:
        if fs < frame_rate:  # average over the output sample's span first (anti-aliasing)
            x = uniform_filter1d(x, size=max(1, int(round(frame_rate / fs))), axis=-1, mode="nearest")
        if x.ndim == 1:
            return np.interp(times, frame_times, x).astype(np.float32)
        return np.stack([np.interp(times, frame_times, row) for row in x]).astype(np.float32)

    return AuditoryFeatures(float(fs), tuple(edges), to_fs(bands), to_fs(envelope), to_fs(onsets), to_fs(beat))
