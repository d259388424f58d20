"""What notebook 01 looks at: per-file descriptions, the dataset summary, note onsets and the
onset-evoked response that shows the EEG follows the music.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mne
import numpy as np
import scipy.io
from scipy.ndimage import median_filter
from scipy.signal import find_peaks
from tqdm.auto import tqdm

from ..audio import auditory_features
from .matfile import (
    check_fs,
    h5_cell_strings,
    h5_scalar,
    h5_variables,
    is_hdf5,
    loadmat_v5,
    open_hdf5,
    v5_strings,
)
from .nmedt import (
    RAW_RE,
    SONGS,
    NMEDTError,
    NMEDTFolder,
    Song,
    as_folder,
    channel_names,
    parse_subject,
    read_stimulus,
)
from .recordings import (
    check_cleaned_shape,
    count_recordings,
    expected_cleaned,
    iter_recordings,
    open_raw,
    recording_info,
    song_onsets_of,
)


def describe_cleaned(path: str | Path, song_id: int) -> dict[str, Any]:
    """Shape, sampling rate and participants of a cleaned file, read from its header and small variables."""
    path = Path(path)
    data_name, subs_name = expected_cleaned(song_id)
    if is_hdf5(path):
        handle = open_hdf5(path)
        try:
            missing = [n for n in (data_name, subs_name, "fs") if n not in handle]
            if missing:
                raise NMEDTError(f"{path}: missing variable(s) {missing}; this file holds {h5_variables(handle)}")
            shape = tuple(reversed(handle[data_name].shape))
            fs = check_fs(h5_scalar(handle, "fs", path), path)
            subjects = [parse_subject(s) for s in h5_cell_strings(handle, subs_name, path)]
        finally:
            handle.close()
    else:

        try:
            shapes = {name: tuple(shape) for name, shape, _ in scipy.io.whosmat(str(path))}
        except Exception as err:
            raise NMEDTError(f"{path}: cannot read the MATLAB file ({type(err).__name__}: {err}); it may be truncated") from None
        contents = loadmat_v5(path, [subs_name, "fs"])
        missing = [n for n in (data_name, subs_name, "fs") if n not in shapes]
        if missing:
            raise NMEDTError(f"{path}: missing variable(s) {missing}; this file holds {sorted(shapes)}")
        shape = shapes[data_name]
        fs = check_fs(float(np.asarray(contents["fs"], dtype=float).ravel()[0]), path)
        subjects = [parse_subject(s) for s in v5_strings(contents[subs_name])]
    n_channels, n_times = check_cleaned_shape(path, data_name, shape, len(subjects))
    return {"file": path.name, "song": int(song_id), "fs": fs, "n_channels": n_channels, "n_times": n_times, "subjects": subjects}


def describe_raw(path: str | Path, songs: dict[int, Song] | None = None) -> dict[str, Any]:
    """Sampling rate, size, events and song onsets of a raw recording (no EEG is read)."""
    path = Path(path)
    raw_file = open_raw(path, load_data=False)
    raw_file.close()
    match = RAW_RE.match(path.name)
    return {
        "file": path.name,
        "subject": int(match.group(1)) if match else None,
        "recording": int(match.group(2)) if match else None,
        "fs": raw_file.fs,
        "n_channels": raw_file.n_channels,
        "n_times": raw_file.n_times,
        "n_events": len(raw_file.events),
        "onset_samples": {int(k): int(v) for k, v in sorted(song_onsets_of(raw_file, songs or SONGS).items())},
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


    rate = 100.0
    flux = auditory_features(audio, sr, rate).onsets.astype(float)
    local = median_filter(flux, size=int(2 * rate), mode="nearest") + 1e-9
    peaks, _ = find_peaks(flux, height=threshold * local, distance=max(1, int(min_interval_s * rate)))
    return peaks / rate


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
