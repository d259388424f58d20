"""How much song information do the EEG windows carry? A linear decoder's song identification.

A ceiling check for notebook 06's song-ID: a generator conditioned on EEG can hardly name the song more
often than a plain linear classifier trained on the same windows. Features per window: the EEG averaged
in blocks of 8 samples (every channel) and the channel-averaged amplitude spectrum (bins 1–59); then
standardisation, PCA (200 components) and logistic regression, trained on the training windows of
notebook 02's splits and scored on its test windows (chance: 1 / number of songs).

Usage (after notebook 02, e.g. after ``make demo``)::

    python benchmarks/linear_song_id.py [--stage outputs/02_preprocess] [--C 0.01 0.1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def window_features(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(features, song) of every window of a split."""
    features, songs = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        eeg = np.asarray(item["eeg"], dtype=np.float64)
        usable = eeg.shape[1] // 8 * 8
        blocks = eeg[:, :usable].reshape(eeg.shape[0], -1, 8).mean(axis=-1)
        spectrum = np.abs(np.fft.rfft(eeg, axis=1))[:, 1:60].mean(axis=0)
        features.append(np.concatenate([blocks.ravel(), spectrum]))
        songs.append(int(item["song"]))
    return np.asarray(features), np.asarray(songs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="outputs/02_preprocess", help="notebook 02's out_dir")
    parser.add_argument("--C", type=float, nargs="+", default=[0.01, 0.1], help="inverse regularisation strengths")
    args = parser.parse_args(argv)

    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from eeg2music.data.pairing import load_stage_windows

    splits = load_stage_windows(Path(args.stage).resolve(), stimuli=False, verbose=False)
    x_train, y_train = window_features(splits["train"])
    x_test, y_test = window_features(splits["test"])
    chance = 1.0 / len(np.unique(y_train))
    print(f"{len(y_train)} training and {len(y_test)} test windows, {x_train.shape[1]} features; chance {chance:.3f}")
    for c in args.C:
        model = make_pipeline(StandardScaler(), PCA(min(200, len(y_train) - 1), random_state=0),
                              LogisticRegression(C=c, max_iter=2000))
        model.fit(x_train, y_train)
        print(f"C = {c:g}: train accuracy {model.score(x_train, y_train):.3f}, "
              f"test song-ID {model.score(x_test, y_test):.3f}")


if __name__ == "__main__":
    main()
