"""The training objectives and the validation that compares runs.

:class:`DiffusionObjective` is the paper's denoising loss through the frozen UNet steered by the
ControlNet; :class:`RegressionObjective` the ConvNet baseline's MSE on the latent. :class:`Validator`
evaluates on fixed windows, noise and timesteps, with the EEG of another window as the control that
shows whether the model uses its EEG (:func:`eeg_evidence`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.backbone import diffusion_target
from ..models.controlnet import controlled_noise_prediction, expand_conditioning
from ..params import ParameterError
from .config import TIMESTEP_SAMPLINGS
from .data import VALIDATION_STREAM, ClipLatents, derived_seed, window_meta


class DiffusionObjective:
    """The ControlNet's loss: MSE between the frozen UNet's (steered) prediction and its target.

    The target follows the backbone scheduler's ``prediction_type`` (:func:`~eeg2music.models.backbone.diffusion_target`:
    ε for AudioLDM2-music, v for the tiny backbone), so the ControlNet learns in
    the parameterisation its UNet was trained in. Timesteps are drawn on ``min_timestep … T-1`` (the
    ControlNet's ``control_min_timestep``; 0, the paper's, draws from the whole schedule), uniformly (the
    paper's) or ``"cubic"``: t = (1 − u³)·T with u uniform, as T2I-Adapter trains its adapters — four draws
    in five (2^(−1/3) ≈ 0.79) above the middle of the schedule, where the noisy latent holds little of the
    clip and the structure a condition sets is decided, while the low-noise steps are still seen.
    """

    uses_noise = True

    def __init__(self, backbone, conditioning_scale: float = 1.0, min_timestep: int = 0,
                 timestep_sampling: str = "uniform"):
        self.unet = backbone.unet
        self.scheduler = backbone.scheduler
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        if not 0 <= int(min_timestep) < self.num_train_timesteps:
            raise ParameterError(f"parameter 'control_min_timestep': must be in [0, {self.num_train_timesteps - 1}] "
                                 f"for this backbone's {self.num_train_timesteps}-step schedule, got {min_timestep}")
        self.min_timestep = int(min_timestep)
        if timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ParameterError(f"parameter 'timestep_sampling': {timestep_sampling!r} is not one of {list(TIMESTEP_SAMPLINGS)}")
        self.timestep_sampling = timestep_sampling
        self.prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"backbone scheduler: unsupported prediction_type {self.prediction_type!r}")
        self.conditioning_scale = conditioning_scale
        self.conditioning = backbone.unet_conditioning(1)

    def draw(self, shape: Sequence[int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``(B, …)`` and timesteps ``(B,)`` from ``generator`` (on CPU, so draws do not depend on the device)."""
        noise = torch.randn(tuple(shape), generator=generator)
        if self.timestep_sampling == "cubic":
            u = torch.rand((shape[0],), generator=generator, dtype=torch.float64)
            span = self.num_train_timesteps - self.min_timestep
            timesteps = self.min_timestep + ((1 - u**3) * span).long().clamp(0, span - 1)
        else:
            timesteps = torch.randint(self.min_timestep, self.num_train_timesteps, (shape[0],), generator=generator)
        return noise, timesteps

    def per_sample_loss(self, model, z0, eeg, subject, noise, timesteps, *, control: bool = True) -> torch.Tensor:
        """Squared error per window, averaged over the latent; ``control=False`` runs the backbone alone."""

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
        items = [window_meta(dataset, i) for i in self.indices]
        self.subjects = torch.tensor([m[0] for m in items], dtype=torch.long)
        self.songs = torch.tensor([m[1] for m in items], dtype=torch.long)
        self.chunks = torch.tensor([m[2] for m in items], dtype=torch.long)
        count = len(self.indices)
        generator = torch.Generator().manual_seed(derived_seed(VALIDATION_STREAM, seed))
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
