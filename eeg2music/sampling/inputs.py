"""Notebook 05's inputs: the model folders, the backbone they share, the windows they were trained on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.cache import open_cache
from ..data.pairing import SUMMARY_FILE, load_stage_windows, load_windows
from ..data.windows import WindowSpec
from ..models.model_folder import (
    MODEL_CONFIG_NAME,
    MODEL_DIR_NAME,
    load_trained_model,
    register_unconditional,
)
from ..paths import stage_dir
from ..training.config import TrainConfig
from ..training.data import training_windows
from ..training.loop import train
from ..utils import read_json


def _run_settings(run: str) -> tuple[str, bool]:
    """``(model kind, subject_cond)`` of a default run name (``controlnet_subject`` → controlnet, True)."""
    kind, _, suffix = run.partition("_")
    if kind not in ("controlnet", "convnet", "unconditional") or suffix not in ("", "subject"):
        raise ValueError(
            f"parameter 'models': no model folder for run {run!r}, and it is not a default run name that can "
            f"be trained here (controlnet_subject, controlnet, convnet, convnet_subject, unconditional)"
        )
    if kind == "unconditional" and suffix:
        raise ValueError(f"parameter 'models': {run!r}: the unconditional model has no subject layer")
    return kind, suffix == "subject"


def ensure_models(
    runs: Sequence[str],
    train_dir: str | os.PathLike = "",
    *,
    backbone: str | os.PathLike = "",
    smoke: bool = False,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Load the model folder of every run; in the default run folder, train (or register) missing ones.

    Parameters
    ----------
    runs : sequence of str
        Run names (folders of ``train_dir``), e.g. :data:`~eeg2music.sampling.clips.DEFAULT_RUNS`.
    train_dir : path-like
        Notebook 04's output folder; ``""`` = the default run folder (``outputs/04_train``), where a
        missing default run is trained now with :func:`eeg2music.training.loop.train` at the size ``smoke``
        selects (the unconditional model is registered, it has nothing to train). A missing run in an
        explicit ``train_dir`` is an error: nothing is written into a folder the user chose.
    backbone : path-like
        Backbone folder for runs trained now (``""`` = the default tiny backbone).
    smoke, seed, device
        Passed to training.
    progress : bool
        Say what is reused and what is trained.

    Returns
    -------
    dict
        Run → :class:`eeg2music.train.TrainedModel`, in the order of ``runs``.
    """

    if not runs:
        raise ValueError("parameter 'models': empty; name at least one run (e.g. controlnet_subject)")
    if len(set(runs)) != len(runs):
        raise ValueError(f"parameter 'models': {list(runs)} names a run twice")
    say = print if progress else (lambda *a, **k: None)
    root = stage_dir("train", train_dir)
    default = train_dir in ("", None)
    models: dict[str, Any] = {}
    for run in runs:
        folder = root / run / MODEL_DIR_NAME
        if not (folder / MODEL_CONFIG_NAME).is_file():
            if not default:
                raise FileNotFoundError(
                    f"parameter 'train_dir': no model folder {folder} (no {MODEL_CONFIG_NAME}). Train it with notebook "
                    f"04 (out_dir={root}), or leave train_dir empty to use and complete the default run folder."
                )
            kind, subject_cond = _run_settings(run)
            if kind == "unconditional":
                data = next((m.config.get("data") for m in models.values() if m.config.get("data")), None)
                say(f"[sample] no {run!r} model in {root}: registering the unconditional backbone (nothing to train)")
                register_unconditional("", backbone, data=data, smoke=smoke)
            else:
                say(f"[sample] no {run!r} model in {root}: training it now (model={kind}, subject_cond={subject_cond}, "
                    f"smoke={smoke}) — notebook 04 does the same with its default parameters")
                config = TrainConfig.from_overrides({
                    "model": kind, "subject_cond": subject_cond, "backbone": str(backbone or ""), "smoke": smoke,
                    "seed": seed, "device": device, "run_name": run,
                })
                train(config, progress=progress)
        else:
            trained_smoke = (read_json(folder / MODEL_CONFIG_NAME).get("training") or {}).get("smoke")
            note = ""
            if trained_smoke is not None and bool(trained_smoke) != bool(smoke):
                note = f" (note: trained with smoke={trained_smoke}, this run has smoke={smoke})"
            say(f"[sample] using the {run!r} model in {folder}{note}")
        models[run] = load_trained_model(folder, device=device)
    return models


def check_models_agree(models: Mapping[str, Any], backbone: str | os.PathLike = "") -> tuple[str, dict[str, Any]]:
    """The backbone folder and data config shared by all models, checked.

    Every ControlNet is tied to the UNet it was trained on, and every model to the EEG channels,
    rate and subject order of its training cache, so models trained on different backbones or caches
    cannot be compared on one set of windows: that is an error naming the runs.

    Parameters
    ----------
    models : mapping run → TrainedModel
    backbone : path-like
        An explicit backbone folder (``""`` = the one the models record).

    Returns
    -------
    backbone_path : str
    data : dict
        The data config of the trained models (``cache_dir``, ``window_spec``, ``subjects``…);
        empty if only the unconditional model is sampled.
    """
    recorded = {run: str(Path(m.config.get("backbone", "")).resolve()) for run, m in models.items() if m.config.get("backbone")}
    distinct = sorted(set(recorded.values()))
    if len(distinct) > 1:
        raise ValueError(
            "the models were trained on different backbones: "
            + "; ".join(f"{run} → {path}" for run, path in recorded.items())
            + ". Sample models of one backbone together (parameter 'models')."
        )
    if backbone not in ("", None):
        chosen = str(Path(backbone).expanduser().resolve())
        if distinct and distinct[0] != chosen:
            print(f"[sample] warning: parameter 'backbone' {chosen} differs from the folder the models were "
                  f"trained with ({distinct[0]}); the ControlNets expect the UNet they were trained on")
    elif distinct:
        chosen = distinct[0]
    else:
        chosen = ""
    keys = ("cache_key", "sfreq", "channels", "subjects", "window_spec")
    data_configs = {run: m.config.get("data") or {} for run, m in models.items() if m.kind != "unconditional"}
    data_configs = {run: d for run, d in data_configs.items() if d}
    reference_run = next(iter(data_configs), None)
    for run, data in data_configs.items():
        different = [k for k in keys if data.get(k) != data_configs[reference_run].get(k)]
        if different:
            raise ValueError(
                f"runs {reference_run!r} and {run!r} were trained on different data ({', '.join(different)} differ); "
                f"sample models of one preprocessed cache together"
            )
    return chosen, dict(data_configs[reference_run]) if reference_run else {}


def sampling_datasets(
    data: Mapping[str, Any],
    *,
    run_dir: str | os.PathLike = "",
    data_root: str | os.PathLike = "",
    smoke: bool = False,
    seed: int = 0,
    splits: Sequence[str] = ("test", "ood"),
    progress: bool = True,
    stimuli_dir: str | os.PathLike = "",
) -> dict[str, Any]:
    """The windows to reconstruct, with their audio: the splits the models were trained with.

    Parameters
    ----------
    data : mapping
        The models' data config (:func:`check_models_agree`). Its cache, window spec (and, when
        recorded, held-out participant and song lengths) rebuild the training run's splits, which are
        then checked against the window counts it recorded. Empty (only the unconditional model):
        notebook 02's splits of ``run_dir`` (or of the default run folder).
    run_dir : path-like
        Notebook 02's output folder, to use its splits instead of the recorded ones.
    data_root : path-like
        NMED-T folder holding the stimuli WAVs (``""`` = the folder the cache was built from).
    smoke, seed
        For the default cache when nothing else names one.
    splits : sequence of str
        Splits to return.
    progress : bool
        Print what is used.
    stimuli_dir : path-like
        Folder holding the stimulus WAVs (``""`` = the one notebook 02 paired the EEG with, else the
        NMED-T folder's own).

    Returns
    -------
    dict
        Split → :class:`eeg2music.data.windows.EEGMusicWindows` with audio attached.

    Raises
    ------
    FileNotFoundError
        The recorded cache is gone.
    ValueError
        Participants or window counts differ from the training run's (subject indices or splits would
        not match), or a split is missing.
    """

    stimuli = data_root if data_root not in ("", None) else True
    stage = Path(run_dir).expanduser().resolve() if run_dir not in ("", None) else None
    if stage is not None or not data.get("cache_dir"):
        folder = stage or stage_dir("preprocess")
        if (folder / SUMMARY_FILE).is_file():
            datasets = load_stage_windows(folder, stimuli=stimuli, verbose=progress, stimuli_dir=stimuli_dir or None)
        else:
            config = TrainConfig(run_dir=str(stage or ""), data_root=str(data_root or ""), smoke=smoke, seed=seed,
                                 stimuli_dir=str(stimuli_dir or ""))
            datasets, _ = training_windows(config, progress=progress)
    else:
        try:
            index = open_cache(data["cache_dir"])
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the models were trained on the preprocessed cache {data['cache_dir']}, which is gone or incomplete. "
                f"Re-run notebook 02 (same preprocessing), or give run_dir to point to notebook 02's output folder."
            ) from None
        song_seconds = {int(k): float(v) for k, v in (data.get("song_seconds") or {}).items()} or None
        datasets = load_windows(index, WindowSpec.from_dict(data["window_spec"]), loso_subject=data.get("loso_subject"),
                                stimuli=stimuli, song_seconds=song_seconds, verbose=progress,
                                stimuli_dir=stimuli_dir or data.get("stimuli_dir") or None)
    some = next(iter(datasets.values()))
    if data.get("subjects") and list(some.index.subjects) != list(data["subjects"]):
        raise ValueError(
            f"the cache {some.index.path} holds participants {list(some.index.subjects)}, but the models were trained "
            f"on {list(data['subjects'])}: their subject indices would not match"
        )
    recorded = data.get("windows") or {}
    different = {s: (len(datasets[s]), recorded[s]) for s in splits if s in recorded and s in datasets
                 and len(datasets[s]) != recorded[s]}
    if different:
        raise ValueError(
            "the windows rebuilt for sampling differ from the training run's "
            + ", ".join(f"{s}: {now} now, {then} in training" for s, (now, then) in different.items())
            + " — the splits cannot be reproduced (different song lengths, window spec or held-out participant); "
              "give run_dir = the notebook 02 folder the models were trained from"
        )
    missing = [s for s in splits if s not in datasets]
    if missing:
        raise ValueError(f"the windows have no split(s) {missing} (splits: {sorted(datasets)}); "
                         f"e.g. ood_song=None in notebook 02 leaves no OOD split")
    return {s: datasets[s] for s in splits}
