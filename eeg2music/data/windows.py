"""Pair 3.5 s audio clips with their EEG windows, and split them as the paper does.

Each song is cut into consecutive **chunks** of ``clip_seconds`` (3.5 s): chunk ``c`` covers the audio
``[c · 3.5 s, (c + 1) · 3.5 s)`` — 56 000 samples at 16 kHz — and, for every participant who heard the
song, the EEG over the same span shifted by ``lag_seconds`` (the brain responds after the sound, so a
positive lag takes the EEG later). A **window** is one participant × song × chunk
(:class:`WindowRef`). Its EEG has :func:`window_samples` samples at the cache's rate (438 at 125 Hz,
3500 at 1 kHz); a window whose EEG would run past the end of its recording is dropped and counted,
never padded.

Splits (:func:`make_splits`), as in the paper:

* within each **training song**, three disjoint ranges of chunks — ``train`` first, then ``val``,
  then ``test`` at the end of the song — separated by ``gap_chunks`` unused chunks, so that no window
  (nor a rounding sample of it) straddles two splits;
* one whole song (``ood_song``, 21 by default) held out as **out-of-distribution** (``ood``): none of
  its chunks is in train or val;
* **leave-one-subject-out** (``loso_subject``): the held-out participant's windows appear only in
  ``test`` (the test chunks of the training songs) and ``ood``; train and val hold the others only.

The audio clips are the same for every participant, so a split's distinct (song, chunk) pairs
(:meth:`EEGMusicWindows.clips`) are what the training stage encodes into latents, once each.

Typical use — the splits exactly as notebook 02 made them (its ``preprocess_summary.json`` names the
cache, the :class:`WindowSpec`, the held-out participant and the song lengths)::

    from eeg2music.data.windows import load_stage_windows
    datasets = load_stage_windows("")             # "" → outputs/02_preprocess; EEG and ids only
    train = datasets["train"]                     # an EEGMusicWindows (torch Dataset)
    train.clips()                                 # distinct (song, chunk) pairs → encode each clip once
    train = train.with_latents(latents)           # items: eeg [124, 438], subject, latent, song, chunk
    with_audio = load_stage_windows("", stimuli=True)   # items carry audio [56000] instead

or from any cache: ``load_windows(cache_dir_or_index, WindowSpec(lag_seconds=0.2), stimuli=True)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import CacheIndex

#: Split names, in the order of the chunks within a training song (then the held-out song).
SPLITS = ("train", "val", "test", "ood")


def window_samples(sfreq: float, seconds: float) -> int:
    """Samples in ``seconds`` at ``sfreq``, rounded half up (3.5 s: 438 at 125 Hz, 3500 at 1 kHz, 56 000 at 16 kHz)."""
    return int(math.floor(seconds * sfreq + 0.5))


#: Test chunks per training song at the least (when ``test_fraction`` > 0): with one, every test segment is
#: its song's only one and segment identification is song identification; two make them differ (a model
#: must find *when* in the song, not only *which* song). A song too short to spare them (and keep a
#: training chunk) gets one.
MIN_TEST_CHUNKS = 2


@dataclass(frozen=True)
class WindowSpec:
    """How clips and EEG windows are cut, and how chunks are split.

    Parameters
    ----------
    clip_seconds : float
        Length of a clip and of its EEG window (3.5 s in the paper).
    lag_seconds : float
        How far the EEG window lies behind its audio clip (s); may be negative.
    ood_song : int or None
        The song held out whole as out-of-distribution (21 in the reproduction); None: no OOD split.
    val_fraction, test_fraction : float
        Share of each training song's chunks in val and test (when positive, at least one val chunk and
        :data:`MIN_TEST_CHUNKS` test chunks, or one where the song cannot spare them).
    val_chunks, test_chunks : int or None
        Exact numbers of chunks per training song, overriding the fractions.
    gap_chunks : int
        Unused chunks between two adjacent splits of a song.
    audio_sr : int
        Sampling rate of the audio clips (16 kHz for the AudioLDM2 backbone).
    """

    clip_seconds: float = 3.5
    lag_seconds: float = 0.0
    ood_song: int | None = 21
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    val_chunks: int | None = None
    test_chunks: int | None = None
    gap_chunks: int = 1
    audio_sr: int = 16000

    def __post_init__(self) -> None:
        if not (np.isfinite(self.clip_seconds) and self.clip_seconds > 0):
            raise ValueError(f"WindowSpec.clip_seconds: {self.clip_seconds!r} is not a positive duration")
        if not np.isfinite(self.lag_seconds):
            raise ValueError(f"WindowSpec.lag_seconds: {self.lag_seconds!r} is not a finite duration")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not (0.0 <= value < 1.0):
                raise ValueError(f"WindowSpec.{name}: {value!r} is not in [0, 1)")
        for name in ("val_chunks", "test_chunks"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 0):
                raise ValueError(f"WindowSpec.{name}: {value!r} is not a non-negative integer (or None)")
        if int(self.gap_chunks) != self.gap_chunks or self.gap_chunks < 0:
            raise ValueError(f"WindowSpec.gap_chunks: {self.gap_chunks!r} is not a non-negative integer")
        if int(self.audio_sr) != self.audio_sr or self.audio_sr <= 0:
            raise ValueError(f"WindowSpec.audio_sr: {self.audio_sr!r} is not a positive integer rate")
        if self.ood_song is not None:
            object.__setattr__(self, "ood_song", int(self.ood_song))

    @property
    def clip_samples(self) -> int:
        """Audio samples per clip (56 000 for 3.5 s at 16 kHz)."""
        return window_samples(self.audio_sr, self.clip_seconds)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> WindowSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"WindowSpec: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def chunks_per_split(self, n_chunks: int) -> dict[str, int]:
        """How a training song's ``n_chunks`` divide into train / val / test (and the gaps between)."""
        def count(fraction: float, exact: int | None, least: int) -> int:
            if exact is not None:
                return int(exact)
            return max(least, int(round(fraction * n_chunks))) if fraction > 0 else 0

        n_val = count(self.val_fraction, self.val_chunks, 1)
        # Two test chunks where the song can spare them and keep a training chunk, else one.
        spare = n_chunks - n_val - self.gap_chunks * ((n_val > 0) + 1) - 1
        n_test = count(self.test_fraction, self.test_chunks, MIN_TEST_CHUNKS if spare >= MIN_TEST_CHUNKS else 1)
        n_gaps = self.gap_chunks * ((n_val > 0) + (n_test > 0))
        return {"train": n_chunks - n_val - n_test - n_gaps, "val": n_val, "test": n_test, "gaps": n_gaps}


def chunk_start_sample(chunk: int, sfreq: float, spec: WindowSpec) -> int:
    """First EEG sample of a chunk's window: ``(chunk · clip_seconds + lag_seconds) · sfreq``, rounded half up."""
    return window_samples(sfreq, chunk * spec.clip_seconds + spec.lag_seconds)


class WindowRef(NamedTuple):
    """One window: participant number, song ID, chunk index and the first EEG sample in its recording."""

    subject: int
    song: int
    chunk: int
    start: int


class Splits(dict):
    """Split name → list of :class:`WindowRef`, plus how they were made.

    Attributes
    ----------
    chunk_ranges : dict
        Song → split name → ``range`` of chunk indices.
    n_chunks : dict
        Song → number of whole chunks in the song.
    dropped : dict
        Split name → windows dropped because their EEG lies outside the recording (both reasons).
    dropped_before_start : dict
        Split name → those of them whose EEG would start before the recording (a negative lag); the
        others run past its end.
    loso_subject : int or None
    """

    def __init__(self, windows, chunk_ranges, n_chunks, dropped, loso_subject, spec, dropped_before_start=None):
        super().__init__(windows)
        self.chunk_ranges: dict[int, dict[str, range]] = chunk_ranges
        self.n_chunks: dict[int, int] = n_chunks
        self.dropped: dict[str, int] = dropped
        self.dropped_before_start: dict[str, int] = dict(dropped_before_start or {name: 0 for name in dropped})
        self.loso_subject: int | None = loso_subject
        self.spec: WindowSpec = spec

    def __reduce__(self):
        return (Splits, (dict(self), self.chunk_ranges, self.n_chunks, self.dropped, self.loso_subject, self.spec,
                         self.dropped_before_start))

    def dropped_past_end(self) -> dict[str, int]:
        """Split name → windows dropped because their EEG would run past the end of the recording."""
        return {name: self.dropped[name] - self.dropped_before_start.get(name, 0) for name in self.dropped}

    def counts(self) -> dict[str, int]:
        """Windows per split."""
        return {name: len(refs) for name, refs in self.items()}

    def split_of_chunk(self, song: int, chunk: int) -> str | None:
        """The split a chunk of a song belongs to (None for gap chunks)."""
        for name, chunks in self.chunk_ranges.get(song, {}).items():
            if chunk in chunks:
                return name
        return None

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: counts, dropped windows, chunk ranges per song."""
        return {
            "counts": self.counts(),
            "dropped": dict(self.dropped),
            "dropped_before_start": dict(self.dropped_before_start),
            "loso_subject": self.loso_subject,
            "n_chunks": {str(song): n for song, n in self.n_chunks.items()},
            "chunk_ranges": {
                str(song): {name: [r.start, r.stop] for name, r in ranges.items()}
                for song, ranges in self.chunk_ranges.items()
            },
            "spec": self.spec.to_dict(),
        }


def _song_seconds(index: CacheIndex, song_seconds: Mapping[int, float] | None) -> dict[int, float]:
    eeg = {song: max(e.n_samples for e in index.recordings if e.song == song) / index.sfreq for song in index.songs}
    if song_seconds is None:
        return eeg
    return {song: min(eeg[song], float(song_seconds[song])) if song in song_seconds else eeg[song] for song in eeg}


def make_splits(
    index: CacheIndex,
    spec: WindowSpec | None = None,
    loso_subject: int | None = None,
    song_seconds: Mapping[int, float] | None = None,
    verbose: bool = True,
) -> Splits:
    """Cut every recording of a cache into windows and assign them to train / val / test / ood.

    Parameters
    ----------
    index : CacheIndex
        The preprocessed cache (:func:`eeg2music.data.cache.open_cache`).
    spec : WindowSpec, optional
        Clip length, lag and split sizes (defaults: 3.5 s, no lag, song 21 out-of-distribution).
    loso_subject : int, optional
        A participant number to hold out: their windows go to test and ood only, everyone else's to
        train and val only.
    song_seconds : dict, optional
        Song → audio length (s); chunks are cut within ``min(audio, longest EEG recording)`` of each
        song. Without it, the longest EEG recording of the song sets the chunk grid.
    verbose : bool
        Print the number of windows dropped at the ends of recordings (if any).

    Returns
    -------
    Splits
        ``{"train": [...], "val": [...], "test": [...], "ood": [...]}`` (val/test/ood only when asked for).

    Raises
    ------
    ValueError
        If a training song has too few chunks for the requested split sizes, a split ends up without
        a window, or ``ood_song``/``loso_subject`` are not in the cache — each naming the numbers.
    """
    spec = spec or WindowSpec()
    if spec.ood_song is not None and spec.ood_song not in index.songs:
        raise ValueError(
            f"ood_song {spec.ood_song} is not in the cache {index.path} (songs {list(index.songs)}); choose one of "
            f"them, or ood_song=None for no out-of-distribution split"
        )
    if loso_subject is not None:
        loso_subject = int(loso_subject)
        if loso_subject not in index.subjects:
            raise ValueError(f"loso_subject {loso_subject} is not in the cache (participants {list(index.subjects)})")
        if len(index.subjects) < 2:
            raise ValueError("leave-one-subject-out needs at least two participants in the cache")
    training_songs = [song for song in index.songs if song != spec.ood_song]
    if not training_songs:
        raise ValueError(f"the cache holds only the out-of-distribution song {spec.ood_song}: no song left to train on")

    seconds = _song_seconds(index, song_seconds)
    n_chunks = {song: int(math.floor(seconds[song] / spec.clip_seconds + 1e-9)) for song in index.songs}
    chunk_ranges: dict[int, dict[str, range]] = {}
    for song in training_songs:
        sizes = spec.chunks_per_split(n_chunks[song])
        if sizes["train"] < 1:
            raise ValueError(
                f"song {song}: {n_chunks[song]} chunks of {spec.clip_seconds:g} s ({seconds[song]:.1f} s of EEG/audio) "
                f"cannot hold ≥ 1 train + {sizes['val']} val + {sizes['test']} test + {sizes['gaps']} gap chunk(s); "
                f"use longer songs, fewer val/test chunks (val_chunks, test_chunks) or gap_chunks=0"
            )
        ranges, cursor = {}, 0
        for name in ("train", "val", "test"):
            if sizes[name] == 0:
                continue
            if name != "train":
                cursor += spec.gap_chunks
            ranges[name] = range(cursor, cursor + sizes[name])
            cursor += sizes[name]
        chunk_ranges[song] = ranges
    if spec.ood_song is not None:
        chunk_ranges[spec.ood_song] = {"ood": range(0, n_chunks[spec.ood_song])}

    names = [name for name in SPLITS if any(name in ranges for ranges in chunk_ranges.values())]
    windows: dict[str, list[WindowRef]] = {name: [] for name in names}
    dropped = {name: 0 for name in names}
    early = {name: 0 for name in names}
    length = window_samples(index.sfreq, spec.clip_seconds)
    for entry in sorted(index.recordings, key=lambda e: (e.song, e.subject)):
        for name, chunks in chunk_ranges[entry.song].items():
            if loso_subject is not None and (entry.subject == loso_subject) != (name in ("test", "ood")):
                continue
            for chunk in chunks:
                start = chunk_start_sample(chunk, index.sfreq, spec)
                if start < 0 or start + length > entry.n_samples:
                    dropped[name] += 1
                    early[name] += start < 0
                else:
                    windows[name].append(WindowRef(entry.subject, entry.song, chunk, start))

    late = {name: dropped[name] - early[name] for name in names}
    for name in names:
        if not windows[name]:
            songs = sorted(song for song, ranges in chunk_ranges.items() if name in ranges)
            raise ValueError(
                f"split {name!r} has no window: songs {songs} give it "
                f"{[len(chunk_ranges[s][name]) for s in songs]} chunk(s) each, and of their windows "
                + _dropped_words(early[name], late[name], spec.lag_seconds)
                + f" ({length} samples at {index.sfreq:g} Hz)"
                + (f", and only participant {loso_subject} is tested" if loso_subject is not None else "")
            )
    if verbose and any(dropped.values()):
        print(
            f"[windows] dropped {sum(dropped.values())} window(s): "
            + _dropped_words(sum(early.values()), sum(late.values()), spec.lag_seconds)
            + f"; per split: {', '.join(f'{k} {v}' for k, v in dropped.items() if v)}"
        )
    return Splits(windows, chunk_ranges, n_chunks, dropped, loso_subject, spec, early)


def _dropped_words(early: int, late: int, lag: float) -> str:
    """Why windows were dropped, in words: the true reason of each (before the start, past the end)."""
    parts = []
    if early:
        parts.append(f"{early} would start before their recording (lag {lag:g} s takes the EEG {abs(lag):g} s "
                     f"before the music of the first chunk(s))")
    if late or not parts:
        parts.append(f"{late} window(s) ran past the end of their recording (lag {lag:g} s)")
    return " and ".join(parts)


class EEGMusicWindows(Dataset):
    """A split's windows as a map-style :class:`torch.utils.data.Dataset`.

    Items are dicts:

    ``eeg``
        float32 tensor (channels, samples): the window from the cache (read through a memory map).
    ``subject``
        int, the participant's index in ``index.subjects`` (what a subject layer embeds).
    ``song``, ``chunk``
        ints: the song ID and the chunk index within the song.
    ``audio``
        float32 tensor (``spec.clip_samples``,) = 56 000 samples — when audio is attached;
    ``latent``
        float32 tensor (e.g. 8 × 88 × 16) — instead of ``audio`` when a latent table is attached.

    Parameters
    ----------
    index : CacheIndex
        The preprocessed cache.
    windows : sequence of WindowRef
        From :func:`make_splits`.
    spec : WindowSpec
    audio : mapping song → float32 waveform at ``spec.audio_sr``, optional
        Whole songs (loaded once per song, e.g. by :func:`~eeg2music.data.pairing.load_stimuli`); clips are sliced from them.
    latents : mapping (song, chunk) → array, optional
        The encoded clips (audio clips are the same for every participant, so one latent per pair).
    name : str
        The split's name (for messages).
    """

    def __init__(
        self,
        index: CacheIndex,
        windows: Sequence[WindowRef],
        spec: WindowSpec | None = None,
        *,
        audio: Mapping[int, np.ndarray] | None = None,
        latents: Mapping[tuple[int, int], Any] | None = None,
        name: str = "",
    ) -> None:
        self.index = index
        self.windows = list(windows)
        self.spec = spec or WindowSpec()
        self.name = name
        self.n_times = window_samples(index.sfreq, self.spec.clip_seconds)
        excluded = set(index.excluded_channels)
        # A slice reads the memory map contiguously; fancy indexing only when channels are excluded.
        self._rows: slice | np.ndarray = index.channel_rows if excluded else slice(None)
        self._arrays: dict[tuple[int, int], np.ndarray] = {}
        if audio is not None and latents is not None:
            raise ValueError("EEGMusicWindows: give audio or latents, not both")
        self.audio = audio
        self.latents = latents
        if audio is not None:
            self._check_audio(audio)
        if latents is not None:
            missing = [pair for pair in self.clips() if pair not in latents]
            if missing:
                raise KeyError(f"split {name!r}: the latent table lacks {len(missing)} (song, chunk) pair(s), e.g. {missing[:3]}")

    def _check_audio(self, audio: Mapping[int, np.ndarray]) -> None:
        clip = self.spec.clip_samples
        for song, chunk in self.clips():
            if song not in audio:
                raise KeyError(f"split {self.name!r}: no audio for song {song}")
            if (chunk + 1) * clip > len(audio[song]):
                raise ValueError(
                    f"split {self.name!r}: song {song}'s audio has {len(audio[song])} samples "
                    f"({len(audio[song]) / self.spec.audio_sr:.2f} s), too short for chunk {chunk} "
                    f"(needs {(chunk + 1) * clip}); build the splits with song_seconds from the audio"
                )

    def __len__(self) -> int:
        return len(self.windows)

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps would pickle as full arrays when a DataLoader spawns workers; reopen them there.
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    @property
    def n_channels(self) -> int:
        return self.index.n_channels

    @property
    def sfreq(self) -> float:
        return self.index.sfreq

    @property
    def subjects(self) -> tuple[int, ...]:
        """Participant numbers; an item's ``subject`` indexes this tuple."""
        return self.index.subjects

    def _recording(self, subject: int, song: int) -> np.ndarray:
        key = (subject, song)
        if key not in self._arrays:
            self._arrays[key] = self.index.load(subject, song, mmap=True)
        return self._arrays[key]

    def eeg(self, i: int) -> np.ndarray:
        """The EEG of window ``i`` as a float32 (channels, samples) array."""
        ref = self.windows[i]
        array = self._recording(ref.subject, ref.song)
        return np.ascontiguousarray(array[self._rows, ref.start : ref.start + self.n_times], dtype=np.float32)

    def audio_clip(self, song: int, chunk: int) -> np.ndarray:
        """The audio clip of a (song, chunk) pair (needs attached audio)."""
        if self.audio is None:
            raise ValueError(f"split {self.name!r} has no audio attached (load_windows(..., stimuli=True))")
        clip = self.spec.clip_samples
        return np.asarray(self.audio[song][chunk * clip : (chunk + 1) * clip], dtype=np.float32)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ref = self.windows[i]
        item: dict[str, Any] = {
            "eeg": torch.from_numpy(self.eeg(i)),
            "subject": self.index.subject_index(ref.subject),
            "song": ref.song,
            "chunk": ref.chunk,
        }
        if self.latents is not None:
            item["latent"] = torch.as_tensor(np.asarray(self.latents[(ref.song, ref.chunk)]), dtype=torch.float32)
        elif self.audio is not None:
            item["audio"] = torch.from_numpy(self.audio_clip(ref.song, ref.chunk))
        return item

    def clips(self) -> list[tuple[int, int]]:
        """The distinct (song, chunk) pairs of this split, sorted (one audio clip or latent each)."""
        return sorted({(ref.song, ref.chunk) for ref in self.windows})

    def eeg_only(self) -> EEGMusicWindows:
        """The same windows without audio or latents: items hold ``eeg``, ``subject``, ``song``, ``chunk``."""
        return EEGMusicWindows(self.index, self.windows, self.spec, name=self.name)

    def with_latents(self, latents: Mapping[tuple[int, int], Any]) -> EEGMusicWindows:
        """The same windows returning ``latent`` from a table keyed by (song, chunk) instead of audio."""
        return EEGMusicWindows(self.index, self.windows, self.spec, latents=latents, name=self.name)

    def with_audio(self, audio: Mapping[int, np.ndarray]) -> EEGMusicWindows:
        """The same windows returning ``audio`` clips sliced from whole songs."""
        return EEGMusicWindows(self.index, self.windows, self.spec, audio=audio, name=self.name)

    def __repr__(self) -> str:
        target = "latent" if self.latents is not None else ("audio" if self.audio is not None else "no audio")
        return (f"EEGMusicWindows({self.name!r}: {len(self)} windows, {len(self.clips())} clips, "
                f"eeg {self.n_channels}×{self.n_times} at {self.sfreq:g} Hz, {target})")
