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
(:func:`~eeg2music.data.recordings.recording_info`). Raw files are streamed: only the song's samples are read from the HDF5
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mne
import numpy as np
import soundfile as sf
import soxr


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


RAW_RE = re.compile(r"^[ps]?(\d{1,3})_(\d+)_raw\.mat$", re.IGNORECASE)


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


def trigger_code(label: Any) -> int | None:
    """The trigger number in a DIN label (``"D21"`` → 21); None when the label has no digits."""
    if isinstance(label, (int, np.integer)):
        return int(label)
    if isinstance(label, (float, np.floating)) and np.isfinite(label):
        return int(label)
    digits = "".join(re.findall(r"\d", str(label)))
    return int(digits) if digits else None


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
        True when the folder was written by :func:`eeg2music.data.simulate.simulate_nmedt`.
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
        elif match := RAW_RE.match(path.name):
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
