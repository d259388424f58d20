"""The EEG ↔ audio aligner: the ControlNet's own front end (S and P) plus two small heads.

The EEG side is exactly the ControlNet's subject layer and projector with the same layout, followed by a
small head; the audio side is a head on the clip's VAE latent. Both give a time-resolved embedding
``(dim, latent_frames)``. After contrastive training (:mod:`eeg2music.training.alignment`), S and P
initialise the ControlNet's (:func:`init_controlnet_from`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from .projector import EEGProjector, ProjectorPlan, projector_plan
from .subject_layer import SubjectLayer

ALIGNMENT_TEMPERATURE = 0.1

#: Defaults of the alignment stage (steps are set per run: 0 = the paper's P from scratch).
ALIGNMENT_DIM = 16


class EEGAudioAligner(nn.Module):
    """EEG encoder (S, P, a head) and audio encoder (a head on the VAE latent), embedding into one space.

    Parameters
    ----------
    eeg_channels, eeg_sfreq, eeg_samples, clip_seconds
        The EEG window (as for :class:`~eeg2music.models.controlnet.EEGControlNet`).
    latent_channels, latent_frames, latent_bins
        The clip latent's shape (8, 88, 16 for 3.5 s).
    first_block_channels : int
        The UNet's first feature-map width: P's output layout is the ControlNet's.
    n_subjects : int
    subject_cond : bool
        Put the per-subject channel-mixing layer in front of P (as the ControlNet does).
    dim : int
        Embedding channels per latent frame.
    temperature : float
        Initial softmax temperature of the InfoNCE logits (learned from there).
    """

    def __init__(self, *, eeg_channels: int, eeg_sfreq: float, eeg_samples: int, clip_seconds: float,
                 latent_channels: int, latent_frames: int, latent_bins: int, first_block_channels: int,
                 n_subjects: int, subject_cond: bool, dim: int = ALIGNMENT_DIM,
                 temperature: float = ALIGNMENT_TEMPERATURE, act_fn: str = "silu"):
        super().__init__()
        self.plan = projector_plan(eeg_channels, eeg_sfreq, clip_seconds, latent_frames, latent_bins,
                                   first_block_channels, eeg_samples=eeg_samples)
        self.subject_layer = SubjectLayer(n_subjects, eeg_channels) if subject_cond else None
        self.projector = EEGProjector(self.plan, act_fn=act_fn)
        width = first_block_channels * latent_bins
        self.eeg_head = nn.Sequential(nn.GroupNorm(32 if width % 32 == 0 else 1, width), nn.SiLU(),
                                      nn.Conv1d(width, dim, kernel_size=3, padding=1))
        self.audio_head = nn.Conv1d(latent_channels * latent_bins, dim, kernel_size=3, padding=1)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def embed_eeg(self, eeg: torch.Tensor, subject: Any = None) -> torch.Tensor:
        """``(B, C, T)`` EEG → unit-norm embeddings ``(B, dim · frames)``."""
        if self.subject_layer is not None:
            eeg = self.subject_layer(eeg, subject)
        features = self.projector(eeg)  # (B, C0, frames, bins), the ControlNet's input layout
        batch, channels, frames, bins = features.shape
        features = features.permute(0, 1, 3, 2).reshape(batch, channels * bins, frames)
        return nn.functional.normalize(self.eeg_head(features).flatten(1), dim=1)

    def embed_audio(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, C, frames, bins)`` latents → unit-norm embeddings ``(B, dim · frames)``."""
        batch, channels, frames, bins = latents.shape
        features = latents.permute(0, 1, 3, 2).reshape(batch, channels * bins, frames)
        return nn.functional.normalize(self.audio_head(features).flatten(1), dim=1)

    def loss(self, eeg: torch.Tensor, subject: Any, latents: torch.Tensor, clip_ids: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE; rows of the same clip (``clip_ids``) are all positives of each other."""
        logits = self.log_scale.exp() * self.embed_eeg(eeg, subject) @ self.embed_audio(latents).T
        positives = (clip_ids[:, None] == clip_ids[None, :]).float()
        targets = positives / positives.sum(dim=1, keepdim=True)
        eeg_to_audio = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
        audio_to_eeg = -(targets.T * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
        return 0.5 * (eeg_to_audio + audio_to_eeg)


def init_controlnet_from(controlnet: nn.Module, aligner: EEGAudioAligner) -> list[str]:
    """Copy the aligner's subject layer and projector P into a ControlNet; return the copied parameter names.

    Shapes must match (the aligner was built with the ControlNet's layout); a ControlNet without a
    subject layer takes P only.
    """
    copied = []
    targets: Mapping[str, nn.Module | None] = {"projector": controlnet.projector,
                                               "subject_layer": getattr(controlnet, "subject_layer", None)}
    for name, target in targets.items():
        source = getattr(aligner, name)
        if target is None or source is None:
            continue
        target.load_state_dict(source.state_dict())
        copied += [f"{name}.{key}" for key in source.state_dict()]
    return copied


def build_aligner_for(layout: nn.Module | ProjectorPlan | Mapping[str, Any], latent_channels: int, *,
                      subject_cond: bool, n_subjects: int, dim: int = ALIGNMENT_DIM) -> EEGAudioAligner:
    """An aligner whose S and P have exactly the layout of a ControlNet's (or of its ``plan``, as saved in JSON)."""
    plan = getattr(layout, "plan", layout)
    plan = asdict(plan) if isinstance(plan, ProjectorPlan) else plan
    return EEGAudioAligner(
        eeg_channels=plan["eeg_channels"], eeg_sfreq=plan["eeg_sfreq"], eeg_samples=plan["eeg_samples"],
        clip_seconds=plan["clip_seconds"], latent_channels=latent_channels, latent_frames=plan["latent_frames"],
        latent_bins=plan["latent_bins"], first_block_channels=plan["first_block_channels"], n_subjects=n_subjects,
        subject_cond=subject_cond, dim=dim,
    )
