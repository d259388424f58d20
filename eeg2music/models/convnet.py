"""The ConvNet baseline: EEG → the audio latent directly, by regression.

The paper compares its ControlNet against "a ConvNet mapping EEG directly to the audio representation".
Here that representation is the **VAE latent** of the clip, ``(8, frames, bins)`` = ``(8, 88, 16)`` for
3.5 s, not the mel spectrogram, because

* it is the space the diffusion model works in: the baseline and the ControlNet are then decoded by the
  *same* VAE decoder and vocoder, so a difference in the metrics comes from the model, not the decoder;
* it is half the size of the mel (8 × 88 × 16 = 11 264 numbers against 352 × 64 = 22 528) and roughly
  unit-variance per channel (the VAE's scaling factor is chosen for that), which suits an MSE objective.

A regression to the mean of everything compatible with the EEG is blurry by construction; that is the
point of the baseline (what a direct mapping achieves without a generative prior).

Architecture (sizes derive from the EEG rate and the latent shape, nothing is tied to one dataset):

``eeg (C, T)`` → optional subject layer (the ControlNet's :class:`~eeg2music.models.subject_layer.SubjectLayer`,
per-subject C × C channel mixing) → **spatial filters** (1 × 1 conv, C → H: learned combinations of
electrodes, as EEG decoders start) → **strided temporal stages** (kernel 5, stride 2, as many as keep
at least ``frames`` steps) → linear interpolation to exactly ``frames`` steps (40 ms each) → a
**temporal context** conv (kernel 9: ≈ 0.36 s around each frame, the span of auditory responses) →
1 × 1 conv to ``latent_channels × latent_bins`` → reshape to ``(latent_channels, frames, bins)`` → a
residual 2-D conv block on the latent grid (couples neighbouring frequency bins).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .projector import clip_samples
from .subject_layer import SubjectLayer


def temporal_strides(n_samples: int, n_frames: int, max_stride: int = 2) -> tuple[int, ...]:
    """Strides of the downsampling stages that take ``n_samples`` close to (not below) ``n_frames``.

    Parameters
    ----------
    n_samples : int
        EEG samples per window (e.g. 437 at 125 Hz × 3.5 s, 3500 at 1 kHz).
    n_frames : int
        Latent frames per clip (88 for 3.5 s).
    max_stride : int
        Stride of one stage.

    Returns
    -------
    tuple of int
        One entry per stage; empty when the EEG is already at (or below) the latent frame rate, in
        which case the interpolation that follows upsamples.
    """
    if n_samples <= 0 or n_frames <= 0:
        raise ValueError(f"need positive sizes, got n_samples={n_samples}, n_frames={n_frames}")
    strides = []
    length = n_samples
    while math.ceil(length / max_stride) >= n_frames:
        strides.append(max_stride)
        length = math.ceil(length / max_stride)
    return tuple(strides)


class EEGConvNet(ModelMixin, ConfigMixin):
    """Regress the clip's VAE latent from its EEG window.

    Parameters
    ----------
    eeg_channels : int
        EEG channels (124 after preprocessing).
    eeg_sfreq : float
        EEG sampling rate in Hz.
    clip_seconds : float
        Window length in seconds (3.5).
    latent_channels, latent_frames, latent_bins : int
        The latent shape to produce, ``(8, 88, 16)`` for a 3.5 s clip.
    n_subjects : int
        Subjects seen in training (size of the subject layer).
    subject_cond : bool
        Whether a per-subject channel-mixing layer is applied to the EEG first.
    allow_unknown_subject : bool
        Accept subject −1 (a subject not seen in training), see :class:`~eeg2music.models.subject_layer.SubjectLayer`.
    hidden_channels : int
        Spatial filters, and the width of the temporal convs (a multiple of 8: GroupNorm uses 8 groups).
    stage_kernel, context_kernel : int
        Temporal kernels (odd) of the strided stages (in EEG samples at their rate) and of the context
        conv (in latent frames).
    eeg_samples : int, optional
        Samples per EEG window when the data's rounding differs from ``round(clip_seconds × eeg_sfreq)``.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        eeg_channels: int = 124,
        eeg_sfreq: float = 125.0,
        clip_seconds: float = 3.5,
        latent_channels: int = 8,
        latent_frames: int = 88,
        latent_bins: int = 16,
        n_subjects: int = 1,
        subject_cond: bool = False,
        allow_unknown_subject: bool = False,
        hidden_channels: int = 64,
        stage_kernel: int = 5,
        context_kernel: int = 9,
        eeg_samples: int | None = None,
    ):
        super().__init__()
        for name, kernel in (("stage_kernel", stage_kernel), ("context_kernel", context_kernel)):
            if kernel < 1 or kernel % 2 != 1:
                raise ValueError(f"EEGConvNet: {name} must be odd and positive, got {kernel}")
        if hidden_channels % 8:
            raise ValueError(f"EEGConvNet: hidden_channels must be a multiple of 8 (GroupNorm), got {hidden_channels}")
        self.eeg_samples = int(eeg_samples) if eeg_samples else clip_samples(clip_seconds, eeg_sfreq)
        self.subject_layer = (
            SubjectLayer(n_subjects, eeg_channels, allow_unknown=allow_unknown_subject) if subject_cond else None
        )

        def block(conv: nn.Conv1d) -> nn.Sequential:
            return nn.Sequential(conv, nn.GroupNorm(8, hidden_channels), nn.GELU())

        self.spatial = block(nn.Conv1d(eeg_channels, hidden_channels, 1))
        self.stages = nn.ModuleList(
            block(nn.Conv1d(hidden_channels, hidden_channels, stage_kernel, stride=stride, padding=stage_kernel // 2))
            for stride in temporal_strides(self.eeg_samples, latent_frames)
        )
        self.context = block(nn.Conv1d(hidden_channels, hidden_channels, context_kernel, padding=context_kernel // 2))
        self.head = nn.Conv1d(hidden_channels, latent_channels * latent_bins, 1)
        refine = 2 * latent_channels
        self.refine = nn.Sequential(
            nn.Conv2d(latent_channels, refine, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(refine, latent_channels, 3, padding=1),
        )

    def forward(self, eeg: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """Predict latents ``(B, latent_channels, latent_frames, latent_bins)`` from ``eeg (B, C, T)``."""
        cfg = self.config
        if eeg.ndim != 3 or eeg.shape[1] != cfg.eeg_channels or eeg.shape[2] != self.eeg_samples:
            raise ValueError(
                f"EEGConvNet: eeg must have shape (batch, {cfg.eeg_channels} channels, {self.eeg_samples} samples) "
                f"({cfg.clip_seconds} s at {cfg.eeg_sfreq} Hz); received shape {tuple(eeg.shape)}"
            )
        if self.subject_layer is not None:
            eeg = self.subject_layer(eeg, subject)
        hidden = self.spatial(eeg)
        for stage in self.stages:
            hidden = stage(hidden)
        # The strided stages land within a factor 2 of the latent frame rate; interpolation closes the gap.
        hidden = F.interpolate(hidden, size=cfg.latent_frames, mode="linear", align_corners=False)
        hidden = self.context(hidden)
        latent = self.head(hidden)  # (B, channels * bins, frames)
        latent = latent.reshape(latent.shape[0], cfg.latent_channels, cfg.latent_bins, cfg.latent_frames)
        latent = latent.transpose(2, 3)  # → (B, channels, frames, bins), the VAE's layout
        return latent + self.refine(latent)
