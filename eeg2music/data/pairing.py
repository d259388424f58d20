"""Pairing the EEG windows with the song audio, and what notebook 02 hands to the later stages.

:func:`pair_eeg_and_audio` checks that each recording and its stimulus WAV agree in length before any
window is cut; :func:`load_windows` builds the split datasets of :mod:`eeg2music.data.windows` from a
cache; :func:`write_preprocess_summary` / :func:`load_stage_windows` record and reload exactly the
splits notebook 02 made.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import soundfile as sf

from ..params import ParameterError
from ..paths import stage_dir
from ..utils import read_json, write_json
from .cache import CachedRecording, CacheIndex, open_cache
from .nmedt import STIMULUS_TOLERANCE_S, NMEDTError, as_folder, read_stimulus
from .summary import dataset_summary
from .windows import (
    EEGMusicWindows,
    Splits,
    WindowRef,
    WindowSpec,
    make_splits,
    window_samples,
)


def load_stimuli(folder, songs: Sequence[int], sr: int = 16000, stimuli_dir=None) -> dict[int, np.ndarray]:
    """Song → float32 mono waveform at ``sr`` (each song read and resampled once).

    ``folder`` is an NMED-T folder (path or :class:`~eeg2music.data.nmedt.NMEDTFolder`); a missing WAV is
    an error naming the files looked for and where (:func:`eeg2music.data.nmedt.read_stimulus`).
    ``stimuli_dir`` is a folder of WAVs searched first when ``folder`` is a path.
    """

    folder = as_folder(folder, stimuli_dir or None)
    return {int(song): read_stimulus(folder, int(song), sr=sr) for song in songs}


def windows_from_splits(
    index: CacheIndex,
    splits: Mapping[str, Sequence[WindowRef]],
    spec: WindowSpec | None = None,
    *,
    audio: Mapping[int, np.ndarray] | None = None,
    latents: Mapping[tuple[int, int], Any] | None = None,
) -> dict[str, EEGMusicWindows]:
    """One :class:`EEGMusicWindows` per split (sharing the audio or latent table)."""
    spec = spec or getattr(splits, "spec", None) or WindowSpec()
    return {name: EEGMusicWindows(index, refs, spec, audio=audio, latents=latents, name=name) for name, refs in splits.items()}


def load_windows(
    cache,
    spec: WindowSpec | None = None,
    *,
    loso_subject: int | None = None,
    stimuli=None,
    latents: Mapping[tuple[int, int], Any] | None = None,
    song_seconds: Mapping[int, float] | None = None,
    verbose: bool = True,
    stimuli_dir=None,
) -> dict[str, EEGMusicWindows]:
    """The datasets of every split, from a preprocessed cache, in one call.

    Parameters
    ----------
    cache : CacheIndex or path-like
        A cache (:class:`~eeg2music.data.cache.CacheIndex`), a cache folder, or a cache root (its
        latest build), e.g. ``eeg2music.run_inputs.default_cache_dir(smoke)``.
    spec : WindowSpec, optional
    loso_subject : int, optional
        Leave this participant out (see :func:`make_splits`).
    stimuli : None, True, path-like or NMEDTFolder
        Where the audio comes from: None → no audio (EEG and ids only); True → the NMED-T folder the
        cache was built from; otherwise that NMED-T folder. Chunks are then limited to the audio's length.
    latents : mapping (song, chunk) → array, optional
        Encoded clips to return instead of audio.
    song_seconds : mapping song → seconds, optional
        Bound each song's chunks (e.g. by its audio's length, as notebook 02 records it), so that the
        splits are the same with and without audio attached.
    verbose : bool
        Print dropped-window counts and a one-line summary.
    stimuli_dir : path-like, optional
        A folder holding the stimulus WAVs, searched first (when ``stimuli`` is True or a path).

    Returns
    -------
    dict
        Split name → :class:`EEGMusicWindows` (``"train"``, ``"val"``, ``"test"``, ``"ood"``).
    """
    index = cache if isinstance(cache, CacheIndex) else open_cache(cache)
    spec = spec or WindowSpec()
    audio = None
    bounds = {int(song): float(seconds) for song, seconds in (song_seconds or {}).items()}
    if stimuli is not None and stimuli is not False:
        audio = load_stimuli(index.data_root if stimuli is True else stimuli, index.songs, sr=spec.audio_sr,
                             stimuli_dir=stimuli_dir)
        for song, wave in audio.items():
            bounds[song] = min(bounds.get(song, np.inf), len(wave) / spec.audio_sr)
    splits = make_splits(index, spec, loso_subject=loso_subject, song_seconds=bounds or None, verbose=verbose)
    datasets = windows_from_splits(index, splits, spec, audio=None if latents is not None else audio, latents=latents)
    if verbose:
        print("[windows] " + ", ".join(f"{name} {len(ds)}" for name, ds in datasets.items())
              + f" windows of {index.n_channels}×{window_samples(index.sfreq, spec.clip_seconds)} from {index.path.name}")
    return datasets


def stimulus_seconds(folder) -> dict[int, float]:
    """Song → length (s) of each stimulus WAV present in an NMED-T folder (headers only, no decoding)."""


    folder = as_folder(folder)
    return {int(song): float(sf.info(str(path)).duration) for song, path in folder.stimuli.items()}


@dataclass(frozen=True)
class Pairing:
    """What :func:`pair_eeg_and_audio` checked: the EEG and audio notebook 02 will cut into windows.

    Attributes
    ----------
    layout : str
        The NMED-T layout read.
    songs, subjects : tuple of int
        The songs with EEG in that layout, and the participants.
    eeg_seconds, audio_seconds : dict
        Song → length (s) of its EEG and of its stimulus WAV.
    lost_windows : dict
        Song → windows a length mismatch between the two costs (only when it was allowed).
    splits : Splits
        The splits as the cache will give them (counts and dropped windows are known before any work).
    """

    layout: str
    songs: tuple[int, ...]
    subjects: tuple[int, ...]
    eeg_seconds: dict[int, float]
    audio_seconds: dict[int, float]
    lost_windows: dict[int, int]
    splits: Splits

    @property
    def song_seconds(self) -> dict[int, float]:
        """Song → audio length: what bounds each song's chunks (:func:`make_splits`'s ``song_seconds``)."""
        return dict(self.audio_seconds)


def pair_eeg_and_audio(
    folder,
    layout: str = "auto",
    spec: WindowSpec | None = None,
    *,
    loso_subject: int | None = None,
    allow_length_mismatch: bool = False,
    tolerance_s: float = STIMULUS_TOLERANCE_S,
    sfreq: float | None = None,
) -> Pairing:
    """Check, from file headers only, that an NMED-T folder's EEG can be paired with its music.

    Notebook 02 calls it right after scanning the folder, before any EEG is read or anything written:

    * ``spec.ood_song`` must be one of the folder's songs, and not the only one;
    * ``loso_subject`` must be one of its participants (and not the only one);
    * every song must have its stimulus WAV, readable and with samples (the later stages need the audio);
    * each WAV must last as long as its EEG, within ``tolerance_s``: a WAV cut short (or a wrong ``fs``
      in an EEG file, which makes the EEG's length wrong) would silently shorten the song's chunks.
      With ``allow_length_mismatch`` the songs are cut within the shorter of the two, with a warning;
    * the split sizes must fit every song, and the lag must leave every split some windows: the splits
      are made here on the recordings' lengths, exactly as :func:`make_splits` will make them from the
      cache, so what fails later fails now.

    Parameters
    ----------
    folder : NMEDTFolder
        From :func:`eeg2music.data.nmedt.scan_nmedt` (with its ``stimuli_dir``).
    layout : str
        ``"auto"``, ``"cleaned"`` or ``"raw"``.
    spec : WindowSpec, optional
        The window spec notebook 02 will use.
    loso_subject : int, optional
        The participant to hold out.
    allow_length_mismatch : bool
        Pair a WAV and an EEG of different lengths anyway (notebook 02's ``allow_stimulus_mismatch``).
    tolerance_s : float
        How far the two lengths may differ.
    sfreq : float, optional
        The cache's sampling rate when preprocessing resamples (default: the EEG's).

    Returns
    -------
    Pairing

    Raises
    ------
    ParameterError
        ``ood_song``, ``loso_subject`` or the split sizes do not fit this folder (naming the parameter).
    FileNotFoundError
        Songs without a stimulus WAV: naming the WAVs, the folders searched and ``stimuli_dir``.
    NMEDTError
        A WAV that cannot be read or holds no samples, or one whose length differs from its EEG's
        (naming the WAV, both lengths and the windows that would be lost).
    """
    spec = spec or WindowSpec()
    layout = folder.resolve_layout(layout)
    summary = dataset_summary(folder, layout)
    where = f"{folder.root} ({layout} files)"
    eeg_seconds: dict[int, float] = {}
    subjects_of: dict[int, list[int]] = {}
    sources: dict[int, str] = {}
    if layout == "cleaned":
        for described in summary["files"]:
            song = int(described["song"])
            eeg_seconds[song] = described["n_times"] / described["fs"]
            subjects_of[song] = list(described["subjects"])
            sources[song] = f"{described['file']}: {described['n_times']} samples at fs = {described['fs']:g} Hz"
    else:
        for recording in summary["recordings"]:
            for song in recording["onset_samples"]:
                song = int(song)
                eeg_seconds[song] = folder.song_seconds(song)
                subjects_of.setdefault(song, []).append(int(recording["subject"]))
                sources.setdefault(song, f"cut from {recording['file']} at the song's length")
    songs = sorted(eeg_seconds)
    subjects = sorted({subject for members in subjects_of.values() for subject in members})

    if spec.ood_song is not None and spec.ood_song not in eeg_seconds:
        raise ParameterError(
            f"parameter 'ood_song': song {spec.ood_song} has no EEG in {where}, whose songs are {songs}; "
            f"choose one of them, or 0 for no out-of-distribution song"
        )
    if spec.ood_song is not None and len(songs) == 1:
        raise ParameterError(
            f"parameter 'ood_song': song {spec.ood_song} is the only song with EEG in {where}: holding it out "
            f"leaves no song to train on. Add songs, or pass -p ood_song 0 to split its chunks into train/val/test"
        )
    if loso_subject is not None:
        if loso_subject not in subjects:
            raise ParameterError(f"parameter 'loso_subject': participant {loso_subject} has no EEG in {where}; its "
                                 f"participants are {subjects} (or 0 for none)")
        if len(subjects) < 2:
            raise ParameterError(f"parameter 'loso_subject': participant {loso_subject} is the only one in {where}: "
                                 f"holding them out leaves nobody to train on")

    problems = [folder.stimulus_problems[song] for song in songs if song in folder.stimulus_problems]
    if problems:
        raise NMEDTError(f"{problems[0]}; replace it with the song's audio" + (f" (and {problems[1:]})" if problems[1:] else ""))
    missing = [song for song in songs if song not in folder.stimulus_seconds]
    if missing:
        searched = [str(d) for d in folder.stimuli_dirs] or [str(folder.root)]
        raise FileNotFoundError(
            f"no stimulus WAV for song(s) {missing} "
            f"({', '.join(f'{folder.songs[s].wav_name} or song{s}.wav' for s in missing)}): the EEG of {where} is "
            f"paired with the music heard, so every song needs its WAV. Looked in {searched}. Put the WAVs in "
            f"{folder.root / 'stimuli'}, or name their folder with -p stimuli_dir (notebooks 02, 04, 05)"
        )

    lost: dict[int, int] = {}
    lines: list[str] = []
    for song in songs:
        eeg, audio = eeg_seconds[song], folder.stimulus_seconds[song]
        if abs(eeg - audio) <= tolerance_s:
            continue
        n_eeg, n_audio = (int(math.floor(x / spec.clip_seconds + 1e-9)) for x in (eeg, audio))
        chunks_lost = max(n_eeg, n_audio) - min(n_eeg, n_audio)
        lost[song] = chunks_lost * len(subjects_of[song])
        lines.append(
            f"{folder.stimuli[song]}: the stimulus of song {song} lasts {audio:.1f} s, its EEG {eeg:.1f} s "
            f"({sources[song]}); pairing them loses {chunks_lost} of the song's {max(n_eeg, n_audio)} chunks of "
            f"{spec.clip_seconds:g} s, {lost[song]} window(s) of {len(subjects_of[song])} participant(s)"
        )
    if lines:
        why = ("A WAV cut short (or another edit of the song), EEG cut short, or a wrong fs in an EEG file (it sets "
               "the EEG's length) all show this way.")
        if not allow_length_mismatch:
            raise NMEDTError(
                "\n".join(lines) + f"\nStopping before any work: a stimulus and its EEG must last as long as each other "
                f"(within {tolerance_s:g} s). {why} Give the right WAVs (-p stimuli_dir), or pass "
                f"-p allow_stimulus_mismatch true to cut each song within the shorter of the two"
            )
        warnings.warn("\n".join(lines) + f"\nPaired anyway (allow_stimulus_mismatch): each song is cut within the "
                      f"shorter of the two. {why}", stacklevel=2)

    # The splits as make_splits will cut them from the cache: every recording's length is known now.
    fs = float(sfreq or summary["fs"])
    recordings = tuple(
        CachedRecording(subject, song, "", int(round(eeg_seconds[song] * fs)))
        for song in songs for subject in subjects_of[song]
    )
    planned = SimpleNamespace(path=Path(folder.root), songs=tuple(songs), subjects=tuple(subjects), sfreq=fs,
                              recordings=recordings)
    try:
        splits = make_splits(planned, spec, loso_subject=loso_subject, song_seconds=folder.stimulus_seconds,
                             verbose=False)
    except ValueError as err:
        raise ParameterError(
            f"parameters val_fraction/test_fraction/gap_chunks ({spec.val_fraction:g}/{spec.test_fraction:g}/"
            f"{spec.gap_chunks}) and lag_seconds ({spec.lag_seconds:g}) do not fit {where}: {err}"
        ) from None
    return Pairing(layout, tuple(songs), tuple(subjects), eeg_seconds,
                   {song: folder.stimulus_seconds[song] for song in songs}, lost, splits)


#: The summary notebook 02 writes into its ``out_dir``; :func:`load_stage_windows` reads it.
SUMMARY_FILE = "preprocess_summary.json"


def write_preprocess_summary(
    out_dir,
    index: CacheIndex,
    splits: Splits,
    song_seconds: Mapping[int, float] | None = None,
    parameters: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
):
    """Write ``<out_dir>/preprocess_summary.json``: the steps, the cache, the splits and their counts.

    Everything :func:`load_stage_windows` needs to rebuild exactly these splits is in it: the cache
    path, the :class:`WindowSpec`, the held-out participant and the song lengths the chunks were cut in.
    """


    counts = splits.counts()
    datasets = {name: {"windows": len(refs), "clips": len({(r.song, r.chunk) for r in refs}),
                       "subjects": sorted({r.subject for r in refs}), "songs": sorted({r.song for r in refs})}
                for name, refs in splits.items()}
    summary = {
        "stage": "preprocess",
        "steps": index.preprocessing.steps(),
        "preprocessing": index.preprocessing.to_dict(),
        "parameters": dict(parameters or {}),
        "cache": str(index.path),
        "cache_key": index.key,
        "layout": index.layout,
        "data_root": index.data_root,
        "sfreq": index.sfreq,
        "units": index.units,
        "n_channels": index.n_channels,
        "channel_names": index.channel_names,
        "excluded_channels": list(index.excluded_channels),
        "flagged_channels": {f"P{e.subject:02d} song {e.song}": e.bad_channels for e in index.recordings if e.bad_channels},
        "subjects": list(index.subjects),
        "songs": list(index.songs),
        "window_samples": window_samples(index.sfreq, splits.spec.clip_seconds),
        "clip_samples": splits.spec.clip_samples,
        "windows": splits.spec.to_dict(),
        "song_seconds": {str(song): float(seconds) for song, seconds in (song_seconds or {}).items()},
        "counts": counts,
        "splits": datasets,
        **{key: value for key, value in splits.summary().items() if key not in ("counts", "spec")},
        **dict(extra or {}),
    }
    path = Path(out_dir) / SUMMARY_FILE
    write_json(path, summary)
    return path


def read_preprocess_summary(preprocess_dir="") -> dict[str, Any]:
    """The summary notebook 02 wrote (``preprocess_dir`` ``""`` → ``outputs/02_preprocess``)."""

    folder = stage_dir("preprocess", preprocess_dir)
    path = folder / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no preprocessing summary; run notebook 02_preprocess (out_dir={str(folder)!r}) first")
    return read_json(path)


def load_stage_windows(
    preprocess_dir="",
    *,
    stimuli=None,
    latents: Mapping[tuple[int, int], Any] | None = None,
    verbose: bool = True,
    stimuli_dir=None,
) -> dict[str, EEGMusicWindows]:
    """The splits exactly as notebook 02 made them, in one call (what notebooks 03–06 use).

    Parameters
    ----------
    preprocess_dir : path-like
        Notebook 02's ``out_dir`` (``""`` → ``outputs/02_preprocess``); its ``preprocess_summary.json``
        names the cache, the window specification, the held-out participant and the song lengths.
    stimuli : None, True, path-like or NMEDTFolder
        None → EEG and ids only; True → audio from the NMED-T folder the cache was built from;
        otherwise audio from that folder.
    latents : mapping (song, chunk) → array, optional
        Encoded clips to return instead of audio.
    verbose : bool
    stimuli_dir : path-like, optional
        A folder holding the stimulus WAVs; default: the one notebook 02 paired the EEG with.

    Returns
    -------
    dict
        Split name → :class:`EEGMusicWindows`.
    """
    summary = read_preprocess_summary(preprocess_dir)
    spec = WindowSpec.from_dict(summary["windows"])
    song_seconds = {int(song): float(seconds) for song, seconds in summary.get("song_seconds", {}).items()}
    return load_windows(summary["cache"], spec, loso_subject=summary.get("loso_subject"), stimuli=stimuli,
                        latents=latents, song_seconds=song_seconds or None, verbose=verbose,
                        stimuli_dir=stimuli_dir or summary.get("stimuli_dir") or None)
