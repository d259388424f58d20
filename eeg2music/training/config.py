"""A training run's settings: :class:`TrainConfig`, its presets and the backbone-dependent defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.backbone import backbone_kind_of
from ..models.model_folder import MODEL_KINDS, default_run_name
from ..params import ParameterError, coerce_mapping, is_unset
from ..paths import stage_dir

#: The paper's optimiser (Postolache et al., the authors' code defaults): AdamW with these settings.
PAPER_LEARNING_RATE = 1e-4
PAPER_BETAS = (0.95, 0.999)
PAPER_EPS = 1e-6
PAPER_WEIGHT_DECAY = 1e-3
PAPER_GRAD_CLIP = 1.0

#: How training draws diffusion steps: "uniform" (the paper's) or "cubic" (biased to high noise, T2I-Adapter;
#: :class:`~eeg2music.training.objectives.DiffusionObjective`).
TIMESTEP_SAMPLINGS = ("uniform", "cubic")

#: Named presets: the value of every setting a run leaves at ``None``, for all models ("common") and per
#: model. A run names one with ``preset``; ``"auto"`` takes ``paper`` for an AudioLDM2 backbone and ``demo``
#: for the tiny one, and a smoke run puts ``smoke``'s sizes on top (:func:`preset_for`).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's setting: learning rate 1e-4, the ControlNet at every diffusion step, batches of 8.
    "paper": {
        "common": {"lr": PAPER_LEARNING_RATE, "control_min_timestep": 0, "timestep_sampling": "uniform",
                   "checkpoint_every": 100, "val_every": 100, "val_samples": 64},
        "controlnet": {"steps": 200, "batch_size": 8},
        "convnet": {"steps": 400, "batch_size": 16, "convnet_width": 64},
    },
    # The tiny backbone on two CPU cores, sized to the demo's budget (measured). 1e-3 because at 1e-4 the zero
    # convolutions barely leave zero in a few hundred steps (on the simulator at demo size: a validation gain
    # over the EEG-zeroed control of 0.7 standard errors at 1e-4 and 300 steps, 4.8 at 1e-3 and 200 steps).
    # Timesteps drawn "cubic" (T2I-Adapter's t = (1 − u³)·T): with uniform timesteps the objective values an
    # improvement of the clean-latent estimate by SNR(t), small exactly at the noise levels where the EEG tells
    # what the noisy latent does not, so the EEG's share of the gradient is lost in the noise of a few hundred
    # steps; the cubic draw puts 4 steps in 5 in the noisier half while still training the ControlNet at
    # every t, so that it also acts while the backbone refines the details — the paper's every-step structure,
    # with another timestep distribution. Measured (ControlNet+subject, aligned S and P, guidance 3, 200 steps,
    # same windows and noise per comparison): with one test segment per song (90 windows), mel-envelope
    # song-ID 48 % [38, 59] trained and acting at t >= 500 only, 57 % for the same model acting at every t,
    # 60 % [50, 70] cubic (unseen song 21 % → 50 %); with the two test segments per song of the current split
    # (108 windows), segment-ID 30 % [21, 39] at t >= 500 and 29 % [20, 37] cubic: no gain there.
    "demo": {
        "common": {"lr": 1e-3, "control_min_timestep": 0, "timestep_sampling": "cubic",
                   "checkpoint_every": 100, "val_every": 100, "val_samples": 64},
        "controlnet": {"steps": 200, "batch_size": 8},
        "convnet": {"steps": 400, "batch_size": 16, "convnet_width": 64},
    },
    # Tests: seconds, not minutes (sizes only, on top of the backbone's preset).
    "smoke": {
        "common": {"checkpoint_every": 4, "val_every": 4, "val_samples": 8},
        "controlnet": {"steps": 6, "batch_size": 2},
        "convnet": {"steps": 6, "batch_size": 4, "convnet_width": 16},
    },
}
PRESET_NAMES = ("auto", *PRESETS)
#: The settings a preset fills.
PRESET_FIELDS = ("steps", "batch_size", "lr", "control_min_timestep", "timestep_sampling", "checkpoint_every", "val_every",
                 "val_samples", "convnet_width")


def preset_for(preset: str, backbone_kind: str | None, smoke: bool = False) -> list[str]:
    """The presets a run applies, in order: ``paper`` (AudioLDM2) or ``demo`` (tiny) for ``"auto"``, then
    ``smoke``'s sizes on top for a smoke run (or ``preset="smoke"``)."""
    base = preset if preset in ("paper", "demo") else ("paper" if backbone_kind == "audioldm2" else "demo")
    return [base, "smoke"] if (smoke or preset == "smoke") else [base]


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved with every checkpoint and model folder.

    Settings left at ``None`` take the value of the run's preset (:data:`PRESETS`, :meth:`resolved`), so
    the same config serves the paper's setting, the demo, the tests and a long run.
    """

    model: str = "controlnet"  #: "controlnet" or "convnet"
    subject_cond: bool = True  #: per-subject layer on the EEG (the paper's optional subject conditioning)
    backbone: str = ""  #: backbone folder; "" = the default tiny backbone (trained if missing)
    preset: str = "auto"  #: "paper", "demo", "smoke"; "auto" = paper for AudioLDM2, demo for the tiny backbone (smoke sizes for smoke runs)
    run_dir: str = ""  #: notebook 02's output folder or its cache; "" = the default run folder's
    data_root: str = ""  #: NMED-T folder used when the cache must be built; "" = the simulator
    stimuli_dir: str = ""  #: folder of the stimulus WAVs; "" = the one notebook 02 used, else data_root's own
    out_dir: str = ""  #: folder holding the run folders; "" = outputs/04_train
    run_name: str = ""  #: run folder name; "" = derived from model and subject_cond
    steps: int | None = None  #: optimiser steps (None = the preset's)
    batch_size: int | None = None  #: windows per step and process (None = the preset's)
    lr: float | None = None  #: AdamW learning rate (None = the preset's: the paper's 1e-4, the tiny backbone's 1e-3)
    betas: tuple[float, float] = PAPER_BETAS  #: AdamW betas (paper)
    eps: float = PAPER_EPS  #: AdamW epsilon (paper)
    weight_decay: float = PAPER_WEIGHT_DECAY  #: AdamW weight decay (paper)
    grad_clip: float = PAPER_GRAD_CLIP  #: max gradient norm (paper); 0 = no clipping
    lr_warmup_steps: int = 0  #: linear warm-up, then constant
    checkpoint_every: int | None = None  #: steps between checkpoints (None = the preset's)
    keep_checkpoints: int = 2  #: complete checkpoints kept (older ones are deleted)
    val_every: int | None = None  #: steps between validations (None = the preset's)
    val_samples: int | None = None  #: validation windows, evenly spread over the val split (None = the preset's)
    conditioning_scale: float = 1.0  #: ControlNet residual scale during training
    timestep_sampling: str | None = None  #: how training draws diffusion steps: "uniform" (the paper's) or "cubic" (T2I-Adapter: biased to high noise); None = the preset's
    control_min_timestep: int | None = None  #: the ControlNet trains and acts at diffusion steps ≥ this (None = the preset's: 0, every step)
    convnet_width: int | None = None  #: ConvNet hidden channels (None = the preset's)
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
        if self.timestep_sampling is not None and self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ParameterError(f"parameter 'timestep_sampling': {self.timestep_sampling!r} is not one of "
                                 f"{list(TIMESTEP_SAMPLINGS)} (or None for the preset's)")
        if self.preset not in PRESET_NAMES:
            raise ParameterError(f"parameter 'preset': {self.preset!r} is not one of {list(PRESET_NAMES)}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ParameterError(
                f"parameter 'mixed_precision': {self.mixed_precision!r} is not one of ['auto', 'no', 'bf16', 'fp16']"
            )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ParameterError(f"parameter 'betas': expected two numbers in [0, 1), got {self.betas}")
        for name in ("steps", "batch_size", "checkpoint_every", "val_every", "val_samples", "convnet_width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ParameterError(f"parameter {name!r}: must be ≥ 1 (or None for the preset's), got {value}")
        for name in ("num_workers", "lr_warmup_steps", "align_steps"):
            if getattr(self, name) < 0:
                raise ParameterError(f"parameter {name!r}: must be ≥ 0, got {getattr(self, name)}")
        if self.align_batch_size < 2:
            raise ParameterError(f"parameter 'align_batch_size': must be ≥ 2 (InfoNCE needs negatives), got {self.align_batch_size}")
        if self.align_steps and self.model != "controlnet":
            raise ParameterError(f"parameter 'align_steps': pre-trains the ControlNet's S and P; model {self.model!r} "
                                 f"has none (use 0)")
        if self.keep_checkpoints < 1:
            raise ParameterError(f"parameter 'keep_checkpoints': must be ≥ 1, got {self.keep_checkpoints}")
        if self.lr is not None and self.lr <= 0:
            raise ParameterError(f"parameter 'lr': must be > 0 (or None for the preset's), got {self.lr}")
        if self.eps <= 0:
            raise ParameterError(f"parameter 'eps': must be > 0, got {self.eps}")
        if self.control_min_timestep is not None and self.control_min_timestep < 0:
            raise ParameterError(f"parameter 'control_min_timestep': must be ≥ 0 (or None for the preset's), "
                                 f"got {self.control_min_timestep}")

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> "TrainConfig":
        """Build a config from user-typed values (``"true"``, ``"1e-4"``, ``"none"``…), type-checked per field.

        A setting a preset fills is read like the demo preset's value, or ``None``.
        """
        defaults = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
        typed = {**defaults, **{name: _preset_example(name) for name in PRESET_FIELDS}}
        unset = {name for name, value in overrides.items() if name in PRESET_FIELDS and is_unset(value)}
        given = {name: value for name, value in overrides.items() if name not in unset}
        coerced = coerce_mapping(typed, given)
        return cls(**{name: coerced[name] for name in given}, **dict.fromkeys(unset))

    def resolved(self, backbone_kind: str | None = None) -> "TrainConfig":
        """A copy whose settings left at ``None`` hold the values of the run's preset.

        ``backbone_kind`` (``"audioldm2"`` / ``"tiny"``) picks the preset when it is ``"auto"``; by default it
        is read from the ``backbone`` folder (:func:`backbone_kind_of`).
        """
        kind = backbone_kind or backbone_kind_of(self.backbone)
        filled: dict[str, Any] = {}
        for name in preset_for(self.preset, kind, self.smoke):
            filled.update({**PRESETS[name]["common"], **PRESETS[name].get(self.model, {})})
        values = dataclasses.asdict(self)
        for key, value in filled.items():
            if values[key] is None:
                values[key] = value
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


def _preset_example(name: str) -> Any:
    """A value of the type a preset gives ``name`` (what a user-typed value is read as)."""
    for model in ("common", "convnet", "controlnet"):
        if name in PRESETS["demo"].get(model, {}):
            return PRESETS["demo"][model][name]
    raise KeyError(name)


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
