"""NMED-T files written the way other tools write them — for testing readers on the real formats.

These writers are deliberately independent of ``eeg2music`` (no ``eeg2music.data.simulate``, no
``eeg2music.data.matfile.write_mat_v73``): cleaned files go through :func:`scipy.io.savemat` (MATLAB v5, as
the public ``songNN_Imputed.mat`` files), raw files are built with :mod:`h5py` node by node as
MATLAB's ``save -v7.3`` lays them out — a 512-byte MATLAB header in the HDF5 user block, ``X``
stored transposed as ``(T, 129)``, ``fs`` as a ``(1, 1)`` double, and ``DIN_1`` as a ``(N, 4)``
dataset of HDF5 object references into the ``#refs#`` group, each reference a ``char`` (uint16) or
``double`` dataset with its ``MATLAB_class`` attribute. So a reader that passes on these files reads
files it did not write.

Real NMED-T songs last 271–298 s; tests keep files small by writing them at a low sampling rate
(e.g. ``fs=10``): the readers take every length from ``fs`` and the song table.

Typical use::

    from fixtures_nmedt import make_nmedt_folder
    expected = make_nmedt_folder(tmp_path, layouts=("cleaned", "raw"), songs=(21, 22), subjects=(2, 3))
    # expected.cleaned[(subject, song)] -> µV array (125, T); expected.raw[(subject, song)] -> (129, T)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import soundfile as sf

#: Song lengths of the NMED-T README (s), by trigger number.
SONG_SECONDS = {21: 278, 22: 271, 23: 276, 24: 294, 25: 289, 26: 276, 27: 292, 28: 292, 29: 293, 30: 298}
WAV_NAMES = {
    21: "FirstFires.wav", 22: "Oino.wav", 23: "Tiptoes.wav", 24: "CarelessLove.wav", 25: "LebaneseBlonde.wav",
    26: "Canopee.wav", 27: "DoingYoga.wav", 28: "UntilTheSunNeedsToRise.wav", 29: "SilentShout.wav",
    30: "TheLastThingYouShouldDo.wav",
}

_MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Tue Jan 10 12:00:00 2017 HDF5 schema 1.00 ."


# ---------------------------------------------------------------------------------------------
# Cleaned layout (MATLAB v5 through scipy)
# ---------------------------------------------------------------------------------------------


def write_cleaned_song(
    path: str | Path,
    song_id: int,
    data_uV: np.ndarray,
    subject_ids: Sequence[int | str],
    fs: float = 125.0,
    *,
    omit: Iterable[str] = (),
    extra: dict | None = None,
) -> Path:
    """Write ``songNN_Imputed.mat``: ``dataNN`` (125 × T × S, µV), ``subsNN`` (cell of ``"P02"``…), ``fs``.

    Parameters
    ----------
    path : path-like
        The file to write (a folder is given ``songNN_Imputed.mat`` inside it).
    song_id : int
        The song's trigger number; it names the variables (``data21``, ``subs21``).
    data_uV : array (125, T, S)
        The EEG in µV (any array is written as given, so tests can write wrong shapes too).
    subject_ids : sequence
        Participant numbers (written as ``"P02"``) or strings written as given.
    fs : float
        The sampling rate stored in ``fs``.
    omit : names
        Variables to leave out (to test files missing them).
    extra : dict, optional
        More variables to store.
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"song{song_id}_Imputed.mat"
    subs = np.empty((1, len(subject_ids)), dtype=object)
    for i, subject in enumerate(subject_ids):
        subs[0, i] = subject if isinstance(subject, str) else f"P{int(subject):02d}"
    variables = {f"data{song_id}": np.asarray(data_uV), f"subs{song_id}": subs, "fs": np.array([[float(fs)]])}
    variables.update(extra or {})
    for name in omit:
        variables.pop(name, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, variables, do_compression=False)
    return path


# ---------------------------------------------------------------------------------------------
# Raw layout (MATLAB v7.3 written with h5py)
# ---------------------------------------------------------------------------------------------


def _matlab_class(dataset, name: str) -> None:
    dataset.attrs.create("MATLAB_class", np.bytes_(name.encode()))


def _ref_char(refs: h5py.Group, key: str, text: str) -> h5py.Reference:
    # MATLAB stores a 1×n char as n×1 uint16 (column-major → transposed in HDF5).
    dataset = refs.create_dataset(key, data=np.array([[ord(c)] for c in text], dtype=np.uint16))
    _matlab_class(dataset, "char")
    dataset.attrs.create("MATLAB_int_decode", np.int32(2))
    return dataset.ref


def _ref_double(refs: h5py.Group, key: str, value: float) -> h5py.Reference:
    dataset = refs.create_dataset(key, data=np.array([[float(value)]]))
    _matlab_class(dataset, "double")
    return dataset.ref


def write_raw_recording(
    path: str | Path,
    X: np.ndarray,
    fs: float,
    triggers: Sequence[tuple[str, int]],
    *,
    omit: Iterable[str] = (),
    dtype: str = "double",
    transpose: bool = True,
    chunks: bool | tuple[int, int] | None = True,
    compression: str | None = None,
) -> Path:
    """Write a raw NMED-T recording (``PP_R_raw.mat``) as MATLAB v7.3 lays it out.

    Parameters
    ----------
    path : path-like
        The file (e.g. ``02_1_raw.mat``).
    X : array (129, T)
        The EEG in µV, MATLAB orientation (electrodes × time); stored transposed as HDF5 ``(T, 129)``.
    fs : float
        Stored in ``fs``.
    triggers : sequence of (label, sample)
        The ``DIN_1`` events, e.g. ``[("D21", 500), ("D128", 1500)]``; written as a 4 × N cell
        (label, sample, duration 1, event index).
    omit : names
        Variables to leave out.
    dtype : {"double", "single"}
        MATLAB class of ``X``.
    transpose : bool
        False writes ``X`` untransposed (as a careless non-MATLAB tool might).
    chunks, compression
        How HDF5 stores ``X`` (h5py's arguments): chunked by h5py's guess and uncompressed by default;
        MATLAB's ``save -v7.3`` compresses (``compression="gzip"``); None chunks is a contiguous dataset.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    X = np.asarray(X, dtype=np.float64 if dtype == "double" else np.float32)
    with h5py.File(path, "w", userblock_size=512) as handle:
        refs = handle.create_group("#refs#")
        # MATLAB keeps a canonical empty array at #refs#/a.
        empty = refs.create_dataset("a", data=np.zeros(2, dtype=np.uint64))
        _matlab_class(empty, "double")
        empty.attrs.create("MATLAB_empty", np.uint8(1))
        if "X" not in omit:
            x = handle.create_dataset("X", data=X.T if transpose else X, chunks=chunks, compression=compression)
            _matlab_class(x, dtype)
        if "fs" not in omit:
            f = handle.create_dataset("fs", data=np.array([[float(fs)]]))
            _matlab_class(f, "double")
        if "DIN_1" not in omit:
            cells = np.empty((len(triggers), 4), dtype=h5py.ref_dtype)  # MATLAB 4 × N → HDF5 (N, 4)
            for i, (label, sample) in enumerate(triggers):
                cells[i, 0] = _ref_char(refs, f"l{i}", str(label))
                cells[i, 1] = _ref_double(refs, f"s{i}", sample)
                cells[i, 2] = _ref_double(refs, f"d{i}", 1)
                cells[i, 3] = _ref_double(refs, f"i{i}", i + 1)
            din = handle.create_dataset("DIN_1", data=cells)
            _matlab_class(din, "cell")
    with open(path, "r+b") as handle:
        handle.write(_MATLAB_HEADER.ljust(116, b" ") + b" " * 8 + b"\x00\x02" + b"IM")
    return path


def song_triggers(onsets: dict[int, int], fs: float, label_style: str = "D{}") -> list[tuple[str, int]]:
    """DIN events for songs starting at ``onsets`` (song → sample): the song trigger at the onset,
    then the ``128`` trigger 1 s later (NMED-T's convention), plus an unrelated event before each song."""
    events: list[tuple[str, int]] = []
    for song, onset in sorted(onsets.items(), key=lambda item: item[1]):
        events.append((label_style.format(99), max(0, onset - int(fs))))
        events.append((label_style.format(song), onset))
        events.append((label_style.format(128), onset + int(round(fs))))
    return events


def write_wav(path: str | Path, audio: np.ndarray, sr: int = 44100) -> Path:
    """Write a WAV (16-bit PCM, like the NMED-T stimuli)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(audio), sr, subtype="PCM_16")
    return path


# ---------------------------------------------------------------------------------------------
# A whole folder
# ---------------------------------------------------------------------------------------------


@dataclass
class NMEDTFixture:
    """What :func:`make_nmedt_folder` wrote, for assertions."""

    root: Path
    cleaned: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (subject, song) → µV (125, T)
    raw: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (subject, song) → µV (129, T)
    onsets: dict[tuple[int, int], int] = field(default_factory=dict)  # (subject, song) → onset sample
    raw_files: dict[tuple[int, int], Path] = field(default_factory=dict)  # (subject, recording) → file
    cleaned_fs: float = 0.0
    raw_fs: float = 0.0


def make_nmedt_folder(
    root: str | Path,
    layouts: Sequence[str] = ("cleaned", "raw"),
    songs: Sequence[int] = (21, 22),
    subjects: Sequence[int] = (2, 3),
    cleaned_fs: float = 10.0,
    raw_fs: float = 20.0,
    seed: int = 0,
    stimuli: bool = False,
    stimuli_sr: int = 44100,
    stimuli_seconds: float | None = 2.0,
    songs_per_recording: int = 2,
) -> NMEDTFixture:
    """Write an NMED-T folder with random EEG in the real formats, at low sampling rates.

    Cleaned: one ``songNN_Imputed.mat`` per song. Raw: ``PP_R_raw.mat`` per participant and
    recording, ``songs_per_recording`` songs in each, separated by 3 s gaps, the vertex row all
    zeros. Stimuli (optional): tone WAVs named as the public loaders name them, in ``root/stimuli``,
    ``stimuli_seconds`` long (None: as long as each song, as real stimuli are).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fixture = NMEDTFixture(root=root, cleaned_fs=cleaned_fs, raw_fs=raw_fs)
    if "cleaned" in layouts:
        for song in songs:
            n_times = int(round(SONG_SECONDS[song] * cleaned_fs))
            data = rng.normal(0.0, 10.0, size=(125, n_times, len(subjects)))
            write_cleaned_song(root / f"song{song}_Imputed.mat", song, data, subjects, cleaned_fs)
            for i, subject in enumerate(subjects):
                fixture.cleaned[(subject, song)] = data[:, :, i]
    if "raw" in layouts:
        gap = int(3 * raw_fs)
        for subject in subjects:
            groups = [songs[i : i + songs_per_recording] for i in range(0, len(songs), songs_per_recording)]
            for recording, group in enumerate(groups, start=1):
                onsets, cursor = {}, 2 * gap
                for song in group:
                    onsets[song] = cursor
                    cursor += int(round(SONG_SECONDS[song] * raw_fs)) + gap
                X = rng.normal(0.0, 10.0, size=(129, cursor + gap))
                X[128] = 0.0
                path = write_raw_recording(root / f"{subject:02d}_{recording}_raw.mat", X, raw_fs, song_triggers(onsets, raw_fs))
                fixture.raw_files[(subject, recording)] = path
                for song, onset in onsets.items():
                    length = int(round(SONG_SECONDS[song] * raw_fs))
                    fixture.raw[(subject, song)] = X[:, onset : onset + length]
                    fixture.onsets[(subject, song)] = onset
    if stimuli:
        for song in songs:
            seconds = SONG_SECONDS[song] if stimuli_seconds is None else stimuli_seconds
            t = np.arange(int(seconds * stimuli_sr)) / stimuli_sr
            tone = 0.3 * np.sin(2 * np.pi * (110.0 * (song - 20)) * t)
            write_wav(root / "stimuli" / WAV_NAMES[song], np.stack([tone, tone], axis=1), stimuli_sr)
    return fixture
