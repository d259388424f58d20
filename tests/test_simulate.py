"""The simulator: its music, its forward model, the NMED-T files it writes, and whether the EEG
really carries the music (a ridge backward model against a shuffled-song control)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from eeg2music.audio import auditory_features
from eeg2music.data.forward_model import build_forward_model, listener_differences
from eeg2music.evaluation.report import listener_differences_table
from eeg2music.data.music import synthesize_song
from eeg2music.data.nmedt import SONGS, read_stimulus, scan_nmedt
from eeg2music.data.recordings import iter_recordings, read_recording, song_onsets
from eeg2music.data.simulate import (
    PRESETS,
    envelope_decoding,
    load_simulation,
    resolve_simulation_parameters,
    simulate_nmedt,
)
from eeg2music.params import ParameterError

# 3 participants × 3 songs of 15 s: enough for a leave-one-song-out backward model, fast to simulate
SMALL = {"n_subjects": 3, "songs": [21, 22, 23], "song_seconds": 15.0}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke preset, both layouts (as tests of other stages use it)."""
    return simulate_nmedt(tmp_path_factory.mktemp("sim") / "smoke", seed=3, preset="smoke", progress=False)


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def test_presets_and_overrides_are_type_checked():
    smoke = resolve_simulation_parameters("smoke")
    assert smoke["n_subjects"] == 3 and smoke["songs"] == [21, 22, 23] and smoke["layouts"] == ["cleaned", "raw"]
    default = resolve_simulation_parameters("default")
    assert default["n_subjects"] == 20 and len(default["songs"]) == 10 and default["layouts"] == ["cleaned"]
    assert default["song_seconds"] >= 12 * 3.5
    custom = resolve_simulation_parameters("smoke", n_subjects="2", songs="21,24", layouts="raw", snr_db=-6.0)
    assert custom["n_subjects"] == 2 and custom["songs"] == [21, 24] and custom["layouts"] == ["raw"]
    assert custom["snr"] == pytest.approx(10 ** (-6 / 20))
    full = resolve_simulation_parameters("full")
    assert full["song_seconds"] == 0 and set(full["layouts"]) == {"cleaned", "raw"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_subjects": "many"}, "n_subjects"),
        ({"bogus": 1}, "bogus"),
        ({"n_subjects": 21}, "n_subjects must be"),
        ({"songs": [20]}, "songs must be"),
        ({"layouts": ["bids"]}, "layouts must be"),
        ({"snr": -1.0}, "snr must be"),
        ({"snr": 1.0, "snr_db": 0.0}, "either"),
    ],
)
def test_bad_simulation_parameters_are_named(overrides, message):
    with pytest.raises(ParameterError, match=message):
        resolve_simulation_parameters("smoke", **overrides)
    with pytest.raises(ParameterError, match="unknown simulation preset"):
        resolve_simulation_parameters("huge")


# ---------------------------------------------------------------------------------------------
# Music
# ---------------------------------------------------------------------------------------------


def test_songs_are_deterministic_and_distinct():
    sr, seconds = 16000, 8.0
    songs = {sid: synthesize_song(sid, seconds, sr, seed=0) for sid in SONGS}
    for audio in songs.values():
        assert audio.dtype == np.float32 and audio.shape == (int(seconds * sr),)
        assert 0.5 < np.max(np.abs(audio)) <= 0.9 + 1e-6
    np.testing.assert_array_equal(songs[21], synthesize_song(21, seconds, sr, seed=0))
    assert not np.allclose(songs[21], synthesize_song(21, seconds, sr, seed=1))
    # timbre: each song's average band profile differs clearly from every other song's
    profiles = {}
    for sid, audio in songs.items():
        bands = auditory_features(audio, sr, 50.0).bands
        profile = np.log(bands.mean(axis=1) + 1e-6)
        profiles[sid] = profile - profile.mean()
    distances = [np.linalg.norm(profiles[a] - profiles[b]) for a in profiles for b in profiles if a < b]
    assert min(distances) > 0.2


def test_songs_follow_their_tempo():
    """The onset envelope of each song is periodic at its NMED-T tempo (or a multiple of it)."""
    for sid in (21, 26, 30):
        audio = synthesize_song(sid, 20.0, 16000, seed=0)
        onsets = auditory_features(audio, 16000, 100.0).onsets
        onsets = onsets - onsets.mean()
        spectrum = np.abs(np.fft.rfft(onsets * np.hanning(len(onsets))))
        freqs = np.fft.rfftfreq(len(onsets), 1 / 100.0)
        beat_hz = SONGS[sid].bpm / 60.0
        band = (freqs > 0.5) & (freqs < 10.0)
        strongest = freqs[band][np.argmax(spectrum[band])]
        ratio = strongest / beat_hz
        assert min(abs(ratio - k) for k in (0.5, 1, 2, 3, 4)) < 0.06, (sid, strongest, beat_hz)


def test_auditory_features_follow_a_click_train():
    sr, fs = 16000, 100.0
    audio = np.zeros(10 * sr, dtype=np.float32)
    clicks = np.arange(int(0.25 * sr), len(audio), int(0.5 * sr))  # 120 BPM
    for start in clicks:
        audio[start : start + 160] = np.hanning(160) * np.sin(2 * np.pi * 700 * np.arange(160) / sr)
    features = auditory_features(audio, sr, fs)
    assert features.bands.shape == (7, 1000) and features.matrix().shape == (9, 1000)
    assert len(features.names) == 9 and features.fs == fs
    onset_peaks = np.flatnonzero(features.onsets > 0.5 * features.onsets.max())
    assert np.all(np.min(np.abs(onset_peaks[:, None] / fs - clicks[None, :] / sr), axis=1) < 0.03)
    # the beat pulse peaks on the clicks (away from the edges)
    beat = features.beat
    middle = [c for c in clicks / sr if 2.0 < c < 8.0]
    assert all(beat[int(round(c * fs))] > 0.6 * beat.max() for c in middle)
    assert beat[int(round((middle[0] + 0.25) * fs))] < 0.2 * beat.max()
    # the 500–1000 Hz band carries the 700 Hz clicks
    assert np.argmax(features.bands.mean(axis=1)) == features.band_edges_hz.index(500.0)


# ---------------------------------------------------------------------------------------------
# Forward model
# ---------------------------------------------------------------------------------------------


def test_forward_model_topographies():
    model = build_forward_model(0, [2, 3, 4])
    names = model.channel_names
    auditory = model.patterns[0, 0] + model.patterns[0, 1]  # both auditory cortices (Cz reference)
    auditory = auditory - auditory.mean()
    fronto_central = [names.index(c) for c in ("E6", "E7", "E106", "E11", "E12", "E5")]
    occipital = [names.index(c) for c in ("E75", "E70", "E83")]
    # fronto-central maximum (within 6 cm of FCz = E6), polarity reversal at the lower temporal sites
    distance_to_fcz = np.linalg.norm(model.positions - model.positions[names.index("E6")], axis=1)
    assert distance_to_fcz[np.argmax(auditory)] < 0.06
    assert np.mean(auditory[fronto_central]) > 1.5 * abs(np.mean(auditory[occipital]))
    assert np.mean(auditory[[names.index(c) for c in ("E57", "E100")]]) < 0
    # blinks: the face and frontal channels, not the back of the head
    eye = np.abs(model.eye_pattern)
    face = [names.index(c) for c in ("E125", "E126", "E127", "E128")]
    assert eye[face].min() > 5 * eye[occipital].max()
    # subjects differ in latency and gain; their patterns differ a little, not wholly
    assert len(set(np.round(model.latency_s, 6))) == 3 and np.all(model.gain > 0)
    similarity = np.corrcoef(model.patterns[0, 0], model.patterns[1, 0])[0, 1]
    assert 0.7 < similarity < 0.9999
    kernels = model.kernels(0, 125.0)
    assert kernels.shape == (9, 62) and np.argmin(kernels[0]) / 125.0 == pytest.approx(0.1 + model.latency_s[0] + 0.015, abs=0.02)


# ---------------------------------------------------------------------------------------------
# The dataset on disk
# ---------------------------------------------------------------------------------------------


def test_smoke_dataset_is_written_in_the_nmedt_formats(smoke):
    record = json.loads((smoke / "simulation.json").read_text())
    assert record["preset"] == "smoke" and record["seed"] == 3 and record["snr"] == pytest.approx(0.25)
    assert set(record["forward_model"]["subjects"]) == {"2", "3", "4"}
    folder = scan_nmedt(smoke)
    assert folder.simulated and folder.layouts == ("cleaned", "raw")
    assert folder.songs[21].duration_s == 15.0 and sorted(folder.stimuli) == [21, 22, 23]
    # the cleaned files are plain MATLAB v5 with the NMED-T variables
    contents = scipy.io.loadmat(smoke / "song22_Imputed.mat")
    assert contents["data22"].shape == (125, 15 * 125, 3) and float(contents["fs"][0, 0]) == 125.0
    assert [str(s[0]) for s in contents["subs22"].ravel()] == ["P02", "P03", "P04"]
    # the raw files are MATLAB v7.3: the onsets found from DIN_1 are the simulated ones
    for name, truth in record["raw_recordings"].items():
        onsets = song_onsets(smoke / name, folder.songs)
        assert onsets == {int(k): v for k, v in truth["onset_samples"].items()}
    raws = list(iter_recordings(folder, "raw"))
    assert len(raws) == 9 and all(r.n_times == 15 * 1000 and r.info["sfreq"] == 1000.0 for r in raws)
    assert all(np.all(r.get_data(picks=["Cz"]) == 0) for r in raws)
    cleaned = list(iter_recordings(folder, "cleaned"))
    assert len(cleaned) == 9 and all(len(r.ch_names) == 125 for r in cleaned)
    stimulus = read_stimulus(folder, 23)
    assert len(stimulus) == 15 * 16000


def test_cleaned_eeg_is_in_a_realistic_range(smoke):
    raw = read_recording(smoke, 3, 21, layout="cleaned")
    data_uv = raw.get_data() * 1e6
    assert 5 < data_uv.std() < 40  # µV, as scalp EEG
    assert abs(data_uv.mean(axis=0)).max() < 1e-3  # average reference
    spectrum = np.abs(np.fft.rfft(data_uv, axis=1)) ** 2
    freqs = np.fft.rfftfreq(data_uv.shape[1], 1 / 125.0)
    # 1/f: far more power at 2–4 Hz than at 30–40 Hz
    assert spectrum[:, (freqs > 2) & (freqs < 4)].mean() > 10 * spectrum[:, (freqs > 30) & (freqs < 40)].mean()


def test_raw_eeg_has_line_noise_and_offsets(smoke):
    raw = read_recording(smoke, 2, 22, layout="raw")
    data_uv = raw.get_data(picks=raw.ch_names[:128]) * 1e6  # all but the Cz reference
    offsets = data_uv.mean(axis=1)
    assert offsets.std() > 100  # electrode offsets of hundreds of µV, as in raw EGI recordings
    centred = (data_uv - offsets[:, None]) * np.hanning(data_uv.shape[1])
    spectrum = np.abs(np.fft.rfft(centred, axis=1)) ** 2
    freqs = np.fft.rfftfreq(data_uv.shape[1], 1 / 1000.0)
    line = spectrum[:, np.argmin(abs(freqs - 60.0))]
    neighbours = spectrum[:, (freqs > 50) & (freqs < 58)].mean(axis=1)
    assert np.median(line / neighbours) > 100


def test_simulation_is_deterministic_and_atomic(tmp_path, monkeypatch):
    kwargs = dict(seed=5, preset="smoke", layouts=["cleaned"], n_subjects=1, songs=[24], song_seconds=6.0, progress=False)
    first = simulate_nmedt(tmp_path / "a", **kwargs)
    second = simulate_nmedt(tmp_path / "b", **kwargs)
    np.testing.assert_array_equal(scipy.io.loadmat(first / "song24_Imputed.mat")["data24"], scipy.io.loadmat(second / "song24_Imputed.mat")["data24"])
    other = simulate_nmedt(tmp_path / "c", **{**kwargs, "seed": 6})
    assert not np.array_equal(scipy.io.loadmat(first / "song24_Imputed.mat")["data24"], scipy.io.loadmat(other / "song24_Imputed.mat")["data24"])

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("eeg2music.data.simulate._write_raw", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_nmedt(tmp_path / "d", **{**kwargs, "layouts": ["cleaned", "raw"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no half-written folder
    with pytest.raises(RuntimeError):
        simulate_nmedt(first, **{**kwargs, "layouts": ["raw"]})
    assert (first / "simulation.json").is_file()  # an existing dataset survives a failed rewrite


def test_load_simulation_rebuilds_the_forward_model(smoke):
    record, model = load_simulation(smoke)
    assert model.subjects == record["subjects"] == [2, 3, 4]
    truth = record["forward_model"]["subjects"]["3"]
    assert model.latency_s[1] * 1000 == pytest.approx(truth["latency_ms"], abs=1e-3)
    assert model.signal_scale_uv == record["forward_model"]["signal_scale_uv"] > 0
    with pytest.raises(FileNotFoundError, match="simulation.json"):
        load_simulation(smoke / "stimuli")


def test_listener_differences_measure_what_the_forward_model_varies():
    model = build_forward_model(0, [2, 3, 4, 5])
    found = listener_differences(model)
    assert set(found["topography_r"]) == set(model.source_names)
    for r in found["topography_r"].values():
        assert -1 <= r["min"] <= r["mean"] < 1
    assert 0 < found["shared_variance"] < 1
    assert found["latency_ms"]["sd"] == pytest.approx(np.std(model.latency_s) * 1000)
    assert found["gain"]["max_over_min"] == pytest.approx(model.gain.max() / model.gain.min())
    model.patterns[:] = model.patterns[:1]  # identical scalp patterns, equal latencies and gains
    model.latency_s[:], model.gain[:] = 0.01, 1.0
    same = listener_differences(model)
    assert same["shared_variance"] == pytest.approx(1.0) and same["latency_ms"]["sd"] == 0
    assert same["gain"]["max_over_min"] == 1.0


def test_listener_differences_table_reads_a_simulated_folder(smoke, tmp_path):
    table = listener_differences_table(smoke, latent_frame_ms=40.0)
    assert len(table) == 7 and "one latent frame: 40.0 ms" in table.iloc[5, 0]
    assert listener_differences_table(tmp_path, latent_frame_ms=40.0) is None  # real recordings: unknown
    assert listener_differences_table("", latent_frame_ms=40.0) is None


# ---------------------------------------------------------------------------------------------
# Does the EEG carry the music?
# ---------------------------------------------------------------------------------------------


def test_ridge_backward_model_recovers_the_envelope_at_the_default_snr(smoke):
    result = envelope_decoding(smoke, layout="cleaned")
    print(f"default SNR ({PRESETS['default']['snr']}): r = {result['r_true']:.3f}, control r = {result['r_control']:.3f}")
    assert result["r_true"] > 0.5
    assert result["r_true"] > result["r_control"] + 0.3
    assert all(r["r_true"] > r["r_control"] for r in result["per_recording"])


def test_ridge_backward_model_falls_to_the_control_without_signal(tmp_path):
    silent = simulate_nmedt(tmp_path / "snr0", seed=3, preset="smoke", layouts=["cleaned"], snr=0.0, progress=False, **SMALL)
    result = envelope_decoding(silent, layout="cleaned")
    print(f"SNR 0: r = {result['r_true']:.3f}, control r = {result['r_control']:.3f}")
    assert abs(result["r_true"]) < 0.15
    assert abs(result["r_true"] - result["r_control"]) < 0.15


def test_envelope_decoding_works_on_the_raw_layout(smoke):
    result = envelope_decoding(smoke, layout="raw", subjects=[2, 3])
    assert result["layout"] == "raw" and result["r_true"] > result["r_control"] + 0.2
