"""eeg2music.data.preprocessing: each step against hand-computed values, the pipeline, and the on-disk cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mne
import numpy as np
import pytest
from fixtures_nmedt import make_nmedt_folder, write_cleaned_song

from eeg2music.data.cache import _write_recording, build_cache, open_cache
from eeg2music.data.preprocessing import (
    BLOCK_SAMPLES,
    CACHE_FORMAT_VERSION,
    FACE_CHANNELS,
    BadChannelError,
    Preprocessing,
    _working_input,
    center_on_first_samples,
    clamp,
    drop_face_channels,
    filter_like_cleaned_release,
    find_bad_channels,
    preprocess_array,
    preprocess_raw,
    preprocess_working,
    robust_scale,
    trace_steps,
)

CLEANED_NAMES = [f"E{i}" for i in range(1, 125)] + ["Cz"]
RAW_NAMES = [f"E{i}" for i in range(1, 129)] + ["Cz"]


def make_raw(data_volts: np.ndarray, names: list[str], sfreq: float, montage: bool = False) -> mne.io.RawArray:
    info = mne.create_info(names, sfreq, ch_types="eeg")
    raw = mne.io.RawArray(np.array(data_volts, dtype=np.float64), info, verbose="error")
    if montage:
        raw.set_montage(mne.channels.make_standard_montage("GSN-HydroCel-129"), verbose="error")
    return raw


def random_raw(names=CLEANED_NAMES, sfreq=125.0, seconds=20.0, seed=0, **kwargs) -> mne.io.RawArray:
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 10e-6, size=(len(names), int(seconds * sfreq))) + rng.normal(0, 50e-6, size=(len(names), 1))
    if names[-1] == "Cz":
        data[-1] = 0.0  # the vertex reference is all zero, as in the raw files
    return make_raw(data, names, sfreq, **kwargs)


# --- configuration ---------------------------------------------------------------------------------


def test_key_is_stable_and_tracks_every_field():
    assert Preprocessing().key() == Preprocessing().key()
    assert len(Preprocessing().key()) == 12
    variants = [
        Preprocessing(drop_face=False), Preprocessing(filtering="cleaned_release"), Preprocessing(resample_sfreq=125.0),
        Preprocessing(center_samples=500), Preprocessing(clamp=10.0), Preprocessing(bad_channels="exclude"),
        Preprocessing(robust_scale=False, clamp=None), Preprocessing(scaler_fit_samples=None),
    ]
    keys = {cfg.key() for cfg in variants} | {Preprocessing().key()}
    assert len(keys) == len(variants) + 1
    # an integer-valued rate and its float spelling are the same configuration
    assert Preprocessing(resample_sfreq=125).key() == Preprocessing(resample_sfreq=125.0).key()


def test_key_depends_on_the_format_version(monkeypatch):
    before = Preprocessing().key()
    monkeypatch.setattr("eeg2music.data.preprocessing.CACHE_FORMAT_VERSION", CACHE_FORMAT_VERSION + 1)
    assert Preprocessing().key() != before


def test_to_dict_round_trips_and_records_the_steps():
    cfg = Preprocessing(filtering="cleaned_release", resample_sfreq=125.0, bad_channels="interpolate")
    assert Preprocessing.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    steps = " | ".join(cfg.steps())
    assert "E125" in steps and "Cz" in steps and "0.3 Hz" in steps and "125 Hz" in steps and "±20" in steps


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"filtering": "bandpass"}, "filtering"),
        ({"bad_channels": "ignore"}, "bad_channels"),
        ({"resample_sfreq": -1.0}, "resample_sfreq"),
        ({"center_samples": 2.5}, "center_samples"),
        ({"clamp": 0.0}, "clamp"),
        ({"robust_scale": False}, "clamp"),
        ({"scaler_fit_samples": 10}, "scaler_fit_samples"),
    ],
)
def test_bad_configuration_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Preprocessing(**kwargs)


# --- each step against a hand-computed example -----------------------------------------------------


def test_drop_face_channels_leaves_124_in_both_layouts():
    raw_layout = np.arange(129 * 3, dtype=float).reshape(129, 3)
    data, names = drop_face_channels(raw_layout, RAW_NAMES)
    assert names == [f"E{i}" for i in range(1, 125)] and np.shares_memory(data, raw_layout)  # a view, no copy
    np.testing.assert_array_equal(data, raw_layout[:124])
    data, names = drop_face_channels(np.zeros((125, 3)), CLEANED_NAMES)
    assert names == [f"E{i}" for i in range(1, 125)] and data.shape == (124, 3)
    data, names = drop_face_channels(raw_layout, RAW_NAMES, reference=False)
    assert names[-1] == "Cz" and not set(FACE_CHANNELS) & set(names)
    np.testing.assert_array_equal(data, raw_layout[[*range(124), 128]])


def test_center_on_first_samples_by_hand():
    data = np.array([[1.0, 3.0, 10.0, -4.0], [2.0, 2.0, 2.0, 8.0]])
    center_on_first_samples(data, 2)  # baselines: mean(1, 3) = 2 and mean(2, 2) = 2
    np.testing.assert_array_equal(data, [[-1.0, 1.0, 8.0, -6.0], [0.0, 0.0, 0.0, 6.0]])
    with pytest.raises(ValueError, match="4 samples, fewer than 5"):
        center_on_first_samples(data, 5)


def test_robust_scale_by_hand_in_place():
    # row 0: median 3, quartiles 2 and 4 (linear interpolation) → IQR 2
    # row 1: median 20, quartiles 10 and 30 → IQR 20
    data = np.array([[1.0, 2.0, 3.0, 4.0, 100.0], [0.0, 10.0, 20.0, 30.0, 40.0]])
    out = robust_scale(data)
    assert out is data
    np.testing.assert_allclose(data, [[-1.0, -0.5, 0.0, 0.5, 48.5], [-1.0, -0.5, 0.0, 0.5, 1.0]])


def test_robust_scale_fitted_on_a_subsample_by_hand():
    data = np.arange(10.0)[None, :].repeat(2, axis=0)
    data[1] *= 3.0
    # at most 5 samples → every 2nd: 0, 2, 4, 6, 8 → median 4, quartiles 2 and 6 → IQR 4 (row 1: ×3)
    robust_scale(data, fit_samples=5)
    np.testing.assert_allclose(data, [(np.arange(10.0) - 4.0) / 4.0] * 2)


def test_subsampled_fit_is_close_to_the_exact_one():
    rng = np.random.default_rng(0)
    eeg = np.cumsum(rng.normal(size=(8, 300_000)), axis=1) * 0.01 + rng.normal(size=(8, 300_000))  # drifting, like EEG
    exact = robust_scale(eeg.copy())
    approximate = robust_scale(eeg.copy(), fit_samples=Preprocessing().scaler_fit_samples)  # every 8th sample
    assert np.percentile(np.abs(approximate - exact), 99) < 0.02


def test_clamp_by_hand():
    data = np.array([[-30.0, -5.0, 0.0, 19.5, 25.0]])
    clamp(data, 20.0)
    np.testing.assert_array_equal(data, [[-20.0, -5.0, 0.0, 19.5, 20.0]])


def test_find_bad_channels_names_flat_and_nan_channels():
    data = np.random.default_rng(0).normal(0, 1e-5, size=(4, 50))
    data[1] = np.nan
    data[2] = 3e-6  # constant: flat
    data[3, 7] = np.inf
    bad = find_bad_channels(data, ["E1", "E2", "E3", "E4"])
    assert list(bad) == ["E2", "E3", "E4"]
    assert "all samples" in bad["E2"] and "flat" in bad["E3"] and "1 of 50" in bad["E4"]


def test_pipeline_equals_the_formula():
    """drop → centre → (x − median) / IQR → clip, computed independently with NumPy."""
    raw = random_raw(seconds=20.0)
    data = raw.get_data()[:124] * 1.0
    centred = data - data[:, :1000].mean(axis=1, keepdims=True)
    q25, q50, q75 = np.percentile(centred, [25, 50, 75], axis=1, keepdims=True)
    expected = np.clip((centred - q50) / (q75 - q25), -20, 20)
    result = preprocess_raw(raw, Preprocessing())
    assert result.data.dtype == np.float32 and result.data.shape == (124, 2500)
    assert result.ch_names == [f"E{i}" for i in range(1, 125)] and result.dropped_channels == ["Cz"]
    np.testing.assert_allclose(result.data, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [
    Preprocessing(), Preprocessing(center_samples=0), Preprocessing(clamp=None), Preprocessing(clamp=0.5),
    Preprocessing(scaler_fit_samples=None),
])
def test_fused_steps_equal_the_traced_steps_to_the_bit(cfg):
    """Untraced, centre → scale → clamp run fused block by block; traced, one after the other: same bits."""
    raw = random_raw(RAW_NAMES, sfreq=1000.0, seconds=3 * BLOCK_SAMPLES / 1000.0 + 0.5)  # blocks + a remainder
    raw._data[7, 100:110] += 3e-3  # an artefact for the clamp
    fused = preprocess_raw(raw.copy(), cfg)
    traced = trace_steps(raw, cfg)[-1]
    assert traced.name == ("clamp" if cfg.clamp is not None else "robust scale")
    np.testing.assert_array_equal(fused.data, traced.data)


def test_cache_files_are_what_numpy_saves_for_the_finished_array(tmp_path):
    """The cache applies centre → scale → clamp while writing: the file is np.save's of the result, byte for byte."""
    raw = random_raw(RAW_NAMES, sfreq=1000.0, seconds=2 * BLOCK_SAMPLES / 1000.0 + 0.3)
    working = _working_input(raw.get_data(), RAW_NAMES, 1000.0, Preprocessing())
    result, scaling = preprocess_working(working, Preprocessing(), "test recording")
    assert scaling is not None and result.data.flags.f_contiguous
    finished = scaling.apply(result.data.copy(order="F"))
    np.save(tmp_path / "numpy.npy", finished)
    _write_recording(tmp_path / "cache.npy", result.data, scaling)
    assert (tmp_path / "cache.npy").read_bytes() == (tmp_path / "numpy.npy").read_bytes()
    np.testing.assert_array_equal(result.data, finished)  # the writer scaled the array in place
    np.testing.assert_array_equal(np.load(tmp_path / "cache.npy", mmap_mode="r"), preprocess_raw(raw).data)
    with pytest.raises(ValueError, match="time-major"):
        _write_recording(tmp_path / "c_order.npy", np.ascontiguousarray(finished))


def test_working_input_scales_casts_and_finds_each_channel_range():
    rng = np.random.default_rng(3)
    data_uv = np.asfortranarray(rng.normal(0.0, 20.0, size=(129, 2 * BLOCK_SAMPLES + 7)))
    data_uv[4, BLOCK_SAMPLES + 3] = np.nan
    working = _working_input(data_uv, RAW_NAMES, 1000.0, Preprocessing(), scale=1e-6)
    expected = (data_uv[:124] * 1e-6).astype(np.float32)
    assert working.data.flags.f_contiguous and working.data.dtype == np.float32 and working.ch_names == RAW_NAMES[:124]
    np.testing.assert_array_equal(working.data, expected)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(working.low, expected.min(axis=1))
        np.testing.assert_array_equal(working.high, expected.max(axis=1))
    assert np.isnan(working.low[4]) and np.isnan(working.high[4]) and np.isfinite(np.delete(working.low, 4)).all()
    with pytest.raises(ValueError, match="no samples"):
        _working_input(data_uv[:, :0], RAW_NAMES, 1000.0, Preprocessing())


def test_centring_is_absorbed_by_robust_scaling():
    with_centre = preprocess_raw(random_raw(seed=1), Preprocessing())
    without = preprocess_raw(random_raw(seed=1), Preprocessing(center_samples=0))
    np.testing.assert_allclose(with_centre.data, without.data, atol=1e-5)
    unscaled = preprocess_raw(random_raw(seed=1), Preprocessing(robust_scale=False, clamp=None))
    np.testing.assert_allclose(unscaled.data[:, :1000].mean(axis=1), 0.0, atol=1e-3)  # µV, centred


@pytest.mark.parametrize("cfg", [Preprocessing(), Preprocessing(filtering="cleaned_release", resample_sfreq=125.0)])
def test_output_does_not_depend_on_the_input_memory_layout(cfg):
    data = random_raw(RAW_NAMES, sfreq=1000.0, seconds=10.0).get_data()  # 1250 samples once resampled
    channel_major = preprocess_array(np.ascontiguousarray(data), RAW_NAMES, 1000.0, cfg)
    time_major = preprocess_array(np.asfortranarray(data), RAW_NAMES, 1000.0, cfg)  # as the HDF5 reader gives it
    np.testing.assert_allclose(channel_major.data, time_major.data, rtol=0, atol=1e-6)
    assert time_major.data.flags.f_contiguous and time_major.data.dtype == np.float32  # windows: contiguous blocks


def test_clamp_bounds_artefacts():
    raw = random_raw(seconds=10.0)
    raw._data[5, 300:310] += 5e-3  # a 5 mV artefact, hundreds of IQRs
    result = preprocess_raw(raw, Preprocessing())
    assert np.abs(result.data).max() == pytest.approx(20.0)
    assert np.all(result.data[5, 300:310] == 20.0)


def test_bad_channel_error_names_the_channel_and_the_recording():
    raw = random_raw(seconds=10.0)
    raw._data[16] = 0.0
    with pytest.raises(BadChannelError, match=r"P07 song 23.*E17: flat"):
        preprocess_raw(raw, Preprocessing(), where="P07 song 23")


def test_bad_channel_exclude_zeroes_and_reports():
    raw = random_raw(seconds=10.0)
    raw._data[16] = np.nan
    result = preprocess_raw(raw, Preprocessing(bad_channels="exclude"))
    assert list(result.bad_channels) == ["E17"]
    assert np.all(result.data[16] == 0.0) and np.isfinite(result.data).all()


def test_bad_channel_interpolate_rebuilds_from_neighbours():
    rng = np.random.default_rng(3)
    montage = mne.channels.make_standard_montage("GSN-HydroCel-129").get_positions()["ch_pos"]
    height = np.array([montage[name][2] for name in CLEANED_NAMES[:124]])
    # a smooth scalp field (one source seen with a gain growing towards the vertex) to recover
    data = np.outer(height - height.min() + 0.01, rng.normal(0, 1e-3, 1250))
    truth = data[40].copy()
    data[40] = np.nan
    result = preprocess_array(data, CLEANED_NAMES[:124], 125.0, Preprocessing(bad_channels="interpolate", clamp=None, center_samples=0, robust_scale=False))
    assert list(result.bad_channels) == ["E41"]
    rebuilt = result.data[40] * 1e-6
    assert np.isfinite(rebuilt).all() and np.corrcoef(rebuilt, truth)[0, 1] > 0.99
    assert np.std(rebuilt) == pytest.approx(np.std(truth), rel=0.2)


def _gain_db(sfreq: float, freq: float, seconds: float = 40.0) -> float:
    t = np.arange(int(seconds * sfreq)) / sfreq
    sine = np.sin(2 * np.pi * freq * t)
    filtered = filter_like_cleaned_release(sine[None] * 1e-5, sfreq)
    middle = slice(len(t) // 4, 3 * len(t) // 4)  # away from the edges' transients
    return 20 * np.log10(filtered[0, middle].std() / (sine[middle].std() * 1e-5))


@pytest.mark.parametrize("sfreq", [125.0, 1000.0])
def test_cleaned_release_filtering_response(sfreq):
    assert abs(_gain_db(sfreq, 10.0)) < 0.5  # pass band
    assert _gain_db(sfreq, 60.0) < -40  # notch (and low-pass)
    assert _gain_db(sfreq, 0.05, seconds=200.0) < -40  # high-pass: drift removed
    if sfreq > 160:
        assert _gain_db(sfreq, 80.0) < -40  # low-pass


def test_filtering_and_resampling_in_the_pipeline():
    raw = random_raw(RAW_NAMES, sfreq=1000.0, seconds=12.0)
    result = preprocess_raw(raw, Preprocessing(filtering="cleaned_release", resample_sfreq=125.0))
    assert result.sfreq == 125.0 and result.data.shape == (124, 1500)
    assert np.isfinite(result.data).all()


def test_filtering_refuses_a_rate_below_the_notch():
    with pytest.raises(ValueError, match="too low"):
        filter_like_cleaned_release(np.zeros((2, 200)), 100.0)


# --- the cache on real-format NMED-T fixtures ------------------------------------------------------


@pytest.fixture(scope="module")
def nmedt(tmp_path_factory):
    root = tmp_path_factory.mktemp("nmedt")
    return make_nmedt_folder(root, layouts=("cleaned", "raw"), songs=(21, 22, 23), subjects=(2, 3), cleaned_fs=10.0, raw_fs=20.0)


@pytest.mark.parametrize("layout, fs", [("cleaned", 10.0), ("raw", 20.0)])
def test_build_cache_matches_the_pipeline_on_both_layouts(nmedt, tmp_path, layout, fs):
    index = build_cache(nmedt.root, Preprocessing(), tmp_path / "cache", layout=layout, progress=False)
    assert index.layout == layout and index.sfreq == fs and index.units == "IQR"
    assert index.channel_names == [f"E{i}" for i in range(1, 125)]
    assert index.subjects == (2, 3) and index.songs == (21, 22, 23) and len(index.recordings) == 6
    truth = (nmedt.cleaned if layout == "cleaned" else nmedt.raw)[(3, 22)]
    expected = preprocess_raw(make_raw(truth * 1e-6, CLEANED_NAMES if layout == "cleaned" else RAW_NAMES, fs))
    cached = index.load(3, 22)
    assert isinstance(cached, np.memmap) and cached.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(cached), expected.data)
    meta = json.loads((index.path / "index.json").read_text())
    assert meta["complete"] and meta["key"] == Preprocessing().key() and meta["preprocessing"]["clamp"] == 20.0
    if layout == "raw":
        assert index.recording(3, 22).onset_sample == nmedt.onsets[(3, 22)]
        assert set(index.dropped_channels) == {*FACE_CHANNELS, "Cz"}


def test_cache_is_reused_and_invalidated(nmedt, tmp_path, monkeypatch):
    calls = []
    real = preprocess_working  # the per-recording work build_cache does after reading
    monkeypatch.setattr("eeg2music.data.cache.preprocess_working", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = build_cache(nmedt.root, Preprocessing(), tmp_path, songs=[22, 23], progress=False)
    assert len(calls) == 4
    again = build_cache(nmedt.root, Preprocessing(), tmp_path, songs=[22, 23], progress=False)
    assert len(calls) == 4 and again.path == first.path  # reused: nothing preprocessed
    changed = build_cache(nmedt.root, Preprocessing(clamp=5.0), tmp_path, songs=[22, 23], progress=False)
    assert len(calls) == 8 and changed.path != first.path and np.abs(np.asarray(changed.load(2, 22))).max() <= 5.0
    assert open_cache(tmp_path).path == changed.path  # the root opens its latest build
    other_songs = build_cache(nmedt.root, Preprocessing(), tmp_path, songs=[22], progress=False)
    assert other_songs.path != first.path
    rebuilt = build_cache(nmedt.root, Preprocessing(), tmp_path, songs=[22, 23], rebuild=True, progress=False)
    assert rebuilt.path == first.path and len(calls) == 14


def test_changed_data_rebuilds(tmp_path):
    root = tmp_path / "nmedt"
    make_nmedt_folder(root, layouts=("cleaned",), songs=(22,), subjects=(2,), cleaned_fs=10.0, seed=0)
    first = build_cache(root, None, tmp_path / "cache", progress=False)
    before = np.asarray(first.load(2, 22)).copy()
    make_nmedt_folder(root, layouts=("cleaned",), songs=(22,), subjects=(2,), cleaned_fs=10.0, seed=1)
    os.utime(root / "song22_Imputed.mat", ns=(1, 1))  # a different file, whatever the clock's resolution
    second = build_cache(root, None, tmp_path / "cache", progress=False)
    assert second.path != first.path and not np.array_equal(np.asarray(second.load(2, 22)), before)


def test_interrupted_build_is_never_read(nmedt, tmp_path, monkeypatch):
    real = preprocess_working  # the per-recording work of build_cache
    calls = []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("eeg2music.data.cache.preprocess_working", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        build_cache(nmedt.root, Preprocessing(), tmp_path, progress=False)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # no cache, no latest.json
    with pytest.raises(FileNotFoundError, match="no complete preprocessed cache"):
        open_cache(tmp_path)
    monkeypatch.setattr("eeg2music.data.cache.preprocess_working", real)
    index = build_cache(nmedt.root, Preprocessing(), tmp_path, progress=False)
    assert len(index.recordings) == 6


def test_overlapped_and_sequential_builds_write_the_same_cache(nmedt, tmp_path):
    overlapped = build_cache(nmedt.root, Preprocessing(), tmp_path / "a", layout="raw", progress=False)
    sequential = build_cache(nmedt.root, Preprocessing(), tmp_path / "b", layout="raw", progress=False,
                             overlap_io=False)
    assert [e.file for e in overlapped.recordings] == [e.file for e in sequential.recordings]
    for entry in overlapped.recordings:
        np.testing.assert_array_equal(np.asarray(overlapped.load(entry.subject, entry.song)),
                                      np.asarray(sequential.load(entry.subject, entry.song)))


def test_a_failed_overlapped_build_leaves_no_thread_running(nmedt, tmp_path, monkeypatch):
    import threading

    real = preprocess_working  # the per-recording work of build_cache
    calls = []

    def fails_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("broken recording")
        return real(*args, **kwargs)

    monkeypatch.setattr("eeg2music.data.cache.preprocess_working", fails_on_the_second)
    with pytest.raises(ValueError, match="broken recording"):
        build_cache(nmedt.root, Preprocessing(), tmp_path, layout="raw", progress=False)
    alive = [t.name for t in threading.enumerate() if t.name.startswith("eeg2music-")]
    assert alive == [] and not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_killed_build_is_never_read_and_is_cleaned_up(nmedt, tmp_path):
    """A build killed with SIGKILL leaves a temporary folder: not read, and removed by the next build."""
    script = (
        "import os, signal\n"
        "import eeg2music.data.cache as cache\n"
        "real = cache.preprocess_working\n"
        "calls = []\n"
        "def killer(*a, **k):\n"
        "    calls.append(1)\n"
        # the third: the writer saves recording 2 only after recording 1's file is complete
        "    if len(calls) == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(*a, **k)\n"
        "cache.preprocess_working = killer\n"
        f"cache.build_cache({str(nmedt.root)!r}, None, {str(tmp_path)!r}, progress=False)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(p.name.startswith(".") and p.name.endswith(".partial") for p in leftovers)
    assert any(leftovers[0].glob("*.npy"))  # half-written
    with pytest.raises(FileNotFoundError):
        open_cache(tmp_path)
    with pytest.raises(FileNotFoundError, match="no complete"):
        open_cache(leftovers[0])
    index = build_cache(nmedt.root, None, tmp_path, progress=False)
    assert not leftovers[0].exists() and len(index.recordings) == 6


def test_incomplete_or_damaged_cache_is_rebuilt(nmedt, tmp_path):
    index = build_cache(nmedt.root, None, tmp_path, songs=[22], progress=False)
    (index.path / index.recordings[0].file).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        open_cache(index.path)
    rebuilt = build_cache(nmedt.root, None, tmp_path, songs=[22], progress=False)
    assert rebuilt.path == index.path and not rebuilt.missing_files()


@pytest.fixture()
def flat_channel_folder(tmp_path):
    """A cleaned song where participant 3 has a dead electrode E17."""
    rng = np.random.default_rng(0)
    data = rng.normal(0, 10.0, size=(125, 2710, 2))
    data[16, :, 1] = 0.0
    data[124] = 0.0
    write_cleaned_song(tmp_path / "nmedt" / "song22_Imputed.mat", 22, data, [2, 3], fs=10.0)
    return tmp_path / "nmedt"


def test_flat_channel_is_reported_by_name_through_the_cache(flat_channel_folder, tmp_path):
    with pytest.raises(BadChannelError, match=r"participant 3, song 22.*E17"):
        build_cache(flat_channel_folder, Preprocessing(), tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / "latest.json").exists()
    index = build_cache(flat_channel_folder, Preprocessing(bad_channels="exclude"), tmp_path / "cache", progress=False)
    assert index.excluded_channels == ("E17",) and index.n_channels == 123 and "E17" not in index.channel_names
    assert index.recording(3, 22).bad_channels.keys() == {"E17"} and not index.recording(2, 22).bad_channels
    assert len(index.stored_channels) == 124 and np.all(np.asarray(index.load(3, 22))[16] == 0)


def test_nan_in_a_file_is_named_through_the_cache(tmp_path):
    """The cache's reader folds the reader's finiteness check into its own pass: same errors, same names."""
    from eeg2music.data.nmedt import NMEDTError

    rng = np.random.default_rng(0)
    data = rng.normal(0, 10.0, size=(125, 2710, 2))
    data[124] = 0.0
    data[4, 100:103, 1] = np.nan  # scattered: a broken file
    write_cleaned_song(tmp_path / "broken" / "song22_Imputed.mat", 22, data, [2, 3], fs=10.0)
    with pytest.raises(NMEDTError, match=r"song22_Imputed.mat.*participant 3.*3 NaN/inf"):
        build_cache(tmp_path / "broken", Preprocessing(), tmp_path / "cache", progress=False)
    data[4, :, 1] = np.nan  # a whole channel: a bad channel, named by the preprocessing
    write_cleaned_song(tmp_path / "dead" / "song22_Imputed.mat", 22, data, [2, 3], fs=10.0)
    with pytest.raises(BadChannelError, match=r"participant 3, song 22.*E5: all samples NaN/inf"):
        build_cache(tmp_path / "dead", Preprocessing(), tmp_path / "cache", progress=False)
    index = build_cache(tmp_path / "dead", Preprocessing(bad_channels="exclude"), tmp_path / "cache", progress=False)
    assert index.excluded_channels == ("E5",) and np.all(np.asarray(index.load(3, 22))[4] == 0)
    assert not list((tmp_path / "cache").glob(".*"))  # the failed builds left nothing behind


def test_open_cache_without_a_cache_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="02_preprocess"):
        open_cache(tmp_path)


# --- notebook 02 on the raw layout (the smoke chain in test_notebooks.py runs the cleaned one) ---------


@pytest.mark.slow
def test_notebook_02_on_the_raw_layout_with_a_held_out_subject(tmp_path, session_outputs):
    from conftest import run_notebook

    from eeg2music.data.pairing import load_stage_windows

    out = tmp_path / "out"
    run_notebook("02_preprocess", tmp_path / "run", smoke=True, layout="raw", loso_subject=3, lag_seconds=0.2, out_dir=str(out))
    summary = json.loads((out / "preprocess_summary.json").read_text())
    assert summary["layout"] == "raw" and summary["sfreq"] == 1000.0 and summary["n_channels"] == 124
    assert summary["loso_subject"] == 3 and summary["splits"]["test"]["subjects"] == [3]
    assert 3 not in summary["splits"]["train"]["subjects"] and summary["counts"]["train"] > 0
    assert summary["cache"].startswith(str(out / "cache"))
    assert {p.name for p in out.glob("*.png")} >= {"steps_one_channel.png", "topomaps.png", "split_layout.png"}
    datasets = load_stage_windows(out, verbose=False)
    assert {name: len(ds) for name, ds in datasets.items()} == summary["counts"]
    assert datasets["test"][0]["eeg"].shape == (124, 3500)
