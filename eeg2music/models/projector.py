"""The EEG projector P: strided 1D convolutions from an EEG window onto the UNet's latent grid.

:func:`projector_plan` / :class:`ProjectorPlan` derive P's widths, strides and kernel sizes from the
EEG sampling rate and the backbone; :class:`EEGProjector` is the module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.activations import get_activation
from torch import nn

#: The largest misalignment (in latent frames) that cropping or padding may fix; a larger one means
#: the projector's frame rate differs from the latent frame rate, and the frames are resampled.
MAX_BOUNDARY_FRAMES = 1.0


def clip_samples(clip_seconds: float, sfreq: float) -> int:
    """Number of EEG samples in a clip: ``clip_seconds × sfreq`` rounded half up (3.5 s at 125 Hz → 438)."""
    return int(math.floor(clip_seconds * sfreq + 0.5))


def _split_stride(total: int, n_layers: int) -> tuple[int, ...]:
    """Factor a total downsampling into ``n_layers`` integer strides, largest first.

    Prime factors, merged (smallest two first) until they fit in ``n_layers``, padded with 1: 40 →
    (5, 2, 2, 2), the paper's strides at 1 kHz; 5 → (5, 1, 1, 1) at 125 Hz; 32 → (4, 2, 2, 2). Putting
    the largest stride first decimates the long raw input early, where it is cheapest to do so.
    """
    factors: list[int] = []
    rest, p = total, 2
    while rest > 1 and p * p <= rest:
        while rest % p == 0:
            factors.append(p)
            rest //= p
        p += 1
    if rest > 1:
        factors.append(rest)
    while len(factors) > n_layers:
        factors.sort()
        factors = [factors[0] * factors[1]] + factors[2:]
    factors.sort(reverse=True)
    return tuple(factors + [1] * (n_layers - len(factors)))


@dataclass(frozen=True)
class ProjectorPlan:
    """The layout of the projector P, derived by :func:`projector_plan` (all fields are plain numbers).

    Attributes
    ----------
    eeg_channels, eeg_sfreq, clip_seconds, eeg_samples
        The EEG window P reads: channels × samples at ``eeg_sfreq`` Hz.
    latent_frames, latent_bins, first_block_channels
        The feature map P writes: the UNet's first width × latent frames (time) × latent bins (freq).
    widths
        Channels from the input to each layer's output (``widths[0] == eeg_channels``,
        ``widths[-1] == first_block_channels * latent_bins``).
    strides, kernel_sizes, paddings
        Per Conv1d layer.
    exact_frames
        ``eeg_samples / total_stride``: the frames the window holds at the projector's frame rate.
    conv_frames
        Frames the conv stack outputs (``ceil(eeg_samples / total_stride)``: a partly filled last
        frame counts, as the VAE counts the mel frames it pads).
    alignment
        How ``conv_frames`` becomes ``latent_frames``: ``"none"``, ``"crop"`` / ``"pad"`` (trailing
        frames, when the frame rates agree and only the window's edge differs) or ``"interpolate"``
        (linear resampling, when the rates differ).
    """

    eeg_channels: int
    eeg_sfreq: float
    clip_seconds: float
    eeg_samples: int
    latent_frames: int
    latent_bins: int
    first_block_channels: int
    widths: tuple[int, ...]
    strides: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    paddings: tuple[int, ...]
    exact_frames: float
    conv_frames: int
    alignment: str

    @property
    def total_stride(self) -> int:
        """Product of the strides: EEG samples per projector frame."""
        return math.prod(self.strides)

    @property
    def n_layers(self) -> int:
        return len(self.strides)

    @property
    def frame_rate(self) -> float:
        """Projector frames per second (Hz)."""
        return self.eeg_sfreq / self.total_stride

    @property
    def latent_frame_rate(self) -> float:
        """Latent frames per second of the clip (Hz)."""
        return self.latent_frames / self.clip_seconds

    def layer_table(self) -> list[dict[str, Any]]:
        """One row per Conv1d layer: widths, kernel, stride, frames and the time each frame spans."""
        rows = []
        frames = self.eeg_samples
        receptive = 1
        jump = 1
        for i, (stride, kernel, padding) in enumerate(zip(self.strides, self.kernel_sizes, self.paddings)):
            out_frames = (frames + 2 * padding - kernel) // stride + 1
            receptive += (kernel - 1) * jump
            jump *= stride
            rows.append(
                {
                    "layer": f"conv{i + 1}",
                    "in_channels": self.widths[i],
                    "out_channels": self.widths[i + 1],
                    "kernel": kernel,
                    "stride": stride,
                    "padding": padding,
                    "frames_in": frames,
                    "frames_out": out_frames,
                    "frame_rate_hz": self.eeg_sfreq / jump,
                    "receptive_field_ms": 1000.0 * receptive / self.eeg_sfreq,
                }
            )
            frames = out_frames
        return rows

    def to_dict(self) -> dict[str, Any]:
        """The plan and its derived quantities, for JSON summaries."""
        return {
            **asdict(self),
            "total_stride": self.total_stride,
            "frame_rate_hz": self.frame_rate,
            "latent_frame_rate_hz": self.latent_frame_rate,
        }


def projector_plan(
    eeg_channels: int,
    eeg_sfreq: float,
    clip_seconds: float,
    latent_frames: int,
    latent_bins: int,
    first_block_channels: int,
    *,
    n_layers: int = 4,
    eeg_samples: int | None = None,
) -> ProjectorPlan:
    """Derive the projector's layout from the EEG window and the backbone's first feature map.

    The rules (the paper publishes only the 1 kHz case: 124 → 256 → 512 → 1024 → 2048 channels,
    strides (5, 2, 2, 2); kernel sizes are not published):

    * **Total stride** ``D = round(eeg_samples / latent_frames)``: one projector frame per latent
      frame. At 1 kHz, 3500 / 88 → 40; at 125 Hz, 438 / 88 → 5. (The latent frame rate of AudioLDM2
      is 16 kHz / hop 160 / VAE factor 4 = 25 Hz, so both divide exactly.)
    * **Strides**: ``D`` factored into ``n_layers`` integers, largest first (:func:`_split_stride`):
      (5, 2, 2, 2) at 1 kHz, (5, 1, 1, 1) at 125 Hz.
    * **Widths**: the last layer outputs ``first_block_channels × latent_bins`` channels (128 × 16 =
      2048 for AudioLDM2-music), reshaped to the UNet's first feature map; each earlier layer has half
      the channels of the next (256, 512, 1024, 2048), so the widths grow as time is decimated.
    * **Kernels** ``2 × stride + 1`` (3 where the stride is 1) with padding ``stride``: odd, centred
      kernels that overlap their neighbours by one stride on each side (no aliasing gaps), and give
      ``ceil(L / stride)`` frames at every layer.
    * **Alignment** to ``latent_frames``: the conv stack yields ``ceil(eeg_samples / D)`` frames
      (3500 samples / 40 = 87.5 → 88, the half frame padded with zeros, just as the VAE pads 350 mel
      frames to 352). If that count still differs from ``latent_frames`` while
      ``|eeg_samples / D - latent_frames| <= 1`` (same frame rate, the windows differ only at their
      end) the trailing frames are cropped or edge-padded, which keeps frame *k* of the EEG aligned
      with latent frame *k*; otherwise the frame rates differ and the frames are linearly resampled.

    Parameters
    ----------
    eeg_channels : int
        EEG channels after preprocessing (124 for NMED-T).
    eeg_sfreq : float
        EEG sampling rate in Hz (125 for the cleaned NMED-T release, 1000 for the raw one).
    clip_seconds : float
        Window length in seconds (3.5).
    latent_frames, latent_bins : int
        The backbone's latent time frames and frequency bins (88, 16).
    first_block_channels : int
        ``unet.config.block_out_channels[0]`` (128 for AudioLDM2-music).
    n_layers : int
        Number of Conv1d layers (4, as in the paper).
    eeg_samples : int, optional
        Samples per window; default :func:`clip_samples` ``(clip_seconds, eeg_sfreq)``.

    Returns
    -------
    ProjectorPlan
    """
    for name, value in (
        ("eeg_channels", eeg_channels),
        ("latent_frames", latent_frames),
        ("latent_bins", latent_bins),
        ("first_block_channels", first_block_channels),
        ("n_layers", n_layers),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"projector_plan: {name} must be a positive integer, got {value!r}")
    if not (eeg_sfreq > 0 and math.isfinite(eeg_sfreq)):
        raise ValueError(f"projector_plan: eeg_sfreq must be a positive number of Hz, got {eeg_sfreq!r}")
    if not (clip_seconds > 0 and math.isfinite(clip_seconds)):
        raise ValueError(f"projector_plan: clip_seconds must be a positive number of seconds, got {clip_seconds!r}")
    if eeg_samples is None:
        eeg_samples = clip_samples(clip_seconds, eeg_sfreq)
    if eeg_samples < 1:
        raise ValueError(
            f"projector_plan: a {clip_seconds} s window at {eeg_sfreq} Hz holds {eeg_samples} samples; need at least 1"
        )
    total_stride = max(1, round(eeg_samples / latent_frames))
    strides = _split_stride(total_stride, n_layers)
    kernel_sizes = tuple(2 * s + 1 if s > 1 else 3 for s in strides)
    paddings = tuple(k // 2 for k in kernel_sizes)
    out_channels = first_block_channels * latent_bins
    widths = (eeg_channels,) + tuple(math.ceil(out_channels / 2 ** (n_layers - 1 - i)) for i in range(n_layers))
    exact_frames = eeg_samples / total_stride
    conv_frames = eeg_samples
    for stride, kernel, padding in zip(strides, kernel_sizes, paddings):
        conv_frames = (conv_frames + 2 * padding - kernel) // stride + 1
    if conv_frames == latent_frames:
        alignment = "none"
    elif abs(exact_frames - latent_frames) <= MAX_BOUNDARY_FRAMES:
        alignment = "crop" if conv_frames > latent_frames else "pad"
    else:
        alignment = "interpolate"
    return ProjectorPlan(
        eeg_channels=int(eeg_channels),
        eeg_sfreq=float(eeg_sfreq),
        clip_seconds=float(clip_seconds),
        eeg_samples=int(eeg_samples),
        latent_frames=int(latent_frames),
        latent_bins=int(latent_bins),
        first_block_channels=int(first_block_channels),
        widths=widths,
        strides=strides,
        kernel_sizes=kernel_sizes,
        paddings=paddings,
        exact_frames=exact_frames,
        conv_frames=int(conv_frames),
        alignment=alignment,
    )


def _group_count(channels: int, max_groups: int = 32) -> int:
    """The largest number of GroupNorm groups ≤ ``max_groups`` that divides ``channels``."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def align_frames(features: torch.Tensor, latent_frames: int, alignment: str) -> torch.Tensor:
    """Bring the last (time) axis of ``features`` to ``latent_frames`` as the plan says.

    ``"crop"`` drops trailing frames, ``"pad"`` repeats the last frame, ``"interpolate"`` resamples
    linearly; ``"none"`` returns the input (its length must already match).
    """
    frames = features.shape[-1]
    if alignment == "none" or frames == latent_frames:
        if frames != latent_frames:
            raise ValueError(f"align_frames: {frames} frames but {latent_frames} expected and alignment 'none'")
        return features
    if alignment == "crop":
        return features[..., :latent_frames]
    if alignment == "pad":
        return F.pad(features, (0, latent_frames - frames), mode="replicate")
    if alignment == "interpolate":
        return F.interpolate(features, size=latent_frames, mode="linear", align_corners=False)
    raise ValueError(f"align_frames: unknown alignment {alignment!r}; expected none, crop, pad or interpolate")


def check_eeg(eeg: torch.Tensor, channels: int, samples: int, sfreq: float, where: str) -> None:
    expected = f"(batch, {channels} channels, {samples} samples)"
    if not isinstance(eeg, torch.Tensor):
        raise TypeError(f"{where}: eeg must be a torch.Tensor of shape {expected}, got {type(eeg).__name__}")
    if eeg.ndim != 3:
        raise ValueError(f"{where}: eeg must have shape {expected}; received shape {tuple(eeg.shape)}")
    if eeg.shape[1] != channels:
        raise ValueError(
            f"{where}: eeg has {eeg.shape[1]} channels, expected {channels}: expected shape {expected}, "
            f"received {tuple(eeg.shape)}"
        )
    if eeg.shape[2] != samples:
        raise ValueError(
            f"{where}: eeg window has {eeg.shape[2]} samples, expected {samples} (the model was built for "
            f"{samples} samples at {sfreq:g} Hz): expected shape {expected}, received {tuple(eeg.shape)}"
        )


class EEGProjector(nn.Module):
    """P: a strided Conv1d stack from an EEG window to the UNet's first feature map.

    ``(B, C, T) → (B, block_out_channels[0], latent_frames, latent_bins)``; the layout comes from
    :func:`projector_plan` (see there for the rules and the paper's 1 kHz case).

    Between layers: GroupNorm then the UNet's activation (SiLU for AudioLDM2). GroupNorm rather than
    BatchNorm because it uses no batch statistics: the output for a window does not depend on what
    else is in the batch (small batches, mixed subjects) and training and sampling compute the same
    function. The last layer is linear (no normalisation, no activation) so the scale of ``P(eeg)``
    relative to ``conv_in(z_t)``, to which it is added, is learned freely. Unlike diffusers'
    ``ControlNetConditioningEmbedding``, the last layer is *not* zero-initialised: the zero
    convolutions at the ControlNet's outputs already keep the base model intact at initialisation, and
    a second zero would delay the first gradient reaching P by one more optimiser step.

    Parameters
    ----------
    plan : ProjectorPlan
        From :func:`projector_plan`.
    act_fn : str
        Activation between layers (a diffusers activation name; the UNet's ``act_fn``).
    """

    def __init__(self, plan: ProjectorPlan, act_fn: str = "silu"):
        super().__init__()
        self.plan = plan
        layers: list[nn.Module] = []
        for i in range(plan.n_layers):
            out_channels = plan.widths[i + 1]
            layers.append(
                nn.Conv1d(
                    plan.widths[i],
                    out_channels,
                    kernel_size=plan.kernel_sizes[i],
                    stride=plan.strides[i],
                    padding=plan.paddings[i],
                )
            )
            if i < plan.n_layers - 1:
                layers.append(nn.GroupNorm(_group_count(out_channels), out_channels))
                layers.append(get_activation(act_fn))
        self.layers = nn.Sequential(*layers)

    def forward(self, eeg: torch.Tensor) -> torch.Tensor:
        """Project ``eeg (B, C, T)`` to ``(B, first_block_channels, latent_frames, latent_bins)``."""
        plan = self.plan
        check_eeg(eeg, plan.eeg_channels, plan.eeg_samples, plan.eeg_sfreq, "EEGProjector")
        features = align_frames(self.layers(eeg), plan.latent_frames, plan.alignment)
        batch = features.shape[0]
        # Channel c·bins + f of the last layer becomes feature c at frequency bin f.
        features = features.reshape(batch, plan.first_block_channels, plan.latent_bins, plan.latent_frames)
        return features.transpose(2, 3)
