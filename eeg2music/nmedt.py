"""Reading NMED-T, the Naturalistic Music EEG Dataset — Tempo (Losorelli et al., ISMIR 2017).

NMED-T holds the EEG of 20 participants who listened to 10 full songs (EGI 128-channel HydroCel net,
vertex reference). It is published in two layouts, and a folder may hold either or both:

``cleaned``
    One MATLAB file per song, ``song21_Imputed.mat`` … ``song30_Imputed.mat``, with ``dataNN``
    (125 electrodes × T samples × 20 participants, µV, 125 Hz), ``subsNN`` (the participant IDs, a cell
    of strings such as ``"P02"``) and ``fs``. The authors filtered (0.3 Hz high-pass, 59–61 Hz notch,
    50 Hz low-pass), downsampled ×8, removed the face channels E125–E128 and kept the vertex reference
    as the 125th row.
``raw``
    One MATLAB v7.3 (HDF5) file per participant and recording session, ``PP_R_raw.mat`` (e.g.
    ``02_1_raw.mat``: participant 2, recording 1), with ``X`` (129 × T at 1000 Hz, row 129 the all-zero
    vertex reference), ``fs`` and ``DIN_1`` (a 4 × N cell of events: the trigger label, e.g. ``"D21"``,
    and its sample index, then two bookkeeping rows this reader does not need). A song starts 1 s
    before the ``128`` trigger that follows its song trigger (21–30).

The file names and the ``DIN_1`` layout follow the public loaders of the dataset (PredANN's
``mat_to_pkl.py`` reads ``DIN_1{1,:}`` as labels and ``DIN_1{2,:}`` as 0-based sample indices; the
eeg2music reproduction names raw files ``02_1_raw.mat``). Labels are read by their digits, so ``"D21"``,
``"DIN21"`` and ``"21"`` are the same trigger.

Everything is returned as :class:`mne.io.RawArray` in volts with the HydroCel channel names (``E1`` …
``E128``, ``Cz``) and montage, one per participant × song, with the song and subject in the metadata
(:func:`recording_info`). Raw files are streamed: only the song's samples are read from the HDF5
file, so memory stays flat on 1.5 GB recordings.

The stimulus WAVs are not part of the public release; users add them (in ``<root>/stimuli``, in the
root itself, or in a folder they name), and :func:`read_stimulus` reads them on demand. Reading and
summarising the EEG never needs the audio.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Song",
    "SONGS",
    "SUBJECT_IDS",
    "LAYOUTS",
    "ONSET_TRIGGER",
    "ONSET_OFFSET_S",
    "MONTAGE_NAME",
    "NMEDTError",
    "NMEDTFolder",
    "RawEvent",
    "channel_names",
    "cleaned_channel_names",
    "raw_channel_names",
    "hydrocel_montage",
    "cleaned_filename",
    "raw_filename",
    "subject_label",
    "parse_subject",
    "scan_nmedt",
    "read_raw_events",
    "song_onsets",
    "iter_recordings",
    "count_recordings",
    "read_recording",
    "recording_info",
    "stimulus_path",
    "read_stimulus",
    "write_mat_v73",
]


# --------------------------------------------------------------------------------------------------
# The dataset's constants
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Song:
    """One NMED-T stimulus.

    Attributes
    ----------
    id : int
        The song's trigger number (21–30), used as its ID everywhere.
    title, artist : str
        As in the NMED-T README.
    bpm : float
        The tempo the dataset was designed around (beats per minute).
    duration_s : float
        Length of the stimulus in seconds (the EEG segment of a song has this length).
    wav_name : str
        File name of the stimulus WAV (44.1 kHz) as the public loaders name it.
    """

    id: int
    title: str
    artist: str
    bpm: float
    duration_s: float
    wav_name: str


#: The ten NMED-T songs by trigger number.
SONGS: dict[int, Song] = {
    song.id: song
    for song in (
        Song(21, "First Fires", "Bonobo", 55.97, 278.0, "FirstFires.wav"),
        Song(22, "Oino", "LA Priest", 69.44, 271.0, "Oino.wav"),
        Song(23, "Tiptoes", "Daedelus", 74.26, 276.0, "Tiptoes.wav"),
        Song(24, "Careless Love", "Croquet Club", 82.42, 294.0, "CarelessLove.wav"),
        Song(25, "Lebanese Blonde", "Thievery Corporation", 91.46, 289.0, "LebaneseBlonde.wav"),
        Song(26, "Canopée", "Polo & Pan", 96.15, 276.0, "Canopee.wav"),
        Song(27, "Doing Yoga", "Kazy Lambist", 108.70, 292.0, "DoingYoga.wav"),
        Song(28, "Until the Sun Needs to Rise", "Rüfüs du Sol", 120.00, 292.0, "UntilTheSunNeedsToRise.wav"),
        Song(29, "Silent Shout", "The Knife", 128.21, 293.0, "SilentShout.wav"),
        Song(30, "The Last Thing You Should Do", "David Bowie", 150.00, 298.0, "TheLastThingYouShouldDo.wav"),
    )
}

#: The 20 NMED-T participants (raw IDs 02–23 without 18 and 22).
SUBJECT_IDS: tuple[int, ...] = tuple(i for i in range(2, 24) if i not in (18, 22))

LAYOUTS = ("cleaned", "raw")
#: The trigger that follows each song trigger, 1 s after the stimulus onset.
ONSET_TRIGGER = 128
ONSET_OFFSET_S = 1.0
#: MNE's montage of the 128-channel HydroCel net *with* its vertex reference ``Cz`` (the
#: "GSN-HydroCel-128" montage has the same E1…E128 positions but lacks ``Cz``).
MONTAGE_NAME = "GSN-HydroCel-129"
#: The file the simulator writes last; when present, its ``songs`` entry gives the (shortened) song
#: lengths of a simulated dataset.
SIMULATION_FILE = "simulation.json"

#: How far (s) the EEG of a song and its stimulus WAV may differ in length (rounding, silence at the ends of
#: an audio file). Beyond it, notebook 02 refuses to pair them unless told to (``allow_stimulus_mismatch``).
STIMULUS_TOLERANCE_S = 1.0
#: How far (s) a stimulus WAV may differ from the songs table before the reader says so.
CATALOGUE_TOLERANCE_S = 2.0

_CLEANED_RE = re.compile(r"^song(\d+)_imputed\.mat$", re.IGNORECASE)
_RAW_RE = re.compile(r"^[ps]?(\d{1,3})_(\d+)_raw\.mat$", re.IGNORECASE)
_STIMULI_SUBDIRS = ("stimuli", "Stimuli", "audio", "wav")


class NMEDTError(ValueError):
    """An NMED-T file or folder that cannot be read; the message names it and what is wrong."""


def channel_names(n_channels: int) -> list[str]:
    """HydroCel channel names for a recording with ``n_channels`` rows.

    125 rows (cleaned layout) → ``E1`` … ``E124``, ``Cz``; 129 rows (raw layout) → ``E1`` … ``E128``,
    ``Cz``; 128 → ``E1`` … ``E128``; 124 → ``E1`` … ``E124``.
    """
    if n_channels == 125:
        return [f"E{i}" for i in range(1, 125)] + ["Cz"]
    if n_channels == 129:
        return [f"E{i}" for i in range(1, 129)] + ["Cz"]
    if n_channels in (124, 128):
        return [f"E{i}" for i in range(1, n_channels + 1)]
    raise ValueError(f"no HydroCel channel naming for {n_channels} channels (expected 124, 125, 128 or 129)")


def cleaned_channel_names() -> list[str]:
    """The 125 channels of the cleaned layout: ``E1`` … ``E124`` and the vertex ``Cz``."""
    return channel_names(125)


def raw_channel_names() -> list[str]:
    """The 129 channels of the raw layout: ``E1`` … ``E128`` and the vertex ``Cz`` (all zero)."""
    return channel_names(129)


def hydrocel_montage():
    """MNE's GSN-HydroCel montage with the 128 electrodes and the vertex reference ``Cz``."""
    import mne

    return mne.channels.make_standard_montage(MONTAGE_NAME)


def cleaned_filename(song_id: int) -> str:
    """File name of a song in the cleaned layout: ``song21_Imputed.mat``."""
    return f"song{int(song_id)}_Imputed.mat"


def raw_filename(subject: int, recording: int) -> str:
    """File name of a raw recording: ``02_1_raw.mat`` for participant 2, recording 1."""
    return f"{int(subject):02d}_{int(recording)}_raw.mat"


def subject_label(subject: int) -> str:
    """The participant label NMED-T uses in ``subsNN``: ``"P02"`` for 2."""
    return f"P{int(subject):02d}"


def parse_subject(value: Any) -> int:
    """A participant number from an ID such as ``"P02"``, ``"02"``, ``2`` or ``2.0``."""
    if isinstance(value, np.ndarray):
        value = value.squeeze()
        value = value.item() if value.ndim == 0 else "".join(map(str, value.ravel()))
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    digits = re.findall(r"\d+", str(value))
    if len(digits) != 1:
        raise ValueError(f"cannot read a participant number from {value!r}")
    return int(digits[0])


def _trigger_code(label: Any) -> int | None:
    """The trigger number in a DIN label (``"D21"`` → 21); None when the label has no digits."""
    if isinstance(label, (int, np.integer)):
        return int(label)
    if isinstance(label, (float, np.floating)) and np.isfinite(label):
        return int(label)
    digits = "".join(re.findall(r"\d", str(label)))
    return int(digits) if digits else None


# --------------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------------


@dataclass
class NMEDTFolder:
    """What an NMED-T folder holds (see :func:`scan_nmedt`).

    Attributes
    ----------
    root : Path
        The folder.
    layouts : tuple of str
        The layouts present, among ``"cleaned"`` and ``"raw"``.
    cleaned : dict[int, Path]
        Cleaned files by song ID.
    raw : dict[tuple[int, int], Path]
        Raw files by (participant, recording).
    songs : dict[int, Song]
        The songs table this folder's EEG follows: :data:`SONGS`, with the song lengths of a simulated
        dataset when its ``simulation.json`` declares them.
    stimuli_dirs : tuple of Path
        The folders searched for the stimulus WAVs, in order (existing ones only).
    stimuli : dict[int, Path]
        The stimulus WAV found for each song (songs without a WAV are absent).
    simulated : bool
        True when the folder was written by :func:`eeg2music.simulate.simulate_nmedt`.
    stimulus_seconds : dict[int, float]
        The length of each readable stimulus WAV (from its header): where a WAV exists, its length is the
        song's (:meth:`song_seconds`), the songs table is the fallback.
    stimulus_problems : dict[int, str]
        Songs whose WAV was found but cannot be used (unreadable, or no samples), with the reason.
    """

    root: Path
    layouts: tuple[str, ...]
    cleaned: dict[int, Path]
    raw: dict[tuple[int, int], Path]
    songs: dict[int, Song]
    stimuli_dirs: tuple[Path, ...]
    stimuli: dict[int, Path]
    simulated: bool = False
    simulation: dict[str, Any] = field(default_factory=dict, repr=False)
    stimulus_seconds: dict[int, float] = field(default_factory=dict)
    stimulus_problems: dict[int, str] = field(default_factory=dict)

    def song_seconds(self, song_id: int) -> float:
        """A song's length (s): its stimulus WAV's where the folder has one, else the songs table's."""
        song_id = int(song_id)
        return self.stimulus_seconds.get(song_id, self.songs[song_id].duration_s)

    def length_table(self) -> dict[int, Song]:
        """:attr:`songs` with every length from :meth:`song_seconds` (how raw recordings are cut)."""
        return {song_id: dataclasses.replace(song, duration_s=self.song_seconds(song_id)) for song_id, song in self.songs.items()}

    @property
    def stimuli_dir(self) -> Path | None:
        """The folder holding the stimulus WAVs (the first searched folder that has any), or None."""
        for directory in self.stimuli_dirs:
            if any(path.parent == directory for path in self.stimuli.values()):
                return directory
        return None

    @property
    def default_layout(self) -> str:
        """``"cleaned"`` when present (small, ready to use), else ``"raw"``."""
        return "cleaned" if "cleaned" in self.layouts else "raw"

    @property
    def raw_subjects(self) -> list[int]:
        """Participants with at least one raw recording."""
        return sorted({subject for subject, _ in self.raw})

    def resolve_layout(self, layout: str) -> str:
        """``"auto"`` → :attr:`default_layout`; a layout the folder lacks is an error naming the folder."""
        if layout in ("auto", "", None):
            return self.default_layout
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: expected one of {('auto',) + LAYOUTS}")
        if layout not in self.layouts:
            expected = "songNN_Imputed.mat files" if layout == "cleaned" else "PP_R_raw.mat files"
            raise FileNotFoundError(
                f"{self.root}: no {layout} NMED-T files ({expected}); this folder has: {list(self.layouts) or 'none'}"
            )
        return layout


def _stimulus_search_dirs(root: Path, stimuli_dir: str | Path | None) -> list[Path]:
    candidates: list[Path] = []
    if stimuli_dir not in (None, ""):
        given = Path(stimuli_dir).expanduser()
        if not given.is_absolute() and not given.exists() and (root / given).exists():
            given = root / given
        if not given.is_dir():
            raise FileNotFoundError(
                f"stimuli_dir {str(given)!r} is not a folder; it should hold the NMED-T stimulus WAVs "
                f"({', '.join(song.wav_name for song in SONGS.values())})"
            )
        candidates.append(given.resolve())
    candidates += [root / name for name in _STIMULI_SUBDIRS] + [root]
    unique: list[Path] = []
    for directory in candidates:
        if directory.is_dir() and directory not in unique:
            unique.append(directory)
    return unique


def _stimulus_candidates(song: Song) -> list[str]:
    """File names accepted for a song's WAV: the public loaders' name, then ``song21.wav`` / ``21.wav``."""
    return [song.wav_name, f"song{song.id}.wav", f"{song.id}.wav"]


def _find_stimuli(directories: Sequence[Path], songs: dict[int, Song]) -> dict[int, Path]:
    found: dict[int, Path] = {}
    listings = {d: {p.name.lower(): p for p in d.iterdir() if p.is_file()} for d in directories}
    for song in songs.values():
        for directory in directories:
            hit = next((listings[directory][n.lower()] for n in _stimulus_candidates(song) if n.lower() in listings[directory]), None)
            if hit is not None:
                found[song.id] = hit
                break
    return found


def _stimulus_lengths(stimuli: dict[int, Path]) -> tuple[dict[int, float], dict[int, str]]:
    """The length (s) of each stimulus WAV from its header; unusable WAVs go to the second dict, with why."""
    import soundfile as sf

    seconds: dict[int, float] = {}
    problems: dict[int, str] = {}
    for song_id, path in stimuli.items():
        try:
            info = sf.info(str(path))
        except Exception as err:  # libsndfile's errors for empty, truncated or non-audio files
            problems[song_id] = f"{path}: cannot read the WAV of song {song_id} ({type(err).__name__}: {err})"
            continue
        if info.frames <= 0 or info.samplerate <= 0:
            problems[song_id] = f"{path}: the WAV of song {song_id} holds no samples (0 frames)"
            continue
        seconds[song_id] = info.frames / info.samplerate
    return seconds, problems


def _warn_other_lengths(songs: dict[int, Song], seconds: dict[int, float], stimuli: dict[int, Path], simulated: bool) -> None:
    """Say which stimulus WAVs do not last as long as the songs table says (another study's songs, excerpts)."""
    table = "the simulation's" if simulated else "NMED-T's"
    for song_id, length in sorted(seconds.items()):
        listed = songs[song_id].duration_s
        if abs(length - listed) > CATALOGUE_TOLERANCE_S:
            warnings.warn(
                f"{stimuli[song_id]}: this WAV of song {song_id} lasts {length:.1f} s, but {table} song {song_id} "
                f"({songs[song_id].title}) lasts {listed:g} s. Read as this folder's song (another study's stimulus, "
                f"or an excerpt): raw recordings are cut at the WAV's length, and notebook 02 checks it against the EEG",
                stacklevel=3,
            )


def _simulated_songs(root: Path) -> tuple[dict[int, Song], dict[str, Any]]:
    """The songs table of a simulated dataset (its ``simulation.json`` gives the song lengths)."""
    path = root / SIMULATION_FILE
    if not path.is_file():
        return dict(SONGS), {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise NMEDTError(f"{path}: not a readable simulation record ({err})") from None
    songs = dict(SONGS)
    for key, entry in (meta.get("songs") or {}).items():
        song_id = int(key)
        if song_id in songs and "duration_s" in entry:
            songs[song_id] = dataclasses.replace(songs[song_id], duration_s=float(entry["duration_s"]))
    return songs, meta


def scan_nmedt(root: str | Path, stimuli_dir: str | Path | None = None) -> NMEDTFolder:
    """Find the NMED-T files in a folder (no EEG is read).

    Parameters
    ----------
    root : path-like
        A folder holding the cleaned files (``song21_Imputed.mat`` …) and/or the raw files
        (``02_1_raw.mat`` …), directly or in sub-folders named ``cleaned``/``raw`` (any depth).
    stimuli_dir : path-like, optional
        A folder with the stimulus WAVs (e.g. a sibling folder); ``root/stimuli`` and ``root`` are
        searched too.

    Returns
    -------
    NMEDTFolder

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a folder, or holds no NMED-T file (the message says what was looked for).
    NMEDTError
        If two files claim the same song or recording.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"NMED-T folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise FileNotFoundError(f"NMED-T folder {str(root)!r} is not a folder")
    root = root.resolve()
    cleaned: dict[int, Path] = {}
    raw: dict[tuple[int, int], Path] = {}
    for path in sorted(root.rglob("*.mat")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # unfinished atomic writes and hidden folders
        if match := _CLEANED_RE.match(path.name):
            song_id = int(match.group(1))
            if song_id not in SONGS:
                warnings.warn(f"{path}: song {song_id} is not an NMED-T song (21–30); ignored", stacklevel=2)
                continue
            if song_id in cleaned:
                raise NMEDTError(f"two cleaned files for song {song_id}: {cleaned[song_id]} and {path}")
            cleaned[song_id] = path
        elif match := _RAW_RE.match(path.name):
            key = (int(match.group(1)), int(match.group(2)))
            if key in raw:
                raise NMEDTError(f"two raw files for participant {key[0]}, recording {key[1]}: {raw[key]} and {path}")
            raw[key] = path
    if not cleaned and not raw:
        mats = sorted(p.name for p in root.rglob("*.mat"))[:5]
        raise FileNotFoundError(
            f"{root}: no NMED-T files found. Expected cleaned files named songNN_Imputed.mat "
            f"(e.g. song21_Imputed.mat) and/or raw files named PP_R_raw.mat (e.g. 02_1_raw.mat)"
            + (f"; found other .mat files: {mats}" if mats else "; the folder has no .mat file")
        )
    songs, simulation = _simulated_songs(root)
    directories = _stimulus_search_dirs(root, stimuli_dir)
    layouts = tuple(name for name, files in (("cleaned", cleaned), ("raw", raw)) if files)
    stimuli = _find_stimuli(directories, songs)
    lengths, problems = _stimulus_lengths(stimuli)
    _warn_other_lengths(songs, lengths, stimuli, bool(simulation))
    return NMEDTFolder(
        root=root,
        layouts=layouts,
        cleaned=dict(sorted(cleaned.items())),
        raw=dict(sorted(raw.items())),
        songs=songs,
        stimuli_dirs=tuple(directories),
        stimuli=stimuli,
        simulated=bool(simulation),
        simulation=simulation,
        stimulus_seconds=lengths,
        stimulus_problems=problems,
    )


def as_folder(folder: NMEDTFolder | str | Path, stimuli_dir: str | Path | None = None) -> NMEDTFolder:
    """``folder`` itself when already scanned, else :func:`scan_nmedt` of the path (with ``stimuli_dir``)."""
    return folder if isinstance(folder, NMEDTFolder) else scan_nmedt(folder, stimuli_dir)


# --------------------------------------------------------------------------------------------------
# MATLAB files: v5 (scipy) and v7.3 (HDF5)
# --------------------------------------------------------------------------------------------------


def _is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def _open_hdf5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise NMEDTError(f"{path}: cannot open the MATLAB v7.3 (HDF5) file ({err}); it may be truncated") from None


def _h5_variables(handle) -> list[str]:
    return sorted(key for key in handle.keys() if not key.startswith("#"))


def _require_variables(path: Path, present, wanted: Sequence[str], layout: str, holds: Callable[[], list[str]],
                       checked: Sequence[str] | None = None) -> None:
    """Refuse a file of ``layout`` that lacks one of ``checked`` (default ``wanted``), naming what it holds.

    ``present`` answers ``name in present``; ``holds`` lists the file's variables (called only to say so).
    """
    missing = [name for name in (checked or wanted) if name not in present]
    if missing:
        raise NMEDTError(
            f"{path}: missing variable(s) {missing}; a {layout} NMED-T file holds {list(wanted)}, "
            f"this one holds {holds()}"
        )


def _loadmat_v5(path: Path, variable_names: Sequence[str]) -> dict[str, Any]:
    """Load the named variables of a MATLAB v4–v7 file; every failure names the file."""
    import scipy.io

    try:
        with open(path, "rb") as handle:
            return scipy.io.loadmat(handle, variable_names=list(variable_names))
    except NotImplementedError:
        raise NMEDTError(f"{path}: MATLAB v7.3 file that is not valid HDF5; it may be truncated") from None
    except Exception as err:  # scipy raises ValueError, TypeError, zlib.error, MatReadError… on damage
        raise NMEDTError(f"{path}: cannot read the MATLAB file ({type(err).__name__}: {err}); it may be truncated or not a .mat file") from None


def _v5_variables(path: Path) -> list[str]:
    import scipy.io

    try:
        return sorted(name for name, _, _ in scipy.io.whosmat(str(path)))
    except Exception as err:
        raise NMEDTError(f"{path}: cannot read the MATLAB file ({type(err).__name__}: {err}); it may be truncated or not a .mat file") from None


def _h5_char(dataset) -> str:
    """A MATLAB char array stored in HDF5 (uint16 codes)."""
    codes = np.asarray(dataset[()]).ravel()
    return "".join(chr(int(c)) for c in codes if int(c) != 0)


def _h5_cell_strings(handle, name: str, path: Path) -> list[str]:
    dataset = handle[name]
    if dataset.dtype != object:
        if dataset.attrs.get("MATLAB_class", b"") == b"char":
            return [_h5_char(dataset)]
        raise NMEDTError(f"{path}: variable {name!r} should be a cell of strings, found a {dataset.dtype} array")
    return [_h5_char(handle[ref]) for ref in np.asarray(dataset[()]).ravel()]


def _h5_scalar(handle, name: str, path: Path) -> float:
    values = np.asarray(handle[name][()], dtype=float).ravel()
    if values.size != 1:
        raise NMEDTError(f"{path}: variable {name!r} should be one number, found {values.size} values")
    return float(values[0])


def _v5_strings(value: Any) -> list[str]:
    """The strings of a scipy-loaded cell array (or char array)."""
    value = np.asarray(value)
    if value.dtype == object:
        return [str(np.asarray(item).squeeze()) if np.asarray(item).size else "" for item in value.ravel()]
    if value.dtype.kind in "US":
        return [str(item).strip() for item in value.ravel()]
    return [str(item) for item in value.ravel()]


def _check_fs(fs: float, path: Path) -> float:
    if not np.isfinite(fs) or fs <= 0:
        raise NMEDTError(f"{path}: fs = {fs!r} is not a positive sampling rate")
    return float(fs)


def write_mat_v73(path: str | Path, variables: dict[str, Any]) -> Path:
    """Write a MATLAB v7.3 file (HDF5 with MATLAB's 512-byte header), as MATLAB's ``save -v7.3`` does.

    Supported values: numeric arrays (stored transposed, as MATLAB stores column-major arrays, with
    ``MATLAB_class`` ``double``/``single``/…), scalars, strings (``char``), and cell arrays given as
    NumPy object arrays of those (stored as HDF5 object references into ``#refs#``). The file is
    written to a temporary name and renamed, so a reader never sees half a file.
    """
    import h5py

    from .utils import atomic_file

    path = Path(path)
    classes = {
        np.dtype(np.float64): b"double", np.dtype(np.float32): b"single", np.dtype(np.int8): b"int8",
        np.dtype(np.int16): b"int16", np.dtype(np.int32): b"int32", np.dtype(np.int64): b"int64",
        np.dtype(np.uint8): b"uint8", np.dtype(np.uint16): b"uint16", np.dtype(np.uint32): b"uint32",
        np.dtype(np.uint64): b"uint64",
    }
    counter = iter(range(10**9))

    def write_value(group, name: str, value: Any):
        if isinstance(value, str):
            codes = np.array([ord(c) for c in value], dtype=np.uint16).reshape(1, -1)
            dataset = group.create_dataset(name, data=codes.T)
            dataset.attrs["MATLAB_class"] = np.bytes_(b"char")
            dataset.attrs["MATLAB_int_decode"] = np.int32(2)
            return dataset
        array = np.asarray(value)
        if array.dtype == object:
            refs_group = group.file.require_group("#refs#")
            matlab = np.atleast_2d(array)
            refs = np.empty(matlab.shape, dtype=h5py.ref_dtype)
            for index in np.ndindex(matlab.shape):
                refs[index] = write_value(refs_group, f"r{next(counter)}", matlab[index]).ref
            dataset = group.create_dataset(name, data=refs.T)
            dataset.attrs["MATLAB_class"] = np.bytes_(b"cell")
            return dataset
        if array.dtype == bool:
            array = array.astype(np.uint8)
        if array.dtype not in classes:
            raise TypeError(f"write_mat_v73: cannot store {name!r} of dtype {array.dtype}")
        matlab = array.reshape(1, 1) if array.ndim == 0 else (array.reshape(1, -1) if array.ndim == 1 else array)
        big = matlab.nbytes > (1 << 20)
        dataset = group.create_dataset(
            name, data=matlab.T, chunks=True if big else None,
        )
        dataset.attrs["MATLAB_class"] = np.bytes_(classes[array.dtype])
        return dataset

    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=512, libver="earliest") as handle:
            for name, value in variables.items():
                write_value(handle, name, value)
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: eeg2music HDF5 schema 1.00 ."
        with open(tmp, "r+b") as handle:
            handle.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")
    return path


# --------------------------------------------------------------------------------------------------
# Cleaned layout
# --------------------------------------------------------------------------------------------------


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


def _expected_cleaned(song_id: int) -> tuple[str, str]:
    return f"data{song_id}", f"subs{song_id}"


def _check_cleaned_shape(path: Path, name: str, shape: tuple[int, ...], n_subjects: int) -> tuple[int, int]:
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
    data_name, subs_name = _expected_cleaned(song_id)
    wanted = (data_name, subs_name, "fs")
    if _is_hdf5(path):
        handle = _open_hdf5(path)
        try:
            _require_variables(path, handle, wanted, "cleaned", lambda: _h5_variables(handle))
            subjects = [parse_subject(s) for s in _h5_cell_strings(handle, subs_name, path)]
            fs = _check_fs(_h5_scalar(handle, "fs", path), path)
            dataset = handle[data_name]
            matlab_shape = tuple(reversed(dataset.shape))
            n_channels, n_times = _check_cleaned_shape(path, data_name, matlab_shape, len(subjects))
            song = _CleanedSong(path, song_id, subjects, fs, n_channels, n_times, _dataset=dataset, _handle=handle)
        except BaseException:
            handle.close()
            raise
    else:
        contents = _loadmat_v5(path, wanted)
        _require_variables(path, contents, wanted, "cleaned", lambda: _v5_variables(path))
        try:
            subjects = [parse_subject(s) for s in _v5_strings(contents[subs_name])]
        except ValueError as err:
            raise NMEDTError(f"{path}: {subs_name} should list participant IDs such as 'P02' ({err})") from None
        fs_values = np.asarray(contents["fs"], dtype=float).ravel()
        if fs_values.size != 1:
            raise NMEDTError(f"{path}: fs should be one number, found {fs_values.size} values")
        fs = _check_fs(float(fs_values[0]), path)
        array = np.asarray(contents[data_name])
        if array.dtype.kind not in "fiu":
            raise NMEDTError(f"{path}: {data_name} should be a numeric array, found dtype {array.dtype}")
        n_channels, n_times = _check_cleaned_shape(path, data_name, array.shape, len(subjects))
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


# --------------------------------------------------------------------------------------------------
# Raw layout
# --------------------------------------------------------------------------------------------------


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
        events.append(RawEvent(str(label), _trigger_code(label), int(round(value[0]))))
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
            return _h5_char(item)
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
    labels = [_v5_strings(item)[0] if np.asarray(item).dtype.kind in "US" else np.asarray(item).ravel()[0] for item in cells[0]]
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


def _open_raw(path: Path, load_data: bool = True) -> _RawFile:
    wanted = ("X", "fs", "DIN_1")
    if _is_hdf5(path):
        handle = _open_hdf5(path)
        try:
            _require_variables(path, handle, wanted, "raw", lambda: _h5_variables(handle))
            fs = _check_fs(_h5_scalar(handle, "fs", path), path)
            events = _h5_din(handle, path)
            dataset = handle["X"]
            n_channels, n_times, time_axis = _raw_shape(path, dataset.shape, hdf5=True)
            return _RawFile(path, fs, events, n_channels, n_times, _dataset=dataset, _time_axis=time_axis, _handle=handle)
        except BaseException:
            handle.close()
            raise
    names = wanted if load_data else ("fs", "DIN_1")
    contents = _loadmat_v5(path, names)
    _require_variables(path, contents, wanted, "raw", lambda: _v5_variables(path), checked=names)
    fs = _check_fs(float(np.asarray(contents["fs"], dtype=float).ravel()[0]), path)
    events = _v5_din(contents["DIN_1"], path)
    if not load_data:
        import scipy.io

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
    raw_file = _open_raw(Path(path), load_data=False)
    raw_file.close()
    return raw_file.events


def _song_onsets_of(raw_file: _RawFile, songs: dict[int, Song]) -> dict[int, int]:
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
    raw_file = _open_raw(Path(path), load_data=False)
    raw_file.close()
    return _song_onsets_of(raw_file, songs or SONGS)


# --------------------------------------------------------------------------------------------------
# MNE objects
# --------------------------------------------------------------------------------------------------

_MONTAGE_CACHE: dict[str, Any] = {}


def _make_raw(data_uv: np.ndarray, fs: float, info_dict: dict[str, Any]):
    """A RawArray in volts with HydroCel names and montage, carrying ``info_dict`` as its metadata."""
    import mne

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
        raise ValueError("this Raw was not read by eeg2music.nmedt (no recording metadata in info['description'])") from None
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
        From :func:`scan_nmedt`, or a folder to scan.
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
    (a pass over the data, which :func:`eeg2music.preprocess.build_cache` folds into one it makes anyway).
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
                current = _open_raw(path)
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
    _, subs_name = _expected_cleaned(song_id)
    if _is_hdf5(path):
        handle = _open_hdf5(path)
        try:
            if subs_name not in handle:
                raise NMEDTError(f"{path}: missing variable {subs_name!r}; this file holds {_h5_variables(handle)}")
            return [parse_subject(s) for s in _h5_cell_strings(handle, subs_name, path)]
        finally:
            handle.close()
    contents = _loadmat_v5(path, [subs_name])
    if subs_name not in contents:
        raise NMEDTError(f"{path}: missing variable {subs_name!r}; this file holds {_v5_variables(path)}")
    return [parse_subject(s) for s in _v5_strings(contents[subs_name])]


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


# --------------------------------------------------------------------------------------------------
# Stimuli
# --------------------------------------------------------------------------------------------------


def stimulus_path(folder: NMEDTFolder | str | Path, song_id: int, stimuli_dir: str | Path | None = None) -> Path:
    """The WAV of a song; a missing one is an error naming the files looked for and where."""
    folder = as_folder(folder, stimuli_dir)
    song_id = int(song_id)
    if song_id not in folder.songs:
        raise ValueError(f"song {song_id} is not an NMED-T song; expected one of {sorted(SONGS)}")
    if song_id in folder.stimuli:
        return folder.stimuli[song_id]
    searched = [str(d) for d in folder.stimuli_dirs] or [str(folder.root)]
    raise FileNotFoundError(
        f"no stimulus WAV for song {song_id} ({folder.songs[song_id].title}): looked for "
        f"{_stimulus_candidates(folder.songs[song_id])} in {searched}. The NMED-T release does not include "
        f"the audio: put the 44.1 kHz WAVs in {folder.root / 'stimuli'}, or name their folder with the parameter "
        f"stimuli_dir (-p stimuli_dir in notebooks 01, 02, 04 and 05; --stimuli_dir for python -m eeg2music.train)."
    )


def read_stimulus(folder: NMEDTFolder | str | Path, song_id: int, sr: int = 16000, stimuli_dir: str | Path | None = None) -> np.ndarray:
    """A song's audio as float32 mono at ``sr`` Hz (resampled with soxr, high quality).

    Parameters
    ----------
    folder : NMEDTFolder or path-like
        The NMED-T folder (its stimuli folders are searched; see :func:`scan_nmedt`).
    song_id : int
        21–30.
    sr : int
        Output sampling rate (16 000 for the AudioLDM2 backbone).
    stimuli_dir : path-like, optional
        An extra folder to search when ``folder`` is a path.

    Raises
    ------
    FileNotFoundError
        Naming the file names looked for and the folders searched.
    NMEDTError
        If the WAV cannot be decoded.
    """
    import soundfile as sf
    import soxr  # what librosa.resample(res_type="soxr_hq") calls, without librosa's import time

    path = stimulus_path(folder, song_id, stimuli_dir)
    try:
        audio, native_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise NMEDTError(f"{path}: cannot read the WAV ({err})") from None
    if audio.shape[0] == 0:
        raise NMEDTError(f"{path}: the WAV of song {int(song_id)} holds no samples (0 frames); replace it with the song's audio")
    mono = audio.mean(axis=1)
    if int(native_sr) != int(sr):
        mono = soxr.resample(mono, int(native_sr), int(sr), quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Exploring a folder (headers only: a summary never loads the EEG)
# --------------------------------------------------------------------------------------------------


def describe_cleaned(path: str | Path, song_id: int) -> dict[str, Any]:
    """Shape, sampling rate and participants of a cleaned file, read from its header and small variables."""
    path = Path(path)
    data_name, subs_name = _expected_cleaned(song_id)
    if _is_hdf5(path):
        handle = _open_hdf5(path)
        try:
            missing = [n for n in (data_name, subs_name, "fs") if n not in handle]
            if missing:
                raise NMEDTError(f"{path}: missing variable(s) {missing}; this file holds {_h5_variables(handle)}")
            shape = tuple(reversed(handle[data_name].shape))
            fs = _check_fs(_h5_scalar(handle, "fs", path), path)
            subjects = [parse_subject(s) for s in _h5_cell_strings(handle, subs_name, path)]
        finally:
            handle.close()
    else:
        import scipy.io

        try:
            shapes = {name: tuple(shape) for name, shape, _ in scipy.io.whosmat(str(path))}
        except Exception as err:
            raise NMEDTError(f"{path}: cannot read the MATLAB file ({type(err).__name__}: {err}); it may be truncated") from None
        contents = _loadmat_v5(path, [subs_name, "fs"])
        missing = [n for n in (data_name, subs_name, "fs") if n not in shapes]
        if missing:
            raise NMEDTError(f"{path}: missing variable(s) {missing}; this file holds {sorted(shapes)}")
        shape = shapes[data_name]
        fs = _check_fs(float(np.asarray(contents["fs"], dtype=float).ravel()[0]), path)
        subjects = [parse_subject(s) for s in _v5_strings(contents[subs_name])]
    n_channels, n_times = _check_cleaned_shape(path, data_name, shape, len(subjects))
    return {"file": path.name, "song": int(song_id), "fs": fs, "n_channels": n_channels, "n_times": n_times, "subjects": subjects}


def describe_raw(path: str | Path, songs: dict[int, Song] | None = None) -> dict[str, Any]:
    """Sampling rate, size, events and song onsets of a raw recording (no EEG is read)."""
    path = Path(path)
    raw_file = _open_raw(path, load_data=False)
    raw_file.close()
    match = _RAW_RE.match(path.name)
    return {
        "file": path.name,
        "subject": int(match.group(1)) if match else None,
        "recording": int(match.group(2)) if match else None,
        "fs": raw_file.fs,
        "n_channels": raw_file.n_channels,
        "n_times": raw_file.n_times,
        "n_events": len(raw_file.events),
        "onset_samples": {int(k): int(v) for k, v in sorted(_song_onsets_of(raw_file, songs or SONGS).items())},
    }


def dataset_summary(folder: NMEDTFolder | str | Path, layout: str = "auto") -> dict[str, Any]:
    """What a folder holds in one layout, from file headers: the ``dataset_summary.json`` of notebook 01.

    Returns
    -------
    dict
        ``format`` ("cleaned" | "raw"), ``fs``, ``n_channels``, ``subjects`` (ints), ``songs`` (list of
        ``{id, title, artist, bpm, duration_s, stimulus}``), ``n_recordings``, ``layouts`` present,
        ``root``, ``simulated``; for cleaned data ``files``; for raw data ``recordings``: per file the
        participant, recording and the onset sample of each song.

    Raises
    ------
    NMEDTError
        If the files of the layout disagree on the sampling rate or channel count.
    """
    folder = as_folder(folder)
    layout = folder.resolve_layout(layout)
    if layout == "cleaned":
        described = [describe_cleaned(path, song) for song, path in folder.cleaned.items()]
        song_ids = [d["song"] for d in described]
        subjects = sorted({s for d in described for s in d["subjects"]})
        n_recordings = sum(len(d["subjects"]) for d in described)
    else:
        described = [describe_raw(path, folder.length_table()) for path in folder.raw.values()]
        song_ids = sorted({s for d in described for s in d["onset_samples"]})
        subjects = sorted({d["subject"] for d in described})
        n_recordings = sum(len(d["onset_samples"]) for d in described)
    rates = sorted({d["fs"] for d in described})
    channels = sorted({d["n_channels"] for d in described})
    if len(rates) > 1 or len(channels) > 1:
        raise NMEDTError(f"{folder.root}: the {layout} files disagree: sampling rates {rates}, channel counts {channels}")
    summary = {
        "root": str(folder.root),
        "format": layout,
        "layouts": list(folder.layouts),
        "simulated": folder.simulated,
        "fs": rates[0],
        "n_channels": channels[0],
        "channel_names": channel_names(channels[0]),
        "subjects": subjects,
        "songs": [
            {"id": s, "title": folder.songs[s].title, "artist": folder.songs[s].artist, "bpm": folder.songs[s].bpm,
             "duration_s": folder.songs[s].duration_s, "stimulus": str(folder.stimuli[s]) if s in folder.stimuli else None}
            for s in sorted(song_ids)
        ],
        "n_recordings": n_recordings,
    }
    if layout == "cleaned":
        summary["files"] = described
    else:
        summary["recordings"] = [
            {"file": d["file"], "subject": d["subject"], "recording": d["recording"], "n_times": d["n_times"],
             "onset_samples": {str(k): v for k, v in d["onset_samples"].items()}}
            for d in described
        ]
    return summary


def note_onsets(audio: np.ndarray, sr: int, min_interval_s: float = 0.25, threshold: float = 2.0) -> np.ndarray:
    """Note-onset times (s) of a stimulus: peaks of its spectral flux that stand out from the local level.

    A peak counts when its flux exceeds ``threshold`` × the median flux of the surrounding 2 s and is
    at least ``min_interval_s`` from a stronger one.
    """
    from scipy.ndimage import median_filter
    from scipy.signal import find_peaks

    from .audio import auditory_features

    rate = 100.0
    flux = auditory_features(audio, sr, rate).onsets.astype(float)
    local = median_filter(flux, size=int(2 * rate), mode="nearest") + 1e-9
    peaks, _ = find_peaks(flux, height=threshold * local, distance=max(1, int(min_interval_s * rate)))
    return peaks / rate


def plot_eeg_and_music(raw, audio: np.ndarray | None, sr: int, start_s: float = 0.0, seconds: float = 10.0,
                       channels: Sequence[str] = ("E11", "E6", "E55", "E62", "E75", "E36", "E104")):
    """A stretch of EEG (a few channels, µV) above the mel spectrogram of the music heard meanwhile.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from .audio import display_mel_db

    fs = raw.info["sfreq"]
    picks = [c for c in channels if c in raw.ch_names]
    start, stop = int(start_s * fs), min(raw.n_times, int((start_s + seconds) * fs))
    data = raw.get_data(picks=picks, start=start, stop=stop) * 1e6
    data = data - np.median(data, axis=1, keepdims=True)
    times = start_s + np.arange(data.shape[1]) / fs
    rows = 2 if audio is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(11, 6 if rows == 2 else 4), sharex=True, squeeze=False, layout="constrained")
    spacing = max(4 * np.median(np.std(data, axis=1)), 1.0)
    for i, name in enumerate(picks):
        axes[0, 0].plot(times, data[i] - i * spacing, lw=0.7)
    axes[0, 0].set_yticks([-i * spacing for i in range(len(picks))], picks)
    axes[0, 0].set_title(f"EEG (offset per channel, {spacing:.0f} µV apart), {fs:g} Hz")
    if audio is not None:
        clip = audio[int(start_s * sr) : int((start_s + seconds) * sr)]
        mel = display_mel_db(clip, sr)
        axes[1, 0].imshow(mel, origin="lower", aspect="auto", cmap="magma",
                          extent=(start_s, start_s + len(clip) / sr, 0, mel.shape[0]))
        axes[1, 0].set(ylabel="mel band", title="the music (log-mel spectrogram)")
    axes[-1, 0].set_xlabel("time from song onset (s)")
    return fig


def onset_evoked(folder: NMEDTFolder | str | Path, layout: str = "auto", songs: Iterable[int] | None = None,
                 subjects: Iterable[int] | None = None, tmin: float = -0.1, tmax: float = 0.5,
                 l_freq: float = 1.0, h_freq: float = 15.0, max_recordings: int | None = None):
    """The average EEG response to the music's note onsets (an ERP), over recordings.

    Each recording is band-passed (``l_freq``–``h_freq`` Hz, clipped below Nyquist), re-referenced to
    the average, cut into :class:`mne.Epochs` around the note onsets of its song (found in the
    stimulus WAV with :func:`note_onsets`), baseline-corrected on the pre-onset interval and averaged;
    the recordings' averages are combined weighted by their number of epochs.

    Returns
    -------
    evoked : mne.Evoked or None
        None when no song has a stimulus WAV (onsets cannot be known without the audio).
    used : list of (subject, song)
        The recordings averaged.
    """
    import mne
    from tqdm.auto import tqdm

    folder = as_folder(folder)
    song_ids = [s for s in (songs or folder.songs) if s in folder.stimuli]
    if not song_ids:
        return None, []
    onsets = {s: note_onsets(read_stimulus(folder, s, sr=16000), 16000) for s in song_ids}
    total = count_recordings(folder, layout, song_ids, subjects)
    if max_recordings:
        total = min(total, max_recordings)
    averages, used = [], []
    progress = tqdm(total=total, desc="epochs around note onsets", unit="recording")
    for raw in iter_recordings(folder, layout, songs=song_ids, subjects=subjects):
        if max_recordings and len(used) >= max_recordings:
            break
        info = recording_info(raw)
        fs = raw.info["sfreq"]
        raw.filter(l_freq, min(h_freq, 0.45 * fs), verbose="error")
        raw.set_eeg_reference("average", verbose="error")
        samples = np.round(onsets[info["song"]] * fs).astype(int)
        samples = samples[(samples + tmin * fs >= 0) & (samples + tmax * fs < raw.n_times)]
        if len(samples) == 0:
            continue
        events = np.column_stack([samples, np.zeros_like(samples), np.ones_like(samples)])
        decim = max(1, int(fs // 250))  # 1 kHz raw → 250 Hz epochs: plenty for a 15 Hz ERP
        epochs = mne.Epochs(raw, events, tmin=tmin, tmax=tmax, baseline=(None, 0), decim=decim, preload=True, verbose="error")
        averages.append(epochs.average())
        used.append((info["subject"], info["song"]))
        progress.update(1)
    progress.close()
    if not averages:
        return None, []
    evoked = mne.combine_evoked(averages, weights="nave") if len(averages) > 1 else averages[0]
    evoked.comment = f"note onsets, {len(used)} recordings"
    print(f"[onset ERP] {evoked.nave} note onsets from {len(used)} recordings ({len({s for s, _ in used})} participants, "
          f"{len({g for _, g in used})} songs), {l_freq:g}–{min(h_freq, 0.45 * evoked.info['sfreq']):g} Hz")
    return evoked, used
