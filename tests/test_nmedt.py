"""The NMED-T readers, on files written the way other tools write them (see fixtures_nmedt.py)."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pymatreader
import pytest
import scipy.io
from fixtures_nmedt import (
    SONG_SECONDS,
    WAV_NAMES,
    make_nmedt_folder,
    song_triggers,
    write_cleaned_song,
    write_raw_recording,
    write_wav,
)

from eeg2music.data.matfile import write_mat_v73
from eeg2music.data.nmedt import (
    SONGS,
    SUBJECT_IDS,
    NMEDTError,
    channel_names,
    cleaned_channel_names,
    hydrocel_montage,
    parse_subject,
    raw_channel_names,
    read_stimulus,
    scan_nmedt,
    subject_label,
)
from eeg2music.data.recordings import (
    count_recordings,
    iter_recordings,
    open_raw,
    read_raw_events,
    read_recording,
    recording_info,
    song_onsets,
)


@pytest.fixture(scope="module")
def both_layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("nmedt_both")
    # stimuli as long as their songs (the song's length is its WAV's), at a low rate to keep them small
    return make_nmedt_folder(root, layouts=("cleaned", "raw"), songs=(21, 22, 23), subjects=(2, 3), stimuli=True,
                             stimuli_seconds=None, stimuli_sr=8000)


# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------


def test_songs_and_subjects_follow_the_dataset():
    assert sorted(SONGS) == list(range(21, 31))
    assert SONGS[21].title == "First Fires" and SONGS[21].bpm == pytest.approx(55.97)
    assert SONGS[30].wav_name == "TheLastThingYouShouldDo.wav"
    assert {s: SONGS[s].duration_s for s in SONGS} == {s: float(v) for s, v in SONG_SECONDS.items()}
    assert len(SUBJECT_IDS) == 20 and 18 not in SUBJECT_IDS and 22 not in SUBJECT_IDS
    assert SUBJECT_IDS[0] == 2 and SUBJECT_IDS[-1] == 23
    with pytest.raises(dataclasses_error()):
        SONGS[21].bpm = 1.0  # frozen


def dataclasses_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_channel_names_match_the_hydrocel_montage():
    cleaned, raw = cleaned_channel_names(), raw_channel_names()
    assert len(cleaned) == 125 and cleaned[:2] == ["E1", "E2"] and cleaned[-2:] == ["E124", "Cz"]
    assert len(raw) == 129 and raw[-2:] == ["E128", "Cz"]
    montage = hydrocel_montage()
    assert set(raw) <= set(montage.ch_names)
    with pytest.raises(ValueError, match="127"):
        channel_names(127)


def test_subject_ids_are_read_from_labels():
    assert [parse_subject(v) for v in ("P02", "02", 2, 2.0, "S23", np.array(["P07"]))] == [2, 2, 2, 2, 23, 7]
    assert subject_label(2) == "P02"
    with pytest.raises(ValueError):
        parse_subject("P2_3")


# ---------------------------------------------------------------------------------------------
# Reading both layouts
# ---------------------------------------------------------------------------------------------


def test_scan_finds_both_layouts_and_stimuli(both_layouts):
    folder = scan_nmedt(both_layouts.root)
    assert folder.layouts == ("cleaned", "raw")
    assert sorted(folder.cleaned) == [21, 22, 23]
    assert sorted(folder.raw) == [(2, 1), (2, 2), (3, 1), (3, 2)]
    assert folder.default_layout == "cleaned" and folder.resolve_layout("auto") == "cleaned"
    assert sorted(folder.stimuli) == [21, 22, 23] and folder.stimuli_dir == both_layouts.root / "stimuli"
    assert not folder.simulated and folder.songs == SONGS


def test_cleaned_recordings_are_volts_with_names_montage_and_metadata(both_layouts):
    folder = scan_nmedt(both_layouts.root)
    raws = list(iter_recordings(folder, "cleaned"))
    assert len(raws) == count_recordings(folder, "cleaned") == 6
    for raw in raws:
        info = recording_info(raw)
        assert info["layout"] == "cleaned" and info["onset_sample"] is None
        assert info["source"].endswith(f"song{info['song']}_Imputed.mat")
        expected = both_layouts.cleaned[(info["subject"], info["song"])]
        np.testing.assert_allclose(raw.get_data(), expected * 1e-6, rtol=1e-12)
        assert raw.ch_names == cleaned_channel_names()
        assert raw.info["sfreq"] == both_layouts.cleaned_fs
        assert raw.get_montage() is not None
        assert raw.info["subject_info"]["his_id"] == subject_label(info["subject"])
        assert set(raw.get_channel_types()) == {"eeg"}


def test_raw_recordings_are_cut_at_the_128_trigger_minus_one_second(both_layouts):
    folder = scan_nmedt(both_layouts.root)
    raws = list(iter_recordings(folder, "raw"))
    assert len(raws) == count_recordings(folder, "raw") == 6
    for raw in raws:
        info = recording_info(raw)
        key = (info["subject"], info["song"])
        assert info["onset_sample"] == both_layouts.onsets[key]
        np.testing.assert_allclose(raw.get_data(), both_layouts.raw[key] * 1e-6, rtol=1e-12)
        assert raw.ch_names == raw_channel_names() and raw.info["sfreq"] == both_layouts.raw_fs
        assert raw.n_times == int(SONG_SECONDS[info["song"]] * both_layouts.raw_fs)
        assert np.all(raw.get_data(picks=["Cz"]) == 0)


def test_song_onsets_and_events_of_a_raw_file(both_layouts):
    path = both_layouts.raw_files[(2, 1)]
    events = read_raw_events(path)
    assert [e.code for e in events] == [99, 21, 128, 99, 22, 128]
    assert song_onsets(path) == {21: both_layouts.onsets[(2, 21)], 22: both_layouts.onsets[(2, 22)]}


def test_raw_reading_streams_only_the_song(both_layouts, monkeypatch):
    """Memory stays flat on 1.5 GB recordings: X is read by song-sized HDF5 slices, never whole."""
    requests = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        if self.name == "/X":
            requests.append(key)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    raw = read_recording(both_layouts.root, subject=2, song=22, layout="raw")
    song_samples = int(SONG_SECONDS[22] * both_layouts.raw_fs)
    assert raw.n_times == song_samples
    assert len(requests) == 1
    rows = requests[0][0]
    assert isinstance(rows, slice) and rows.stop - rows.start == song_samples


@pytest.mark.parametrize("storage", [
    {"chunks": (64, 129)},  # blocks of whole chunks, a partial chunk at each end of the song
    {"chunks": (64, 129), "compression": "gzip"},  # MATLAB's save -v7.3 compresses
    {"chunks": None},  # contiguous
    {"chunks": (129, 50), "transpose": False},  # electrodes × time, as a non-MATLAB tool might store it
    {"chunks": (64, 129), "dtype": "single"},
])
def test_raw_blocks_stream_exactly_the_segment(tmp_path, monkeypatch, storage):
    """The cache's reader streams a song block by block: the blocks tile the segment, value for value."""
    from fixtures_nmedt import song_triggers, write_raw_recording

    monkeypatch.setattr("eeg2music.data.recordings.STREAM_BLOCK_BYTES", 3 * 64 * 129 * 8)  # several blocks in a short song
    rng = np.random.default_rng(5)
    X = rng.normal(0.0, 30.0, size=(129, 2000))
    path = write_raw_recording(tmp_path / "02_1_raw.mat", X, 100.0, song_triggers({21: 150}, 100.0), **storage)
    raw_file = open_raw(path)
    try:
        start, stop = 101, 1937  # neither on a chunk edge
        whole = raw_file.segment(start, stop)
        pieces, expected_offset = [], 0
        for offset, block in raw_file.blocks(start, stop):
            assert offset == expected_offset and block.shape[0] == 129 and block.dtype == np.float64
            pieces.append(block.copy())  # a block is valid until the next is asked for
            expected_offset += block.shape[1]
        assert len(pieces) > 1
        np.testing.assert_array_equal(np.concatenate(pieces, axis=1), whole)
        np.testing.assert_array_equal(whole, X[:, start:stop].astype(np.float32 if storage.get("dtype") else np.float64))
    finally:
        raw_file.close()


def test_selection_by_song_and_subject_and_read_recording(both_layouts):
    folder = scan_nmedt(both_layouts.root)
    for layout in ("cleaned", "raw"):
        raws = list(iter_recordings(folder, layout, songs=[22], subjects=[3]))
        assert [(recording_info(r)["subject"], recording_info(r)["song"]) for r in raws] == [(3, 22)]
        assert count_recordings(folder, layout, songs=[22, 23], subjects=3) == 2
    raw = read_recording(folder, 2, 23, layout="raw")
    assert recording_info(raw)["onset_sample"] == both_layouts.onsets[(2, 23)]
    with pytest.raises(ValueError, match="not NMED-T songs"):
        list(iter_recordings(folder, "cleaned", songs=[31]))


def test_read_stimulus_resamples_to_mono_float32(both_layouts):
    audio = read_stimulus(both_layouts.root, 22, sr=16000)
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) == SONG_SECONDS[22] * 16000
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * 16000 / len(audio) == pytest.approx(220.0, abs=1.0)  # the fixture's 2 × 110 Hz tone


def test_stimuli_in_a_sibling_folder_and_the_missing_wav_error(tmp_path):
    root = tmp_path / "nmedt"
    make_nmedt_folder(root, layouts=("cleaned",), songs=(21, 22), subjects=(2,))
    sibling = tmp_path / "nmedt_audio"
    write_wav(sibling / WAV_NAMES[21], np.zeros(4410), 44100)
    folder = scan_nmedt(root, stimuli_dir=sibling)
    assert folder.stimuli == {21: sibling / WAV_NAMES[21]}
    assert len(read_stimulus(folder, 21, sr=16000)) == 1600
    with pytest.raises(FileNotFoundError) as err:
        read_stimulus(folder, 22)
    message = str(err.value)
    assert "Oino.wav" in message and str(sibling) in message and str(root) in message
    with pytest.raises(FileNotFoundError, match="stimuli_dir"):
        scan_nmedt(root, stimuli_dir=tmp_path / "nowhere")


def test_a_single_layout_folder_and_layout_errors(tmp_path):
    make_nmedt_folder(tmp_path, layouts=("raw",), songs=(24,), subjects=(5,))
    folder = scan_nmedt(tmp_path)
    assert folder.layouts == ("raw",) and folder.resolve_layout("auto") == "raw"
    assert [recording_info(r)["song"] for r in iter_recordings(folder, "auto")] == [24]
    with pytest.raises(FileNotFoundError, match="no cleaned NMED-T files"):
        list(iter_recordings(folder, "cleaned"))
    with pytest.raises(ValueError, match="layout"):
        folder.resolve_layout("bids")


def test_hdf5_cleaned_files_and_the_v73_writer(tmp_path):
    """A cleaned file saved with -v7.3 reads like the v5 one; pymatreader reads the writer's files."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(125, int(SONG_SECONDS[25] * 4), 2))
    subs = np.array([["P04", "P11"]], dtype=object)
    path = write_mat_v73(tmp_path / "song25_Imputed.mat", {"data25": data, "subs25": subs, "fs": 4.0})
    with pytest.raises(NotImplementedError):  # scipy recognises MATLAB's v7.3 header and declines
        scipy.io.loadmat(path)
    assert pymatreader.read_mat(path)["subs25"] == ["P04", "P11"]
    np.testing.assert_allclose(pymatreader.read_mat(path)["data25"], data)
    raws = list(iter_recordings(tmp_path, "cleaned"))
    assert [recording_info(r)["subject"] for r in raws] == [4, 11]
    np.testing.assert_allclose(raws[1].get_data(), data[:, :, 1] * 1e-6)


def test_fixture_raw_files_read_with_pymatreader(both_layouts):
    """The fixture writer lays files out as MATLAB does: an independent reader agrees."""
    contents = pymatreader.read_mat(both_layouts.raw_files[(3, 2)])
    assert contents["fs"] == both_layouts.raw_fs and contents["X"].shape[0] == 129
    assert contents["DIN_1"][0] == "D99" and contents["DIN_1"][4] == "D23"


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error naming the file and what is wrong
# ---------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_nmedt(tmp_path / "absent")


def test_empty_folder(tmp_path):
    (tmp_path / "notes.mat").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no NMED-T files.*song21_Imputed\.mat.*02_1_raw\.mat.*notes\.mat"):
        scan_nmedt(tmp_path)


def _cleaned(tmp_path, data=None, subjects=(2, 3), fs=4.0, song=21, **kwargs):
    data = np.random.default_rng(1).normal(size=(125, int(SONG_SECONDS[song] * fs), len(subjects))) if data is None else data
    return write_cleaned_song(tmp_path / f"song{song}_Imputed.mat", song, data, subjects, fs, **kwargs)


def test_cleaned_file_without_the_expected_variables(tmp_path):
    path = _cleaned(tmp_path, omit=("subs21",), extra={"notes": np.array([[1.0]])})
    with pytest.raises(NMEDTError) as err:
        list(iter_recordings(tmp_path))
    assert str(path) in str(err.value) and "subs21" in str(err.value) and "notes" in str(err.value)


def test_raw_file_without_the_expected_variables(tmp_path):
    path = write_raw_recording(tmp_path / "02_1_raw.mat", np.zeros((129, 100)), 20.0, [], omit=("DIN_1",))
    with pytest.raises(NMEDTError, match="DIN_1") as err:
        list(iter_recordings(tmp_path, "raw"))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("shape", [(125, 1112), (125, 1112, 2, 1), (124, 1112, 2)])
def test_cleaned_data_of_the_wrong_rank_or_size(tmp_path, shape):
    path = _cleaned(tmp_path, data=np.zeros(shape))
    with pytest.raises(NMEDTError, match=r"data21") as err:
        list(iter_recordings(tmp_path))
    assert str(path) in str(err.value) and str(shape) in str(err.value)


def test_one_participant_file_may_drop_the_singleton_dimension(tmp_path):
    # MATLAB saves 125 × T × 1 as 125 × T
    _cleaned(tmp_path, data=np.ones((125, int(SONG_SECONDS[21] * 4))), subjects=(9,))
    (raw,) = iter_recordings(tmp_path)
    assert recording_info(raw)["subject"] == 9


def test_raw_data_of_the_wrong_rank(tmp_path):
    path = tmp_path / "02_1_raw.mat"
    write_raw_recording(path, np.zeros((129, 100)), 20.0, [("D21", 10), ("D128", 30)])
    with h5py.File(path, "r+") as handle:
        del handle["X"]
        handle.create_dataset("X", data=np.zeros((2, 100, 129)))
    with pytest.raises(NMEDTError, match=r"X should be a 2-D array") as err:
        list(iter_recordings(tmp_path, "raw"))
    assert str(path) in str(err.value)


def test_truncated_cleaned_file(tmp_path):
    path = _cleaned(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(NMEDTError, match="truncated") as err:
        list(iter_recordings(tmp_path))
    assert str(path) in str(err.value)


def test_truncated_raw_file(tmp_path):
    fixture = make_nmedt_folder(tmp_path, layouts=("raw",), songs=(21,), subjects=(2,))
    path = fixture.raw_files[(2, 1)]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(NMEDTError, match="truncated") as err:
        list(iter_recordings(tmp_path, "raw"))
    assert str(path) in str(err.value)


def test_nan_filled_cleaned_data(tmp_path):
    data = np.random.default_rng(2).normal(size=(125, int(SONG_SECONDS[21] * 4), 2))
    data[:, :, 1] = np.nan
    path = _cleaned(tmp_path, data=data)
    with pytest.raises(NMEDTError, match=r"participant 3.*NaN") as err:
        list(iter_recordings(tmp_path))
    assert str(path) in str(err.value)


def test_nan_filled_raw_data(tmp_path):
    X = np.full((129, 2000), np.nan)
    path = write_raw_recording(tmp_path / "02_1_raw.mat", X, 4.0, song_triggers({21: 10}, 4.0))
    with pytest.raises(NMEDTError, match="NaN") as err:
        list(iter_recordings(tmp_path, "raw"))
    assert str(path) in str(err.value)


def test_cleaned_fs_disagreeing_with_the_data(tmp_path):
    # 278 s of song 21 at 4 Hz, but the file claims 125 Hz: the data would last 8.9 s
    path = _cleaned(tmp_path, fs=4.0)
    contents = scipy.io.loadmat(path)
    scipy.io.savemat(path, {"data21": contents["data21"], "subs21": contents["subs21"], "fs": np.array([[125.0]])})
    with pytest.raises(NMEDTError, match=r"fs = 125 Hz.*song 21 lasts 278 s") as err:
        list(iter_recordings(tmp_path))
    assert str(path) in str(err.value)


def test_raw_fs_disagreeing_with_the_data(tmp_path):
    # recorded at 4 Hz (songs 21 and 22 with a 10-sample gap), but fs says 8 Hz: the songs overlap / overrun
    onsets = {21: 10, 22: 10 + 278 * 4 + 10}
    X = np.zeros((129, onsets[22] + 271 * 4 + 10))
    path = write_raw_recording(tmp_path / "02_1_raw.mat", X, 8.0, song_triggers(onsets, 4.0))
    with pytest.raises(NMEDTError, match="fs disagrees with the data") as err:
        list(iter_recordings(tmp_path, "raw"))
    assert str(path) in str(err.value)


def test_song_trigger_without_a_following_128(tmp_path):
    X = np.zeros((129, 300 * 4))
    path = write_raw_recording(tmp_path / "02_1_raw.mat", X, 4.0, [("D99", 5), ("D21", 10), ("D99", 20)])
    with pytest.raises(NMEDTError, match=r"'D21' \(song 21\).*no following 128") as err:
        list(iter_recordings(tmp_path, "raw"))
    assert str(path) in str(err.value)


def test_one_missing_song_warns_and_reads_the_rest(both_layouts):
    folder = scan_nmedt(both_layouts.root)
    with pytest.warns(UserWarning, match=r"song\(s\) \[25\].*song25_Imputed\.mat"):
        raws = list(iter_recordings(folder, "cleaned", songs=[21, 25], subjects=[2]))
    assert [recording_info(r)["song"] for r in raws] == [21]
    with pytest.warns(UserWarning, match=r"song\(s\) \[25\]"):
        raws = list(iter_recordings(folder, "raw", songs=[25, 22], subjects=[3]))
    assert [recording_info(r)["song"] for r in raws] == [22]
    with pytest.warns(UserWarning, match=r"participant\(s\) \[7\]"):
        assert len(list(iter_recordings(folder, "cleaned", songs=[21], subjects=[2, 7]))) == 1


def test_a_complete_folder_reads_without_warnings(both_layouts):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(iter_recordings(both_layouts.root, "raw", songs=[21]))) == 2


# ---------------------------------------------------------------------------------------------
# Notebook 01 on folders written by other tools
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["raw", "cleaned"])
def test_notebook_01_explores_a_folder_written_by_other_tools(layout, tmp_path):
    """`papermill 01_explore_data.ipynb -p data_root <folder>` on either layout (raw with its WAVs,
    cleaned without any audio): the summary names the format, rate, channels, participants, songs and,
    for raw files, every song's onset sample."""
    import json

    from conftest import run_notebook

    layouts = ("cleaned", "raw") if layout == "raw" else ("cleaned",)
    fixture = make_nmedt_folder(tmp_path / "nmedt", layouts=layouts, songs=(21, 22), subjects=(2, 3),
                                cleaned_fs=25.0, raw_fs=50.0, stimuli=layout == "raw", stimuli_seconds=20.0)
    run_notebook("01_explore_data", tmp_path / "run", data_root=str(fixture.root), layout=layout,
                 out_dir=str(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "dataset_summary.json").read_text())
    assert summary["format"] == layout and summary["subjects"] == [2, 3]
    assert [s["id"] for s in summary["songs"]] == [21, 22] and summary["songs"][1]["duration_s"] == 271.0
    assert summary["fs"] == (50.0 if layout == "raw" else 25.0) and summary["n_channels"] == (129 if layout == "raw" else 125)
    if layout == "raw":
        onsets = {(r["subject"], int(song)): sample for r in summary["recordings"] for song, sample in r["onset_samples"].items()}
        assert onsets == fixture.onsets
        assert (tmp_path / "out" / "onset_erp.png").is_file()
    assert (tmp_path / "out" / "montage.png").is_file() and (tmp_path / "out" / "eeg_and_music.png").is_file()


def test_all_nan_channel_is_passed_on_by_name(tmp_path):
    """A whole missing channel is a bad channel for preprocessing to handle, not a broken file."""
    data = np.random.default_rng(3).normal(size=(125, int(SONG_SECONDS[21] * 4), 2))
    data[4, :, 0] = np.nan  # E5 of participant 2
    _cleaned(tmp_path, data=data)
    with pytest.warns(UserWarning, match=r"\['E5'\].*all NaN"):
        raws = list(iter_recordings(tmp_path))
    assert np.isnan(raws[0].get_data(picks=["E5"])).all() and np.isfinite(raws[1].get_data()).all()


def test_scattered_nan_names_the_channel(tmp_path):
    data = np.random.default_rng(4).normal(size=(125, int(SONG_SECONDS[21] * 4), 2))
    data[6, 10:20, 1] = np.nan
    _cleaned(tmp_path, data=data)
    with pytest.raises(NMEDTError, match=r"scattered in channel\(s\) \['E7'\]"):
        list(iter_recordings(tmp_path))
