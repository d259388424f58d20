"""A training run's settings: :class:`TrainConfig`, its presets and the backbone-dependent defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.model_folder import MODEL_KINDS, default_run_name
from ..params import ParameterError, coerce_mapping
from ..paths import stage_dir


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
    backbone (:class:`~eeg2music.models.controlnet.EEGControlNet` skips its residuals there), so nothing
    untrained acts.
    """
    return DEFAULT_CONTROL_MIN_TIMESTEPS.get(backbone_kind or "", DEFAULT_CONTROL_MIN_TIMESTEPS["audioldm2"])


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
