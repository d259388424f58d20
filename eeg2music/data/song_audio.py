"""The songs' audio as training data for a backbone: every song read once, split in time, cut at random.

:func:`load_song_audio` reads the stimulus WAVs of an NMED-T folder; :class:`SongSplit` keeps the last
part of each song apart for evaluation; :func:`random_clips` draws 3.5 s clips at random offsets;
:func:`audio_fingerprint` names the audio a backbone was trained on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..audio import CLIP_SAMPLES, CLIP_SECONDS, SAMPLE_RATE
from .nmedt import read_stimulus, scan_nmedt


def load_song_audio(data_root: str | os.PathLike, songs: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Every song's stimulus audio of an NMED-T folder, float32 mono at 16 kHz (``{song_id: audio}``).

    Parameters
    ----------
    data_root : path-like
        An NMED-T folder with its stimuli WAVs (the simulator writes them in ``stimuli/``).
    songs : sequence of int, optional
        Song ids (default: every song the folder has audio for).

    Raises
    ------
    FileNotFoundError
        If the folder has no stimulus audio (or lacks a requested song's WAV), naming what was looked for.
    """

    folder = scan_nmedt(data_root)
    available = sorted(int(song) for song in (folder.stimuli or {}))
    wanted = available if songs is None else [int(song) for song in songs]
    if not wanted:
        raise FileNotFoundError(
            f"{data_root}: no stimulus WAVs found (searched {[str(p) for p in folder.stimuli_dirs]}); the tiny "
            f"backbone is trained on the songs' audio: put the NMED-T stimuli (e.g. FirstFires.wav …) in a "
            f"stimuli/ folder beside the EEG files"
        )
    return {song: read_stimulus(folder, song, sr=SAMPLE_RATE) for song in wanted}


@dataclass(frozen=True)
class SongSplit:
    """Each song's audio cut in time: the head trains the backbone, the tail is held out to evaluate it."""

    train: dict[int, np.ndarray]
    heldout: dict[int, np.ndarray]
    holdout_seconds: float

    @classmethod
    def from_audio(cls, audio: Mapping[int, np.ndarray], holdout_seconds: float) -> "SongSplit":
        """Hold out the last ``holdout_seconds`` of every song (at least one clip must remain for training)."""
        holdout = int(round(holdout_seconds * SAMPLE_RATE))
        train, heldout = {}, {}
        for song, wave in audio.items():
            if len(wave) - holdout < CLIP_SAMPLES:
                raise ValueError(
                    f"song {song}: {len(wave) / SAMPLE_RATE:.1f} s of audio leaves less than one {CLIP_SECONDS} s clip "
                    f"for training after holding out {holdout_seconds} s"
                )
            train[song] = np.ascontiguousarray(wave[: len(wave) - holdout], dtype=np.float32)
            heldout[song] = np.ascontiguousarray(wave[len(wave) - holdout :], dtype=np.float32)
        return cls(train, heldout, float(holdout_seconds))

    def heldout_clips(self) -> tuple[np.ndarray, np.ndarray]:
        """Non-overlapping 3.5 s clips of the held-out tails: ``(clips (N, 56000), song ids (N,))``."""
        clips, labels = [], []
        for song, wave in sorted(self.heldout.items()):
            for start in range(0, len(wave) - CLIP_SAMPLES + 1, CLIP_SAMPLES):
                clips.append(wave[start : start + CLIP_SAMPLES])
                labels.append(song)
        if not clips:
            return np.zeros((0, CLIP_SAMPLES), np.float32), np.zeros(0, int)
        return np.stack(clips), np.asarray(labels)


def random_clips(audio: Mapping[int, np.ndarray], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 3.5 s crops (songs drawn uniformly, offsets uniform in each song): ``(clips, song ids)``."""
    songs = sorted(audio)
    labels = rng.choice(songs, size=int(n))
    clips = np.empty((int(n), CLIP_SAMPLES), np.float32)
    for i, song in enumerate(labels):
        wave = audio[int(song)]
        start = int(rng.integers(0, len(wave) - CLIP_SAMPLES + 1))
        clips[i] = wave[start : start + CLIP_SAMPLES]
    return clips, labels


def audio_fingerprint(audio: Mapping[int, np.ndarray]) -> str:
    """A short hash of the songs' audio (which data a backbone was trained on)."""
    digest = hashlib.sha256()
    for song in sorted(audio):
        digest.update(str(song).encode())
        digest.update(np.ascontiguousarray(audio[song], dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]
