"""Checkpoints that resume bit for bit, without pickle: weights, AdamW state, learning-rate schedule
and RNG states as safetensors + JSON, written into a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from ..models.model_folder import MODEL_DIR_NAME, write_model_folder
from ..params import ParameterError
from ..utils import atomic_directory, check_safetensors, read_json, write_json
from .config import TrainConfig

CHECKPOINTS_DIR_NAME = "checkpoints"


CHECKPOINT_PREFIX = "checkpoint-"


#: Written last into a checkpoint; a folder without it is not a checkpoint (e.g. copied half-way).
CHECKPOINT_MARKER = "trainer_state.json"


_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


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


def check_resume_config(checkpoint: Path, saved: Mapping[str, Any], cfg: TrainConfig) -> None:
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

    for name in ("optimizer.safetensors", "rng_state.safetensors"):
        check_safetensors(folder / name)
    tensors = safetensors.torch.load_file(folder / "optimizer.safetensors")
    optimizer.load_state_dict(optimizer_state_from_safetensors(tensors, read_json(folder / "optimizer.json")))
    lr_scheduler.load_state_dict(read_json(folder / "lr_scheduler.json"))
    set_rng_state(safetensors.torch.load_file(folder / "rng_state.safetensors"), read_json(folder / "rng_state.json"))
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and (folder / "grad_scaler.json").is_file():
        scaler.load_state_dict(read_json(folder / "grad_scaler.json"))


def prune_checkpoints(run: Path, keep: int) -> None:
    for _, path in list_checkpoints(run)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def remove_interrupted_writes(run: Path, say=print) -> None:
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
