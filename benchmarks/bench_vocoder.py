"""Vocoder check: the tiny backbone's Griffin-Lim, batched in torch, against librosa's, on the same mels.

Without a neural vocoder every generated clip goes mel → linear magnitude (non-negative least squares)
→ waveform (Griffin-Lim, 32 iterations). On two CPU cores that used to cost more than a clip's 20
denoising steps. This script measures, in one run, on the same batch of real clip mels:

1. the least-squares step with the dense filterbank against the sparse one (time, largest difference);
2. ``librosa.griffinlim`` clip by clip against :func:`eeg2music.audio.griffin_lim` on the batch (time per
   clip, largest waveform difference relative to the peak, and the log-mel distance of each result to the
   mel it inverts).

Usage::

    python benchmarks/bench_vocoder.py [--clips 8] [--repeats 3] [--iters 32]

Prints a table.
"""

from __future__ import annotations

import argparse
import time

import librosa
import numpy as np
import torch

from eeg2music.audio import (
    CLIP_SAMPLES,
    HOP_LENGTH,
    N_FFT,
    STFT_PADDING,
    WIN_LENGTH,
    _as_mel_array,
    griffin_lim,
    mel_filterbank,
    mel_to_linear_magnitude,
    waveform_to_mel,
)
from eeg2music.data.music import synthesize_song


def _dense_least_squares(mel, n_iter: int = 100) -> torch.Tensor:
    """The previous implementation: the same multiplicative updates with the dense (64, 513) filterbank."""
    target = torch.from_numpy(np.exp(_as_mel_array(mel))).float()
    basis = torch.from_numpy(mel_filterbank())
    numerator = basis.T @ target
    magnitude = numerator.clamp_min(1e-12)
    for _ in range(n_iter):
        magnitude = magnitude * numerator / (basis.T @ (basis @ magnitude) + 1e-12)
    return magnitude


def _librosa_griffin_lim(magnitude: np.ndarray, n_iter: int, seed: int) -> np.ndarray:
    """librosa on each clip from the seed's phase (as the pipeline inverted clips before)."""
    frames = magnitude.shape[-1]
    waves = [librosa.griffinlim(clip, n_iter=n_iter, hop_length=HOP_LENGTH, win_length=WIN_LENGTH, n_fft=N_FFT,
                                window="hann", center=False, length=(frames - 1) * HOP_LENGTH + N_FFT,
                                random_state=np.random.default_rng(seed))
             for clip in magnitude]
    return np.stack(waves)[..., STFT_PADDING : STFT_PADDING + CLIP_SAMPLES]


def _best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8, help="clips in the batch (notebook 05's batch size is 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    parser.add_argument("--iters", type=int, default=32, help="Griffin-Lim iterations (the tiny backbone's 32)")
    args = parser.parse_args(argv)

    # Real music clips from the simulator's song synthesiser, cut on the 3.5 s grid.
    song = synthesize_song(21, seconds=args.clips * 3.5, sr=16000, seed=0).astype(np.float32)
    waves = torch.from_numpy(np.stack([song[k * CLIP_SAMPLES : (k + 1) * CLIP_SAMPLES] for k in range(args.clips)]))
    mel = waveform_to_mel(waves.float())
    print(f"{args.clips} clips of 3.5 s, {torch.get_num_threads()} torch threads, best of {args.repeats}")

    dense_s, dense = _best_of(args.repeats, lambda: _dense_least_squares(mel))
    sparse_s, sparse = _best_of(args.repeats, lambda: mel_to_linear_magnitude(mel))
    magnitude = sparse.numpy()
    librosa_s, theirs = _best_of(args.repeats, lambda: _librosa_griffin_lim(magnitude, args.iters, seed=0))
    total_s, ours = _best_of(args.repeats, lambda: griffin_lim(mel, n_iter=args.iters, seed=0))
    ours = ours.numpy()

    def mel_error(wave: np.ndarray) -> float:
        again = waveform_to_mel(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)))
        return float((again - mel)[..., :350, :].abs().mean())

    per_clip = 1000 / args.clips
    rows = [
        ("least squares, dense filterbank", dense_s * per_clip, ""),
        ("least squares, sparse filterbank", sparse_s * per_clip,
         f"max |Δ| / max = {float((sparse - dense).abs().max() / dense.abs().max()):.1e}"),
        ("Griffin-Lim, librosa (after least squares)", librosa_s * per_clip, f"log-mel error {mel_error(theirs):.3f}"),
        ("least squares + Griffin-Lim, torch (eeg2music)", total_s * per_clip,
         f"log-mel error {mel_error(ours):.3f}; max |Δ wave| / peak = {np.abs(ours - theirs).max() / np.abs(theirs).max():.1e}"),
    ]
    print("| step | ms per clip | |\n|---|---|---|")
    for name, ms, detail in rows:
        print(f"| {name} | {ms:.0f} | {detail} |")
    before = (dense_s + librosa_s) * per_clip
    print(f"vocoding before {before:.0f} ms per clip, now {total_s * per_clip:.0f} ms: {before / (total_s * per_clip):.2f}× faster")


if __name__ == "__main__":
    main()
