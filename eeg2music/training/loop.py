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
:data:`~eeg2music.training.config.PRESETS` unless one is given (the paper's 1e-4 for AudioLDM2; 1e-3 for
the tiny backbone, whose demo runs last a few hundred steps). The target is the backbone's own: ε for
AudioLDM2, v for the tiny backbone (:func:`eeg2music.models.backbone.diffusion_target`).

``model="convnet"``: the baseline regresses :math:`z_0` from the EEG with an MSE
(:mod:`eeg2music.models.convnet` says why the latent rather than the mel).

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
a safetensors file keyed by the backbone's VAE weights and the clips (:func:`~eeg2music.training.data.clip_latents`), never
re-encoded per step.

Folders
-------
A run folder ``<out_dir>/<run_name>/`` holds ``model/`` (the final model), ``checkpoints/``,
``train_log.csv`` and ``train_summary.json``. A model folder holds ``eeg2music_model.json`` and the
weights in diffusers' ``save_pretrained`` layout (``controlnet/`` or ``convnet/``); the unconditional
baseline is registered the same way without weights (:func:`~eeg2music.models.model_folder.register_unconditional`), and
:func:`~eeg2music.models.model_folder.load_trained_model` reads any of them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from diffusers.optimization import get_scheduler
from torch import nn
from tqdm.auto import tqdm

from ..models.controlnet import EEGControlNet
from ..models.convnet import EEGConvNet
from ..models.model_folder import FORMAT_VERSION, MODEL_DIR_NAME, write_model_folder
from ..params import ParameterError, coerce_mapping
from ..run_inputs import ensure_backbone
from ..utils import (
    atomic_directory,
    atomic_write_text,
    count_parameters,
    read_json,
    resolve_device,
    write_json,
)
from .alignment import pretrain_alignment, previous_alignment
from .checkpoints import (
    CHECKPOINT_MARKER,
    CHECKPOINTS_DIR_NAME,
    check_resume_config,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint_state,
    prune_checkpoints,
    remove_interrupted_writes,
    resolve_resume,
    restore_training_state,
    save_checkpoint,
)
from .config import TrainConfig
from .data import (
    INIT_STREAM,
    ClipLatents,
    StepBatches,
    TrainingData,
    derived_seed,
    load_training_data,
    step_generator,
)
from .objectives import DiffusionObjective, RegressionObjective, Validator, eeg_evidence

LOG_NAME = "train_log.csv"


SUMMARY_NAME = "train_summary.json"


LOG_COLUMNS = ("step", "loss", "val_loss", "val_loss_eeg_zeroed", "lr", "seconds")


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


def build_model(cfg: TrainConfig, backbone, data: "TrainingData") -> nn.Module:
    """The network to train, initialised from the run's seed (the ControlNet copies the UNet's encoder).

    ``cfg`` is resolved (:meth:`TrainConfig.resolved`: the preset's ``convnet_width``, ``control_min_timestep``).
    """
    torch.manual_seed(derived_seed(INIT_STREAM, cfg.seed))
    frames, bins = int(backbone.latent_shape[1]), int(backbone.latent_shape[2])
    common = dict(eeg_channels=data.eeg_channels, eeg_sfreq=data.eeg_sfreq, clip_seconds=data.clip_seconds,
                  latent_frames=frames, latent_bins=bins, n_subjects=data.n_subjects,
                  subject_cond=cfg.subject_cond, eeg_samples=data.eeg_samples)
    if cfg.model == "controlnet":
        model = EEGControlNet.from_unet(backbone.unet, control_min_timestep=cfg.control_min_timestep, **common)
    else:
        model = EEGConvNet(latent_channels=int(backbone.latent_shape[0]), hidden_channels=cfg.convnet_width, **common)
    if model.dtype != torch.float32:  # trained in float32 (master weights), whatever the backbone's dtype
        model.to(dtype=torch.float32)
    return model.train().requires_grad_(True)


def write_log(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``train_log.csv`` atomically (columns :data:`LOG_COLUMNS`; empty cells where not measured)."""

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
    backbone : eeg2music.models.backbone.Backbone, optional
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

    if overrides:
        config = TrainConfig(**coerce_mapping(dataclasses.asdict(config or TrainConfig()), overrides))
    # Every setting left at None takes the run's preset: paper (AudioLDM2) or demo (tiny), smoke sizes for tests.
    cfg = (config or TrainConfig()).resolved(getattr(backbone, "kind", None))
    check_inputs(cfg, backbone_given=backbone is not None)
    wall_start = time.perf_counter()
    accelerator = make_accelerator(cfg)
    device, main = accelerator.device, accelerator.is_main_process
    say = print if (progress and main) else (lambda *args, **kwargs: None)
    run = cfg.run_folder()
    if main:
        remove_interrupted_writes(run, say)
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
        with accelerator.main_process_first():
            backbone = ensure_backbone(cfg.backbone, smoke=cfg.smoke, seed=cfg.seed, device=str(device))
    _freeze(backbone, device, unet_dtype)
    if data is None:
        with accelerator.main_process_first():
            data = load_training_data(cfg, backbone, progress=progress and main)
    latents = data.latents.to(device)
    kind = cfg.model
    model = build_model(cfg, backbone, data)
    alignment = None
    if kind == "controlnet" and cfg.align_steps and resume_from is None and main:
        alignment = pretrain_alignment(model, cfg, backbone, data, run, device, progress)
    state: dict[str, Any] = {"step": 0, "log": [], "train_seconds": 0.0, "samples_seen": 0}
    if resume_from is not None:
        check_resume_config(resume_from, read_json(resume_from / CHECKPOINT_MARKER).get("config", {}), cfg)
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

    objective = (DiffusionObjective(backbone, cfg.conditioning_scale, cfg.control_min_timestep, cfg.timestep_sampling) if kind == "controlnet"
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
            prune_checkpoints(run, cfg.keep_checkpoints)
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
            "alignment": alignment if alignment is not None else previous_alignment(run, resume_from),
        }
        write_json(run / SUMMARY_NAME, summary)
        evidence = summary["eeg_evidence"]
        say(f"[train] done: {run.name}, val loss {evidence['val_loss']:.4f} with the EEG vs "
            f"{evidence['val_loss_eeg_zeroed']:.4f} with it zeroed"
            + (f"; {summary['samples_per_second']:.1f} samples/s" if steps_run else "")
            + f"; model → {run / MODEL_DIR_NAME}")
    accelerator.wait_for_everyone()
    return TrainResult(run, run / MODEL_DIR_NAME, summary, log)


def _write_rows_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:

    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def read_log(path: str | os.PathLike):
    """``train_log.csv`` as a pandas DataFrame (empty cells → NaN)."""

    return pd.read_csv(path)
