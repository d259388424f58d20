"""The model-folder contract that training writes and sampling and evaluation read.

A model folder holds ``eeg2music_model.json`` and the weights in diffusers' ``save_pretrained`` layout
(``controlnet/`` or ``convnet/``); the unconditional baseline is registered the same way without weights
(:func:`register_unconditional`), and :func:`load_trained_model` reads any of them. A run's aligner
(``<run>/aligner/``) is read by :func:`load_aligner`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..params import ParameterError
from ..paths import stage_dir
from ..run_inputs import default_backbone_dir
from ..utils import (
    atomic_directory,
    check_safetensors,
    load_pretrained,
    read_json,
    resolve_device,
    write_json,
)
from .aligner import build_aligner_for
from .controlnet import EEGControlNet
from .convnet import EEGConvNet

MODEL_KINDS = ("controlnet", "convnet")


#: Every kind a model folder may hold; "unconditional" has no weights (the backbone alone).
REGISTERED_KINDS = (*MODEL_KINDS, "unconditional")


MODEL_CONFIG_NAME = "eeg2music_model.json"


MODEL_DIR_NAME = "model"


FORMAT_VERSION = 1


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
        return EEGControlNet
    if kind == "convnet":
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


ALIGNMENT_DIR_NAME = "aligner"


#: In the aligner folder: the aligner's settings and training record, and its weights.
ALIGNER_FILE = "aligner.json"


ALIGNER_WEIGHTS = "aligner.safetensors"


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


def default_run_name(model: str, subject_cond: bool) -> str:
    """The run folder's default name: ``controlnet_subject``, ``controlnet``, ``convnet`` or ``unconditional``.

    Only the ControlNet's name carries the flag (the paper compares it with and without subject
    conditioning); a ConvNet run is ``convnet`` either way, its ``eeg2music_model.json`` says which.
    """
    if model not in REGISTERED_KINDS:
        raise ParameterError(f"parameter 'model': {model!r} is not one of {list(REGISTERED_KINDS)}")
    return "controlnet_subject" if model == "controlnet" and subject_cond else model
