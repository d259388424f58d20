"""The embedded default: an NMED-T-format dataset simulated from music and an explicit EEG forward model.

Nothing real can be downloaded here, so the pipeline runs end to end on a simulation that is written in
the *real* NMED-T formats (``songNN_Imputed.mat`` and ``PP_R_raw.mat``, see :mod:`eeg2music.data.nmedt`) —
the reader under test is the one real data goes through. The simulation has three parts:

1. **Music** (:func:`synthesize_song`). Ten songs at the NMED-T tempos, each with its own key, scale,
   chord progression and instrumentation drawn from drums, bass, chords, a lead, a voice-like formant
   line and effects, arranged in sections (intro, verse, chorus, break, …) so that which instruments
   play changes over the song.
2. **What the auditory system follows** (:func:`eeg2music.audio.auditory_features`): band envelopes (which
   instruments are active), spectral-flux onsets, and a beat pulse (the predominant local pulse),
   at the EEG sampling rate.
3. **EEG** (:class:`ForwardModel`). Each feature is convolved with a response kernel (P1–N1–P2-like
   temporal response function) whose latency and gain are subject-specific; the responses drive four
   cortical sources (left and right auditory cortex, a central beat/onset source, a frontal source),
   modelled as current dipoles whose scalp patterns are computed at MNE's GSN-HydroCel electrode
   positions (infinite-medium dipole potentials, re-referenced); then come ongoing background EEG
   (1/f, from 48 random dipoles, plus sensor noise), alpha (occipito-parietal, subject-specific
   frequency), blinks (frontal and face channels), and for the raw layout 60 Hz line noise, drift and
   electrode offsets.

**SNR** is a linear amplitude ratio: the RMS over channels and time of the music-driven EEG divided by
the RMS of the ongoing background EEG (1/f + alpha + sensor noise, 0.3–50 Hz), on average over the
dataset's subjects and songs (each subject's gain scatters around it). ``snr=0`` means no music in the
EEG at all; ``snr_db`` may be given instead (``snr = 10 ** (snr_db / 20)``). Artifacts come on top.

Every random draw comes from ``seed``; ``simulation.json`` (written last, the marker of a complete
dataset) records the parameters and the ground truth (per-subject latency, gain, alpha frequency, song
orders and onsets).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import soundfile as sf
from scipy.signal import resample_poly
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from tqdm.auto import tqdm

from ..audio import AuditoryFeatures, auditory_features
from ..params import ParameterError, coerce_float, coerce_mapping
from ..utils import atomic_directory, write_json
from .forward_model import ForwardModel, build_forward_model, calibrate, recording_eeg
from .matfile import write_mat_v73
from .music import synthesize_song
from .nmedt import (
    LAYOUTS,
    ONSET_OFFSET_S,
    ONSET_TRIGGER,
    SIMULATION_FILE,
    SONGS,
    SUBJECT_IDS,
    as_folder,
    cleaned_filename,
    raw_filename,
    read_stimulus,
    subject_label,
)
from .recordings import iter_recordings, recording_info

_ALL_SONGS = list(SONGS)


#: Named sizes of a simulated dataset; every entry can be overridden by keyword.
PRESETS: dict[str, dict[str, Any]] = {
    # The demo: all 20 participants, all 10 songs, 45 s each (12 clips of 3.5 s plus margin),
    # the cleaned layout only (raw at 1 kHz for 20 participants would be GBs; possible by parameter).
    "default": {
        "n_subjects": 20,
        "songs": _ALL_SONGS,
        "song_seconds": 45.0,
        "snr": 0.25,
        "layouts": ["cleaned"],
        "cleaned_fs": 125.0,
        "raw_fs": 1000.0,
        "n_recordings": 2,
        "gap_seconds": 6.0,
        "write_stimuli": True,
        "stimulus_sr": 44100,
    },
    # Tests and smoke runs: 3 participants, 3 songs of 15 s, both layouts.
    "smoke": {
        "n_subjects": 3,
        "songs": [21, 22, 23],
        "song_seconds": 15.0,
        "snr": 0.25,
        "layouts": ["cleaned", "raw"],
        "cleaned_fs": 125.0,
        "raw_fs": 1000.0,
        "n_recordings": 2,
        "gap_seconds": 4.0,
        "write_stimuli": True,
        "stimulus_sr": 44100,
    },
    # NMED-T's own sizes: full-length songs (song_seconds=0 → each song's real length), both layouts.
    "full": {
        "n_subjects": 20,
        "songs": _ALL_SONGS,
        "song_seconds": 0.0,
        "snr": 0.25,
        "layouts": ["cleaned", "raw"],
        "cleaned_fs": 125.0,
        "raw_fs": 1000.0,
        "n_recordings": 2,
        "gap_seconds": 20.0,
        "write_stimuli": True,
        "stimulus_sr": 44100,
    },
}


def resolve_simulation_parameters(preset: str = "default", **overrides: Any) -> dict[str, Any]:
    """A preset's parameters with ``overrides`` applied and checked (types, ranges, names).

    ``snr_db`` may be given instead of ``snr`` (``snr = 10 ** (snr_db / 20)``).

    Raises
    ------
    eeg2music.params.ParameterError
        An unknown preset or parameter, or a value of the wrong type or out of range.
    """

    if preset not in PRESETS:
        raise ParameterError(f"unknown simulation preset {preset!r}; known: {sorted(PRESETS)}")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if "snr_db" in overrides:
        if "snr" in overrides:
            raise ParameterError("give either 'snr' (linear amplitude ratio) or 'snr_db', not both")
        overrides["snr"] = 10.0 ** (coerce_float("snr_db", overrides.pop("snr_db")) / 20.0)
    params = coerce_mapping(PRESETS[preset], overrides)
    params["songs"] = [int(s) for s in params["songs"]]
    params["layouts"] = [str(layout) for layout in params["layouts"]]
    checks = [
        (1 <= params["n_subjects"] <= len(SUBJECT_IDS), f"n_subjects must be 1–{len(SUBJECT_IDS)}"),
        (bool(params["songs"]) and set(params["songs"]) <= set(SONGS), f"songs must be a non-empty subset of {sorted(SONGS)}"),
        (len(set(params["songs"])) == len(params["songs"]), "songs must not repeat"),
        (params["song_seconds"] == 0 or params["song_seconds"] >= 5, "song_seconds must be >= 5 (or 0 for full length)"),
        (params["snr"] >= 0, "snr must be >= 0 (0 = no music in the EEG)"),
        (bool(params["layouts"]) and set(params["layouts"]) <= set(LAYOUTS), f"layouts must be a non-empty subset of {LAYOUTS}"),
        (params["cleaned_fs"] >= 50, "cleaned_fs must be >= 50 Hz"),
        (params["raw_fs"] >= 125, "raw_fs must be >= 125 Hz"),
        (params["n_recordings"] >= 1, "n_recordings must be >= 1"),
        (params["gap_seconds"] >= 2, "gap_seconds must be >= 2 (the 128 trigger comes 1 s into a song)"),
        (params["stimulus_sr"] >= 16000, "stimulus_sr must be >= 16000"),
    ]
    for ok, message in checks:
        if not ok:
            raise ParameterError(f"simulation parameter: {message} (got {_describe(params)})")
    params["preset"] = preset
    return params


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in params.items() if key != "songs" or len(value) < 12)


def _song_seconds(song_id: int, song_seconds: float) -> float:
    return float(SONGS[song_id].duration_s) if song_seconds == 0 else float(song_seconds)


def simulate_nmedt(out_dir: str | Path, *, seed: int = 0, preset: str = "default", layouts: Sequence[str] | None = None,
                   progress: bool = True, **overrides: Any) -> Path:
    """Simulate an NMED-T dataset and write it in the real formats.

    Parameters
    ----------
    out_dir : path-like
        The folder to create (replaced atomically: written under a temporary name, then renamed).
    seed : int
        Seeds everything: the music's details, the forward model, the noise.
    preset : {"default", "smoke", "full"}
        Named sizes (see :data:`PRESETS`).
    layouts : sequence of {"cleaned", "raw"}, optional
        Overrides the preset's layouts.
    progress : bool
        Show a progress bar and print a one-line summary.
    **overrides
        Any preset entry: ``n_subjects``, ``songs``, ``song_seconds`` (0 = NMED-T lengths), ``snr``
        (linear amplitude ratio) or ``snr_db``, ``cleaned_fs``, ``raw_fs``, ``n_recordings``,
        ``gap_seconds``, ``write_stimuli``, ``stimulus_sr``.

    Returns
    -------
    Path
        ``out_dir``, holding ``songNN_Imputed.mat`` (cleaned), ``PP_R_raw.mat`` (raw),
        ``stimuli/<wav_name>`` and ``simulation.json`` (written last).
    """


    started = time.perf_counter()
    params = resolve_simulation_parameters(preset, layouts=list(layouts) if layouts is not None else None, **overrides)
    songs = params["songs"]
    subjects = list(SUBJECT_IDS[: params["n_subjects"]])
    seconds = {song: _song_seconds(song, params["song_seconds"]) for song in songs}
    out_dir = Path(out_dir).expanduser().resolve()
    model = build_forward_model(seed, subjects)
    layouts = params["layouts"]
    fs_of = {"cleaned": params["cleaned_fs"], "raw": params["raw_fs"]}

    audio = {song: synthesize_song(song, seconds[song], params["stimulus_sr"], seed) for song in songs}
    features = {
        layout: {song: auditory_features(audio[song], params["stimulus_sr"], fs_of[layout], int(round(seconds[song] * fs_of[layout]))) for song in songs}
        for layout in layouts
    }
    calibration_fs = params["cleaned_fs"]
    calibration = features.get("cleaned") or {
        song: auditory_features(audio[song], params["stimulus_sr"], calibration_fs, int(round(seconds[song] * calibration_fs))) for song in songs
    }
    calibrate(model, calibration, params["snr"], calibration_fs, seed)

    truth: dict[str, Any] = {"raw_recordings": {}}
    total = len(subjects) * (len(songs) * ("cleaned" in layouts) + min(params["n_recordings"], len(songs)) * ("raw" in layouts))
    bar = tqdm(total=total, desc="simulating EEG", unit="recording", disable=not progress)
    with atomic_directory(out_dir) as tmp:
        tmp.chmod(0o755)  # a dataset folder others may read (mkdtemp makes it private)
        if "cleaned" in layouts:
            _write_cleaned(tmp, model, features["cleaned"], subjects, songs, fs_of["cleaned"], seed, bar)
        if "raw" in layouts:
            truth["raw_recordings"] = _write_raw(tmp, model, features["raw"], subjects, songs, params, seed, bar)
        bar.close()
        if params["write_stimuli"]:

            (tmp / "stimuli").mkdir()
            for song in songs:
                sf.write(tmp / "stimuli" / SONGS[song].wav_name, audio[song], params["stimulus_sr"], subtype="PCM_16")
        record = {
            "format": "eeg2music simulated NMED-T",
            "preset": params["preset"],
            "seed": int(seed),
            "parameters": {k: v for k, v in params.items() if k != "preset"},
            "snr": params["snr"],
            "snr_db": 20 * math.log10(params["snr"]) if params["snr"] > 0 else None,
            "snr_definition": "RMS of the music-driven EEG / RMS of the ongoing background EEG (1/f + alpha + sensor "
                              "noise, 0.3–50 Hz), cleaned layout, average over songs at subject gain 1; 0 = no music",
            "layouts": layouts,
            "subjects": subjects,
            "songs": {str(s): {"title": SONGS[s].title, "bpm": SONGS[s].bpm, "duration_s": seconds[s], "wav_name": SONGS[s].wav_name} for s in songs},
            "forward_model": model.to_json(),
            **truth,
            "elapsed_s": round(time.perf_counter() - started, 2),
        }
        write_json(tmp / SIMULATION_FILE, record)  # last: marks the dataset complete
        (tmp / SIMULATION_FILE).chmod(0o644)
    if progress:
        print(f"[simulate] {len(subjects)} subjects × {len(songs)} songs ({', '.join(layouts)}), snr={params['snr']:g}, "
              f"{sum(seconds.values()):.0f} s of music → {out_dir} in {time.perf_counter() - started:.1f} s")
    return out_dir


def _write_cleaned(folder: Path, model: ForwardModel, features: dict[int, AuditoryFeatures], subjects: list[int],
                   songs: list[int], fs: float, seed: int, bar) -> None:

    for song in songs:
        feats = features[song]
        data = np.zeros((125, feats.n_times, len(subjects)), dtype=np.float32)
        for s_index, subject in enumerate(subjects):
            rng = np.random.default_rng([int(seed), 101, subject, song])
            data[:, :, s_index] = recording_eeg(model, s_index, rng, fs, "cleaned", [(0, feats.matrix())], feats.n_times)
            bar.update(1)
        subs = np.empty((1, len(subjects)), dtype=object)
        subs[0, :] = [subject_label(s) for s in subjects]
        # uncompressed MATLAB v5, like the public songNN_Imputed.mat files (single precision to halve the size)
        scipy.io.savemat(folder / cleaned_filename(song), {f"data{song}": data, f"subs{song}": subs, "fs": np.array([[fs]])},
                         do_compression=False)


def _write_raw(folder: Path, model: ForwardModel, features: dict[int, AuditoryFeatures], subjects: list[int],
               songs: list[int], params: dict[str, Any], seed: int, bar) -> dict[str, Any]:
    fs = params["raw_fs"]
    gap = int(round(params["gap_seconds"] * fs))
    truth: dict[str, Any] = {}
    for s_index, subject in enumerate(subjects):
        rng = np.random.default_rng([int(seed), 202, subject])
        order = [songs[i] for i in rng.permutation(len(songs))]
        n_recordings = min(params["n_recordings"], len(order))
        groups = [order[i::n_recordings] for i in range(n_recordings)]
        for recording, group in enumerate(groups, start=1):
            onsets, segments, cursor = {}, [], gap
            events: list[tuple[str, float]] = []
            for song in group:
                feats = features[song]
                onsets[song] = cursor
                segments.append((cursor, feats.matrix()))
                jitter = int(rng.integers(0, int(0.05 * fs)))
                events.append((f"D{song}", float(cursor - jitter)))
                events.append((f"D{ONSET_TRIGGER}", float(cursor + int(round(ONSET_OFFSET_S * fs)))))
                cursor += feats.n_times + gap
            n_times = cursor
            eeg = recording_eeg(model, s_index, rng, fs, "raw", segments, n_times)
            din = np.empty((4, len(events)), dtype=object)
            for i, (label, sample) in enumerate(events):
                din[:, i] = [label, sample, 1.0, float(i + 1)]
            name = raw_filename(subject, recording)
            write_mat_v73(folder / name, {"X": eeg.astype(np.float32), "fs": float(fs), "DIN_1": din})
            truth[name] = {"subject": subject, "recording": recording, "songs": group, "onset_samples": {str(k): v for k, v in onsets.items()}}
            bar.update(1)
    return truth


def load_simulation(root: str | Path) -> tuple[dict[str, Any], ForwardModel]:
    """The ``simulation.json`` of a simulated folder and its forward model, rebuilt from the seed.

    Raises
    ------
    FileNotFoundError
        If ``root`` holds no ``simulation.json`` (not simulated, or not complete).
    """
    path = Path(root) / SIMULATION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no simulation record; {root} was not written (completely) by simulate_nmedt")
    record = json.loads(path.read_text(encoding="utf-8"))
    model = build_forward_model(record["seed"], record["subjects"])
    model.signal_scale_uv = record["forward_model"]["signal_scale_uv"]
    return record, model


def _lagged(data: np.ndarray, lags: Sequence[int]) -> np.ndarray:
    """``(n_times, n_channels * n_lags)``: column block ``k`` holds ``data`` advanced by ``lags[k]``
    samples (the EEG that follows the stimulus sample), zero-padded at the end."""
    n_channels, n_times = data.shape
    out = np.zeros((n_times, n_channels * len(lags)), dtype=np.float32)
    for k, lag in enumerate(lags):
        out[: n_times - lag, k * n_channels : (k + 1) * n_channels] = data[:, lag:].T
    return out


def envelope_decoding(folder, layout: str = "cleaned", songs: Sequence[int] | None = None,
                      subjects: Sequence[int] | None = None, max_lag_s: float = 0.25, rate: float = 62.5,
                      n_components: int = 40, max_seconds: float = 60.0) -> dict[str, Any]:
    """Reconstruct the audio envelope from the EEG with a ridge backward model; compare to a control.

    The classic stimulus-reconstruction analysis (e.g. O'Sullivan et al., 2015): the EEG of every
    channel at lags 0–``max_lag_s`` after each moment is mapped linearly (scikit-learn ``RidgeCV`` on
    time-lagged, PCA-reduced EEG) to the broadband envelope of the music at that moment. Songs are held
    out in turn (leave-one-song-out): the model is trained on the other songs of all subjects and
    tested on the held-out song of each subject. The control correlates the same reconstruction with
    the envelope of *another* song (shuffled-song control): what chance looks like.

    Parameters
    ----------
    folder : NMEDTFolder or path-like
        An NMED-T folder with its stimulus WAVs (needs at least two songs).
    layout : str
        ``"cleaned"``, ``"raw"`` or ``"auto"``.
    songs, subjects : list of int, optional
        Restrict the analysis.
    max_lag_s : float
        Longest EEG lag after the stimulus.
    rate : float
        EEG and envelope are resampled to this rate (Hz) first.
    n_components : int
        EEG principal components kept (fitted on the training songs).
    max_seconds : float
        Only the first ``max_seconds`` of each song are used (keeps full-length songs fast); 0: all.

    Returns
    -------
    dict
        ``r_true`` and ``r_control`` (mean Pearson correlations over held-out recordings), their
        per-recording lists ``per_recording`` and the settings used.
    """


    folder = as_folder(folder)
    eeg: dict[tuple[int, int], np.ndarray] = {}
    for raw in iter_recordings(folder, layout, songs=songs, subjects=subjects):
        info = recording_info(raw)
        ratio = Fraction(rate / raw.info["sfreq"]).limit_denominator(100)
        stop = int(max_seconds * raw.info["sfreq"]) if max_seconds else None
        data = resample_poly(raw.get_data(picks="eeg", stop=stop), ratio.numerator, ratio.denominator, axis=1)
        data = data - data.mean(axis=1, keepdims=True)
        eeg[(info["subject"], info["song"])] = data / (data.std() or 1.0)
    song_ids = sorted({song for _, song in eeg})
    if len(song_ids) < 2:
        raise ValueError(f"{folder.root}: envelope decoding needs at least two songs, found {song_ids}")
    envelopes = {}
    for song in song_ids:
        n_times = next(data.shape[1] for (s, g), data in eeg.items() if g == song)
        envelope = auditory_features(read_stimulus(folder, song, sr=16000), 16000, rate, n_times).envelope
        envelopes[song] = (envelope - envelope.mean()) / (envelope.std() or 1.0)
    lags = list(range(int(round(max_lag_s * rate)) + 1))
    per_recording = []
    for held_out in song_ids:
        train = [key for key in eeg if key[1] != held_out]
        pca = PCA(n_components=min(n_components, next(iter(eeg.values())).shape[0]), random_state=0)
        pca.fit(np.concatenate([eeg[key] for key in train], axis=1).T)
        X = np.concatenate([_lagged(pca.transform(eeg[key].T).T, lags) for key in train])
        y = np.concatenate([envelopes[key[1]] for key in train])
        model = RidgeCV(alphas=np.logspace(0, 5, 6), gcv_mode="svd").fit(X, y)
        others = [song for song in song_ids if song != held_out]
        for key in (k for k in eeg if k[1] == held_out):
            prediction = model.predict(_lagged(pca.transform(eeg[key].T).T, lags))
            r_true = float(np.corrcoef(prediction, envelopes[held_out])[0, 1])
            controls = []
            for other in others:
                n = min(len(prediction), len(envelopes[other]))
                controls.append(float(np.corrcoef(prediction[:n], envelopes[other][:n])[0, 1]))
            per_recording.append({"subject": key[0], "song": held_out, "r_true": r_true, "r_control": float(np.mean(controls))})
    return {
        "r_true": float(np.mean([r["r_true"] for r in per_recording])),
        "r_control": float(np.mean([r["r_control"] for r in per_recording])),
        "per_recording": per_recording,
        "layout": folder.resolve_layout(layout),
        "max_lag_s": max_lag_s,
        "rate_hz": rate,
        "n_components": n_components,
        "max_seconds": max_seconds,
    }
