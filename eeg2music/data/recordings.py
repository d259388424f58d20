"""NMED-T recordings as MNE Raw objects: the cleaned files (all participants of a song) and the raw
files (one participant and session, streamed from HDF5), with song onsets read from the DIN triggers.

:func:`iter_recordings` yields one :class:`mne.io.RawArray` per participant × song, in volts with the
HydroCel channel names and montage; :func:`read_recording` reads one. The folder, catalogue and stimulus
files are :mod:`eeg2music.data.nmedt`'s.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mne
import numpy as np
import scipy.io

from .matfile import (
    check_fs,
    h5_cell_strings,
    h5_char,
    h5_scalar,
    h5_variables,
    is_hdf5,
    loadmat_v5,
    open_hdf5,
    require_variables,
    v5_strings,
    v5_variables,
)
from .nmedt import (
    MONTAGE_NAME,
    ONSET_OFFSET_S,
    ONSET_TRIGGER,
    SONGS,
    STIMULUS_TOLERANCE_S,
    NMEDTError,
    NMEDTFolder,
    Song,
    as_folder,
    channel_names,
    cleaned_filename,
    hydrocel_montage,
    parse_subject,
    subject_label,
    trigger_code,
)


@dataclass
class _CleanedSong:
    """A cleaned song file opened for reading: subjects, fs, and a per-subject reader."""

    path: Path
    song_id: int
    subjects: list[int]
    fs: float
    n_channels: int
    n_times: int
    _array: np.ndarray | None = None  # (C, T, S) for v5 files (loaded whole)
    _dataset: Any = None  # h5py dataset (S, T, C) for v7.3 files
    _handle: Any = None

    def subject_data(self, index: int) -> np.ndarray:
        """µV, (channels, times), float64."""
        if self._array is not None:
            data = self._array[:, :, index] if self._array.ndim == 3 else self._array
        else:
            data = self._dataset[index].T if self._dataset.ndim == 3 else self._dataset[()].T
        return np.array(data, dtype=np.float64)  # a fresh copy owned by the caller, in the file's own layout

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def expected_cleaned(song_id: int) -> tuple[str, str]:
    return f"data{song_id}", f"subs{song_id}"


def check_cleaned_shape(path: Path, name: str, shape: tuple[int, ...], n_subjects: int) -> tuple[int, int]:
    if len(shape) == 2 and n_subjects == 1:
        pass  # MATLAB drops a trailing singleton dimension: one participant saves as 125 × T
    elif len(shape) != 3:
        raise NMEDTError(
            f"{path}: {name} should be a 3-D array (125 electrodes × time × participants), found shape {shape}"
        )
    if shape[0] != 125:
        raise NMEDTError(f"{path}: {name} should have 125 electrodes in its first dimension, found shape {shape}")
    n_in_data = shape[2] if len(shape) == 3 else 1
    if n_in_data != n_subjects:
        raise NMEDTError(f"{path}: {name} holds {n_in_data} participants but the subject list has {n_subjects}")
    return shape[0], shape[1]


def _open_cleaned(path: Path, song_id: int, songs: dict[int, Song], stimulus: tuple[Path, float] | None = None) -> _CleanedSong:
    data_name, subs_name = expected_cleaned(song_id)
    wanted = (data_name, subs_name, "fs")
    if is_hdf5(path):
        handle = open_hdf5(path)
        try:
            require_variables(path, handle, wanted, "cleaned", lambda: h5_variables(handle))
            subjects = [parse_subject(s) for s in h5_cell_strings(handle, subs_name, path)]
            fs = check_fs(h5_scalar(handle, "fs", path), path)
            dataset = handle[data_name]
            matlab_shape = tuple(reversed(dataset.shape))
            n_channels, n_times = check_cleaned_shape(path, data_name, matlab_shape, len(subjects))
            song = _CleanedSong(path, song_id, subjects, fs, n_channels, n_times, _dataset=dataset, _handle=handle)
        except BaseException:
            handle.close()
            raise
    else:
        contents = loadmat_v5(path, wanted)
        require_variables(path, contents, wanted, "cleaned", lambda: v5_variables(path))
        try:
            subjects = [parse_subject(s) for s in v5_strings(contents[subs_name])]
        except ValueError as err:
            raise NMEDTError(f"{path}: {subs_name} should list participant IDs such as 'P02' ({err})") from None
        fs_values = np.asarray(contents["fs"], dtype=float).ravel()
        if fs_values.size != 1:
            raise NMEDTError(f"{path}: fs should be one number, found {fs_values.size} values")
        fs = check_fs(float(fs_values[0]), path)
        array = np.asarray(contents[data_name])
        if array.dtype.kind not in "fiu":
            raise NMEDTError(f"{path}: {data_name} should be a numeric array, found dtype {array.dtype}")
        n_channels, n_times = check_cleaned_shape(path, data_name, array.shape, len(subjects))
        song = _CleanedSong(path, song_id, subjects, fs, n_channels, n_times, _array=array)
    if len(set(song.subjects)) != len(song.subjects):
        song.close()
        raise NMEDTError(f"{path}: {subs_name} lists a participant twice: {song.subjects}")
    try:
        _check_duration(path, song.n_times, song.fs, songs[song_id], stimulus)
    except BaseException:
        song.close()
        raise
    return song


def _check_duration(path: Path, n_times: int, fs: float, song: Song, stimulus: tuple[Path, float] | None = None) -> None:
    """The cleaned EEG of a song lasts the song: a sampling rate that disagrees shows here.

    Where the song's stimulus WAV exists, its length is the song's: EEG and WAV agreeing within
    :data:`STIMULUS_TOLERANCE_S` is a self-consistent file, whatever the songs table says (another
    study's songs, an excerpt). Otherwise the table (NMED-T's catalogue) is the reference, within
    max(2 s, 5 %); an EEG that fits the table but not its WAV is read, with a warning (notebook 02
    refuses to pair them unless told to).
    """
    seconds = n_times / fs
    tolerance = max(2.0, 0.05 * song.duration_s)
    fits_table = abs(seconds - song.duration_s) <= tolerance
    if stimulus is not None:
        wav, wav_seconds = stimulus
        if abs(seconds - wav_seconds) <= STIMULUS_TOLERANCE_S:
            return
        if fits_table:
            warnings.warn(
                f"{path}: the EEG of song {song.id} lasts {seconds:.1f} s ({n_times} samples at fs = {fs:g} Hz), its "
                f"stimulus {wav} {wav_seconds:.1f} s: they differ by more than {STIMULUS_TOLERANCE_S:g} s",
                stacklevel=4,
            )
            return
        raise NMEDTError(
            f"{path}: fs = {fs:g} Hz makes the {n_times} samples last {seconds:.1f} s, but song {song.id}'s stimulus "
            f"{wav} lasts {wav_seconds:.1f} s (and the song table says {song.duration_s:g} s): fs disagrees with the "
            f"data, the data is cut, or the WAV is another song's"
        )
    if not fits_table:
        raise NMEDTError(
            f"{path}: fs = {fs:g} Hz makes the {n_times} samples last {seconds:.1f} s, but song {song.id} "
            f"lasts {song.duration_s:g} s: fs disagrees with the data (or the data is cut). If this folder holds "
            f"other songs or excerpts, add their stimulus WAVs (in <data_root>/stimuli, or name the folder with "
            f"stimuli_dir): each song's length is then its WAV's"
        )


@dataclass(frozen=True)
class RawEvent:
    """One ``DIN_1`` event of a raw recording: its label, trigger number (None if not numeric), sample."""

    label: str
    code: int | None
    sample: int


def _events_from_rows(path: Path, labels: Sequence[Any], samples: Sequence[Any]) -> list[RawEvent]:
    events = []
    for index, (label, sample) in enumerate(zip(labels, samples)):
        value = np.asarray(sample, dtype=float).ravel()
        if value.size != 1 or not np.isfinite(value[0]):
            raise NMEDTError(f"{path}: DIN_1 event {index + 1} ({label!r}) has no valid sample index ({sample!r})")
        events.append(RawEvent(str(label), trigger_code(label), int(round(value[0]))))
    return events


def _h5_din(handle, path: Path) -> list[RawEvent]:
    dataset = handle["DIN_1"]
    if dataset.dtype != object:
        raise NMEDTError(f"{path}: DIN_1 should be a cell array (4 × N), found a {dataset.dtype} array")
    refs = np.asarray(dataset[()])
    matlab = refs.T  # MATLAB's 4 × N cell is stored as (N, 4)
    if matlab.ndim != 2 or matlab.shape[0] < 2:
        raise NMEDTError(f"{path}: DIN_1 should be a 4 × N cell (label; sample; …), found MATLAB shape {matlab.shape}")

    def cell(ref):
        item = handle[ref]
        if item.attrs.get("MATLAB_class", b"") == b"char":
            return h5_char(item)
        if "MATLAB_empty" in item.attrs:
            return np.nan
        return np.asarray(item[()])

    labels = [cell(ref) for ref in matlab[0]]
    samples = [cell(ref) for ref in matlab[1]]
    return _events_from_rows(path, labels, samples)


def _v5_din(value: Any, path: Path) -> list[RawEvent]:
    cells = np.asarray(value)
    if cells.dtype != object or cells.ndim != 2 or cells.shape[0] < 2:
        raise NMEDTError(f"{path}: DIN_1 should be a 4 × N cell (label; sample; …), found {cells.dtype} {cells.shape}")
    labels = [v5_strings(item)[0] if np.asarray(item).dtype.kind in "US" else np.asarray(item).ravel()[0] for item in cells[0]]
    return _events_from_rows(path, labels, list(cells[1]))


@dataclass
class _RawFile:
    """A raw recording opened for reading (HDF5 streamed, or a v5 file loaded whole)."""

    path: Path
    fs: float
    events: list[RawEvent]
    n_channels: int
    n_times: int
    _dataset: Any = None  # h5py (T, C) or (C, T)
    _time_axis: int = 0
    _array: np.ndarray | None = None  # (C, T)
    _handle: Any = None

    def segment(self, start: int, stop: int) -> np.ndarray:
        """(channels, stop - start) float64 µV, reading only those samples."""
        if self._array is not None:  # a view of the loaded file: the caller gets its own copy
            return np.array(self._array[:, start:stop], dtype=np.float64)
        # h5py hands back a fresh array: no second copy. (T, C) in the file stays time-major here (its
        # transpose is a view), which is the layout the preprocessing and the cache keep.
        data = self._dataset[start:stop, :].T if self._time_axis == 0 else self._dataset[:, start:stop]
        return np.asarray(data, dtype=np.float64)

    def blocks(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """The samples of :meth:`segment`, block by block: ``(offset from start, (channels, n) float64 µV)``.

        Each block is read into one buffer, reused for the next block: a block is valid until the next
        one is asked for, and must not be modified. Streaming avoids the fresh array of the whole
        segment, whose first-touch page faults cost h5py's whole-segment read several times the copy
        itself. HDF5 blocks follow the dataset's chunks (whole chunks, once each), about
        :data:`STREAM_BLOCK_BYTES` at a time.
        """
        if self._array is not None:
            for offset in range(0, stop - start, _STREAM_ARRAY_SAMPLES):
                block = self._array[:, start + offset : min(stop, start + offset + _STREAM_ARRAY_SAMPLES)]
                yield offset, np.asarray(block, dtype=np.float64)
            return
        time_axis = self._time_axis
        chunk = self._dataset.chunks[time_axis] if self._dataset.chunks else 1
        row_bytes = self.n_channels * 8
        if chunk * row_bytes > 8 * STREAM_BLOCK_BYTES:  # huge chunks: a block per chunk would re-read it
            yield 0, self.segment(start, stop)
            return
        samples = chunk * max(1, STREAM_BLOCK_BYTES // (chunk * row_bytes))
        shape = (samples, self.n_channels) if time_axis == 0 else (self.n_channels, samples)
        buffer = np.empty(shape, dtype=np.float64)
        edge = start
        while edge < stop:
            end = min(stop, (edge // samples + 1) * samples)  # block edges on chunk edges
            n = end - edge
            if time_axis == 0:
                self._dataset.read_direct(buffer, np.s_[edge:end, :], np.s_[0:n, :])
                yield edge - start, buffer[:n].T
            else:
                self._dataset.read_direct(buffer, np.s_[:, edge:end], np.s_[:, 0:n])
                yield edge - start, buffer[:, :n]
            edge = end

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


#: About how many bytes :meth:`_RawFile.blocks` reads at a time (a multiple of the file's chunks).
STREAM_BLOCK_BYTES = 8 * 2**20


_STREAM_ARRAY_SAMPLES = 8192


def _raw_shape(path: Path, shape: tuple[int, ...], hdf5: bool) -> tuple[int, int, int]:
    """(n_channels, n_times, time axis in the stored array) for X; MATLAB v7.3 stores X as (T, 129)."""
    if len(shape) != 2:
        raise NMEDTError(f"{path}: X should be a 2-D array (129 electrodes × time), found shape {shape}")
    channel_axes = [axis for axis in (1, 0) if shape[axis] in (128, 129)] if hdf5 else [axis for axis in (0, 1) if shape[axis] in (128, 129)]
    if not channel_axes:
        raise NMEDTError(f"{path}: X should have 129 electrode rows (E1…E128 + vertex), found shape {shape}")
    channel_axis = channel_axes[0]
    return shape[channel_axis], shape[1 - channel_axis], 1 - channel_axis


def open_raw(path: Path, load_data: bool = True) -> _RawFile:
    wanted = ("X", "fs", "DIN_1")
    if is_hdf5(path):
        handle = open_hdf5(path)
        try:
            require_variables(path, handle, wanted, "raw", lambda: h5_variables(handle))
            fs = check_fs(h5_scalar(handle, "fs", path), path)
            events = _h5_din(handle, path)
            dataset = handle["X"]
            n_channels, n_times, time_axis = _raw_shape(path, dataset.shape, hdf5=True)
            return _RawFile(path, fs, events, n_channels, n_times, _dataset=dataset, _time_axis=time_axis, _handle=handle)
        except BaseException:
            handle.close()
            raise
    names = wanted if load_data else ("fs", "DIN_1")
    contents = loadmat_v5(path, names)
    require_variables(path, contents, wanted, "raw", lambda: v5_variables(path), checked=names)
    fs = check_fs(float(np.asarray(contents["fs"], dtype=float).ravel()[0]), path)
    events = _v5_din(contents["DIN_1"], path)
    if not load_data:

        shapes = {name: shape for name, shape, _ in scipy.io.whosmat(str(path))}
        if "X" not in shapes:
            raise NMEDTError(f"{path}: missing variable(s) ['X']; a raw NMED-T file holds {list(wanted)}")
        n_channels, n_times, _ = _raw_shape(path, tuple(shapes["X"]), hdf5=False)
        return _RawFile(path, fs, events, n_channels, n_times)
    array = np.asarray(contents["X"])
    n_channels, n_times, time_axis = _raw_shape(path, array.shape, hdf5=False)
    return _RawFile(path, fs, events, n_channels, n_times, _array=array if time_axis == 1 else array.T)


def read_raw_events(path: str | Path) -> list[RawEvent]:
    """The ``DIN_1`` events of a raw recording (label, trigger number, sample), in file order."""
    raw_file = open_raw(Path(path), load_data=False)
    raw_file.close()
    return raw_file.events


def song_onsets_of(raw_file: _RawFile, songs: dict[int, Song]) -> dict[int, int]:
    """Song → first sample of its stimulus, checked against the recording's length."""
    path, fs, events = raw_file.path, raw_file.fs, raw_file.events
    onsets: dict[int, int] = {}
    for index, event in enumerate(events):
        if event.code not in songs:
            continue
        following = None
        for later in events[index + 1 :]:
            if later.code == ONSET_TRIGGER:
                following = later
                break
            if later.code in songs:
                break  # the next song started before any 128: this song's onset is missing
        if following is None:
            raise NMEDTError(
                f"{path}: song trigger {event.label!r} (song {event.code}) at sample {event.sample} has no "
                f"following {ONSET_TRIGGER} trigger, so its onset is unknown"
            )
        if event.code in onsets:
            raise NMEDTError(f"{path}: song {event.code} is triggered twice")
        onsets[event.code] = following.sample - int(round(ONSET_OFFSET_S * fs))
    ordered = sorted(onsets.items(), key=lambda item: item[1])
    for position, (song_id, onset) in enumerate(ordered):
        length = int(round(songs[song_id].duration_s * fs))
        if onset < 0 or onset + length > raw_file.n_times:
            raise NMEDTError(
                f"{path}: song {song_id} spans samples {onset}–{onset + length} at fs = {fs:g} Hz, beyond the "
                f"recording's {raw_file.n_times} samples: the file is cut short or fs disagrees with the data"
            )
        if position + 1 < len(ordered) and onset + length > ordered[position + 1][1]:
            raise NMEDTError(
                f"{path}: song {song_id} ({songs[song_id].duration_s:g} s at fs = {fs:g} Hz) would overlap song "
                f"{ordered[position + 1][0]}: fs disagrees with the data"
            )
    return onsets


def song_onsets(path: str | Path, songs: dict[int, Song] | None = None) -> dict[int, int]:
    """Song ID → onset sample (the ``128`` trigger after the song trigger, minus 1 s) in a raw file.

    Parameters
    ----------
    path : path-like
        A raw recording (``PP_R_raw.mat``).
    songs : dict, optional
        The songs table (their lengths are checked against the recording); :data:`SONGS` by default.

    Raises
    ------
    NMEDTError
        A song trigger without a following ``128``, or a song that does not fit in the recording.
    """
    raw_file = open_raw(Path(path), load_data=False)
    raw_file.close()
    return song_onsets_of(raw_file, songs or SONGS)


_MONTAGE_CACHE: dict[str, Any] = {}


def _make_raw(data_uv: np.ndarray, fs: float, info_dict: dict[str, Any]):
    """A RawArray in volts with HydroCel names and montage, carrying ``info_dict`` as its metadata."""

    names = channel_names(data_uv.shape[0])
    info = mne.create_info(names, fs, ch_types="eeg", verbose="error")
    data_uv *= 1e-6  # in place: the caller hands over a fresh array, and a song of raw EEG is large
    raw = mne.io.RawArray(data_uv, info, verbose="error")
    if MONTAGE_NAME not in _MONTAGE_CACHE:
        _MONTAGE_CACHE[MONTAGE_NAME] = hydrocel_montage()
    raw.set_montage(_MONTAGE_CACHE[MONTAGE_NAME], verbose="error")
    with raw.info._unlock():
        raw.info["description"] = json.dumps({"eeg2music": info_dict})
        raw.info["subject_info"] = {"id": int(info_dict["subject"]), "his_id": subject_label(info_dict["subject"])}
    return raw


def recording_info(raw) -> dict[str, Any]:
    """The metadata of a recording read by :func:`iter_recordings`.

    Returns
    -------
    dict
        ``subject`` (int), ``song`` (int), ``layout`` ("cleaned" | "raw"), ``source`` (the file, str),
        ``onset_sample`` (int sample of the song's onset in the raw file, or None for cleaned data).
    """
    description = raw.info.get("description") or ""
    try:
        meta = json.loads(description)["eeg2music"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("this Raw was not read by eeg2music.data.nmedt (no recording metadata in info['description'])") from None
    return {key: meta.get(key) for key in ("subject", "song", "layout", "source", "onset_sample")}


def check_finite(data: np.ndarray, path: Path, what: str) -> None:
    """Refuse NaN/inf data, except whole channels that are NaN/inf: those are passed on, named.

    A channel that is missing altogether (all NaN) is a bad channel that preprocessing reports by name
    and excludes or refuses (``Preprocessing.bad_channels``); scattered NaN/inf values, or a recording with
    no finite channel at all, are a broken file.
    """
    # One read-only pass: a channel's sum is finite exactly when its values are (short of a float64
    # overflow, which then falls through to the full check below).
    if np.isfinite(data.sum(axis=1)).all():
        return
    finite = np.isfinite(data)
    if finite.all():
        return
    bad = int(data.size - finite.sum())
    dead = ~finite.any(axis=1)
    if dead.all():
        raise NMEDTError(f"{path}: {what} is entirely NaN/inf ({bad} values)")
    names = np.asarray(channel_names(data.shape[0]))
    partial = ~finite.all(axis=1) & ~dead
    if partial.any():
        raise NMEDTError(
            f"{path}: {what} has {bad} NaN/inf values out of {data.size}, scattered in channel(s) "
            f"{names[partial].tolist()}"
        )
    warnings.warn(
        f"{path}: {what}: channel(s) {names[dead].tolist()} are all NaN/inf; passing them on for "
        f"preprocessing to report and exclude (Preprocessing.bad_channels)",
        stacklevel=3,
    )


def _normalise_selection(values: Iterable[int] | int | None, name: str) -> list[int] | None:
    if values is None:
        return None
    if isinstance(values, (int, np.integer)):
        return [int(values)]
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} should be a list of ints, got {values!r}") from None


def _plan(folder: NMEDTFolder, layout: str, songs, subjects, warn: bool = True):
    """What to read: the chosen layout, the songs and subjects asked for."""
    layout = folder.resolve_layout(layout)
    song_ids = _normalise_selection(songs, "songs")
    subject_ids = _normalise_selection(subjects, "subjects")
    if song_ids is not None:
        unknown = sorted(set(song_ids) - set(SONGS))
        if unknown:
            raise ValueError(f"songs {unknown} are not NMED-T songs; expected IDs among {sorted(SONGS)}")
    if layout == "cleaned":
        wanted = song_ids if song_ids is not None else list(folder.cleaned)
        missing = [s for s in wanted if s not in folder.cleaned]
        if missing and warn:
            warnings.warn(
                f"{folder.root}: no cleaned file for song(s) {missing} "
                f"({', '.join(cleaned_filename(s) for s in missing)}); reading the others",
                stacklevel=4,
            )
        return layout, [s for s in wanted if s in folder.cleaned], subject_ids
    return layout, song_ids, subject_ids


def iter_recordings(
    folder: NMEDTFolder | str | Path,
    layout: str = "cleaned",
    songs: Iterable[int] | int | None = None,
    subjects: Iterable[int] | int | None = None,
) -> Iterator[Any]:
    """Yield one :class:`mne.io.RawArray` per participant × song, reading one at a time.

    Parameters
    ----------
    folder : NMEDTFolder or path-like
        From :func:`~eeg2music.data.nmedt.scan_nmedt`, or a folder to scan.
    layout : {"cleaned", "raw", "auto"}
        Which files to read (``"auto"``: cleaned when present).
    songs, subjects : list of int, optional
        Restrict to these song IDs (21–30) and participant numbers; all by default. A song or
        participant asked for but absent is a warning, and the rest are read.

    Yields
    ------
    mne.io.RawArray
        In volts, with HydroCel channel names (125 channels for cleaned, 129 for raw) and montage;
        :func:`recording_info` gives its subject, song, layout, source file and onset sample.
        Cleaned recordings come song by song (one file per song), raw ones file by file.

    Raises
    ------
    NMEDTError
        A file that cannot be read, naming it and what is wrong.
    """
    for segment in iter_segments(folder, layout, songs, subjects):
        data = segment.read()
        check_finite(data, segment.path, segment.what)
        yield _make_raw(data, segment.fs, segment.info)


@dataclass
class _Segment:
    """One participant × song in its file, before it is read and becomes an MNE object.

    Valid while the iterator that yielded it waits for the next (its file is open until then).
    """

    fs: float
    info: dict[str, Any]  # what recording_info returns
    path: Path
    what: str  # how an error message names the array within the file
    n_channels: int
    n_times: int
    _read: Callable[[], np.ndarray]
    _blocks: Callable[[], Iterator[tuple[int, np.ndarray]]]

    def read(self) -> np.ndarray:
        """(channels, samples) float64 µV: a fresh array the caller owns."""
        return self._read()

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """The same samples block by block (see :meth:`_RawFile.blocks`): read-only, each valid until the next."""
        return self._blocks()


def iter_segments(
    folder: NMEDTFolder | str | Path,
    layout: str = "cleaned",
    songs: Iterable[int] | int | None = None,
    subjects: Iterable[int] | int | None = None,
) -> Iterator[_Segment]:
    """What :func:`iter_recordings` yields, before it is read: for a consumer that needs no MNE object.

    The segments' values are not checked: the consumer calls :func:`check_finite` on what it reads
    (a pass over the data, which :func:`eeg2music.data.cache.build_cache` folds into one it makes anyway).
    """
    folder = as_folder(folder)
    layout, song_ids, subject_ids = _plan(folder, layout, songs, subjects)
    segments = _iter_cleaned(folder, song_ids, subject_ids) if layout == "cleaned" else _iter_raw(folder, song_ids, subject_ids)
    try:
        yield from segments
    finally:
        segments.close()  # closes the file being read when the consumer stops early


def _iter_cleaned(folder: NMEDTFolder, song_ids: list[int], subject_ids: list[int] | None) -> Iterator[_Segment]:
    seen: set[int] = set()
    for song_id in song_ids:
        path = folder.cleaned[song_id]
        stimulus = (folder.stimuli[song_id], folder.stimulus_seconds[song_id]) if song_id in folder.stimulus_seconds else None
        song = _open_cleaned(path, song_id, folder.songs, stimulus)
        try:
            for index, subject in enumerate(song.subjects):
                if subject_ids is not None and subject not in subject_ids:
                    continue
                seen.add(subject)
                meta = {"subject": subject, "song": song_id, "layout": "cleaned", "source": str(path), "onset_sample": None}
                data = song.subject_data(index)  # a song at 125 Hz is small: read whole
                yield _Segment(song.fs, meta, path, f"data{song_id} of participant {subject}", *data.shape,
                               _read=lambda data=data: data,
                               _blocks=lambda data=data: ((a, data[:, a : a + _STREAM_ARRAY_SAMPLES])
                                                          for a in range(0, data.shape[1], _STREAM_ARRAY_SAMPLES)))
                del data
        finally:
            song.close()
    if subject_ids is not None and song_ids:
        missing = sorted(set(subject_ids) - seen)
        if missing:
            warnings.warn(f"{folder.root}: participant(s) {missing} are in no cleaned file read; reading the others", stacklevel=4)


def _raw_plan(folder: NMEDTFolder, song_ids: list[int] | None, subject_ids: list[int] | None):
    """(path, subject, recording, song, onset) for every segment to read, plus what is missing."""
    plan = []
    found_songs: set[int] = set()
    for (subject, recording), path in folder.raw.items():
        if subject_ids is not None and subject not in subject_ids:
            continue
        onsets = song_onsets(path, folder.length_table())
        for song_id, onset in sorted(onsets.items(), key=lambda item: item[1]):
            if song_ids is not None and song_id not in song_ids:
                continue
            found_songs.add(song_id)
            plan.append((path, subject, recording, song_id, onset))
    return plan, found_songs


def _iter_raw(folder: NMEDTFolder, song_ids: list[int] | None, subject_ids: list[int] | None) -> Iterator[_Segment]:
    plan, found_songs = _raw_plan(folder, song_ids, subject_ids)
    _warn_raw_missing(folder, song_ids, subject_ids, plan, found_songs)
    current: _RawFile | None = None
    try:
        for path, subject, recording, song_id, onset in plan:
            if current is None or current.path != path:
                if current is not None:
                    current.close()
                current = open_raw(path)
            length = int(round(folder.song_seconds(song_id) * current.fs))
            meta = {
                "subject": subject, "song": song_id, "layout": "raw", "source": str(path),
                "onset_sample": onset, "recording": recording,
            }
            yield _Segment(current.fs, meta, path, f"X during song {song_id}", current.n_channels, length,
                           _read=lambda f=current, a=onset, b=onset + length: f.segment(a, b),
                           _blocks=lambda f=current, a=onset, b=onset + length: f.blocks(a, b))
    finally:
        if current is not None:
            current.close()


def _warn_raw_missing(folder, song_ids, subject_ids, plan, found_songs) -> None:
    if song_ids is not None:
        missing = sorted(set(song_ids) - found_songs)
        if missing:
            warnings.warn(f"{folder.root}: song(s) {missing} are triggered in no raw recording read; reading the others", stacklevel=5)
    if subject_ids is not None:
        missing = sorted(set(subject_ids) - {subject for _, subject, *_ in plan})
        if missing:
            warnings.warn(f"{folder.root}: no raw recording of participant(s) {missing}; reading the others", stacklevel=5)


def count_recordings(
    folder: NMEDTFolder | str | Path,
    layout: str = "cleaned",
    songs: Iterable[int] | int | None = None,
    subjects: Iterable[int] | int | None = None,
) -> int:
    """How many recordings :func:`iter_recordings` will yield with the same arguments (for progress bars).

    Reads only the subject lists (cleaned) or the triggers (raw), not the EEG.
    """
    folder = as_folder(folder)
    layout, song_ids, subject_ids = _plan(folder, layout, songs, subjects, warn=False)
    if layout == "raw":
        return len(_raw_plan(folder, song_ids, subject_ids)[0])
    total = 0
    for song_id in song_ids:
        for subject in _cleaned_subjects(folder.cleaned[song_id], song_id):
            total += subject_ids is None or subject in subject_ids
    return total


def _cleaned_subjects(path: Path, song_id: int) -> list[int]:
    """The participants of a cleaned file, without reading its EEG."""
    _, subs_name = expected_cleaned(song_id)
    if is_hdf5(path):
        handle = open_hdf5(path)
        try:
            if subs_name not in handle:
                raise NMEDTError(f"{path}: missing variable {subs_name!r}; this file holds {h5_variables(handle)}")
            return [parse_subject(s) for s in h5_cell_strings(handle, subs_name, path)]
        finally:
            handle.close()
    contents = loadmat_v5(path, [subs_name])
    if subs_name not in contents:
        raise NMEDTError(f"{path}: missing variable {subs_name!r}; this file holds {v5_variables(path)}")
    return [parse_subject(s) for s in v5_strings(contents[subs_name])]


def read_recording(folder: NMEDTFolder | str | Path, subject: int, song: int, layout: str = "auto"):
    """One participant × song as a :class:`mne.io.RawArray` (see :func:`iter_recordings`).

    Raises
    ------
    LookupError
        If the folder does not hold that participant and song in that layout.
    """
    folder = as_folder(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for raw in iter_recordings(folder, layout, songs=[song], subjects=[subject]):
            return raw
    raise LookupError(f"{folder.root}: no {folder.resolve_layout(layout)} recording of participant {subject}, song {song}")
