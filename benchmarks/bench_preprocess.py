"""Benchmark: preprocessing real-size raw NMED-T recordings, against merely reading them.

A raw NMED-T file holds one participant's recording session: 129 channels × ~30 min at 1 kHz in
MATLAB v7.3 (HDF5), ~1.9 GB of doubles. This script writes such a file with h5py (chunked datasets,
the MATLAB v7.3 layout the readers expect: ``X`` stored as (T, 129), ``fs``, a ``DIN_1`` cell of
triggers), then measures, each case in its own subprocess so that its peak RSS is its own:

``read``
    h5py reads exactly the song segments the preprocessing reads, each into an array of its own
    (``X[onset:onset + n, :]``): merely reading the data with h5py, the baseline of the issue's goal.
``preprocess``
    :func:`eeg2music.data.cache.build_cache` on the same file: the reader (each song's HDF5 chunks
    streamed block by block into the float32 working array in volts), the paper's pipeline (drop
    face/reference, centre, robust scaling, clamp), float32 ``.npy`` files and the index. One-time
    imports happen before the clock starts.
``preprocess, no overlap``
    the same with ``overlap_io=False``: reading, fitting and writing one after the other instead of
    reading the next recording in one background thread and scaling and writing the last one in
    another.
``preprocess ×N``
    the same on N files (hard links to the first by default: distinct paths, same bytes) — peak RSS
    must not grow with the number of files.
``filter + resample``
    the ablation configuration (cleaned-release filters, resampling to 125 Hz), for reference.

``--compression gzip`` writes ``X`` deflate-compressed, as MATLAB's ``save -v7.3`` does by default
(uncompressed is the default here: the worst case for the ratio, since decompressing is reading's
cost and not the preprocessing's).

Reading and preprocessing are timed twice: from the page cache (the file was just read), and from
disk (its pages dropped with ``posix_fadvise(DONTNEED)`` first) — the situation at full NMED-T scale,
where 40 files of ~1.9 GB do not fit in memory. CPU seconds are reported next to wall seconds, since
wall time on a shared machine also measures the neighbours.

Goals (from the issue): preprocessing throughput ≥ 0.5 × the read throughput, peak RSS ≤ 2 GB, and
the same peak RSS for 1 and N files. Usage::

    python benchmarks/bench_preprocess.py                 # 30 min × 129 ch × 1 kHz, 1 vs 4 files
    python benchmarks/bench_preprocess.py --minutes 6     # a quick run
    python benchmarks/bench_preprocess.py --json out.json --keep --workdir /tmp/bench

The numbers depend on the machine and its load: the page cache is warmed before timing, and the
cases run in ``--repeats`` interleaved rounds (read, preprocess, … then the same again), so that a
slow spell of the machine falls on both sides of a ratio. The table reports each case's best time
and its largest peak RSS; the throughput ratios are computed round by round, each from a read and a
preprocessing run made one right after the other, and reported as the median and range over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SONG_SECONDS = {21: 278.0, 22: 271.0, 23: 276.0, 24: 294.0, 25: 289.0}  # NMED-T's lengths, 5 songs per session
MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 09 10:00:00 2017 HDF5 schema 1.00 ."
GiB = 1024**3


# --------------------------------------------------------------------------------------------------
# Writing a raw recording (h5py only, independent of eeg2music)
# --------------------------------------------------------------------------------------------------


def _matlab_class(dataset, name: str) -> None:
    dataset.attrs.create("MATLAB_class", np.bytes_(name.encode()))


def plan_songs(seconds: float) -> dict[int, tuple[float, float]]:
    """Song → (onset s, length s): as many NMED-T songs as fit, with equal silent gaps around them."""
    chosen: list[int] = []
    for song, length in SONG_SECONDS.items():
        if sum(SONG_SECONDS[s] for s in chosen) + length + 10.0 * (len(chosen) + 2) <= seconds:
            chosen.append(song)
    if not chosen:
        raise SystemExit(f"--minutes {seconds / 60:g} is too short for one NMED-T song ({min(SONG_SECONDS.values()):g} s + gaps)")
    gap = (seconds - sum(SONG_SECONDS[s] for s in chosen)) / (len(chosen) + 1)
    plan, cursor = {}, gap
    for song in chosen:
        plan[song] = (cursor, SONG_SECONDS[song])
        cursor += SONG_SECONDS[song] + gap
    return plan


def write_raw_recording(path: Path, seconds: float, n_channels: int = 129, fs: float = 1000.0, seed: int = 0,
                        chunk_rows: int = 8192, compression: str | None = None) -> dict[int, tuple[float, float]]:
    """Write ``PP_R_raw.mat`` as MATLAB v7.3 stores it, block by block (memory stays small).

    ``X`` is EEG-like noise in µV: per-channel DC offsets (raw EGI data carry millivolt offsets),
    per-channel amplitudes, the vertex reference row all zero. ``DIN_1`` holds, for each song, its
    trigger ``D2x`` and the ``D128`` trigger 1 s after the song's onset (NMED-T's convention).
    """
    import h5py

    rng = np.random.default_rng(seed)
    n_times = int(round(seconds * fs))
    offsets = rng.uniform(-2000.0, 2000.0, n_channels)
    scales = rng.uniform(5.0, 40.0, n_channels)
    offsets[-1] = scales[-1] = 0.0
    plan = plan_songs(seconds)
    events = []
    for song, (onset, _) in plan.items():
        events += [(f"D{song}", int(round(onset * fs))), ("D128", int(round((onset + 1.0) * fs)))]
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w", userblock_size=512) as handle:
        refs = handle.create_group("#refs#")
        empty = refs.create_dataset("a", data=np.zeros(2, dtype=np.uint64))
        _matlab_class(empty, "double")
        empty.attrs.create("MATLAB_empty", np.uint8(1))
        x = handle.create_dataset("X", shape=(n_times, n_channels), dtype="f8", chunks=(chunk_rows, n_channels),
                                  compression=compression)
        _matlab_class(x, "double")
        block = 16 * chunk_rows
        for start in range(0, n_times, block):
            stop = min(n_times, start + block)
            x[start:stop] = rng.standard_normal((stop - start, n_channels)) * scales + offsets
        fs_set = handle.create_dataset("fs", data=np.array([[fs]]))
        _matlab_class(fs_set, "double")
        cells = np.empty((len(events), 4), dtype=h5py.ref_dtype)  # MATLAB's 4 × N cell, stored (N, 4)
        for i, (label, sample) in enumerate(events):
            text = refs.create_dataset(f"l{i}", data=np.array([[ord(c)] for c in label], dtype=np.uint16))
            _matlab_class(text, "char")
            text.attrs.create("MATLAB_int_decode", np.int32(2))
            cells[i, 0] = text.ref
            for column, (key, value) in enumerate((("s", sample), ("d", 1.0), ("i", i + 1.0)), start=1):
                number = refs.create_dataset(f"{key}{i}", data=np.array([[float(value)]]))
                _matlab_class(number, "double")
                cells[i, column] = number.ref
        din = handle.create_dataset("DIN_1", data=cells)
        _matlab_class(din, "cell")
    with open(tmp, "r+b") as handle:
        handle.write(MATLAB_HEADER.ljust(116, b" ") + b" " * 8 + b"\x00\x02" + b"IM")
    os.replace(tmp, path)
    return plan


# --------------------------------------------------------------------------------------------------
# The cases (each runs in a child process: ``--case NAME``)
# --------------------------------------------------------------------------------------------------


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def drop_from_page_cache(folder: Path) -> None:
    """Ask the kernel to forget the cached pages of the folder's files, so the next read hits the disk."""
    for path in folder.glob("*.mat"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def case_read(folder: Path, cold: bool = False) -> dict:
    """Read every song segment of every raw file with h5py (float64, as stored)."""
    import h5py

    from eeg2music.data.nmedt import SONGS, scan_nmedt
    from eeg2music.data.recordings import song_onsets

    nmedt = scan_nmedt(folder)
    baseline = _peak_rss_bytes()
    if cold:
        drop_from_page_cache(folder)
    started, cpu = time.perf_counter(), _cpu_seconds()
    values = 0
    for path in nmedt.raw.values():
        onsets = song_onsets(path)
        with h5py.File(path, "r") as handle:
            fs = float(np.asarray(handle["fs"]).ravel()[0])
            dataset = handle["X"]
            for song, onset in onsets.items():
                segment = dataset[onset : onset + int(round(SONGS[song].duration_s * fs)), :]
                values += segment.size
                del segment
    return {"seconds": time.perf_counter() - started, "cpu_seconds": _cpu_seconds() - cpu, "values": values,
            "peak_rss": _peak_rss_bytes(), "rss_after_imports": baseline}


def case_preprocess(folder: Path, cache: Path, config: dict, cold: bool = False, overlap_io: bool = True) -> dict:
    """build_cache on the raw layout, as notebook 02 runs it (without the progress bar)."""
    from eeg2music.data.cache import build_cache
    from eeg2music.data.nmedt import scan_nmedt
    from eeg2music.data.preprocessing import Preprocessing

    nmedt = scan_nmedt(folder)
    cfg = Preprocessing(**config)
    # One-time costs outside the timed part (a notebook session pays them once, not per file):
    # importing MNE's I/O, montage and plotting modules and scikit-learn.
    import mne
    import sklearn.preprocessing  # noqa: F401

    from eeg2music.data.nmedt import hydrocel_montage, raw_channel_names

    warm = mne.io.RawArray(np.zeros((129, 100)), mne.create_info(raw_channel_names(), 1000.0, "eeg"), verbose="error")
    warm.set_montage(hydrocel_montage(), verbose="error")

    baseline = _peak_rss_bytes()
    if cold:
        drop_from_page_cache(folder)
    started, cpu = time.perf_counter(), _cpu_seconds()
    index = build_cache(nmedt, cfg, cache, layout="raw", rebuild=True, progress=False, overlap_io=overlap_io)
    elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    written = sum((index.path / entry.file).stat().st_size for entry in index.recordings)
    input_values = sum(
        int(round(entry.n_samples * 1000.0 / index.sfreq)) * (index.n_channels + len(index.dropped_channels))
        for entry in index.recordings
    )
    shutil.rmtree(index.path)
    return {"seconds": elapsed, "cpu_seconds": cpu, "values": input_values, "written_bytes": written, "recordings": len(index.recordings),
            "peak_rss": _peak_rss_bytes(), "rss_after_imports": baseline}


def run_case(args: list[str]) -> dict:
    """Run one case in a fresh interpreter and parse the JSON line it prints last."""
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise SystemExit(f"case {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict]) -> dict:
    """A case's runs as one row: the best time, the largest peak RSS, and every time."""
    best = min(runs, key=lambda run: run["seconds"])
    return {**best, "peak_rss": max(run["peak_rss"] for run in runs), "all_seconds": [round(r["seconds"], 2) for r in runs]}


def throughput_ratio(preprocess: dict, read: dict) -> float:
    """Preprocessing throughput over reading throughput (values per second, each from its own run)."""
    return (preprocess["values"] / preprocess["seconds"]) / (read["values"] / read["seconds"])


def run_rounds(cases: dict[str, list[str]], repeats: int) -> dict[str, list[dict]]:
    """Every case once per round, in the order given, for ``repeats`` rounds."""
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, args in cases.items():
            runs[name].append(run_case(args))
    return runs


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the recording (default 30)")
    parser.add_argument("--channels", type=int, default=129, help="rows of X (default 129: E1…E128 + Cz)")
    parser.add_argument("--files", type=int, default=4, help="files in the many-files case (default 4)")
    parser.add_argument("--distinct-files", action="store_true", help="write every file (default: hard links to one)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every case (default 3)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the filter+resample configuration")
    parser.add_argument("--compression", choices=("none", "gzip"), default="none",
                        help="how X is stored: uncompressed (default) or deflate, as MATLAB's save -v7.3 does")
    parser.add_argument("--workdir", default="", help="where to write the recordings (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the recordings afterwards")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--case", choices=("read", "preprocess"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sequential", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case == "read":
        print(json.dumps(case_read(Path(args.folder), args.cold)))
        return
    if args.case == "preprocess":
        print(json.dumps(case_preprocess(Path(args.folder), Path(args.cache), json.loads(args.config), args.cold,
                                         overlap_io=not args.sequential)))
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_preprocess_")).resolve()
    stored = "" if args.compression == "none" else f"_{args.compression}"
    one, many, cache = workdir / f"one_file{stored}", workdir / f"{args.files}_files{stored}", workdir / "cache"
    compression = None if args.compression == "none" else args.compression
    for folder in (one, many):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        source = one / "02_1_raw.mat"
        started = time.perf_counter()
        if not source.is_file():
            plan = write_raw_recording(source, args.minutes * 60.0, n_channels=args.channels, compression=compression)
            print(f"wrote {source} ({source.stat().st_size / GiB:.2f} GiB, songs {sorted(plan)}) in "
                  f"{time.perf_counter() - started:.0f} s")
        stored_bytes = source.stat().st_size
        for k in range(args.files):
            target = many / f"{k + 2:02d}_1_raw.mat"
            if target.exists():
                continue
            if args.distinct_files and k:
                write_raw_recording(target, args.minutes * 60.0, n_channels=args.channels, seed=k, compression=compression)
            else:
                os.link(source, target)
        paper = json.dumps({})
        ablation = json.dumps({"filtering": "cleaned_release", "resample_sfreq": 125.0})
        read_one = ["--case", "read", "--folder", str(one)]
        preprocess_one = ["--case", "preprocess", "--folder", str(one), "--cache", str(cache), "--config", paper]
        run_case(read_one)  # warm the page cache
        read_warm, prep_warm = "read 1 file, page cache (h5py)", "preprocess 1 file, page cache"
        prep_sequential = "preprocess 1 file, page cache, no overlap"
        read_cold, prep_cold = "read 1 file, from disk (h5py)", "preprocess 1 file, from disk"
        runs = run_rounds({
            read_warm: read_one,
            prep_warm: preprocess_one,
            prep_sequential: preprocess_one + ["--sequential"],
            read_cold: read_one + ["--cold"],
            prep_cold: preprocess_one + ["--cold"],
        }, args.repeats)
        runs[f"preprocess {args.files} files, page cache"] = [
            run_case(["--case", "preprocess", "--folder", str(many), "--cache", str(cache), "--config", paper])]
        if not args.no_ablation:
            runs["filter + resample to 125 Hz, 1 file"] = [
                run_case(["--case", "preprocess", "--folder", str(one), "--cache", str(cache), "--config", ablation])]
        results = {name: best_of(case_runs) for name, case_runs in runs.items()}
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    size = args.channels * int(round(args.minutes * 60.0 * 1000.0)) * 8
    print(f"\n{args.channels} channels × {args.minutes:g} min × 1 kHz float64 = {size / GiB:.2f} GiB per file "
          f"({args.compression}: {stored_bytes / GiB:.2f} GiB on disk); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print(f"{'case':40s} {'wall (s)':>9s} {'CPU (s)':>8s} {'M values/s':>11s} {'peak RSS':>10s} {'after imports':>14s}")
    for name, result in results.items():
        print(f"{name:40s} {result['seconds']:9.2f} {result['cpu_seconds']:8.2f} {result['values'] / result['seconds'] / 1e6:11.1f} "
              f"{result['peak_rss'] / GiB:6.2f} GiB {result['rss_after_imports'] / GiB:10.2f} GiB")

    def paired(preprocess: str, read: str) -> list[float]:
        """The ratio of each round: its preprocessing run against the read run of the same round."""
        return [throughput_ratio(p, r) for p, r in zip(runs[preprocess], runs[read])]

    ratios = {"page_cache": paired(prep_warm, read_warm), "disk": paired(prep_cold, read_cold),
              "page_cache_no_overlap": paired(prep_sequential, read_warm)}

    def spread(values: list[float]) -> str:
        return f"{np.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"

    one_rss = results[prep_warm]["peak_rss"]
    many_rss = results[f"preprocess {args.files} files, page cache"]["peak_rss"]
    many_ratio = throughput_ratio(results[f"preprocess {args.files} files, page cache"], results[read_warm])
    print(f"\npreprocessing / reading throughput, median [range] over {args.repeats} rounds (goal ≥ 0.5): "
          f"{spread(ratios['page_cache'])} from the page cache, {spread(ratios['disk'])} from disk; "
          f"{spread(ratios['page_cache_no_overlap'])} from the page cache without overlapping reads and writes; "
          f"{many_ratio:.2f} for {args.files} files (one run, against the best 1-file read)")
    print(f"peak RSS {one_rss / GiB:.2f} GiB (goal ≤ 2); 1 → {args.files} files: {one_rss / GiB:.2f} → {many_rss / GiB:.2f} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"file_bytes": size, "compression": args.compression, "stored_bytes": stored_bytes,
                                               "minutes": args.minutes, "channels": args.channels,
                                               "files": args.files, "load_average": os.getloadavg(), "results": results,
                                               "throughput_ratio_by_round": ratios,
                                               f"throughput_ratio_{args.files}_files": many_ratio}, indent=2))


if __name__ == "__main__":
    main()
