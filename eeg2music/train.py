"""Training on HF accelerate: the EEG ControlNet and the ConvNet baseline, resumable bit-for-bit.

One loop, :func:`train`, runs from notebook 04, from the command line and on many GPUs::

    python -m eeg2music.train --model controlnet --subject_cond true --steps 300
    accelerate launch -m eeg2music.train --model controlnet --subject_cond true   # multi-GPU

Objectives
----------
``model="controlnet"``: the paper's ε-prediction loss on the latents :math:`z_0` of the paired audio
clips, with the frozen backbone's noise schedule,

.. math:: \\mathcal{L} = \\mathbb{E}_{t, \\epsilon}\\, \\lVert \\epsilon - \\epsilon_\\theta(z_t, t, c, \\mathrm{EEG}) \\rVert^2,
   \\qquad z_t = \\sqrt{\\bar\\alpha_t} z_0 + \\sqrt{1 - \\bar\\alpha_t}\\,\\epsilon,

where :math:`\\epsilon_\\theta` is the frozen UNet steered by the ControlNet's residuals. Only the
ControlNet (with the projector P and the subject layer) is trained, with AdamW as the paper (betas
(0.95, 0.999), eps 1e-6, weight decay 1e-3, clipping 1.0) at the learning rate of
:func:`default_learning_rate` unless one is given (the paper's 1e-4 for AudioLDM2; 1e-3 for the tiny
backbone, whose demo runs last a few hundred steps). The target is the backbone's own: ε for
AudioLDM2, v for the tiny backbone (:func:`eeg2music.backbone.diffusion_target`).

``model="convnet"``: the baseline regresses :math:`z_0` from the EEG with an MSE
(:mod:`eeg2music.convnet` says why the latent rather than the mel).

Determinism and resuming
------------------------
The batch at step ``s`` and the noise and timesteps drawn for it are functions of ``(seed, s)`` only
(:class:`StepBatches`, :func:`step_generator`), and checkpoints hold the weights, the AdamW state, the
learning-rate schedule and the RNG states. A run killed at any moment and resumed from its last
complete checkpoint therefore reaches the same weights, bit for bit on CPU, as an uninterrupted run.
Checkpoints are written into a temporary folder and renamed into place, so a folder named
``checkpoint-NNNNNN`` is always complete; temporary ones are ignored on resume and removed when the
run folder is next used. A run started afresh in a folder holding an earlier run's checkpoints removes
them only once it has written its first own, and every input is checked before any work
(:func:`check_inputs`), so a run that fails early loses nothing. Nothing read back is
unpickled: weights and tensor state are safetensors, the rest JSON.

Audio latents are the same for every subject: they are encoded once per ``(song, chunk)`` and kept in
a safetensors file keyed by the backbone's VAE weights and the clips (:func:`clip_latents`), never
re-encoded per step.

Folders
-------
A run folder ``<out_dir>/<run_name>/`` holds ``model/`` (the final model), ``checkpoints/``,
``train_log.csv`` and ``train_summary.json``. A model folder holds ``eeg2music_model.json`` and the
weights in diffusers' ``save_pretrained`` layout (``controlnet/`` or ``convnet/``); the unconditional
baseline is registered the same way without weights (:func:`register_unconditional`), and
:func:`load_trained_model` reads any of them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from safetensors.torch import load_file, save_file

from .alignment import build_aligner_for, init_controlnet_from, train_alignment
from .backbone import diffusion_target
from .nmedt import NMEDTError
from .params import ParameterError, coerce_mapping
from .paths import stage_dir
from .utils import (
    DiskFullError,
    ModelFolderError,
    WeightsFileError,
    atomic_directory,
    atomic_file,
    atomic_write_text,
    check_safetensors,
    count_parameters,
    load_pretrained,
    read_json,
    resolve_device,
    write_json,
)

if TYPE_CHECKING:
    from .preprocess import CacheIndex
    from .windows import EEGMusicWindows, WindowSpec

MODEL_KINDS = ("controlnet", "convnet")
#: Every kind a model folder may hold; "unconditional" has no weights (the backbone alone).
REGISTERED_KINDS = (*MODEL_KINDS, "unconditional")
MODEL_CONFIG_NAME = "eeg2music_model.json"
MODEL_DIR_NAME = "model"
CHECKPOINTS_DIR_NAME = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
#: Written last into a checkpoint; a folder without it is not a checkpoint (e.g. copied half-way).
CHECKPOINT_MARKER = "trainer_state.json"
LOG_NAME = "train_log.csv"
SUMMARY_NAME = "train_summary.json"
LOG_COLUMNS = ("step", "loss", "val_loss", "val_loss_eeg_zeroed", "lr", "seconds")
FORMAT_VERSION = 1
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Everything a training run depends on; saved with every checkpoint and model folder.

    Sizes left at 0 take the default for the run's size (:data:`DEMO_DEFAULTS` or
    :data:`SMOKE_DEFAULTS`), so the same config serves the demo, the tests and a long run.
    """

    model: str = "controlnet"  #: "controlnet" or "convnet"
    subject_cond: bool = True  #: per-subject layer on the EEG (the paper's optional subject conditioning)
    backbone: str = ""  #: backbone folder; "" = the default tiny backbone (trained if missing)
    run_dir: str = ""  #: notebook 02's output folder or its cache; "" = the default run folder's
    data_root: str = ""  #: NMED-T folder used when the cache must be built; "" = the simulator
    stimuli_dir: str = ""  #: folder of the stimulus WAVs; "" = the one notebook 02 used, else data_root's own
    out_dir: str = ""  #: folder holding the run folders; "" = outputs/04_train
    run_name: str = ""  #: run folder name; "" = derived from model and subject_cond
    steps: int = 0  #: optimiser steps (0 = default for the size)
    batch_size: int = 0  #: windows per step and process (0 = default for the size)
    lr: float = 0.0  #: AdamW learning rate; 0 = the backbone's default (:func:`default_learning_rate`)
    betas: tuple[float, float] = (0.95, 0.999)  #: AdamW betas (paper)
    eps: float = 1e-6  #: AdamW epsilon (paper)
    weight_decay: float = 1e-3  #: AdamW weight decay (paper)
    grad_clip: float = 1.0  #: max gradient norm (paper); 0 = no clipping
    lr_warmup_steps: int = 0  #: linear warm-up, then constant
    checkpoint_every: int = 0  #: steps between checkpoints (0 = default for the size)
    keep_checkpoints: int = 2  #: complete checkpoints kept (older ones are deleted)
    val_every: int = 0  #: steps between validations (0 = default for the size)
    val_samples: int = 0  #: validation windows, evenly spread over the val split (0 = default)
    conditioning_scale: float = 1.0  #: ControlNet residual scale during training
    control_min_timestep: int = -1  #: the ControlNet trains and acts at diffusion steps ≥ this; -1 = the backbone's default (:func:`default_control_min_timestep`)
    convnet_width: int = 0  #: ConvNet hidden channels (0 = default for the size)
    align_steps: int = 0  #: ControlNet only: steps of contrastive EEG↔audio pre-training of S and P before the diffusion loss (0 = the paper's P trained from scratch with the ControlNet)
    align_batch_size: int = 64  #: windows per contrastive step (larger batches hold more negatives)
    num_workers: int = 0  #: DataLoader workers (0 = load in the main process)
    mixed_precision: str = "auto"  #: "auto" (bf16 on CUDA, none on CPU), "no", "bf16", "fp16"
    seed: int = 0  #: seeds the model init, the data order and every noise draw
    device: str = "auto"  #: "auto", "cpu", "cuda", "cuda:N", "mps"
    smoke: bool = False  #: tiny sizes for tests (and the *_smoke default folders)
    resume: str = ""  #: "" = start afresh; "true"/"latest" = last checkpoint of the run; or a checkpoint path
    latent_cache_dir: str = ""  #: where clip latents are cached; "" = <out_dir>/latent_cache

    def __post_init__(self):
        self.resume = _normalise_resume(self.resume)
        self.betas = tuple(float(b) for b in self.betas)
        if self.model not in MODEL_KINDS:
            raise ParameterError(f"parameter 'model': {self.model!r} is not one of {list(MODEL_KINDS)}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ParameterError(
                f"parameter 'mixed_precision': {self.mixed_precision!r} is not one of ['auto', 'no', 'bf16', 'fp16']"
            )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ParameterError(f"parameter 'betas': expected two numbers in [0, 1), got {self.betas}")
        for name in ("steps", "batch_size", "checkpoint_every", "val_every", "val_samples", "convnet_width",
                     "num_workers", "lr_warmup_steps", "align_steps"):
            if getattr(self, name) < 0:
                raise ParameterError(f"parameter {name!r}: must be ≥ 0, got {getattr(self, name)}")
        if self.align_batch_size < 2:
            raise ParameterError(f"parameter 'align_batch_size': must be ≥ 2 (InfoNCE needs negatives), got {self.align_batch_size}")
        if self.align_steps and self.model != "controlnet":
            raise ParameterError(f"parameter 'align_steps': pre-trains the ControlNet's S and P; model {self.model!r} "
                                 f"has none (use 0)")
        if self.keep_checkpoints < 1:
            raise ParameterError(f"parameter 'keep_checkpoints': must be ≥ 1, got {self.keep_checkpoints}")
        if self.lr < 0:
            raise ParameterError(f"parameter 'lr': must be > 0 (or 0 for the backbone's default), got {self.lr}")
        if self.eps <= 0:
            raise ParameterError(f"parameter 'eps': must be > 0, got {self.eps}")
        if self.control_min_timestep < -1:
            raise ParameterError(f"parameter 'control_min_timestep': must be ≥ 0 (or -1 for the backbone's default), "
                                 f"got {self.control_min_timestep}")

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> "TrainConfig":
        """Build a config from user-typed values (``"true"``, ``"1e-4"``…), type-checked per field."""
        defaults = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
        return cls(**coerce_mapping(defaults, dict(overrides)))

    def resolved(self) -> "TrainConfig":
        """A copy whose size fields (0 = default) hold the values this run uses."""
        sizes = SMOKE_DEFAULTS if self.smoke else DEMO_DEFAULTS
        values = dataclasses.asdict(self)
        for key, default in sizes.get(self.model, {}).items():
            if values[key] == 0:
                values[key] = default
        for key, default in sizes["common"].items():
            if values[key] == 0:
                values[key] = default
        values["betas"] = tuple(values["betas"])
        return TrainConfig(**values)

    @property
    def name(self) -> str:
        """The run folder's name."""
        return self.run_name or default_run_name(self.model, self.subject_cond)

    def run_folder(self) -> Path:
        """``<out_dir>/<run_name>``."""
        return stage_dir("train", self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Sizes of the demo run (notebook 04 with default parameters); measured to fit the demo's budget.
DEMO_DEFAULTS: dict[str, dict[str, int]] = {
    "common": {"checkpoint_every": 100, "val_every": 100, "val_samples": 64},
    "controlnet": {"steps": 200, "batch_size": 8},
    "convnet": {"steps": 400, "batch_size": 16, "convnet_width": 64},
}
#: Sizes of smoke runs (tests): seconds, not minutes.
SMOKE_DEFAULTS: dict[str, dict[str, int]] = {
    "common": {"checkpoint_every": 4, "val_every": 4, "val_samples": 8},
    "controlnet": {"steps": 6, "batch_size": 2},
    "convnet": {"steps": 6, "batch_size": 4, "convnet_width": 16},
}


#: AdamW learning rate per backbone kind, used when ``lr`` is 0 (see :func:`default_learning_rate`).
DEFAULT_LEARNING_RATES = {"audioldm2": 1e-4, "tiny": 1e-3}


def default_learning_rate(backbone_kind: str | None) -> float:
    """The learning rate a run uses when ``lr`` is left at 0.

    AudioLDM2: the paper's 1e-4 (its ControlNet trains for many thousands of steps). The tiny backbone:
    1e-3 — the rate it was itself trained at, and what a run of a few hundred steps on a CPU needs: at
    1e-4 the zero convolutions barely leave zero in 300 steps (measured on the simulator at demo size:
    a validation gain over the EEG-zeroed control of 0.7 standard errors at 1e-4 and 300 steps, 4.8 at
    1e-3 and 200 steps).
    """
    return DEFAULT_LEARNING_RATES.get(backbone_kind or "", DEFAULT_LEARNING_RATES["audioldm2"])


#: ``control_min_timestep`` per backbone kind, used when it is -1 (see :func:`default_control_min_timestep`).
DEFAULT_CONTROL_MIN_TIMESTEPS = {"audioldm2": 0, "tiny": 500}


def default_control_min_timestep(backbone_kind: str | None) -> int:
    """The lowest diffusion step at which a run's ControlNet trains and acts, when left at -1.

    AudioLDM2: 0 — every step, as the paper. The tiny backbone on a CPU budget: 500 (of 1000), the
    noisier half of the schedule. Why: the ε-objective values an improvement of the clean-latent
    estimate by SNR(t) = ᾱ/(1 − ᾱ), small exactly at the noise levels where the EEG tells what the noisy
    latent does not, so with uniform timesteps the EEG's share of the gradient is lost in the noise of a
    few hundred steps. Measured on the simulator at demo size (ControlNet+subject, 200 steps; notebook
    06's ``mel-envelope`` song-ID of 90 test windows, chance 11 %): timesteps from the whole schedule
    17 % (permutation p = 0.06), timesteps ≥ 500 24 % [17, 33] (p = 0.001); the validation gain over
    other windows' EEG rose from 2.9e-5 ± 1.5e-5 to 1.2e-4 ± 0.4e-4. The low-noise half is left to the
    backbone (:class:`~eeg2music.controlnet.EEGControlNet` skips its residuals there), so nothing
    untrained acts.
    """
    return DEFAULT_CONTROL_MIN_TIMESTEPS.get(backbone_kind or "", DEFAULT_CONTROL_MIN_TIMESTEPS["audioldm2"])


def default_run_name(model: str, subject_cond: bool) -> str:
    """The run folder's default name: ``controlnet_subject``, ``controlnet``, ``convnet`` or ``unconditional``.

    Only the ControlNet's name carries the flag (the paper compares it with and without subject
    conditioning); a ConvNet run is ``convnet`` either way, its ``eeg2music_model.json`` says which.
    """
    if model not in REGISTERED_KINDS:
        raise ParameterError(f"parameter 'model': {model!r} is not one of {list(REGISTERED_KINDS)}")
    return "controlnet_subject" if model == "controlnet" and subject_cond else model


def _normalise_resume(value: Any) -> str:
    if value is None or value is False:
        return ""
    if value is True:
        return "latest"
    text = str(value).strip()
    if text.lower() in ("", "false", "no", "0", "off", "none"):
        return ""
    if text.lower() in ("true", "yes", "1", "on", "latest", "auto"):
        return "latest"
    return text


# --------------------------------------------------------------------------------------------------
# Deterministic data order and noise: functions of (seed, step)
# --------------------------------------------------------------------------------------------------

def _derived_seed(*entropy: int) -> int:
    """A well-mixed 63-bit seed from integers (NumPy's SeedSequence), e.g. ``(seed, step, rank)``."""
    return int(np.random.SeedSequence([int(e) % 2**63 for e in entropy]).generate_state(1, np.uint64)[0]) >> 1


_NOISE_STREAM, _ORDER_STREAM, _VALIDATION_STREAM, _INIT_STREAM = 0x4E015E, 0x0D3E5, 0x7A11D, 0x1417


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator for step ``step`` on process ``rank``: noise and timesteps are drawn from it."""
    return torch.Generator().manual_seed(_derived_seed(_NOISE_STREAM, seed, step, rank))


class StepBatches(torch.utils.data.Sampler):
    """Batches of dataset indices where the batch of step ``s`` depends on ``(seed, s)`` only.

    The index stream is the concatenation of one random permutation of the dataset per epoch; step
    ``s`` takes positions ``[s·B, (s+1)·B)`` of it, where ``B = batch_size × num_processes``, and
    process ``rank`` takes its own slice of those. No window is dropped at an epoch boundary (a batch
    may span two epochs), and resuming at step ``s`` needs nothing but ``s``.

    Parameters
    ----------
    n_items : int
        Dataset length.
    batch_size : int
        Windows per step and process.
    seed : int
        Seed of the permutations.
    start_step, stop_step : int
        The steps to yield batches for: ``range(start_step, stop_step)``.
    rank, num_processes : int
        This process and how many share each step.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, start_step: int, stop_step: int,
                 rank: int = 0, num_processes: int = 1):
        if n_items <= 0:
            raise ValueError("the training split is empty: no windows to train on")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.start_step, self.stop_step = start_step, stop_step
        self.rank, self.num_processes = rank, num_processes
        self._permutations: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the dataset in ``epoch`` (a function of the seed and the epoch only)."""
        if epoch not in self._permutations:
            if len(self._permutations) > 2:  # a batch spans at most two epochs
                self._permutations.pop(min(self._permutations))
            generator = torch.Generator().manual_seed(_derived_seed(_ORDER_STREAM, self.seed, epoch))
            self._permutations[epoch] = torch.randperm(self.n_items, generator=generator).numpy()
        return self._permutations[epoch]

    def batch(self, step: int) -> list[int]:
        """The dataset indices of ``step`` for this process."""
        global_batch = self.batch_size * self.num_processes
        first = step * global_batch + self.rank * self.batch_size
        positions = range(first, first + self.batch_size)
        return [int(self.permutation(p // self.n_items)[p % self.n_items]) for p in positions]

    def epoch_of(self, step: int) -> float:
        """Epochs completed at the start of ``step``."""
        return step * self.batch_size * self.num_processes / self.n_items

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.stop_step):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step)


# --------------------------------------------------------------------------------------------------
# Data: the preprocessed cache, its windows, the clip latents
# --------------------------------------------------------------------------------------------------

@dataclass
class TrainingData:
    """The windows a run trains and validates on, and what the models need to know about them."""

    train: EEGMusicWindows  # without audio: items hold eeg, subject, song, chunk
    val: EEGMusicWindows
    latents: ClipLatents
    info: dict[str, Any]  # the data config recorded in model folders and checkpoints
    eeg_channels: int
    eeg_sfreq: float
    eeg_samples: int
    clip_seconds: float
    n_subjects: int
    backbone_path: str


def _window_meta(dataset, i: int) -> tuple[int, int, int]:
    """``(subject index, song, chunk)`` of window ``i`` without reading its EEG."""
    ref = dataset.windows[i]
    return dataset.index.subject_index(ref.subject), int(ref.song), int(ref.chunk)


def ensure_cache(run_dir: str | os.PathLike = "", *, data_root: str | os.PathLike = "", smoke: bool = False,
                 seed: int = 0, progress: bool = True) -> CacheIndex:
    """A preprocessed cache, as a :class:`~eeg2music.preprocess.CacheIndex`.

    Parameters
    ----------
    run_dir : path-like
        A cache folder or a cache root (its latest build). Empty: a cache under the default run
        folder's cache root (``outputs/02_preprocess/cache``, ``cache_smoke`` at smoke size).
    data_root : path-like
        With ``run_dir`` empty: the NMED-T folder to preprocess (a cache of exactly this folder and
        the paper's preprocessing is reused when there is one). Empty: the latest cache of the default
        root, or the simulated dataset (simulated if missing) preprocessed now.
    smoke, seed : bool, int
        Size and seed of the simulated dataset when it has to be made.
    progress : bool
        Print what is used or built.
    """
    from .pipeline import default_cache_dir, ensure_dataset
    from .preprocess import build_cache, open_cache

    if run_dir not in ("", None):
        return open_cache(Path(run_dir).expanduser().resolve())
    cache_root = default_cache_dir(smoke)
    if data_root in ("", None):
        try:
            index = open_cache(cache_root)
        except FileNotFoundError:
            pass
        else:
            if progress:
                print(f"[train] using the preprocessed cache {index.path}")
            return index
    folder = ensure_dataset(data_root, smoke=smoke, seed=seed)
    if progress:
        print(f"[train] preprocessing {folder} into {cache_root} (the paper's pipeline; reused if already there)")
    return build_cache(folder, None, cache_root, progress=progress)


def default_window_spec(smoke: bool = False) -> WindowSpec:
    """The window spec used when there is no notebook-02 summary: notebook 02's defaults.

    At smoke size the simulated songs last 15 s (4 clips), too short for a gap chunk on each side of
    the val and test chunks, so (as notebook 02 does) the gaps are dropped.
    """
    from .windows import WindowSpec

    return WindowSpec(gap_chunks=0) if smoke else WindowSpec()


def training_windows(cfg: TrainConfig, *, progress: bool = True) -> tuple[dict[str, Any], str]:
    """The split datasets to train on (with their audio), and where they come from, in words.

    * ``run_dir`` holding notebook 02's ``preprocess_summary.json``: exactly notebook 02's splits
      (cache, window spec, held-out participant, song lengths);
    * ``run_dir`` a cache folder or root: its windows with the default window spec;
    * ``run_dir`` empty: the default run folder's notebook-02 output when it matches the size
      (``smoke``), else the default cache (built now if missing) with the default window spec.
    """
    from .pipeline import default_cache_dir
    from .preprocess import INDEX_FILE, LATEST_FILE
    from .windows import SUMMARY_FILE, load_stage_windows, load_windows, read_preprocess_summary

    stage = Path(cfg.run_dir).expanduser().resolve() if cfg.run_dir else stage_dir("preprocess")
    if (stage / SUMMARY_FILE).is_file():
        summary = read_preprocess_summary(stage)
        # The default 02 output serves smoke and full runs alike: use it only if it is this size's
        # (and of this data_root, when one is given).
        same_size = default_cache_dir(cfg.smoke) in Path(summary["cache"]).parents
        same_data = not cfg.data_root or Path(summary["data_root"]) == Path(cfg.data_root).expanduser().resolve()
        if cfg.run_dir or (same_size and same_data):
            splits = load_stage_windows(stage, stimuli=True, verbose=progress, stimuli_dir=cfg.stimuli_dir or None)
            return splits, f"notebook 02's splits ({stage / SUMMARY_FILE})"
    if cfg.run_dir and not any((stage / name).exists() for name in (INDEX_FILE, LATEST_FILE)):
        raise FileNotFoundError(
            f"parameter 'run_dir': {stage} holds neither notebook 02's {SUMMARY_FILE} nor a preprocessed cache "
            f"({INDEX_FILE} or {LATEST_FILE}). Give notebook 02's out_dir or its cache, or leave run_dir empty."
        )
    index = ensure_cache(cfg.run_dir, data_root=cfg.data_root, smoke=cfg.smoke, seed=cfg.seed, progress=progress)
    # The stimuli bound the chunks (make_splits cuts within the audio's length), so they are always read.
    splits = load_windows(index, default_window_spec(cfg.smoke), stimuli=True, verbose=progress,
                          stimuli_dir=cfg.stimuli_dir or None)
    return splits, f"the cache {index.path} with the default window spec"


def _stimuli_dir_of(cfg: TrainConfig) -> str:
    """The folder a run's audio comes from, to record: the parameter, else the one notebook 02 recorded."""
    from .windows import SUMMARY_FILE

    if cfg.stimuli_dir:
        return str(Path(cfg.stimuli_dir).expanduser().resolve())
    summary = (Path(cfg.run_dir).expanduser().resolve() if cfg.run_dir else stage_dir("preprocess")) / SUMMARY_FILE
    return str(read_json(summary).get("stimuli_dir") or "") if summary.is_file() else ""


def _audio_digest(audio: Mapping[int, np.ndarray], clips: Sequence[tuple[int, int]], clip_samples: int) -> str:
    digest = hashlib.sha256()
    for song, chunk in clips:
        digest.update(np.ascontiguousarray(audio[song][chunk * clip_samples:(chunk + 1) * clip_samples],
                                           dtype=np.float32).tobytes())
    return digest.hexdigest()


def load_training_data(cfg: TrainConfig, backbone, *, progress: bool = True) -> TrainingData:
    """The train and val windows (see :func:`training_windows`) and the latents of their clips.

    The latents are encoded once per (song, chunk) and cached in ``cfg.latent_cache_dir``
    (default ``<out_dir>/latent_cache``, shared by the runs of notebook 04).
    """
    from .pipeline import default_backbone_dir

    splits, source = training_windows(cfg, progress=progress)
    for name in ("train", "val"):
        if name not in splits:
            raise ValueError(f"{source}: no {name!r} split (check val_fraction / val_chunks in notebook 02)")
    train_set, val_set = splits["train"], splits["val"]
    index, spec = train_set.index, train_set.spec
    clips = sorted(set(train_set.clips()) | set(val_set.clips()))
    identity = {"backbone": type(backbone).__name__, "kind": getattr(backbone, "kind", None),
                "audio_sha256": _audio_digest(train_set.audio, clips, spec.clip_samples),
                "clip_samples": spec.clip_samples, "audio_sr": spec.audio_sr}
    cache_dir = Path(cfg.latent_cache_dir) if cfg.latent_cache_dir else stage_dir("train", cfg.out_dir) / "latent_cache"
    latents = clip_latents(backbone, clips, train_set.audio_clip, cache_dir, identity, progress=progress)
    if tuple(latents.latents.shape[1:]) != tuple(backbone.latent_shape):
        raise ValueError(f"latents of shape {tuple(latents.latents.shape[1:])} but the backbone says "
                         f"{tuple(backbone.latent_shape)}")
    backbone_path = (getattr(backbone, "metadata", {}).get("path") or cfg.backbone
                     or default_backbone_dir(cfg.smoke))
    info = {
        "source": source,
        "cache_dir": str(index.path),
        "cache_key": index.key,
        "data_root": index.data_root,
        "layout": index.layout,
        "stimuli_dir": _stimuli_dir_of(cfg),
        "sfreq": index.sfreq,
        "units": index.units,
        "channels": index.channel_names,
        "subjects": list(index.subjects),
        "train_subjects": sorted({ref.subject for ref in train_set.windows}),
        "songs": list(index.songs),
        "window_spec": spec.to_dict(),
        "eeg_samples": train_set.n_times,
        "preprocessing": index.preprocessing.to_dict(),
        "windows": {name: len(ds) for name, ds in splits.items()},
        "clips": {name: len(ds.clips()) for name, ds in splits.items()},
    }
    return TrainingData(
        train=train_set.eeg_only(), val=val_set.eeg_only(), latents=latents, info=info,
        eeg_channels=index.n_channels, eeg_sfreq=index.sfreq, eeg_samples=train_set.n_times,
        clip_seconds=spec.clip_seconds, n_subjects=len(index.subjects), backbone_path=str(Path(backbone_path).resolve()),
    )


# --------------------------------------------------------------------------------------------------
# Audio latents: encoded once per (song, chunk), cached on disk
# --------------------------------------------------------------------------------------------------

@dataclass
class ClipLatents:
    """The VAE latents of the audio clips, one row per ``(song, chunk)``.

    Attributes
    ----------
    keys : list of (int, int)
        ``(song, chunk)`` per row.
    latents : torch.Tensor
        ``(n_clips, 8, frames, bins)`` float32 (× the VAE's scaling factor, as the UNet sees them).
    path : Path or None
        The cache file they were read from or written to.
    encoded : int
        How many clips this call encoded (0 when all came from the cache).
    """

    keys: list[tuple[int, int]]
    latents: torch.Tensor
    path: Path | None = None
    encoded: int = 0

    def __post_init__(self):
        self._rows = {key: row for row, key in enumerate(self.keys)}

    def rows(self, songs: Sequence[int] | torch.Tensor, chunks: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Row indices of the clips ``(songs[i], chunks[i])``."""
        songs = songs.tolist() if isinstance(songs, torch.Tensor) else list(songs)
        chunks = chunks.tolist() if isinstance(chunks, torch.Tensor) else list(chunks)
        try:
            return torch.tensor([self._rows[(int(s), int(c))] for s, c in zip(songs, chunks)], dtype=torch.long)
        except KeyError as err:
            raise KeyError(f"no cached latent for (song, chunk) {err.args[0]}; the latent cache {self.path} "
                           f"covers {len(self.keys)} clips") from None

    def lookup(self, songs, chunks) -> torch.Tensor:
        """The latents of the clips ``(songs[i], chunks[i])``, on the device :attr:`latents` is on."""
        return self.latents[self.rows(songs, chunks).to(self.latents.device)]

    def to(self, device: torch.device | str) -> "ClipLatents":
        return ClipLatents(self.keys, self.latents.to(device), self.path, self.encoded)


def module_fingerprint(module: nn.Module) -> str:
    """A SHA-256 of a module's state dict (names, dtypes, shapes, bytes): identifies its weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def clip_latents(
    backbone,
    clips: Sequence[tuple[int, int]],
    audio_of,
    cache_dir: str | os.PathLike | None,
    identity: Mapping[str, Any],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> ClipLatents:
    """The latents of ``clips``, read from the cache when it holds them, else encoded once and cached.

    Parameters
    ----------
    backbone : eeg2music.backbone.Backbone
        Its ``wave_to_mel`` and ``encode`` (the VAE's posterior, × scaling factor) are used.
    clips : sequence of (int, int)
        The ``(song, chunk)`` pairs to encode (each once, whatever the number of subjects).
    audio_of : callable
        ``audio_of(song, chunk) -> float32[56000]``: the clip's waveform at 16 kHz.
    cache_dir : path-like or None
        Folder of the cache files (None: encode without caching).
    identity : mapping
        What the clips' audio depends on (data folder, window spec…); hashed, with the VAE's weights,
        into the cache file's name, so a different backbone or different clips never reuse it.
    batch_size : int
        Clips per VAE call (the VAE runs where the backbone is).
    progress : bool
        Show a progress bar while encoding.
    """
    import safetensors
    import safetensors.torch
    from tqdm.auto import tqdm

    keys = sorted({(int(s), int(c)) for s, c in clips})
    if not keys:
        raise ValueError("clip_latents: no clips to encode")
    key_text = json.dumps({"vae": module_fingerprint(backbone.vae), "identity": identity, "clips": keys},
                          sort_keys=True, default=str)
    digest = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"latents_{digest}.safetensors" if cache_dir not in (None, "") else None
    if path is not None and path.is_file():
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                stored_keys = [tuple(k) for k in json.loads(handle.metadata()["clips"])]
                stored = handle.get_tensor("latents")
            if stored_keys == keys and stored.shape[0] == len(keys):
                return ClipLatents(keys, stored, path, encoded=0)
            problem = "it holds other clips"
        except Exception as err:  # a damaged or foreign file: say so and encode afresh
            problem = f"unreadable ({type(err).__name__}: {err})"
        print(f"[train] ignoring the latent cache {path}: {problem}; encoding again")

    rows = []
    bar = tqdm(range(0, len(keys), batch_size), desc="encode clip latents", unit="batch", disable=not progress)
    for start in bar:
        wave = np.stack([np.asarray(audio_of(s, c), dtype=np.float32) for s, c in keys[start:start + batch_size]])
        rows.append(backbone.encode(backbone.wave_to_mel(wave)).float().cpu())
    latents = torch.cat(rows).contiguous()
    if progress:
        print(f"[train] encoded {len(keys)} clip latents {tuple(latents.shape[1:])} once (shared by all subjects)")
    if path is not None:
        with atomic_file(path) as tmp:
            safetensors.torch.save_file({"latents": latents}, str(tmp), metadata={"clips": json.dumps(keys)})
    return ClipLatents(keys, latents, path, encoded=len(keys))


# --------------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------------

class DiffusionObjective:
    """The ControlNet's loss: MSE between the frozen UNet's (steered) prediction and its target.

    The target follows the backbone scheduler's ``prediction_type`` (:func:`~eeg2music.backbone.diffusion_target`:
    ε for AudioLDM2-music, v for the tiny backbone), so the ControlNet learns in
    the parameterisation its UNet was trained in. Timesteps are uniform on ``min_timestep … T-1``
    (the ControlNet's ``control_min_timestep``; 0, the paper's, draws from the whole schedule).
    """

    uses_noise = True

    def __init__(self, backbone, conditioning_scale: float = 1.0, min_timestep: int = 0):
        self.unet = backbone.unet
        self.scheduler = backbone.scheduler
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        if not 0 <= int(min_timestep) < self.num_train_timesteps:
            raise ParameterError(f"parameter 'control_min_timestep': must be in [0, {self.num_train_timesteps - 1}] "
                                 f"for this backbone's {self.num_train_timesteps}-step schedule, got {min_timestep}")
        self.min_timestep = int(min_timestep)
        self.prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"backbone scheduler: unsupported prediction_type {self.prediction_type!r}")
        self.conditioning_scale = conditioning_scale
        self.conditioning = backbone.unet_conditioning(1)

    def draw(self, shape: Sequence[int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``(B, …)`` and timesteps ``(B,)`` from ``generator`` (on CPU, so draws do not depend on the device)."""
        noise = torch.randn(tuple(shape), generator=generator)
        timesteps = torch.randint(self.min_timestep, self.num_train_timesteps, (shape[0],), generator=generator)
        return noise, timesteps

    def per_sample_loss(self, model, z0, eeg, subject, noise, timesteps, *, control: bool = True) -> torch.Tensor:
        """Squared error per window, averaged over the latent; ``control=False`` runs the backbone alone."""
        from .controlnet import controlled_noise_prediction, expand_conditioning

        zt = self.scheduler.add_noise(z0, noise, timesteps)
        if control:
            pred = controlled_noise_prediction(
                self.unet, model, zt, timesteps, eeg, subject, self.conditioning, self.conditioning_scale
            )
        else:
            kwargs = expand_conditioning(self.conditioning, zt.shape[0])
            pred = self.unet(zt, timesteps, **kwargs, return_dict=False)[0]
        target = diffusion_target(self.scheduler, z0, noise, timesteps)
        return (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, z0.ndim)))


class RegressionObjective:
    """The ConvNet baseline's loss: MSE between the predicted and the true clip latent."""

    uses_noise = False
    num_train_timesteps = 0

    def draw(self, shape, generator):
        return None, None

    def per_sample_loss(self, model, z0, eeg, subject, noise=None, timesteps=None, *, control: bool = True):
        pred = model(eeg, subject)
        return (pred.float() - z0.float()).pow(2).mean(dim=tuple(range(1, z0.ndim)))


# --------------------------------------------------------------------------------------------------
# Validation: fixed windows, noise and timesteps, so every evaluation is comparable
# --------------------------------------------------------------------------------------------------

def mismatched_offset(keys: Sequence[Any]) -> int | None:
    """The cyclic shift closest to ``n/2`` under which no item is paired with one of the same key.

    Used to give every validation window the EEG of a window of a *different* clip, deterministically.
    """
    n = len(keys)
    for distance in range(n // 2 + 1):
        for offset in {n // 2 + distance, n // 2 - distance}:
            if 0 < offset < n and all(keys[i] != keys[(i + offset) % n] for i in range(n)):
                return offset
    return None


class Validator:
    """Validation loss on a fixed subset of the val split, with fixed noise and timesteps.

    Windows are spread evenly over the split; timesteps are spread evenly over ``0 … T-1`` (in a
    fixed random order), which lowers the variance of the estimate against uniform draws; noise is
    drawn once from the run's seed. Two models, or one model with its EEG zeroed, are thus compared
    on exactly the same problems, and so are the evaluations of one run over time.
    """

    def __init__(self, dataset, latents: ClipLatents, objective, *, n_samples: int, seed: int,
                 batch_size: int, device: torch.device):
        n = len(dataset)
        if n == 0:
            raise ValueError("the validation split is empty: no windows to validate on")
        self.dataset, self.latents, self.objective = dataset, latents, objective
        self.device, self.batch_size = device, batch_size
        self.indices = np.unique(np.linspace(0, n - 1, min(n_samples, n)).round().astype(int)).tolist()
        items = [_window_meta(dataset, i) for i in self.indices]
        self.subjects = torch.tensor([m[0] for m in items], dtype=torch.long)
        self.songs = torch.tensor([m[1] for m in items], dtype=torch.long)
        self.chunks = torch.tensor([m[2] for m in items], dtype=torch.long)
        count = len(self.indices)
        generator = torch.Generator().manual_seed(_derived_seed(_VALIDATION_STREAM, seed))
        self.noise = self.timesteps = None
        if objective.uses_noise:
            self.noise = torch.randn((count, *latents.latents.shape[1:]), generator=generator)
            spread = np.linspace(0, objective.num_train_timesteps - 1, count).round().astype(np.int64)
            self.timesteps = torch.from_numpy(spread)[torch.randperm(count, generator=generator)]
        offset = mismatched_offset(list(zip(self.songs.tolist(), self.chunks.tolist())))
        self.shuffle_source = None if offset is None else [(i + offset) % count for i in range(count)]

    def __len__(self) -> int:
        return len(self.indices)

    def variants_for(self, kind: str, extended: bool) -> tuple[str, ...]:
        """The variants to compute: always "eeg" and "eeg_zeroed"; the others when ``extended``.

        What the validation loss is computed with. "eeg": the true EEG; "eeg_zeroed": the same model with
        the EEG set to zero; "eeg_shuffled": EEG (and subject) of a window of a different clip;
        "backbone_only": the frozen backbone without the ControlNet (diffusion models only).
        """
        variants = ["eeg", "eeg_zeroed"]
        if extended:
            if self.shuffle_source is not None:
                variants.append("eeg_shuffled")
            if kind == "controlnet":
                variants.append("backbone_only")
        return tuple(variants)

    def _eeg(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        eeg = torch.stack([torch.as_tensor(np.asarray(self.dataset[self.indices[p]]["eeg"], dtype=np.float32))
                           for p in positions])
        return eeg, self.subjects[positions]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, variants: Sequence[str], autocast) -> dict[str, np.ndarray]:
        """Per-window losses for each variant (``model`` is put in eval mode and left there)."""
        model.eval()
        losses: dict[str, list[torch.Tensor]] = {v: [] for v in variants}
        count = len(self.indices)
        for start in range(0, count, self.batch_size):
            positions = list(range(start, min(start + self.batch_size, count)))
            z0 = self.latents.lookup(self.songs[positions], self.chunks[positions]).to(self.device)
            noise = timesteps = None
            if self.noise is not None:
                noise = self.noise[positions].to(self.device, z0.dtype)
                timesteps = self.timesteps[positions].to(self.device)
            eeg, subject = self._eeg(positions)
            for variant in variants:
                if variant == "eeg_shuffled":
                    source = [self.shuffle_source[p] for p in positions]
                    eeg_v, subject_v = self._eeg(source)
                else:
                    eeg_v, subject_v = eeg, subject
                if variant == "eeg_zeroed":
                    eeg_v = torch.zeros_like(eeg_v)
                with autocast():
                    loss = self.objective.per_sample_loss(
                        model, z0, eeg_v.to(self.device), subject_v.to(self.device), noise, timesteps,
                        control=variant != "backbone_only",
                    )
                losses[variant].append(loss.float().cpu())
        return {v: torch.cat(parts).numpy() for v, parts in losses.items()}

    def per_window_table(self, losses: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
        """One row per validation window: its identity, timestep and loss under each variant."""
        rows = []
        for position in range(len(self.indices)):
            row = {"window": self.indices[position], "subject": int(self.subjects[position]),
                   "song": int(self.songs[position]), "chunk": int(self.chunks[position])}
            if self.timesteps is not None:
                row["timestep"] = int(self.timesteps[position])
            row.update({f"loss_{v}": float(values[position]) for v, values in losses.items()})
            rows.append(row)
        return rows


def eeg_evidence(losses: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Mean validation losses per variant and the paired gains of the true EEG over each control.

    ``gain_vs_<control>`` is ``mean(loss_control − loss_eeg)`` over the same windows, noise and
    timesteps (positive: the EEG helps), with its standard error and the fraction of windows where
    the true EEG does better.
    """
    result: dict[str, Any] = {f"val_loss_{v}" if v != "eeg" else "val_loss": float(np.mean(x)) for v, x in losses.items()}
    base = losses["eeg"]
    for control in ("eeg_zeroed", "eeg_shuffled", "backbone_only"):
        if control not in losses:
            continue
        gain = losses[control] - base
        result[f"gain_vs_{control}"] = float(gain.mean())
        result[f"gain_vs_{control}_se"] = float(gain.std(ddof=1) / math.sqrt(len(gain))) if len(gain) > 1 else float("nan")
        result[f"fraction_better_than_{control}"] = float((gain > 0).mean())
    result["n_windows"] = int(len(base))
    result["eeg_beats_zeroed"] = bool(result["val_loss"] < result["val_loss_eeg_zeroed"])
    return result


# --------------------------------------------------------------------------------------------------
# Model folders: the contract sampling and evaluation read
# --------------------------------------------------------------------------------------------------

@dataclass
class TrainedModel:
    """A model folder loaded for inference.

    Attributes
    ----------
    kind : str
        ``"controlnet"``, ``"convnet"`` or ``"unconditional"``.
    module : torch.nn.Module or None
        The trained network in eval mode on the requested device (``None`` for "unconditional").
    config : dict
        The folder's ``eeg2music_model.json`` (``subject_cond``, ``backbone``, ``data``, ``training``…).
    path : Path
        The model folder.
    """

    kind: str
    module: nn.Module | None
    config: dict[str, Any]
    path: Path

    @property
    def subject_cond(self) -> bool:
        return bool(self.config.get("subject_cond", False))


def _module_class(kind: str):
    if kind == "controlnet":
        from .controlnet import EEGControlNet

        return EEGControlNet
    if kind == "convnet":
        from .convnet import EEGConvNet

        return EEGConvNet
    raise ValueError(f"model kind {kind!r} has no weights; expected one of {list(MODEL_KINDS)}")


def write_model_folder(folder: Path, kind: str, module: nn.Module | None, config: Mapping[str, Any]) -> Path:
    """Write ``eeg2music_model.json`` and the weights (``<kind>/``, safetensors) into ``folder``.

    ``folder`` should be a temporary folder that the caller renames into place.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if module is not None:
        module.save_pretrained(folder / kind, safe_serialization=True)
    write_json(folder / MODEL_CONFIG_NAME, {"format_version": FORMAT_VERSION, **config, "model": kind})
    return folder


def find_model_folder(path: str | os.PathLike) -> Path:
    """The model folder for ``path``: a model folder itself, a run folder (→ ``model/``) or a checkpoint."""
    path = Path(path).expanduser().resolve()
    for candidate in (path, path / MODEL_DIR_NAME):
        if (candidate / MODEL_CONFIG_NAME).is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: no {MODEL_CONFIG_NAME} here or in {path / MODEL_DIR_NAME}. Give a model folder written by "
        f"notebook 04 (outputs/04_train/<run_name>/model), its run folder, or a checkpoint folder."
    )


def load_trained_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedModel:
    """Load a model folder (ControlNet, ConvNet or the unconditional registration) for inference.

    Parameters
    ----------
    model_dir : path-like
        A model folder, a run folder or a checkpoint folder (see :func:`find_model_folder`).
    device : str or torch.device
        Where to put the weights (``"auto"`` is resolved).
    """
    folder = find_model_folder(model_dir)
    config = read_json(folder / MODEL_CONFIG_NAME)
    kind = config.get("model")
    if kind not in REGISTERED_KINDS:
        raise ValueError(f"{folder / MODEL_CONFIG_NAME}: 'model' is {kind!r}, expected one of {list(REGISTERED_KINDS)}")
    if kind == "unconditional":
        return TrainedModel(kind, None, config, folder)
    weights = folder / kind
    if not (weights / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: the {kind} weights are missing (expected {weights}/config.json + safetensors)")
    target = resolve_device(device) if isinstance(device, str) else device
    module = load_pretrained(_module_class(kind), weights, f"{kind} weights", local_files_only=True, use_safetensors=True)
    module = module.to(target).eval().requires_grad_(False)
    return TrainedModel(kind, module, config, folder)


def register_unconditional(
    out_dir: str | os.PathLike = "",
    backbone: str | os.PathLike = "",
    *,
    data: Mapping[str, Any] | None = None,
    smoke: bool = False,
) -> Path:
    """Register the unconditional baseline (the backbone alone, no EEG) as a model folder.

    It needs no training; writing ``<out_dir>/unconditional/model/eeg2music_model.json`` lets the
    later notebooks loop over all models alike.

    Parameters
    ----------
    out_dir : path-like
        The folder holding the run folders ("" = ``outputs/04_train``).
    backbone : path-like
        The backbone folder ("" = the default tiny backbone's folder).
    data : dict, optional
        The data config (as in the trained models' folders), recorded for reference.
    smoke : bool
        With ``backbone=""``: the smoke-size default backbone.

    Returns
    -------
    Path
        The model folder.
    """
    from .pipeline import default_backbone_dir

    backbone_path = Path(backbone).expanduser().resolve() if backbone not in ("", None) else default_backbone_dir(smoke)
    folder = stage_dir("train", out_dir) / default_run_name("unconditional", False) / MODEL_DIR_NAME
    with atomic_directory(folder) as tmp:
        write_model_folder(tmp, "unconditional", None, {
            "subject_cond": False,
            "backbone": str(backbone_path),
            "data": dict(data or {}),
            "training": None,
        })
    return folder


# --------------------------------------------------------------------------------------------------
# State that is not weights: optimizer, RNGs, scalers — safetensors + JSON, never pickle
# --------------------------------------------------------------------------------------------------

def optimizer_state_to_safetensors(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a ``torch.optim`` state dict into tensors (for safetensors) and JSON metadata.

    Returns
    -------
    tensors : dict
        ``"state.<param>.<name>"`` → tensor (contiguous CPU clones).
    meta : dict
        ``param_groups`` and the non-tensor per-parameter entries, JSON-serialisable.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
              for group in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "tuple_keys": _tuple_keys(state_dict)}


def _tuple_keys(state_dict: Mapping[str, Any]) -> list[str]:
    return sorted({k for g in state_dict["param_groups"] for k, v in g.items() if isinstance(v, tuple)})


def optimizer_state_from_safetensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_safetensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, entries in meta.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(entries)
    tuple_keys = set(meta.get("tuple_keys", []))
    groups = [{k: (tuple(v) if k in tuple_keys else v) for k, v in group.items()} for group in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The global RNG states of torch (CPU, CUDA), NumPy and Python as tensors + JSON."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = state
    kind, keys, position, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    meta = {"numpy": [kind, int(position), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}
    return tensors, meta


def set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only where the devices exist)."""
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[f"torch_cuda_{i}"] for i in range(torch.cuda.device_count()) if f"torch_cuda_{i}" in tensors]
        if states:
            torch.cuda.set_rng_state_all(states)
    kind, position, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def list_checkpoints(run_folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as ``(step, path)``.

    Temporary folders (``.checkpoint-….partial``, left by a run killed while saving) never match,
    and a ``checkpoint-N`` folder without its :data:`CHECKPOINT_MARKER` is skipped with a warning.
    """
    folder = Path(run_folder) / CHECKPOINTS_DIR_NAME
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _CHECKPOINT_RE.match(path.name)
            if not (match and path.is_dir()):
                continue
            if not (path / CHECKPOINT_MARKER).is_file():
                print(f"[train] ignoring {path}: incomplete checkpoint (no {CHECKPOINT_MARKER})", file=sys.stderr)
                continue
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(resume: str, run_folder: Path) -> Path | None:
    """The checkpoint folder to resume from (``None`` = start afresh).

    ``"latest"`` → the last complete checkpoint of ``run_folder`` (none yet → start afresh, saying so);
    a path → that checkpoint, or the last complete checkpoint of that run folder.
    """
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(run_folder)
        if not found:
            print(f"[train] resume: no complete checkpoint in {run_folder / CHECKPOINTS_DIR_NAME}; starting afresh")
            return None
        return found[-1][1]
    path = Path(resume).expanduser().resolve()
    if (path / CHECKPOINT_MARKER).is_file():
        return path
    found = list_checkpoints(path) or list_checkpoints(path.parent)
    if path.is_dir() and found:
        return found[-1][1]
    raise FileNotFoundError(
        f"parameter 'resume': {str(path)!r} is neither a complete checkpoint folder (with {CHECKPOINT_MARKER}) "
        f"nor a run folder holding {CHECKPOINTS_DIR_NAME}/{CHECKPOINT_PREFIX}NNNNNN folders"
    )


#: Config fields that must match between a checkpoint and the run resuming it (others, e.g. ``steps``
#: or ``val_every``, may change: extending a finished run is resuming it with more steps).
_RESUME_MUST_MATCH = ("model", "subject_cond", "seed", "batch_size", "lr", "betas", "eps", "weight_decay",
                      "grad_clip", "lr_warmup_steps", "conditioning_scale", "convnet_width")


def _check_resume_config(checkpoint: Path, saved: Mapping[str, Any], cfg: TrainConfig) -> None:
    current = cfg.to_dict()
    different = [f"{k}: checkpoint {saved.get(k)!r}, now {current[k]!r}" for k in _RESUME_MUST_MATCH
                 if json.loads(json.dumps(saved.get(k))) != json.loads(json.dumps(current[k]))]
    if different:
        raise ParameterError(
            f"resume: {checkpoint} was trained with other settings ({'; '.join(different)}); "
            f"pass the same values to continue it, or resume=false to start afresh"
        )


def save_checkpoint(
    folder: Path, *, model: nn.Module, optimizer, lr_scheduler, accelerator, state: Mapping[str, Any],
    model_config: Mapping[str, Any], kind: str,
) -> Path:
    """Write one checkpoint atomically (temp folder, then rename); return its path.

    Layout: ``eeg2music_model.json`` + ``<kind>/`` (diffusers ``save_pretrained``, so a checkpoint is
    also a model folder), ``optimizer.safetensors`` + ``optimizer.json``, ``lr_scheduler.json``,
    ``rng_state.safetensors`` + ``rng_state.json``, ``grad_scaler.json`` (fp16 only), and
    :data:`CHECKPOINT_MARKER` (step, log, config, data config) written last.
    """
    import safetensors.torch

    with atomic_directory(folder) as tmp:
        write_model_folder(tmp, kind, model, model_config)
        tensors, meta = optimizer_state_to_safetensors(optimizer.state_dict())
        safetensors.torch.save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", meta)
        write_json(tmp / "lr_scheduler.json", lr_scheduler.state_dict())
        rng_tensors, rng_meta = rng_state()
        safetensors.torch.save_file(rng_tensors, str(tmp / "rng_state.safetensors"))
        write_json(tmp / "rng_state.json", rng_meta)
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None:
            write_json(tmp / "grad_scaler.json", scaler.state_dict())
        write_json(tmp / CHECKPOINT_MARKER, dict(state))
    return folder


def load_checkpoint_state(folder: Path, *, model: nn.Module, kind: str) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` (before ``accelerator.prepare``); return its trainer state."""
    import safetensors.torch

    weights = folder / kind / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {kind} weights ({weights}); is it a checkpoint of a {kind} run?")
    check_safetensors(weights)
    missing, unexpected = model.load_state_dict(safetensors.torch.load_file(weights), strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return read_json(folder / CHECKPOINT_MARKER)


def restore_training_state(folder: Path, *, optimizer, lr_scheduler, accelerator) -> None:
    """Restore the optimizer, learning-rate schedule, RNG and grad-scaler states of a checkpoint."""
    import safetensors.torch

    for name in ("optimizer.safetensors", "rng_state.safetensors"):
        check_safetensors(folder / name)
    tensors = safetensors.torch.load_file(folder / "optimizer.safetensors")
    optimizer.load_state_dict(optimizer_state_from_safetensors(tensors, read_json(folder / "optimizer.json")))
    lr_scheduler.load_state_dict(read_json(folder / "lr_scheduler.json"))
    set_rng_state(safetensors.torch.load_file(folder / "rng_state.safetensors"), read_json(folder / "rng_state.json"))
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and (folder / "grad_scaler.json").is_file():
        scaler.load_state_dict(read_json(folder / "grad_scaler.json"))


def _prune_checkpoints(run: Path, keep: int) -> None:
    for _, path in list_checkpoints(run)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def _remove_interrupted_writes(run: Path, say=print) -> None:
    """Delete what a run killed while writing left behind: ``.checkpoint-….partial`` (and ``.old``) folders.

    Such folders are never read (:func:`list_checkpoints` skips them); removing them when the run folder
    is next used keeps killed runs from filling the disk. One run folder is written by one run at a time.
    """
    leftovers = [*(run / CHECKPOINTS_DIR_NAME).glob(f".{CHECKPOINT_PREFIX}*.partial"),
                 *(run / CHECKPOINTS_DIR_NAME).glob(f".{CHECKPOINT_PREFIX}*.old"),
                 *run.glob(f".{MODEL_DIR_NAME}.*.partial"), *run.glob(f".{MODEL_DIR_NAME}.old")]
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    if leftovers:
        say(f"[train] removed {len(leftovers)} unfinished write(s) left by an interrupted run: "
            f"{sorted(p.name for p in leftovers)}")


def check_inputs(cfg: TrainConfig, *, backbone_given: bool = False) -> None:
    """Refuse, before any work, paths that do not exist and a device that cannot be used.

    Each error names the parameter (``backbone``, ``run_dir``, ``data_root``, ``stimuli_dir``, ``resume``,
    ``out_dir``, ``latent_cache_dir``, ``device``) and what it expects. ``backbone_given``: the caller
    passes a loaded backbone, so ``cfg.backbone`` is not read.
    """
    folders = {"run_dir": "notebook 02's out_dir or a preprocessed cache", "data_root": "an NMED-T folder",
               "stimuli_dir": "a folder holding the stimulus WAVs"}
    if not backbone_given:
        folders["backbone"] = ("a local AudioLDM2-music folder (diffusers layout) or a backbone folder written by "
                               "notebook 00 (or \"\" for the default tiny backbone)")
    for name, expected in folders.items():
        value = getattr(cfg, name)
        if value and not Path(value).expanduser().is_dir():
            state = "is a file" if Path(value).expanduser().exists() else "does not exist"
            raise ParameterError(f"parameter {name!r}: {value!r} {state}; expected {expected}")
    for name in ("out_dir", "latent_cache_dir"):
        value = getattr(cfg, name)
        if value and Path(value).expanduser().is_file():
            raise ParameterError(f"parameter {name!r}: {value!r} is a file; expected a folder to write into")
    if cfg.resume not in ("", "latest") and not Path(cfg.resume).expanduser().exists():
        raise ParameterError(f"parameter 'resume': {cfg.resume!r} does not exist; expected true/false, a checkpoint "
                             f"folder or a run folder")
    try:
        resolve_device(cfg.device)
    except ValueError as err:
        raise ParameterError(str(err)) from None


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What :func:`train` returns: where things were written and the summary."""

    run_dir: Path
    model_dir: Path
    summary: dict[str, Any]
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_NAME

    @property
    def summary_path(self) -> Path:
        return self.run_dir / SUMMARY_NAME


def make_accelerator(cfg: TrainConfig):
    """An :class:`accelerate.Accelerator` for the config's device and precision.

    ``mixed_precision="auto"`` → bf16 on a CUDA device that supports it, none (fp32) elsewhere.
    Under ``accelerate launch`` the launcher's process group decides the devices.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    device = resolve_device(cfg.device)
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if precision != "no" and device.type != "cuda":
        raise ParameterError(f"parameter 'mixed_precision': {precision!r} needs a CUDA device; this run is on {device}")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if device.type == "cuda" and device.index is not None and not distributed:
        torch.cuda.set_device(device.index)
    if not distributed and AcceleratorState._shared_state:
        # One process, several runs (a notebook kernel, the tests): the state is a process-wide
        # singleton that refuses a different device or precision, so start it afresh.
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=precision, cpu=device.type == "cpu")


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def _freeze(backbone, device: torch.device, unet_dtype: torch.dtype) -> None:
    """Put the backbone's VAE and UNet on ``device``, in eval mode, without gradients (never trained).

    The UNet takes the mixed-precision dtype (it runs every step); the VAE stays in float32 (it runs
    once per clip, and its latents are the training targets).
    """
    for module, dtype in ((backbone.vae, torch.float32), (backbone.unet, unet_dtype)):
        module.to(device)
        if module.dtype != dtype:  # (diffusers warns on any dtype cast, so cast only when needed)
            module.to(dtype=dtype)
        module.eval().requires_grad_(False)


def with_backbone_defaults(cfg: TrainConfig, backbone) -> TrainConfig:
    """``cfg`` with ``lr`` (0) and ``control_min_timestep`` (-1) set to the backbone's defaults."""
    kind = getattr(backbone, "kind", None)
    if cfg.lr == 0:
        cfg = dataclasses.replace(cfg, lr=default_learning_rate(kind))
    if cfg.control_min_timestep < 0:
        cfg = dataclasses.replace(cfg, control_min_timestep=default_control_min_timestep(kind))
    return cfg


def build_model(cfg: TrainConfig, backbone, data: "TrainingData") -> nn.Module:
    """The network to train, initialised from the run's seed (the ControlNet copies the UNet's encoder).

    ``cfg`` has its backbone defaults resolved (:func:`train` does it: ``lr``, ``control_min_timestep``).
    """
    torch.manual_seed(_derived_seed(_INIT_STREAM, cfg.seed))
    frames, bins = int(backbone.latent_shape[1]), int(backbone.latent_shape[2])
    common = dict(eeg_channels=data.eeg_channels, eeg_sfreq=data.eeg_sfreq, clip_seconds=data.clip_seconds,
                  latent_frames=frames, latent_bins=bins, n_subjects=data.n_subjects,
                  subject_cond=cfg.subject_cond, eeg_samples=data.eeg_samples)
    if cfg.model == "controlnet":
        from .controlnet import EEGControlNet

        model = EEGControlNet.from_unet(backbone.unet, control_min_timestep=cfg.control_min_timestep, **common)
    else:
        from .convnet import EEGConvNet

        model = EEGConvNet(latent_channels=int(backbone.latent_shape[0]), hidden_channels=cfg.convnet_width, **common)
    if model.dtype != torch.float32:  # trained in float32 (master weights), whatever the backbone's dtype
        model.to(dtype=torch.float32)
    return model.train().requires_grad_(True)


def write_log(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``train_log.csv`` atomically (columns :data:`LOG_COLUMNS`; empty cells where not measured)."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in LOG_COLUMNS})
    return atomic_write_text(path, buffer.getvalue())


def _collate(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack the fields training reads (the EEG and the clip's identity; never the waveform)."""
    return {
        "eeg": torch.stack([torch.as_tensor(np.asarray(item["eeg"], dtype=np.float32)) for item in items]),
        "subject": torch.tensor([int(item["subject"]) for item in items], dtype=torch.long),
        "song": torch.tensor([int(item["song"]) for item in items], dtype=torch.long),
        "chunk": torch.tensor([int(item["chunk"]) for item in items], dtype=torch.long),
    }


def _training_step(model, objective, optimizer, lr_scheduler, accelerator, batch, latents: ClipLatents,
                   cfg: TrainConfig, step: int) -> tuple[float, float]:
    """One optimiser step on ``batch``; returns (loss averaged over processes, learning rate used)."""
    device = accelerator.device
    model.train()
    generator = step_generator(cfg.seed, step, accelerator.process_index)
    eeg, subject = batch["eeg"].to(device, non_blocking=True), batch["subject"].to(device)
    z0 = latents.lookup(batch["song"], batch["chunk"])
    noise, timesteps = objective.draw(z0.shape, generator)
    if noise is not None:
        noise, timesteps = noise.to(device, z0.dtype), timesteps.to(device)
    with accelerator.autocast():
        loss = objective.per_sample_loss(model, z0, eeg, subject, noise, timesteps).mean()
    accelerator.backward(loss)
    if cfg.grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    if not getattr(optimizer, "step_was_skipped", False):  # (fp16: a step skipped on overflow keeps its lr)
        lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(accelerator.reduce(loss.detach(), reduction="mean").item()), lr


def train(config: TrainConfig | None = None, *, backbone=None, data: TrainingData | None = None,
          progress: bool = True, **overrides) -> TrainResult:
    """Train a ControlNet or the ConvNet baseline; resumable, logged, checkpointed.

    Parameters
    ----------
    config : TrainConfig, optional
        The run's settings (defaults when None).
    backbone : eeg2music.backbone.Backbone, optional
        An already loaded backbone (else ``config.backbone`` is loaded, or the default tiny one is
        built). It must be the one at ``config.backbone`` (recorded in the model folder). Its VAE and
        UNet are moved to the training device, frozen, and the UNet cast to the mixed-precision dtype.
    data : TrainingData, optional
        Windows and latents already loaded by :func:`load_training_data` for this config and backbone.
    progress : bool
        Show progress bars and one-line summaries.
    **overrides
        Config fields to change (user-typed values are coerced, e.g. ``subject_cond="true"``).

    Returns
    -------
    TrainResult
        The run folder, the model folder and the summary (also in ``train_summary.json``).
    """
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    if overrides:
        config = TrainConfig(**coerce_mapping(dataclasses.asdict(config or TrainConfig()), overrides))
    cfg = (config or TrainConfig()).resolved()
    check_inputs(cfg, backbone_given=backbone is not None)
    wall_start = time.perf_counter()
    accelerator = make_accelerator(cfg)
    device, main = accelerator.device, accelerator.is_main_process
    say = print if (progress and main) else (lambda *args, **kwargs: None)
    run = cfg.run_folder()
    if main:
        _remove_interrupted_writes(run, say)
    resume_from = resolve_resume(cfg.resume, run)
    # Starting afresh, an earlier run's checkpoints stay until this run has written a complete one of its own:
    # a run that fails before (a bad backbone, the data) loses nothing.
    stale = [path for _, path in list_checkpoints(run)] if main and resume_from is None else []
    if stale:
        say(f"[train] starting afresh (resume=false): the {len(stale)} earlier checkpoint(s) of {run} are removed "
            f"once this run has written its first")
    accelerator.wait_for_everyone()

    # --- the frozen backbone, the data, the model, the optimiser ---------------------------------
    unet_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    # The main process first: it builds whatever is missing (tiny backbone, cache, latents); the others then read it.
    if backbone is None:
        from .pipeline import ensure_backbone

        with accelerator.main_process_first():
            backbone = ensure_backbone(cfg.backbone, smoke=cfg.smoke, seed=cfg.seed, device=str(device))
    _freeze(backbone, device, unet_dtype)
    if data is None:
        with accelerator.main_process_first():
            data = load_training_data(cfg, backbone, progress=progress and main)
    latents = data.latents.to(device)
    kind = cfg.model
    cfg = with_backbone_defaults(cfg, backbone)
    model = build_model(cfg, backbone, data)
    alignment = None
    if kind == "controlnet" and cfg.align_steps and resume_from is None and main:
        alignment = _pretrain_alignment(model, cfg, backbone, data, run, device, progress)
    state: dict[str, Any] = {"step": 0, "log": [], "train_seconds": 0.0, "samples_seen": 0}
    if resume_from is not None:
        _check_resume_config(resume_from, read_json(resume_from / CHECKPOINT_MARKER).get("config", {}), cfg)
        state = load_checkpoint_state(resume_from, model=model, kind=kind)
        if state["step"] > cfg.steps:
            raise ParameterError(f"resume: {resume_from} is at step {state['step']}, beyond steps={cfg.steps}")
        say(f"[train] resuming from {resume_from} (step {state['step']})")
        if state.get("num_processes", 1) != accelerator.num_processes:
            say(f"[train] warning: the checkpoint was trained on {state.get('num_processes', 1)} process(es), this run "
                f"has {accelerator.num_processes}: batches from here on differ from an uninterrupted run's")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.betas,
                                  eps=cfg.eps, weight_decay=cfg.weight_decay)
    # Not handed to accelerate, whose wrapper steps the schedule once per process: stepped here once per step.
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=cfg.lr_warmup_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if resume_from is not None:
        restore_training_state(resume_from, optimizer=optimizer, lr_scheduler=lr_scheduler, accelerator=accelerator)
    unwrapped = accelerator.unwrap_model(model)

    objective = (DiffusionObjective(backbone, cfg.conditioning_scale, cfg.control_min_timestep) if kind == "controlnet"
                 else RegressionObjective())
    if isinstance(objective, DiffusionObjective):
        objective.conditioning = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                                  for k, v in objective.conditioning.items()}
    validator = Validator(data.val, latents, objective, n_samples=cfg.val_samples, seed=cfg.seed,
                          batch_size=max(cfg.batch_size, 8), device=device)
    model_config = {"subject_cond": cfg.subject_cond, "backbone": data.backbone_path,
                    "backbone_kind": getattr(backbone, "kind", None), "data": data.info, "training": cfg.to_dict()}
    start = int(state["step"])
    sampler = StepBatches(len(data.train), cfg.batch_size, cfg.seed, start, cfg.steps,
                          accelerator.process_index, accelerator.num_processes)
    loader = torch.utils.data.DataLoader(data.train, batch_sampler=sampler, num_workers=cfg.num_workers,
                                         collate_fn=_collate, pin_memory=device.type == "cuda")
    log: list[dict[str, Any]] = list(state["log"])
    n_trainable = count_parameters(unwrapped, trainable_only=True)
    say(f"[train] {run.name}: {kind}, subject_cond={cfg.subject_cond}, {n_trainable / 1e6:.2f} M trainable "
        f"parameters, {len(data.train)} train / {len(validator)} val windows, steps {start}→{cfg.steps}, "
        f"batch {cfg.batch_size}×{accelerator.num_processes}, {_describe_device(device)}, "
        f"precision {accelerator.mixed_precision}")

    # --- the loop ---------------------------------------------------------------------------------
    train_seconds, seen = float(state["train_seconds"]), int(state["samples_seen"])
    session_step_seconds = session_eval_seconds = session_step_cpu_seconds = 0.0
    final: dict[str, np.ndarray] | None = None
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {run.name}", unit="step", disable=not (progress and main))
    tick, cpu_tick = time.perf_counter(), time.process_time()
    for step, batch in zip(range(start, cfg.steps), loader):
        loss, lr = _training_step(model, objective, optimizer, lr_scheduler, accelerator, batch, latents, cfg, step)
        done = step + 1
        seen += cfg.batch_size * accelerator.num_processes
        now = time.perf_counter()
        session_step_seconds += now - tick
        session_step_cpu_seconds += time.process_time() - cpu_tick
        train_seconds += now - tick
        row: dict[str, Any] = {"step": done, "loss": loss, "lr": lr, "seconds": round(train_seconds, 3)}
        validate = done % cfg.val_every == 0 or done == cfg.steps
        checkpoint = done % cfg.checkpoint_every == 0 or done == cfg.steps
        if main and validate:
            # The last validation also runs the other controls: it is the final evaluation.
            variants = validator.variants_for(kind, extended=done == cfg.steps)
            losses = validator.evaluate(unwrapped, variants, accelerator.autocast)
            final = losses if done == cfg.steps else None
            row["val_loss"], row["val_loss_eeg_zeroed"] = float(losses["eeg"].mean()), float(losses["eeg_zeroed"].mean())
            if progress:
                bar.write(f"[train] step {done}/{cfg.steps}: loss {loss:.4f}, val {row['val_loss']:.4f} "
                          f"(EEG zeroed {row['val_loss_eeg_zeroed']:.4f}), {train_seconds:.0f} s")
        log.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if main and checkpoint:
            written = save_checkpoint(run / CHECKPOINTS_DIR_NAME / checkpoint_name(done), model=unwrapped,
                                      optimizer=optimizer, lr_scheduler=lr_scheduler, accelerator=accelerator, kind=kind,
                                      model_config=model_config,
                                      state={"step": done, "log": log, "train_seconds": train_seconds,
                                             "samples_seen": seen, "config": cfg.to_dict(), "data": data.info,
                                             "num_processes": accelerator.num_processes,
                                             "format_version": FORMAT_VERSION})
            for path in stale:  # (one of the same name was replaced by the new one)
                if path != written:
                    shutil.rmtree(path, ignore_errors=True)
            stale = []
            _prune_checkpoints(run, cfg.keep_checkpoints)
            write_log(run / LOG_NAME, log)
        if validate or checkpoint:
            accelerator.wait_for_everyone()  # the other processes wait while the main one writes
        tick, cpu_tick = time.perf_counter(), time.process_time()
        session_eval_seconds += tick - now
    bar.close()

    # --- the end: final validation with the controls, the model folder, the summary ----------------
    summary: dict[str, Any] = {}
    if main:
        if final is None:  # (a resumed run that had nothing left to train)
            final = validator.evaluate(unwrapped, validator.variants_for(kind, extended=True), accelerator.autocast)
        with atomic_directory(run / MODEL_DIR_NAME) as tmp:
            write_model_folder(tmp, kind, unwrapped, {**model_config, "step": cfg.steps})
        write_log(run / LOG_NAME, log)
        _write_rows_csv(run / "val_per_window.csv", validator.per_window_table(final))
        steps_run = cfg.steps - start
        samples_run = steps_run * cfg.batch_size * accelerator.num_processes
        tail = [r["loss"] for r in log[-max(1, len(log) // 10):]]
        summary = {
            "run": run.name, "model": kind, "subject_cond": cfg.subject_cond, "steps": cfg.steps,
            "resumed_from_step": start if resume_from is not None else None,
            "epochs": round(sampler.epoch_of(cfg.steps), 3),
            "parameters": {"trainable": n_trainable,
                           "frozen_backbone": count_parameters(backbone.vae) + count_parameters(backbone.unet)},
            "final_train_loss": float(np.mean(tail)) if tail else None,
            "final_val_loss": float(final["eeg"].mean()),
            "eeg_evidence": eeg_evidence(final),
            "train_seconds": round(train_seconds, 2),
            "seconds_per_step": round(session_step_seconds / steps_run, 4) if steps_run else None,
            # CPU time of this process per step (all its threads): on a machine shared with other jobs,
            # with one thread, it approximates the wall time the step would take alone.
            "cpu_seconds_per_step": round(session_step_cpu_seconds / steps_run, 4) if steps_run else None,
            "samples_per_second": round(samples_run / session_step_seconds, 2) if steps_run else None,
            "validation_and_checkpoint_seconds": round(session_eval_seconds, 2),
            "wall_seconds_this_session": round(time.perf_counter() - wall_start, 2),
            "samples_seen": seen, "device": _describe_device(device), "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "latents": {"clips": len(data.latents.keys), "encoded_this_run": data.latents.encoded,
                        "cache": str(data.latents.path) if data.latents.path else None},
            "model_dir": str(run / MODEL_DIR_NAME), "config": cfg.to_dict(), "data": data.info,
            "alignment": alignment if alignment is not None else _previous_alignment(run, resume_from),
        }
        write_json(run / SUMMARY_NAME, summary)
        evidence = summary["eeg_evidence"]
        say(f"[train] done: {run.name}, val loss {evidence['val_loss']:.4f} with the EEG vs "
            f"{evidence['val_loss_eeg_zeroed']:.4f} with it zeroed"
            + (f"; {summary['samples_per_second']:.1f} samples/s" if steps_run else "")
            + f"; model → {run / MODEL_DIR_NAME}")
    accelerator.wait_for_everyone()
    return TrainResult(run, run / MODEL_DIR_NAME, summary, log)


ALIGNMENT_DIR_NAME = "aligner"
#: In the aligner folder: the aligner's settings and training record, and its weights.
ALIGNER_FILE = "aligner.json"
ALIGNER_WEIGHTS = "aligner.safetensors"


def _pretrain_alignment(model, cfg: TrainConfig, backbone, data: TrainingData, run: Path, device, progress: bool):
    """Contrastive pre-training of S and P (:mod:`eeg2music.alignment`), copied into the ControlNet.

    The aligner (both encoders) is saved in ``<run>/aligner/`` so its encoder-only retrieval can be
    measured on the test windows later; the returned record goes into ``train_summary.json``.
    """
    torch.manual_seed(_derived_seed(_INIT_STREAM, cfg.seed, 1))
    aligner = build_aligner_for(model, int(backbone.latent_shape[0]), subject_cond=cfg.subject_cond,
                                n_subjects=data.n_subjects)
    result = train_alignment(aligner, data.train, data.val, data.latents, steps=cfg.align_steps,
                             batch_size=cfg.align_batch_size, seed=cfg.seed, device=device,
                             eval_every=max(cfg.align_steps // 4, 1), progress=progress)
    copied = init_controlnet_from(model, aligner.to(next(model.parameters()).device))
    with atomic_directory(run / ALIGNMENT_DIR_NAME) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in aligner.state_dict().items()},
                  str(tmp / ALIGNER_WEIGHTS))
        write_json(tmp / ALIGNER_FILE, {"dim": aligner.eeg_head[-1].out_channels, "subject_cond": cfg.subject_cond,
                                          "n_subjects": data.n_subjects, "latent_channels": int(backbone.latent_shape[0]),
                                          "plan": model.plan.to_dict(), "result": result.to_dict()})
    if progress:
        print(f"[train] aligned S and P in {result.seconds:.0f} s: validation segment top-1 "
              f"{result.retrieval['segment_top1']:.0%} (chance {result.retrieval['segment_chance']:.0%}), song "
              f"{result.retrieval['song_top1']:.0%} (chance {result.retrieval['song_chance']:.0%}); "
              f"{len(copied)} tensors copied into the ControlNet", flush=True)
    return {**result.to_dict(), "copied": len(copied), "folder": str(run / ALIGNMENT_DIR_NAME)}


def _previous_alignment(run: Path, resume_from) -> dict[str, Any] | None:
    """A resumed run's alignment record (written when the run started)."""
    record = run / ALIGNMENT_DIR_NAME / ALIGNER_FILE
    if resume_from is None or not record.is_file():
        return None
    return {**read_json(record)["result"], "folder": str(record.parent)}


def load_aligner(run: str | os.PathLike, device: str | torch.device = "cpu"):
    """The contrastive aligner a ControlNet run was initialised from (``<run>/aligner/``), or None."""
    folder = Path(run) / ALIGNMENT_DIR_NAME
    if not (folder / ALIGNER_FILE).is_file():
        return None
    meta = read_json(folder / ALIGNER_FILE)
    aligner = build_aligner_for(meta["plan"], meta["latent_channels"], subject_cond=meta["subject_cond"],
                                n_subjects=meta["n_subjects"], dim=meta["dim"])
    aligner.load_state_dict(load_file(str(check_safetensors(folder / ALIGNER_WEIGHTS))))
    return aligner.to(device).eval()


def _write_rows_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    import io

    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------------
# Figures (notebook 04)
# --------------------------------------------------------------------------------------------------

def plot_noised_latents(latent: torch.Tensor, scheduler, timesteps: Sequence[int] = (0, 100, 300, 600, 999),
                        *, seed: int = 0, channel: int = 0):
    """One latent channel at several steps of the forward process :math:`z_t = \\sqrt{\\bar\\alpha_t} z_0 + \\sqrt{1-\\bar\\alpha_t}\\epsilon`.

    Parameters
    ----------
    latent : torch.Tensor
        ``(8, frames, bins)``, one clip's latent.
    scheduler
        The backbone's noise schedule (``add_noise``, ``alphas_cumprod``).
    timesteps : sequence of int
        The steps to show (clipped to the schedule's length).
    seed : int
        Seed of the noise.
    channel : int
        Which latent channel to draw.
    """
    import matplotlib.pyplot as plt

    n_train = int(scheduler.config.num_train_timesteps)
    steps = [min(int(t), n_train - 1) for t in timesteps]
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    z0 = latent.detach().float().cpu()
    # One colour scale for all panels: ±3 covers the unit-variance noise, wider if the latent is.
    limit = max(3.0, float(z0[channel].abs().quantile(0.995)))
    fig, axes = plt.subplots(1, len(steps), figsize=(2.2 * len(steps), 3.4), sharey=True, layout="constrained")
    for ax, t in zip(np.atleast_1d(axes), steps):
        zt = scheduler.add_noise(z0[None], noise[None], torch.tensor([t]))[0]
        abar = float(scheduler.alphas_cumprod[t])
        image = ax.imshow(zt[channel].numpy(), origin="lower", aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit)
        ax.set_title(f"t = {t}\n$\\sqrt{{\\bar\\alpha_t}}$ = {math.sqrt(abar):.2f}", fontsize=9)
        ax.set_xlabel("latent bin (frequency)")
    np.atleast_1d(axes)[0].set_ylabel("latent frame (time, 40 ms)")
    fig.colorbar(image, ax=axes, shrink=0.8, label=f"channel {channel}")
    fig.suptitle("The forward (noising) process on one clip's latent")
    return fig


def read_log(path: str | os.PathLike):
    """``train_log.csv`` as a pandas DataFrame (empty cells → NaN)."""
    import pandas as pd

    return pd.read_csv(path)


def plot_training_curves(log, *, smooth: int = 10, baseline: float | None = None):
    """Training loss (raw and a moving average) and the validation losses with and without the EEG.

    Parameters
    ----------
    log : DataFrame or path-like
        ``train_log.csv`` (see :func:`read_log`).
    smooth : int
        Window of the moving average of the training loss (steps).
    baseline : float, optional
        The validation loss of the backbone alone (``eeg_evidence["val_loss_backbone_only"]``), drawn as
        a reference: a zero-initialised ControlNet computes exactly that at step 0.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    frame = read_log(log) if not isinstance(log, pd.DataFrame) else log
    train_frame = frame[["step", "loss"]].assign(smoothed=frame["loss"].rolling(max(1, smooth), min_periods=1).mean())
    val = frame.dropna(subset=["val_loss"]).melt(
        id_vars="step", value_vars=["val_loss", "val_loss_eeg_zeroed"], var_name="validation", value_name="val")
    val["validation"] = val["validation"].map({"val_loss": "true EEG", "val_loss_eeg_zeroed": "EEG zeroed"})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    sns.lineplot(train_frame, x="step", y="loss", ax=axes[0], alpha=0.3, color="C0", label="per step")
    sns.lineplot(train_frame, x="step", y="smoothed", ax=axes[0], color="C0", label=f"moving average ({smooth})")
    axes[0].set(title="training loss", ylabel="MSE")
    if len(val):
        sns.lineplot(val, x="step", y="val", hue="validation", style="validation", markers=True, ax=axes[1])
    if baseline is not None:
        axes[1].axhline(baseline, color="grey", ls=":", label="backbone alone (the ControlNet at step 0)")
        axes[1].set_xlim(left=0)
        axes[1].legend()
    axes[1].set(title="validation loss (fixed windows, noise and timesteps)", ylabel="MSE")
    for ax in axes:
        ax.ticklabel_format(axis="y", useOffset=False)
    return fig


def plot_eeg_evidence(summary: Mapping[str, Any], per_window: str | os.PathLike | None = None):
    """How much the true EEG lowers the validation loss against each control, overall and by timestep.

    Parameters
    ----------
    summary : dict
        ``train_summary.json`` (its ``eeg_evidence``).
    per_window : path-like, optional
        ``val_per_window.csv``: adds the gain over the EEG-zeroed control against the diffusion timestep.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    evidence = summary["eeg_evidence"]
    labels = {"eeg_zeroed": "EEG zeroed", "eeg_shuffled": "EEG of another clip", "backbone_only": "backbone alone"}
    gains = pd.DataFrame([{"control": label, "gain": evidence[f"gain_vs_{key}"], "se": evidence[f"gain_vs_{key}_se"]}
                          for key, label in labels.items() if f"gain_vs_{key}" in evidence])
    table = pd.read_csv(per_window) if per_window is not None and Path(per_window).is_file() else None
    by_timestep = table is not None and "timestep" in table
    fig, axes = plt.subplots(1, 2 if by_timestep else 1, figsize=(11 if by_timestep else 5.5, 3.8),
                             layout="constrained", squeeze=False)
    ax = axes[0, 0]
    sns.barplot(gains, x="control", y="gain", hue="control", ax=ax, palette="deep", legend=False)
    ax.errorbar(range(len(gains)), gains["gain"], yerr=1.96 * gains["se"], fmt="none", ecolor="k", capsize=4)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(title=f"loss(control) − loss(true EEG), {evidence['n_windows']} windows (95 % CI)",
           ylabel="gain (MSE; > 0: the EEG helps)", xlabel="")
    if by_timestep:
        gain = table.assign(gain=table["loss_eeg_zeroed"] - table["loss_eeg"])
        edges = np.linspace(0, max(int(gain["timestep"].max()) + 1, 5), 6).round().astype(int)
        gain["timesteps"] = pd.cut(gain["timestep"], bins=edges, right=False,
                                   labels=[f"{lo}–{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])])
        sns.barplot(gain, x="timesteps", y="gain", ax=axes[0, 1], color="C2", errorbar=("se", 1.96))
        axes[0, 1].axhline(0, color="k", lw=0.8)
        axes[0, 1].set(title="gain over the EEG-zeroed control by diffusion timestep", ylabel="gain (MSE)",
                       xlabel="timestep t")
    return fig


# --------------------------------------------------------------------------------------------------
# Command line: python -m eeg2music.train --name value …   (also under `accelerate launch -m`)
# --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """One ``--field`` per :class:`TrainConfig` field; values are type-checked by ``coerce_mapping``."""
    parser = argparse.ArgumentParser(
        prog="python -m eeg2music.train",
        description="Train the EEG ControlNet or the ConvNet baseline (resumable; multi-GPU with "
                    "`accelerate launch -m eeg2music.train ...`).",
    )
    defaults = TrainConfig()
    for item in dataclasses.fields(TrainConfig):
        default = getattr(defaults, item.name)
        shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
        parser.add_argument(f"--{item.name}", default=None, metavar="VALUE",
                            help=f"(default: {shown!r})")
    parser.add_argument("--register_unconditional", action="store_true",
                        help="only register the unconditional baseline (the backbone alone) as a model folder")
    return parser


#: Errors about the inputs (parameters, files, folders, disk space), reported by the CLI as one line.
_USER_ERRORS = (ParameterError, NMEDTError, FileNotFoundError, NotADirectoryError, DiskFullError, ModelFolderError,
                WeightsFileError)


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    unconditional = args.pop("register_unconditional")
    overrides = {k: v for k, v in args.items() if v is not None}
    try:
        cfg = TrainConfig.from_overrides(overrides)
    except ParameterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if unconditional:
        folder = register_unconditional(cfg.out_dir, cfg.backbone, smoke=cfg.smoke)
        print(f"[train] registered the unconditional baseline → {folder}")
        return 0
    try:
        result = train(cfg)
    except _USER_ERRORS as err:  # what the user can fix: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.summary:
        print(json.dumps({k: result.summary[k] for k in ("run", "steps", "final_train_loss", "final_val_loss",
                                                          "train_seconds", "samples_per_second", "model_dir")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
