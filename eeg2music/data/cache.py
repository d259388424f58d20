"""The on-disk cache of preprocessed recordings the later stages read.

:func:`build_cache` streams an NMED-T folder one recording (participant × song) at a time through the
pipeline of :mod:`eeg2music.data.preprocessing` into ``cache_dir/<layout>_<key>_<data>/``: one float32
``.npy`` file per recording, shaped (channels, samples) and stored time-major (Fortran order, as the raw
HDF5 files store ``X``), so that a 3.5 s window is one contiguous block of the memory-mapped file; and
an ``index.json`` that says what is there (:class:`CacheIndex`). Memory stays flat whatever the size
of the dataset: one recording is held at a time, and readers memory-map the files. The folder is built
under a temporary name and renamed when complete, so an interrupted build is never read; its name holds
:meth:`Preprocessing.key` and a fingerprint of the data read, so a changed configuration (or changed
data) builds a new cache and an unchanged one is reused; ``cache_dir/latest.json`` names the latest
build (:func:`open_cache`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from numpy.lib import format as npy
from tqdm.auto import tqdm

from ..utils import atomic_directory, read_json, write_json
from .nmedt import as_folder, channel_names
from .preprocessing import (
    BUILDER_FILE,
    CACHE_FORMAT_VERSION,
    INDEX_FILE,
    LATEST_FILE,
    Preprocessing,
    Scaling,
    preprocess_working,
    working_input_from_blocks,
)
from .recordings import check_finite, count_recordings, iter_segments


@dataclass(frozen=True)
class CachedRecording:
    """One participant × song in a cache (see :class:`CacheIndex`)."""

    subject: int
    song: int
    file: str
    n_samples: int
    source: str = ""
    onset_sample: int | None = None
    bad_channels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CacheIndex:
    """What a preprocessed cache holds; read from its ``index.json`` by :func:`open_cache`.

    Attributes
    ----------
    path : Path
        The cache folder (``cache_dir/<name>``).
    key : str
        :meth:`Preprocessing.key` of the configuration.
    preprocessing : Preprocessing
        The configuration that built it.
    layout : str
        ``"cleaned"`` or ``"raw"``.
    data_root : str
        The NMED-T folder it was read from.
    sfreq : float
        Sampling rate of the cached EEG (Hz).
    units : str
        ``"IQR"`` (robust-scaled) or ``"uV"``.
    stored_channels : tuple of str
        The rows of every ``.npy`` file.
    excluded_channels : tuple of str
        Channels found unusable in some recording and left out of every recording
        (``bad_channels="exclude"``); their rows are zero in the files.
    subjects, songs : tuple of int
        Sorted participant numbers and song IDs present; a window's ``subject`` is an index into
        ``subjects``.
    recordings : tuple of CachedRecording
    """

    path: Path
    key: str
    preprocessing: Preprocessing
    layout: str
    data_root: str
    sfreq: float
    units: str
    stored_channels: tuple[str, ...]
    excluded_channels: tuple[str, ...]
    subjects: tuple[int, ...]
    songs: tuple[int, ...]
    recordings: tuple[CachedRecording, ...]
    dropped_channels: tuple[str, ...] = ()
    build_seconds: float = 0.0

    @property
    def channel_names(self) -> list[str]:
        """The channels windows carry: the stored ones minus the excluded ones."""
        return [name for name in self.stored_channels if name not in self.excluded_channels]

    @property
    def channel_rows(self) -> np.ndarray:
        """Row indices of :attr:`channel_names` in the stored arrays."""
        return np.array([i for i, name in enumerate(self.stored_channels) if name not in self.excluded_channels])

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    def recording(self, subject: int, song: int) -> CachedRecording:
        """The entry of one participant × song (a missing one is a KeyError saying what is there)."""
        for entry in self.recordings:
            if entry.subject == subject and entry.song == song:
                return entry
        raise KeyError(f"{self.path}: no recording of participant {subject}, song {song}; "
                       f"participants {list(self.subjects)}, songs {list(self.songs)}")

    def subject_index(self, subject: int) -> int:
        """Position of a participant number in :attr:`subjects` (the id models embed)."""
        try:
            return self.subjects.index(int(subject))
        except ValueError:
            raise KeyError(f"participant {subject} is not in the cache {self.path} (has {list(self.subjects)})") from None

    def load(self, subject: int, song: int, mmap: bool = True) -> np.ndarray:
        """The stored (channels, samples) float32 array of one recording, memory-mapped by default."""
        entry = self.recording(subject, song)
        return np.load(self.path / entry.file, mmap_mode="r" if mmap else None, allow_pickle=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of ``index.json``."""
        return {
            "complete": True,
            "format_version": CACHE_FORMAT_VERSION,
            "key": self.key,
            "preprocessing": self.preprocessing.to_dict(),
            "steps": self.preprocessing.steps(),
            "layout": self.layout,
            "data_root": self.data_root,
            "sfreq": self.sfreq,
            "units": self.units,
            "dtype": "float32",
            "stored_channels": list(self.stored_channels),
            "excluded_channels": list(self.excluded_channels),
            "dropped_channels": list(self.dropped_channels),
            "subjects": list(self.subjects),
            "songs": list(self.songs),
            "build_seconds": self.build_seconds,
            "recordings": [dataclasses.asdict(entry) for entry in self.recordings],
        }

    @classmethod
    def read(cls, path: str | os.PathLike) -> CacheIndex:
        """Read a cache folder's ``index.json``; a missing, incomplete or outdated one is an error."""
        path = Path(path)
        index_file = path / INDEX_FILE
        if not index_file.is_file():
            raise FileNotFoundError(f"{path}: not a complete preprocessed cache (no {INDEX_FILE})")
        meta = read_json(index_file)
        if not meta.get("complete"):
            raise FileNotFoundError(f"{index_file}: the cache is not marked complete")
        if meta.get("format_version") != CACHE_FORMAT_VERSION:
            raise FileNotFoundError(
                f"{index_file}: cache format {meta.get('format_version')} is not the current {CACHE_FORMAT_VERSION}; rebuild it"
            )
        recordings = tuple(CachedRecording(**entry) for entry in meta["recordings"])
        return cls(
            path=path.resolve(),
            key=meta["key"],
            preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
            layout=meta["layout"],
            data_root=meta["data_root"],
            sfreq=float(meta["sfreq"]),
            units=meta["units"],
            stored_channels=tuple(meta["stored_channels"]),
            excluded_channels=tuple(meta["excluded_channels"]),
            subjects=tuple(int(s) for s in meta["subjects"]),
            songs=tuple(int(s) for s in meta["songs"]),
            recordings=recordings,
            dropped_channels=tuple(meta.get("dropped_channels", ())),
            build_seconds=float(meta.get("build_seconds", 0.0)),
        )

    def missing_files(self) -> list[str]:
        """Recording files listed in the index but absent from the folder."""
        return [entry.file for entry in self.recordings if not (self.path / entry.file).is_file()]


def _selection(values: Iterable[int] | int | None) -> list[int] | None:
    if values is None:
        return None
    if isinstance(values, (int, np.integer)):
        return [int(values)]
    return sorted(int(v) for v in values)


def _data_fingerprint(folder, layout: str, songs, subjects) -> str:
    """A hash of the files a build reads (names, sizes, modification times) and the selection."""
    files = sorted(folder.cleaned.values()) if layout == "cleaned" else sorted(folder.raw.values())
    stats = [(str(p.relative_to(folder.root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    # Raw recordings are cut at each song's length, which a stimulus WAV sets where there is one.
    table = folder.length_table() if layout == "raw" and hasattr(folder, "length_table") else folder.songs
    songs_table = {str(k): v.duration_s for k, v in sorted(table.items())}
    text = json.dumps([str(folder.root), layout, _selection(songs), _selection(subjects), stats, songs_table])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def cache_folder_name(cfg: Preprocessing, folder, layout: str, songs=None, subjects=None) -> str:
    """``<layout>_<cfg.key()>_<data fingerprint>``: the folder :func:`build_cache` writes into."""
    return f"{layout}_{cfg.key()}_{_data_fingerprint(folder, layout, songs, subjects)}"


def _remove_abandoned_builds(cache_dir: Path, name: str) -> None:
    """Delete temporary folders of builds of ``name`` whose process is gone (killed mid-build)."""

    for partial in cache_dir.glob(f".{name}.*.partial"):
        builder = partial / BUILDER_FILE
        try:
            pid = int(json.loads(builder.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            pid = None
        if pid is None:
            # No builder record yet: either just created (leave it) or killed before writing one.
            if time.time() - partial.stat().st_mtime < 3600:
                continue
        elif psutil.pid_exists(pid) and pid != os.getpid():
            continue
        shutil.rmtree(partial, ignore_errors=True)


def _recording_file(subject: int, song: int) -> str:
    return f"sub-{subject:02d}_song-{song}.npy"


def open_cache(path: str | os.PathLike) -> CacheIndex:
    """A complete cache: a cache folder itself, or a cache root (its latest build, see :func:`build_cache`).

    Raises
    ------
    FileNotFoundError
        If there is no complete cache there (an interrupted build is never read), naming what to run.
    """
    path = Path(path).expanduser()
    if (path / INDEX_FILE).is_file():
        index = CacheIndex.read(path)
    elif (path / LATEST_FILE).is_file():
        latest = read_json(path / LATEST_FILE)
        index = CacheIndex.read(path / latest["name"])
    else:
        raise FileNotFoundError(
            f"{path}: no complete preprocessed cache (no {INDEX_FILE} or {LATEST_FILE}); "
            f"build one with notebook 02_preprocess or eeg2music.data.cache.build_cache"
        )
    missing = index.missing_files()
    if missing:
        raise FileNotFoundError(f"{index.path}: {len(missing)} recording file(s) listed in {INDEX_FILE} are missing, e.g. {missing[0]}")
    return index


class _Prefetched:
    """Iterate ``iterable`` one item ahead in a background thread (h5py reads and numpy release the GIL).

    While the caller preprocesses recording k, the thread reads recording k + 1 from disk (and applies
    ``transform`` to it, when given); at most one item waits, so memory holds one extra recording
    whatever the dataset size. Errors raised by the iterable or the transform reach the caller at the
    item where they happened; :meth:`close` stops the thread and closes the iterable (its open files)
    from the thread that used it.
    """

    _DONE = object()

    def __init__(self, iterable: Iterable[Any], transform: Callable[[Any], Any] | None = None):

        self._queue: Any = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._transform = transform or (lambda item: item)
        self._thread = threading.Thread(target=self._run, args=(iter(iterable),), daemon=True,
                                        name="eeg2music-prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator) -> None:
        try:
            for item in iterator:
                value = self._transform(item)
                del item  # the raw input is not kept while its transform waits in the queue
                if not self._put((value, None)):
                    break
        except BaseException as err:  # handed to the consumer, raised there
            self._put((None, err))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            self._put((self._DONE, None))

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        item, err = self._queue.get()
        if err is not None:
            self._stop.set()
            raise err
        if item is self._DONE:
            self._stop.set()
            raise StopIteration
        return item

    def close(self) -> None:

        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()


def _write_recording(path: Path, data: np.ndarray, scaling: Scaling | None = None) -> None:
    """Write ``data`` (time-major) as a ``.npy`` file, applying ``scaling`` block by block on the way.

    The file is what :func:`numpy.save` writes for the finished array (a version 1.0 header, the values
    in Fortran order); each block goes to the file while it is still in the CPU's cache.
    """
    if not data.flags.f_contiguous:
        raise ValueError(f"{path.name}: the cache stores time-major (Fortran-ordered) arrays")

    blocks = scaling.blocks(data) if scaling is not None else (data,)
    with open(path, "wb") as handle:
        npy.write_array_header_1_0(handle, npy.header_data_from_array_1_0(data))
        for block in blocks:
            handle.write(memoryview(block.T))  # the transpose of a time-major block is C-contiguous: no copy


class _BackgroundWriter:
    """Run :func:`_write_recording` in one background thread, at most one write pending.

    Finishing and writing recording k overlaps preprocessing recording k + 1; waiting for the previous
    write before queueing the next keeps at most one array in memory. :meth:`wait` re-raises a failed
    write.
    """

    def __init__(self):

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eeg2music-writer")
        self._pending = None

    def write(self, path: Path, array: np.ndarray, scaling: Scaling | None) -> None:
        self.wait()
        self._pending = self._pool.submit(_write_recording, path, array, scaling)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def build_cache(
    folder,
    cfg: Preprocessing | None,
    cache_dir: str | os.PathLike,
    layout: str = "cleaned",
    songs: Iterable[int] | int | None = None,
    subjects: Iterable[int] | int | None = None,
    *,
    rebuild: bool = False,
    progress: bool = True,
    overlap_io: bool = True,
) -> CacheIndex:
    """Preprocess an NMED-T folder into ``cache_dir/<name>/``, or reuse the cache already there.

    Parameters
    ----------
    folder : NMEDTFolder or path-like
        An NMED-T folder (see :func:`eeg2music.data.nmedt.scan_nmedt`).
    cfg : Preprocessing or None
        The configuration (the paper's defaults when None).
    cache_dir : path-like
        The cache root; the cache goes into ``cache_dir/<layout>_<cfg.key()>_<data fingerprint>``
        (:func:`cache_folder_name`), and ``cache_dir/latest.json`` names the latest one built or reused.
    layout : {"cleaned", "raw", "auto"}
        Which NMED-T files to read.
    songs, subjects : list of int, optional
        Restrict to these songs and participants (all by default).
    rebuild : bool
        Build again even if a complete cache with the same name exists.
    progress : bool
        Show a progress bar (one step per recording) and print a one-line summary.
    overlap_io : bool
        Read the next recording and write the previous one in background threads while this one is
        preprocessed (same output; memory holds at most one recording more). False runs the three
        stages one after the other (``benchmarks/bench_preprocess.py`` compares both).

    Returns
    -------
    CacheIndex

    Raises
    ------
    BadChannelError
        A flat or non-finite channel under ``cfg.bad_channels="error"`` (named with its recording).
    ValueError
        Recordings that disagree on channels or sampling rate after preprocessing, or no recording.
    """


    cfg = cfg or Preprocessing()
    folder = as_folder(folder)
    layout = folder.resolve_layout(layout)
    cache_dir = Path(cache_dir).expanduser().resolve()
    name = cache_folder_name(cfg, folder, layout, songs, subjects)
    target = cache_dir / name
    if not rebuild and (target / INDEX_FILE).is_file():
        try:
            index = open_cache(target)
        except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
            print(f"[preprocess] rebuilding the unusable cache {target} ({err})")
        else:
            write_json(cache_dir / LATEST_FILE, {"name": name, "key": index.key})
            if progress:
                print(f"[preprocess] reusing the cache {target} ({len(index.recordings)} recordings, key {index.key})")
            return index
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(cache_dir, name)

    total = count_recordings(folder, layout, songs=songs, subjects=subjects)
    entries: list[CachedRecording] = []
    channels: list[str] | None = None
    sfreq: float | None = None
    dropped: list[str] = []
    started = time.perf_counter()
    with atomic_directory(target) as tmp:
        write_json(tmp / BUILDER_FILE, {"pid": os.getpid(), "started": time.time()})

        def first_pass(segment):
            # The reader thread's share: the file is streamed block by block through one pass that drops
            # channels, converts µV to volts, casts to the working array and finds each channel's range,
            # which also tells whether every value kept is finite (iter_recordings checks every channel
            # separately; a NaN in a dropped face or reference channel does not reach the cache).
            working = working_input_from_blocks(segment.blocks(), (segment.n_channels, segment.n_times),
                                                 channel_names(segment.n_channels), segment.fs, cfg, scale=1e-6)
            if not (np.isfinite(working.low).all() and np.isfinite(working.high).all()):
                check_finite(segment.read(), segment.path, segment.what)  # scattered NaN/inf: a broken file
            return segment.info, working

        recordings = iter_segments(folder, layout, songs=songs, subjects=subjects)
        if overlap_io:
            recordings = _Prefetched(recordings, transform=first_pass)
        else:
            recordings = map(first_pass, recordings)
        writer = _BackgroundWriter() if overlap_io else None
        bar = tqdm(recordings, total=total, desc=f"preprocess {layout}", unit="rec", disable=not progress)
        try:
            for info, working in bar:
                subject, song = int(info["subject"]), int(info["song"])
                where = f"{info['source']} (participant {subject}, song {song})"
                bar.set_postfix_str(f"P{subject:02d} song {song}", refresh=False)
                earlier = next((e for e in entries if (e.subject, e.song) == (subject, song)), None)
                if earlier is not None:
                    raise ValueError(f"{where}: participant {subject} heard song {song} in {earlier.source} already; "
                                     f"keep one of the two recordings (select subjects/songs, or move a file away)")
                # Centring, scaling and clamping are fitted here and applied by the writer while it writes.
                result, scaling = preprocess_working(working, cfg, where)
                del working
                if channels is None:
                    channels, sfreq, dropped = result.ch_names, result.sfreq, result.dropped_channels
                elif result.ch_names != channels or not np.isclose(result.sfreq, sfreq):
                    raise ValueError(
                        f"{where}: {len(result.ch_names)} channels at {result.sfreq:g} Hz after preprocessing, but "
                        f"earlier recordings have {len(channels)} channels at {sfreq:g} Hz"
                    )
                file = _recording_file(subject, song)
                if writer is not None:
                    writer.write(tmp / file, result.data, scaling)
                else:
                    _write_recording(tmp / file, result.data, scaling)
                entries.append(CachedRecording(
                    subject=subject, song=song, file=file, n_samples=int(result.data.shape[1]),
                    source=str(info["source"]), onset_sample=info.get("onset_sample"),
                    bad_channels=result.bad_channels,
                ))
                del result
        finally:
            bar.close()
            # Nothing may still be writing into the folder when it is renamed into place or removed.
            if writer is not None:
                writer.close()
            if overlap_io:
                recordings.close()
        if not entries:
            raise ValueError(f"{folder.root}: no {layout} recording matched songs={songs!r}, subjects={subjects!r}")
        excluded: list[str] = []
        if cfg.bad_channels == "exclude":
            flagged = {name for entry in entries for name in entry.bad_channels}
            excluded = [name for name in channels if name in flagged]
        index = CacheIndex(
            path=target,
            key=cfg.key(),
            preprocessing=cfg,
            layout=layout,
            data_root=str(folder.root),
            sfreq=float(sfreq),
            units=cfg.units,
            stored_channels=tuple(channels),
            excluded_channels=tuple(excluded),
            subjects=tuple(sorted({e.subject for e in entries})),
            songs=tuple(sorted({e.song for e in entries})),
            recordings=tuple(sorted(entries, key=lambda e: (e.song, e.subject))),
            dropped_channels=tuple(dropped),
            build_seconds=round(time.perf_counter() - started, 3),
        )
        (tmp / BUILDER_FILE).unlink()
        # The index is the completion marker: written last, into a folder renamed into place after.
        write_json(tmp / INDEX_FILE, index.to_dict())
    write_json(cache_dir / LATEST_FILE, {"name": name, "key": index.key})
    if progress:
        flagged = sum(bool(e.bad_channels) for e in entries)
        print(
            f"[preprocess] cached {len(entries)} recordings ({index.n_channels} channels at {index.sfreq:g} Hz, "
            f"{sum(e.n_samples for e in entries) / index.sfreq / 3600:.2f} h of EEG) in {index.build_seconds:.1f} s"
            + (f"; {flagged} with flagged channels" if flagged else "")
            + f" → {target}"
        )
    return index
