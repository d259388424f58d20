"""eeg2music.data.windows: window arithmetic, split disjointness, LOSO, dropped windows, the Dataset."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_nmedt import WAV_NAMES, make_nmedt_folder, write_wav

from eeg2music.data.cache import CachedRecording, CacheIndex, build_cache
from eeg2music.data.pairing import (
    load_stage_windows,
    load_windows,
    write_preprocess_summary,
)
from eeg2music.data.preprocessing import Preprocessing
from eeg2music.data.windows import (
    MIN_TEST_CHUNKS,
    EEGMusicWindows,
    WindowSpec,
    chunk_start_sample,
    make_splits,
    window_samples,
)
from eeg2music.utils import write_json


def synthetic_index(
    path: Path,
    subjects=(2, 3, 4),
    songs=(21, 22, 23),
    seconds: float | dict = 35.0,
    sfreq: float = 20.0,
    n_channels: int = 3,
    excluded=(),
) -> CacheIndex:
    """A cache whose every sample says where it is: value = 10000·channel + sample + 0.25·subject."""
    path.mkdir(parents=True, exist_ok=True)
    names = [f"E{i}" for i in range(1, n_channels + 1)]
    recordings = []
    for song in songs:
        length = seconds[song] if isinstance(seconds, dict) else seconds
        n = int(round(length * sfreq))
        for subject in subjects:
            data = (10000.0 * np.arange(n_channels)[:, None] + np.arange(n)[None, :] + 0.25 * subject).astype(np.float32)
            file = f"sub-{subject:02d}_song-{song}.npy"
            np.save(path / file, data)
            recordings.append(CachedRecording(subject, song, file, n))
    index = CacheIndex(
        path=path, key="test", preprocessing=Preprocessing(), layout="cleaned", data_root="", sfreq=sfreq,
        units="IQR", stored_channels=tuple(names), excluded_channels=tuple(excluded), subjects=tuple(sorted(subjects)),
        songs=tuple(sorted(songs)), recordings=tuple(recordings),
    )
    write_json(path / "index.json", index.to_dict())
    return index


def test_window_samples():
    assert window_samples(125.0, 3.5) == 438
    assert window_samples(1000.0, 3.5) == 3500
    assert window_samples(16000, 3.5) == 56000
    assert WindowSpec().clip_samples == 56000
    spec = WindowSpec(lag_seconds=0.2)
    assert [chunk_start_sample(c, 125.0, spec) for c in range(3)] == [25, 463, 900]  # 25, 462.5→463, 900


@pytest.mark.parametrize(
    "kwargs, field",
    [({"clip_seconds": 0.0}, "clip_seconds"), ({"val_fraction": 1.0}, "val_fraction"), ({"test_chunks": -1}, "test_chunks"),
     ({"gap_chunks": 0.5}, "gap_chunks"), ({"lag_seconds": float("nan")}, "lag_seconds")],
)
def test_bad_window_spec_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        WindowSpec(**kwargs)


def test_two_test_chunks_per_song_where_the_song_can_spare_them():
    """One test chunk per song makes segment-ID the same measure as song-ID; two make them differ."""
    spec = WindowSpec()
    assert MIN_TEST_CHUNKS == 2
    assert spec.chunks_per_split(12) == {"train": 7, "val": 1, "test": 2, "gaps": 2}  # the simulator's 45 s songs
    assert spec.chunks_per_split(77)["test"] == 8  # NMED-T's 4.5 min: the fraction decides
    assert spec.chunks_per_split(6)["test"] == 2 and spec.chunks_per_split(6)["train"] == 1
    assert spec.chunks_per_split(5) == {"train": 1, "val": 1, "test": 1, "gaps": 2}  # no room for two
    assert WindowSpec(test_chunks=1).chunks_per_split(12)["test"] == 1  # an exact count wins
    assert WindowSpec(test_fraction=0.0).chunks_per_split(12)["test"] == 0


def test_splits_are_disjoint_with_a_gap(tmp_path):
    index = synthetic_index(tmp_path, seconds={21: 35.0, 22: 70.0, 23: 105.0})
    splits = make_splits(index, WindowSpec(), verbose=False)
    assert set(splits) == {"train", "val", "test", "ood"}
    for song in (22, 23):
        chunk_sets = {name: {r.chunk for r in refs if r.song == song} for name, refs in splits.items()}
        assert not chunk_sets["ood"]
        for a in ("train", "val", "test"):
            for b in ("train", "val", "test"):
                if a < b:
                    assert not chunk_sets[a] & chunk_sets[b], (song, a, b)
                    # at least one unused chunk between any two splits
                    assert min(abs(x - y) for x in chunk_sets[a] for y in chunk_sets[b]) >= 2
    # 70 s → 20 chunks: 2 val, 2 test, 2 gaps → 14 train
    assert splits.chunk_ranges[22] == {"train": range(0, 14), "val": range(15, 17), "test": range(18, 20)}
    # the EEG samples of windows in different splits never overlap (same subject and song)
    length = window_samples(index.sfreq, 3.5)
    spans = {name: {(r.subject, r.song, s) for r in refs for s in range(r.start, r.start + length)} for name, refs in splits.items()}
    assert not spans["train"] & spans["val"] and not spans["val"] & spans["test"] and not spans["train"] & spans["test"]


def test_ood_song_is_whole_and_only_in_ood(tmp_path):
    index = synthetic_index(tmp_path)
    splits = make_splits(index, WindowSpec(ood_song=22, val_chunks=1, test_chunks=1), verbose=False)
    assert {r.song for r in splits["ood"]} == {22}
    assert all(r.song != 22 for name in ("train", "val", "test") for r in splits[name])
    assert len(splits["ood"]) == 3 * 10  # 3 subjects × all 10 chunks of 35 s
    no_ood = make_splits(index, WindowSpec(ood_song=None, val_chunks=1, test_chunks=1), verbose=False)
    assert "ood" not in no_ood and {r.song for r in no_ood["train"]} == {21, 22, 23}


def test_counts_follow_the_spec(tmp_path):
    index = synthetic_index(tmp_path, seconds=35.0)  # 10 chunks per song
    splits = make_splits(index, WindowSpec(val_chunks=2, test_chunks=3, gap_chunks=1), verbose=False)
    # per training song: 10 − 2 − 3 − 2 gaps = 3 train chunks; × 3 subjects × 2 training songs
    assert splits.counts() == {"train": 18, "val": 12, "test": 18, "ood": 30}
    assert splits.summary()["chunk_ranges"]["22"] == {"train": [0, 3], "val": [4, 6], "test": [7, 10]}
    assert splits.split_of_chunk(22, 3) is None and splits.split_of_chunk(22, 9) == "test"
    copied = pickle.loads(pickle.dumps(splits))
    assert copied == splits and copied.chunk_ranges == splits.chunk_ranges and copied.spec == splits.spec


def test_leave_one_subject_out(tmp_path):
    index = synthetic_index(tmp_path)
    splits = make_splits(index, WindowSpec(val_chunks=1, test_chunks=1), loso_subject=3, verbose=False)
    assert {r.subject for r in splits["train"]} == {2, 4} and {r.subject for r in splits["val"]} == {2, 4}
    assert {r.subject for r in splits["test"]} == {3} and {r.subject for r in splits["ood"]} == {3}
    normal = make_splits(index, WindowSpec(val_chunks=1, test_chunks=1), verbose=False)
    # the held-out subject is tested on the same unseen chunks as everyone else
    assert {(r.song, r.chunk) for r in splits["test"]} == {(r.song, r.chunk) for r in normal["test"]}
    with pytest.raises(ValueError, match="loso_subject 9"):
        make_splits(index, WindowSpec(), loso_subject=9)


def test_windows_past_the_end_are_dropped_and_counted(tmp_path, capsys):
    index = synthetic_index(tmp_path, seconds=35.0)  # exactly 10 chunks: the last window has no slack
    splits = make_splits(index, WindowSpec(val_chunks=1, test_chunks=2, lag_seconds=0.3))
    # the last chunk of every recording: test (2 training songs × 3 subjects) and ood (3 subjects)
    assert splits.dropped == {"train": 0, "val": 0, "test": 6, "ood": 3}
    assert "dropped 9 window(s)" in capsys.readouterr().out
    assert all(r.chunk != 9 for r in splits["test"] + splits["ood"])
    early = make_splits(index, WindowSpec(val_chunks=1, test_chunks=2, lag_seconds=-0.3), verbose=False)
    assert early.dropped["train"] == 6 and early.dropped["ood"] == 3  # chunk 0 would start before the recording
    # shorter recordings of one subject: only theirs are dropped
    index_short = synthetic_index(tmp_path / "short", seconds=35.0)
    shorter = [CachedRecording(e.subject, e.song, e.file, e.n_samples - 80 if e.subject == 4 else e.n_samples)
               for e in index_short.recordings]
    import dataclasses
    index_short = dataclasses.replace(index_short, recordings=tuple(shorter))
    splits = make_splits(index_short, WindowSpec(val_chunks=1, test_chunks=2), verbose=False)
    assert splits.dropped["test"] == 2 * 2 and splits.dropped["ood"] == 2  # 80 samples = 4 s = 2 chunks


def test_a_split_that_would_be_empty_is_an_error(tmp_path):
    index = synthetic_index(tmp_path, seconds={21: 35.0, 22: 35.0, 23: 10.0})  # song 23: 2 chunks
    with pytest.raises(ValueError, match=r"song 23: 2 chunks.*1 val \+ 1 test \+ 2 gap"):
        make_splits(index, WindowSpec())


def test_empty_split_after_dropping_is_an_error(tmp_path):
    index = synthetic_index(tmp_path, seconds=3.6, songs=(22, 23))  # 3 chunks of 1.2 s, last one has 0 s slack
    spec = WindowSpec(clip_seconds=1.2, val_chunks=1, test_chunks=1, gap_chunks=0, ood_song=None, lag_seconds=0.25)
    with pytest.raises(ValueError, match=r"split 'test' has no window: songs \[22, 23\].*6 window\(s\) ran past"):
        make_splits(index, spec, verbose=False)


def test_unknown_ood_song_is_an_error(tmp_path):
    index = synthetic_index(tmp_path, songs=(22, 23))
    with pytest.raises(ValueError, match="ood_song 21 is not in the cache"):
        make_splits(index, WindowSpec())


def test_dataset_items(tmp_path):
    index = synthetic_index(tmp_path, seconds=36.0, sfreq=20.0)  # 10 chunks and 1 s of slack for the lag
    splits = make_splits(index, WindowSpec(val_chunks=1, test_chunks=1, lag_seconds=0.1), verbose=False)
    audio = {song: np.arange(40 * 16000, dtype=np.float32) + song * 1e7 for song in index.songs}
    dataset = EEGMusicWindows(index, splits["train"], splits.spec, audio=audio, name="train")
    item = dataset[5]
    ref = splits["train"][5]
    assert item["eeg"].dtype == torch.float32 and tuple(item["eeg"].shape) == (3, 70)
    assert item["subject"] == index.subjects.index(ref.subject) and (item["song"], item["chunk"]) == (ref.song, ref.chunk)
    start = round((ref.chunk * 3.5 + 0.1) * 20)
    np.testing.assert_array_equal(item["eeg"][0].numpy(), np.arange(start, start + 70) + 0.25 * ref.subject)
    np.testing.assert_array_equal(item["eeg"][2].numpy(), 20000 + np.arange(start, start + 70) + 0.25 * ref.subject)
    assert item["audio"].shape == (56000,)
    np.testing.assert_array_equal(item["audio"].numpy(), audio[ref.song][ref.chunk * 56000 : (ref.chunk + 1) * 56000])
    assert len(dataset.clips()) == len({(r.song, r.chunk) for r in splits["train"]}) == 2 * 6

    eeg_only = dataset.eeg_only()
    assert set(eeg_only[0]) == {"eeg", "subject", "song", "chunk"}
    latents = {pair: np.full((8, 88, 16), pair[1], dtype=np.float32) for pair in dataset.clips()}
    with_latents = dataset.with_latents(latents)
    assert "audio" not in with_latents[5] and float(with_latents[5]["latent"][0, 0, 0]) == ref.chunk
    with pytest.raises(KeyError, match="lacks 1"):
        dataset.with_latents(dict(list(latents.items())[1:]))

    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["eeg"].shape == (4, 3, 70) and batch["audio"].shape == (4, 56000) and batch["subject"].shape == (4,)

    dataset.eeg(0)  # opens a memory map
    assert dataset._arrays
    restored = pickle.loads(pickle.dumps(dataset))
    assert not restored._arrays and torch.equal(restored[5]["eeg"], item["eeg"])


def test_dataset_refuses_audio_too_short(tmp_path):
    index = synthetic_index(tmp_path)
    splits = make_splits(index, WindowSpec(val_chunks=1, test_chunks=1), verbose=False)
    short = {song: np.zeros(20 * 16000, dtype=np.float32) for song in index.songs}
    with pytest.raises(ValueError, match="too short for chunk"):
        EEGMusicWindows(index, splits["test"], splits.spec, audio=short, name="test")


def test_excluded_channels_are_left_out(tmp_path):
    index = synthetic_index(tmp_path, n_channels=4, excluded=("E2",))
    assert index.channel_names == ["E1", "E3", "E4"]
    splits = make_splits(index, WindowSpec(val_chunks=1, test_chunks=1), verbose=False)
    dataset = EEGMusicWindows(index, splits["val"], splits.spec)
    eeg = dataset[0]["eeg"].numpy()
    assert eeg.shape == (3, 70) and eeg[1, 0] // 10000 == 2  # E3 follows E1


def test_the_summary_rebuilds_the_same_splits(tmp_path):
    index = synthetic_index(tmp_path / "cache", seconds=36.0)
    spec = WindowSpec(lag_seconds=0.1, val_chunks=1, test_chunks=2, ood_song=22)
    song_seconds = {21: 30.0, 22: 36.0, 23: 33.0}  # e.g. the audio's lengths: they bound the chunks
    splits = make_splits(index, spec, loso_subject=4, song_seconds=song_seconds, verbose=False)
    write_preprocess_summary(tmp_path / "stage", index, splits, song_seconds=song_seconds, parameters={"lag_seconds": 0.1})
    datasets = load_stage_windows(tmp_path / "stage", verbose=False)
    assert {name: ds.windows for name, ds in datasets.items()} == dict(splits)
    assert datasets["train"].spec == spec and max(r.chunk for r in datasets["train"].windows if r.song == 21) < 8


def test_missing_summary_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="02_preprocess"):
        load_stage_windows(tmp_path)


# --- on real-format NMED-T files, with audio ---------------------------------------------------------


def test_load_windows_from_a_cache_with_stimuli(tmp_path):
    fixture = make_nmedt_folder(tmp_path / "nmedt", layouts=("cleaned",), songs=(21, 22, 23), subjects=(2, 3), cleaned_fs=10.0)
    sr = 16000  # the backbone rate: read_stimulus has nothing to resample (keeps the test fast)
    for song in (21, 22, 23):  # 40 s stimuli: shorter than the EEG, so the audio bounds the chunks
        write_wav(fixture.root / "stimuli" / WAV_NAMES[song], np.random.default_rng(song).uniform(-0.5, 0.5, 40 * sr), sr)
    index = build_cache(fixture.root, Preprocessing(), tmp_path / "cache", progress=False)
    spec = WindowSpec(val_chunks=1, test_chunks=1)
    datasets = load_windows(tmp_path / "cache", spec, stimuli=True, verbose=False)
    assert set(datasets) == {"train", "val", "test", "ood"}
    assert max(r.chunk for ds in datasets.values() for r in ds.windows) == 10  # 40 s of audio = 11 chunks
    item = datasets["train"][0]
    assert item["audio"].shape == (56000,) and item["eeg"].shape == (124, 35)
    np.testing.assert_array_equal(item["eeg"].numpy(), np.asarray(index.load(2, 22))[:, :35])
    eeg_only = load_windows(index, spec, verbose=False)
    assert "audio" not in eeg_only["train"][0] and max(r.chunk for r in eeg_only["ood"].windows) == 78
    loso = load_windows(index, spec, loso_subject=2, verbose=False)
    assert {r.subject for r in loso["test"].windows} == {2} and {r.subject for r in loso["train"].windows} == {3}
