"""The EEG ControlNet: projector P, subject layer and a zero-convolution copy of the UNet encoder.

Postolache et al. steer a frozen AudioLDM2 UNet with EEG the way ControlNet (Zhang et al., 2023)
steers Stable Diffusion with edge maps. A trainable copy of the UNet's encoder reads the noisy
latent *plus* the projected EEG, and its features are added to the frozen UNet's skip connections
through 1×1 convolutions initialised to zero::

    eeg (B, C, T) ──► S: subject layer (C × C per subject) ──► P: strided Conv1d stack
                                                                  │ (B, c0, frames, bins)
    z_t (B, 8, frames, bins) ──► conv_in ──────────────────────(+)──► h
    h ──► down blocks ──► mid block          (copies of the UNet's, with its weights)
          │ every skip       │
          ▼                  ▼
       zero 1×1 conv     zero 1×1 conv        × conditioning_scale
          │                  │
          ▼                  ▼
    frozen UNet: added to the skips its up blocks read, and to its mid block's output

Because the added convolutions start at exactly zero, the controlled UNet computes exactly what the
base model computes at initialisation, whatever the EEG: training starts from the pretrained
generator and can only move away from it as far as the gradients justify.

Public API
----------
:func:`projector_plan` / :class:`ProjectorPlan`
    How P's widths, strides and kernel sizes follow from the EEG sampling rate and the backbone.
:class:`EEGProjector`, :class:`SubjectLayer`, :class:`EEGControlNet`
    The trainable parts (the ControlNet holds the other two; ``save_pretrained`` writes all of it).
:func:`apply_control`, :func:`attach_controlnet`, :func:`controlled_noise_prediction`
    Adding the residuals to the *unmodified* UNet through forward hooks, for a single call, for every
    call (e.g. inside the stock ``AudioLDM2Pipeline``), and the ε prediction training and sampling use.
:func:`trace_shapes`, :func:`parameter_counts`, :func:`zero_init_check`, :func:`plot_zero_init`,
:func:`controlnet_summary`
    What notebook 03 shows and writes.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.audioldm2.modeling_audioldm2 import (
    AudioLDM2UNet2DConditionModel,
    UNetMidBlock2DCrossAttn,
    get_down_block,
)
from torch import nn

#: The subject index that selects the "unknown subject" path (leave-one-subject-out evaluation).
UNKNOWN_SUBJECT = -1

#: Ways to treat a subject the subject layer has not seen (see :class:`SubjectLayer`).
UNKNOWN_SUBJECT_MODES = ("mean", "shared")

#: The largest misalignment (in latent frames) that cropping or padding may fix; a larger one means
#: the projector's frame rate differs from the latent frame rate, and the frames are resampled.
MAX_BOUNDARY_FRAMES = 1.0


# --------------------------------------------------------------------------------------------------
# Projector P
# --------------------------------------------------------------------------------------------------


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


def _check_eeg(eeg: torch.Tensor, channels: int, samples: int, sfreq: float, where: str) -> None:
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
        _check_eeg(eeg, plan.eeg_channels, plan.eeg_samples, plan.eeg_sfreq, "EEGProjector")
        features = align_frames(self.layers(eeg), plan.latent_frames, plan.alignment)
        batch = features.shape[0]
        # Channel c·bins + f of the last layer becomes feature c at frequency bin f.
        features = features.reshape(batch, plan.first_block_channels, plan.latent_bins, plan.latent_frames)
        return features.transpose(2, 3)


# --------------------------------------------------------------------------------------------------
# Subject layer
# --------------------------------------------------------------------------------------------------


def _subject_tensor(subject: Any, batch: int, device: torch.device, where: str) -> torch.Tensor:
    """``subject`` as a ``(batch,)`` int64 tensor (an int or a 0-d tensor is broadcast)."""
    if subject is None:
        raise ValueError(
            f"{where}: subject is required (the model was built with subject_cond=True); pass one subject "
            f"index per window, or {UNKNOWN_SUBJECT} (UNKNOWN_SUBJECT) for a subject not seen in training"
        )
    if isinstance(subject, numbers.Integral) and not isinstance(subject, bool):
        subject = torch.tensor(int(subject))
    elif not isinstance(subject, torch.Tensor):
        try:
            subject = torch.as_tensor(subject)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{where}: subject must be integer indices, got {subject!r}") from None
    if subject.is_floating_point() or subject.is_complex() or subject.dtype == torch.bool:
        raise TypeError(f"{where}: subject must hold integer indices, got dtype {subject.dtype}")
    tensor = subject.to(device=device, dtype=torch.long)
    if tensor.ndim == 0:
        tensor = tensor.expand(batch)
    if tensor.shape != (batch,):
        raise ValueError(
            f"{where}: subject must have shape ({batch},) (one index per window of the batch); "
            f"received shape {tuple(tensor.shape)}"
        )
    return tensor


class SubjectLayer(nn.Module):
    """S: a per-subject C × C channel-mixing matrix applied to the EEG, initialised to the identity.

    In the style of Défossez et al. (2023, "Decoding speech perception from non-invasive brain
    recordings"): each subject gets its own spatial re-mixing of the electrodes, absorbing differences
    in head shape, cap placement and source orientation, so the shared network after it sees a common
    "virtual montage". Starting at the identity means the layer is a no-op until training moves it.

    Subject :data:`UNKNOWN_SUBJECT` (−1) is a subject not seen in training (leave-one-subject-out).
    It is allowed only with ``allow_unknown=True`` and uses either

    * ``unknown="mean"``: the average of the subjects' matrices (no extra parameters; the natural
      estimate of an unseen subject's mixing under a random-effects view), or
    * ``unknown="shared"``: a separate learned matrix, which training must fit by feeding some windows
      as :data:`UNKNOWN_SUBJECT` (subject dropout); otherwise it stays the identity.

    Parameters
    ----------
    n_subjects : int
        Number of training subjects; valid indices are ``0 … n_subjects - 1``.
    channels : int
        EEG channels C.
    allow_unknown : bool
        Whether :data:`UNKNOWN_SUBJECT` is accepted.
    unknown : {"mean", "shared"}
        The unknown-subject path (used only when ``allow_unknown``).
    """

    def __init__(self, n_subjects: int, channels: int, allow_unknown: bool = False, unknown: str = "mean"):
        super().__init__()
        if n_subjects < 1:
            raise ValueError(f"SubjectLayer: n_subjects must be ≥ 1, got {n_subjects}")
        if unknown not in UNKNOWN_SUBJECT_MODES:
            raise ValueError(f"SubjectLayer: unknown={unknown!r}; expected one of {UNKNOWN_SUBJECT_MODES}")
        self.n_subjects = int(n_subjects)
        self.channels = int(channels)
        self.allow_unknown = bool(allow_unknown)
        self.unknown = unknown
        self.weight = nn.Parameter(torch.eye(channels).repeat(n_subjects, 1, 1))
        if allow_unknown and unknown == "shared":
            self.shared_weight = nn.Parameter(torch.eye(channels))
        else:
            self.register_parameter("shared_weight", None)

    def extra_repr(self) -> str:
        path = self.unknown if self.allow_unknown else "none"
        return f"n_subjects={self.n_subjects}, channels={self.channels}, unknown_subject={path}"

    def unknown_matrix(self) -> torch.Tensor:
        """The C × C matrix used for :data:`UNKNOWN_SUBJECT`."""
        if not self.allow_unknown:
            raise ValueError("SubjectLayer: this layer has no unknown-subject path (allow_unknown=False)")
        return self.shared_weight if self.shared_weight is not None else self.weight.mean(dim=0)

    def check_subjects(self, subject: torch.Tensor) -> None:
        """Raise a clear error for an index outside ``0 … n_subjects - 1`` (or an unexpected −1)."""
        if subject.device.type == "meta":
            return  # shapes only: there are no values to check
        low = UNKNOWN_SUBJECT if self.allow_unknown else 0
        bad = (subject < low) | (subject >= self.n_subjects)
        if bool(bad.any()):
            values = sorted(set(subject[bad].tolist()))
            if values == [UNKNOWN_SUBJECT]:
                raise ValueError(
                    f"SubjectLayer: subject {UNKNOWN_SUBJECT} (unknown subject) given, but this model has no "
                    f"unknown-subject path; build it with allow_unknown_subject=True for leave-one-subject-out"
                )
            valid = f"0 … {self.n_subjects - 1}" + (f" or {UNKNOWN_SUBJECT} (unknown)" if self.allow_unknown else "")
            raise ValueError(
                f"SubjectLayer: subject index {values} out of range; expected {valid} "
                f"(the model was built for n_subjects={self.n_subjects})"
            )

    def forward(self, eeg: torch.Tensor, subject: Any) -> torch.Tensor:
        """Mix the channels of ``eeg (B, C, T)`` with each window's subject matrix."""
        if eeg.ndim != 3 or eeg.shape[1] != self.channels:
            raise ValueError(
                f"SubjectLayer: eeg must have shape (batch, {self.channels} channels, samples); "
                f"received shape {tuple(eeg.shape)}"
            )
        subject = _subject_tensor(subject, eeg.shape[0], eeg.device, "SubjectLayer")
        self.check_subjects(subject)
        matrices = self.weight[subject.clamp(min=0)]
        if self.allow_unknown:
            is_unknown = (subject == UNKNOWN_SUBJECT)[:, None, None]
            matrices = torch.where(is_unknown, self.unknown_matrix().expand_as(matrices), matrices)
        return torch.bmm(matrices.to(eeg.dtype), eeg)


# --------------------------------------------------------------------------------------------------
# The ControlNet
# --------------------------------------------------------------------------------------------------

#: UNet config keys that change the architecture of the parts the ControlNet copies.
_ENCODER_CONFIG_KEYS = (
    "in_channels",
    "flip_sin_to_cos",
    "freq_shift",
    "down_block_types",
    "mid_block_type",
    "only_cross_attention",
    "block_out_channels",
    "layers_per_block",
    "downsample_padding",
    "mid_block_scale_factor",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "attention_head_dim",
    "use_linear_projection",
    "upcast_attention",
    "resnet_time_scale_shift",
    "time_embedding_type",
    "time_embedding_dim",
    "time_embedding_act_fn",
    "timestep_post_act",
    "time_cond_proj_dim",
    "conv_in_kernel",
)


def _encoder_config(unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """The UNet config keys the copied encoder depends on, with the UNet's own defaults filled in."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(AudioLDM2UNet2DConditionModel.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    unsupported = {
        "class_embed_type": None,
        "num_class_embeds": None,
        "class_embeddings_concat": False,
        "num_attention_heads": None,
    }
    for key, neutral in unsupported.items():
        if unet_config.get(key, neutral) != neutral:
            raise ValueError(
                f"EEGControlNet: the UNet config sets {key}={unet_config[key]!r}; the ControlNet copies only "
                f"UNets without class embeddings and with attention_head_dim (as AudioLDM2's do)"
            )
    config = {}
    for key in _ENCODER_CONFIG_KEYS:
        value = unet_config.get(key, defaults[key])
        # JSON turns tuples into lists; keep one spelling so configs compare equal.
        config[key] = _as_lists(value)
    if config["time_embedding_type"] != "positional":
        raise ValueError(f"EEGControlNet: time_embedding_type {config['time_embedding_type']!r} is not supported")
    if config["mid_block_type"] != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"EEGControlNet: mid_block_type {config['mid_block_type']!r} is not supported")
    return config


def _as_lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def _per_block(value: Any, n_blocks: int) -> list[Any]:
    """A per-down-block setting: a scalar is repeated, a list is kept (as the UNet does)."""
    if isinstance(value, (list, tuple)) and len(value) == n_blocks:
        return list(value)
    return [value] * n_blocks


class EEGControlNet(ModelMixin, ConfigMixin):
    """ControlNet for AudioLDM2's UNet, conditioned on EEG through a subject layer and a projector.

    It holds copies of the UNet's ``conv_in``, ``time_proj`` / ``time_embedding``, all down blocks and
    the mid block (built from the UNet's config with the same diffusers classes, and filled with its
    weights by :meth:`from_unet`), one zero-initialised 1×1 convolution per skip connection the
    down path emits (``controlnet_down_blocks``) and one for the mid block (``controlnet_mid_block``),
    plus the :class:`SubjectLayer` S (when ``subject_cond``) and the :class:`EEGProjector` P. Its
    forward computes ``h = conv_in(z_t) + P(S(eeg))``, runs the copied encoder and returns the
    zero-conv outputs × ``conditioning_scale``; :func:`apply_control` adds them to the frozen UNet.

    Why not diffusers' ``ControlNetModel.from_unet``: in diffusers 0.42 it fails on
    ``AudioLDM2UNet2DConditionModel`` (a TypeError in its constructor, which cannot read AudioLDM2's
    per-block lists of cross-attention dimensions), and AudioLDM2's blocks differ from the stock ones
    (several attention modules per layer, a second cross-attention stream ``encoder_hidden_states_1``),
    so a ``ControlNetModel`` cannot hold copies of them. Nor does that UNet's ``forward`` take
    ``down_block_additional_residuals``. So this class rebuilds the encoder with AudioLDM2's own
    ``get_down_block`` / ``UNetMidBlock2DCrossAttn``, mirrors ``AudioLDM2UNet2DConditionModel.forward``
    for the time embedding, down and mid blocks, keeps diffusers' ControlNet names
    (``controlnet_down_blocks``, ``controlnet_mid_block``) and diffusers' ``save_pretrained`` /
    ``from_pretrained`` (config.json + safetensors).

    Parameters
    ----------
    unet_config : dict
        The UNet's config (``dict(unet.config)``); only the keys that shape the encoder are kept.
    eeg_channels, eeg_sfreq, clip_seconds, eeg_samples, projector_layers
        The EEG window and the projector (see :func:`projector_plan`).
    latent_frames, latent_bins : int
        The latent's time frames and frequency bins (88, 16).
    n_subjects : int
        Training subjects (indices ``0 … n_subjects - 1``).
    subject_cond : bool
        Build the subject layer (False: no subject parameters at all; ``subject`` is ignored).
    allow_unknown_subject : bool
        Accept :data:`UNKNOWN_SUBJECT` (−1), see :class:`SubjectLayer`.
    unknown_subject : {"mean", "shared"}
        The unknown-subject path.
    control_min_timestep : int
        The ControlNet acts at diffusion steps ``t ≥ control_min_timestep`` only; below, its residuals
        are zero and the frozen UNet denoises alone (0, the paper's setting: at every step). The EEG
        can only tell what the noisy latent does not, i.e. at high noise; training the ControlNet there
        alone concentrates its few steps where its signal is (see :mod:`eeg2music.train`), and the
        low-noise steps, which refine detail the EEG does not carry, stay the backbone's. Saved in the
        config, so sampling applies it as training did. Like the ControlNet pipelines' ``control_guidance_start``
        / ``control_guidance_end`` in diffusers, but in the schedule's timesteps and fixed at training.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        unet_config: dict,
        eeg_channels: int = 124,
        eeg_sfreq: float = 125.0,
        clip_seconds: float = 3.5,
        latent_frames: int = 88,
        latent_bins: int = 16,
        n_subjects: int = 20,
        subject_cond: bool = True,
        allow_unknown_subject: bool = False,
        unknown_subject: str = "mean",
        projector_layers: int = 4,
        eeg_samples: int | None = None,
        control_min_timestep: int = 0,
    ):
        super().__init__()
        if isinstance(control_min_timestep, bool) or int(control_min_timestep) != control_min_timestep or control_min_timestep < 0:
            raise ValueError(f"EEGControlNet: control_min_timestep must be an integer ≥ 0, got {control_min_timestep!r}")
        encoder = _encoder_config(unet_config)
        channels = [int(c) for c in encoder["block_out_channels"]]
        n_blocks = len(channels)
        if len(encoder["down_block_types"]) != n_blocks:
            raise ValueError(
                f"EEGControlNet: {len(encoder['down_block_types'])} down_block_types for {n_blocks} block_out_channels"
            )
        layers_per_block = _per_block(encoder["layers_per_block"], n_blocks)
        heads = _per_block(encoder["attention_head_dim"], n_blocks)
        cross_attention_dim = encoder["cross_attention_dim"]
        if not (isinstance(cross_attention_dim, list) and len(cross_attention_dim) == n_blocks):
            cross_attention_dim = [cross_attention_dim] * n_blocks
        transformer_layers = _per_block(encoder["transformer_layers_per_block"], n_blocks)
        only_cross_attention = _per_block(encoder["only_cross_attention"], n_blocks)

        # Time embedding (mirrors AudioLDM2UNet2DConditionModel.__init__).
        time_embed_dim = encoder["time_embedding_dim"] or channels[0] * 4
        self.time_proj = Timesteps(channels[0], encoder["flip_sin_to_cos"], encoder["freq_shift"])
        self.time_embedding = TimestepEmbedding(
            channels[0],
            time_embed_dim,
            act_fn=encoder["act_fn"],
            post_act_fn=encoder["timestep_post_act"],
            cond_proj_dim=encoder["time_cond_proj_dim"],
        )
        act = encoder["time_embedding_act_fn"]
        self.time_embed_act = None if act is None else get_activation(act)

        kernel = encoder["conv_in_kernel"]
        self.conv_in = nn.Conv2d(encoder["in_channels"], channels[0], kernel_size=kernel, padding=(kernel - 1) // 2)

        # EEG path: S then P.
        self.subject_layer = (
            SubjectLayer(n_subjects, eeg_channels, allow_unknown=allow_unknown_subject, unknown=unknown_subject)
            if subject_cond
            else None
        )
        self.plan = projector_plan(
            eeg_channels,
            eeg_sfreq,
            clip_seconds,
            latent_frames,
            latent_bins,
            channels[0],
            n_layers=projector_layers,
            eeg_samples=eeg_samples,
        )
        self.projector = EEGProjector(self.plan, act_fn=encoder["act_fn"])

        # Encoder copy and zero convolutions, one per skip connection in the order the UNet emits them.
        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([self._zero_conv(channels[0])])
        for i, block_type in enumerate(encoder["down_block_types"]):
            is_final = i == n_blocks - 1
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers_per_block[i],
                    transformer_layers_per_block=transformer_layers[i],
                    in_channels=channels[max(i - 1, 0)],
                    out_channels=channels[i],
                    temb_channels=time_embed_dim,
                    add_downsample=not is_final,
                    resnet_eps=encoder["norm_eps"],
                    resnet_act_fn=encoder["act_fn"],
                    resnet_groups=encoder["norm_num_groups"],
                    cross_attention_dim=cross_attention_dim[i],
                    num_attention_heads=heads[i],
                    downsample_padding=encoder["downsample_padding"],
                    use_linear_projection=encoder["use_linear_projection"],
                    only_cross_attention=only_cross_attention[i],
                    upcast_attention=encoder["upcast_attention"],
                    resnet_time_scale_shift=encoder["resnet_time_scale_shift"],
                )
            )
            for _ in range(layers_per_block[i] + (0 if is_final else 1)):
                self.controlnet_down_blocks.append(self._zero_conv(channels[i]))
        self.mid_block = UNetMidBlock2DCrossAttn(
            transformer_layers_per_block=transformer_layers[-1],
            in_channels=channels[-1],
            temb_channels=time_embed_dim,
            resnet_eps=encoder["norm_eps"],
            resnet_act_fn=encoder["act_fn"],
            output_scale_factor=encoder["mid_block_scale_factor"],
            resnet_time_scale_shift=encoder["resnet_time_scale_shift"],
            cross_attention_dim=cross_attention_dim[-1],
            num_attention_heads=heads[-1],
            resnet_groups=encoder["norm_num_groups"],
            use_linear_projection=encoder["use_linear_projection"],
            upcast_attention=encoder["upcast_attention"],
        )
        self.controlnet_mid_block = self._zero_conv(channels[-1])

    @staticmethod
    def _zero_conv(channels: int) -> nn.Conv2d:
        conv = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        return conv

    # ---------------------------------------------------------------------------------------------

    @classmethod
    def from_unet(
        cls,
        unet: AudioLDM2UNet2DConditionModel,
        *,
        eeg_channels: int,
        eeg_sfreq: float,
        clip_seconds: float,
        latent_frames: int,
        latent_bins: int,
        n_subjects: int,
        subject_cond: bool = True,
        allow_unknown_subject: bool = False,
        unknown_subject: str = "mean",
        projector_layers: int = 4,
        eeg_samples: int | None = None,
        control_min_timestep: int = 0,
        load_weights_from_unet: bool = True,
    ) -> "EEGControlNet":
        """Build the ControlNet for ``unet``, copying its encoder weights (the UNet is not modified).

        The ControlNet is created on the UNet's device and in its dtype; a UNet on the ``meta``
        device gives a ControlNet on ``meta`` (shapes and parameter counts without memory).
        ``load_weights_from_unet=False`` keeps the copied parts freshly initialised (an ablation);
        see the class docstring for the other parameters.
        """
        if not isinstance(unet, AudioLDM2UNet2DConditionModel):
            raise TypeError(
                f"EEGControlNet.from_unet: expected diffusers' AudioLDM2UNet2DConditionModel, got {type(unet).__name__}"
            )
        unet_config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
        with torch.device(unet.device):
            controlnet = cls(
                unet_config=_encoder_config(unet_config),
                eeg_channels=int(eeg_channels),
                eeg_sfreq=float(eeg_sfreq),
                clip_seconds=float(clip_seconds),
                latent_frames=int(latent_frames),
                latent_bins=int(latent_bins),
                n_subjects=int(n_subjects),
                subject_cond=bool(subject_cond),
                allow_unknown_subject=bool(allow_unknown_subject),
                unknown_subject=unknown_subject,
                projector_layers=int(projector_layers),
                eeg_samples=None if eeg_samples is None else int(eeg_samples),
                control_min_timestep=int(control_min_timestep),
            )
        if controlnet.dtype != unet.dtype:
            # nn.Module.to: ModelMixin.to warns about float32-only modules even when there are none.
            nn.Module.to(controlnet, dtype=unet.dtype)
        if load_weights_from_unet:
            for name in ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block"):
                getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict())
        return controlnet

    def active_at(self, timestep: torch.Tensor | float | int) -> torch.Tensor:
        """Whether the ControlNet acts at each ``timestep``: ``t ≥ control_min_timestep`` (a bool tensor)."""
        t = torch.as_tensor(timestep)
        return t >= int(self.config.control_min_timestep)

    @property
    def n_residuals(self) -> int:
        """Number of down-path skip residuals (12 for AudioLDM2-music)."""
        return len(self.controlnet_down_blocks)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the copied UNet encoder (time embedding, conv_in, down and mid blocks)."""
        for module in (self.time_embedding, self.conv_in, self.down_blocks, self.mid_block):
            yield from module.parameters()

    def check_inputs(self, latents: torch.Tensor, eeg: torch.Tensor) -> None:
        """Raise one clear error for latents or EEG of the wrong shape (naming expected and received)."""
        plan = self.plan
        expected = (self.config.unet_config["in_channels"], plan.latent_frames, plan.latent_bins)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != expected:
            raise ValueError(
                f"EEGControlNet: latents must have shape (batch, {expected[0]} channels, {expected[1]} frames, "
                f"{expected[2]} bins); received shape {tuple(latents.shape)}"
            )
        _check_eeg(eeg, plan.eeg_channels, plan.eeg_samples, plan.eeg_sfreq, "EEGControlNet")
        if eeg.shape[0] != latents.shape[0]:
            raise ValueError(
                f"EEGControlNet: eeg has batch size {eeg.shape[0]} but latents {latents.shape[0]}; "
                f"expected one EEG window per latent"
            )

    def _time_embedding(
        self, timestep: torch.Tensor | float | int, sample: torch.Tensor, timestep_cond: torch.Tensor | None
    ) -> torch.Tensor:
        # Mirrors "1. time" of AudioLDM2UNet2DConditionModel.forward.
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            small = sample.device.type in ("mps", "npu")
            if isinstance(timestep, float):
                dtype = torch.float32 if small else torch.float64
            else:
                dtype = torch.int32 if small else torch.int64
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif len(timesteps.shape) == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        t_emb = self.time_proj(timesteps).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float | int,
        eeg: torch.Tensor,
        subject: Any = None,
        conditioning_scale: float = 1.0,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_1: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        encoder_attention_mask_1: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        timestep_cond: torch.Tensor | None = None,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Residuals for the frozen UNet from a noisy latent and an EEG window.

        Parameters
        ----------
        latents : torch.Tensor
            ``z_t``, shape ``(B, 8, latent_frames, latent_bins)``.
        timestep : tensor, int or float
            Diffusion step(s), as for the UNet.
        eeg : torch.Tensor
            ``(B, eeg_channels, eeg_samples)``.
        subject : int, sequence of int or tensor, optional
            Subject index per window (``0 … n_subjects - 1``, or −1 for an unknown subject when
            allowed); required when ``subject_cond``, ignored otherwise.
        conditioning_scale : float
            Multiplies every residual (0 turns the control off).
        encoder_hidden_states, encoder_hidden_states_1, attention_mask, encoder_attention_mask, \
encoder_attention_mask_1, cross_attention_kwargs, timestep_cond
            As for ``AudioLDM2UNet2DConditionModel.forward`` (the constant text conditioning); tensors
            with batch 1 are expanded to the batch of ``latents``.

        Returns
        -------
        down_block_residuals : tuple of torch.Tensor
            One per skip connection of the UNet's down path, in the order the UNet emits them.
        mid_block_residual : torch.Tensor
            Added to the UNet's mid-block output.
        """
        self.check_inputs(latents, eeg)
        batch = latents.shape[0]
        encoder_hidden_states, encoder_hidden_states_1, encoder_attention_mask, encoder_attention_mask_1 = (
            _expand_batch(t, batch)
            for t in (encoder_hidden_states, encoder_hidden_states_1, encoder_attention_mask, encoder_attention_mask_1)
        )
        if self.subject_layer is not None:
            eeg = self.subject_layer(eeg.to(latents.dtype), subject)
        # Masks become additive biases, as in AudioLDM2UNet2DConditionModel.forward.
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(latents.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(latents.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask_1 is not None:
            encoder_attention_mask_1 = ((1 - encoder_attention_mask_1.to(latents.dtype)) * -10000.0).unsqueeze(1)

        emb = self._time_embedding(timestep, latents, timestep_cond)
        control = self.projector(eeg.to(latents.dtype))
        sample = self.conv_in(latents) + control

        cross = dict(
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            cross_attention_kwargs=cross_attention_kwargs,
            encoder_attention_mask=encoder_attention_mask,
            encoder_hidden_states_1=encoder_hidden_states_1,
            encoder_attention_mask_1=encoder_attention_mask_1,
        )
        down_samples: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                if encoder_hidden_states is None:
                    raise ValueError(
                        "EEGControlNet: encoder_hidden_states is required: the copied down blocks cross-attend "
                        "to the (constant) text conditioning; pass backbone.unet_conditioning(batch_size)"
                    )
                sample, res_samples = block(hidden_states=sample, temb=emb, **cross)
            else:
                sample, res_samples = block(hidden_states=sample, temb=emb)
            down_samples += res_samples
        sample = self.mid_block(sample, emb, **cross)

        scale: float | torch.Tensor = conditioning_scale
        if self.config.control_min_timestep > 0:
            # per window: no residual at the low-noise steps the ControlNet is not trained for
            active = self.active_at(timestep).to(latents.device).reshape(-1).expand(batch)
            scale = (active.to(latents.dtype) * conditioning_scale).reshape(batch, 1, 1, 1)
        down_residuals = tuple(
            zero_conv(res) * scale for zero_conv, res in zip(self.controlnet_down_blocks, down_samples)
        )
        mid_residual = self.controlnet_mid_block(sample) * scale
        return down_residuals, mid_residual


# --------------------------------------------------------------------------------------------------
# Adding the residuals to the unmodified UNet
# --------------------------------------------------------------------------------------------------


def _skip_slices(unet: AudioLDM2UNet2DConditionModel) -> list[slice]:
    """Which down-path skips each up block reads (the UNet pops them from the end, one per resnet)."""
    total = sum(len(block.resnets) for block in unet.up_blocks)
    slices = []
    end = total
    for block in unet.up_blocks:
        start = end - len(block.resnets)
        slices.append(slice(start, end))
        end = start
    return slices


def _match_batch(residual: torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
    """``residual`` on ``like``'s device/dtype, tiled along the batch when the UNet runs k × B rows.

    Tiling serves classifier-free guidance (the pipeline stacks unconditional and conditional rows):
    both halves get the control, as in diffusers' ControlNet pipelines outside guess mode.
    """
    if residual.shape[1:] != like.shape[1:]:
        raise ValueError(
            f"apply_control: {what} has shape {tuple(residual.shape)} but the UNet's tensor there has shape "
            f"{tuple(like.shape)}; was the ControlNet built from this UNet?"
        )
    batch, rows = residual.shape[0], like.shape[0]
    if rows != batch:
        if rows % batch:
            raise ValueError(
                f"apply_control: {what} has batch {batch} but the UNet runs a batch of {rows} (not a multiple)"
            )
        residual = residual.repeat(rows // batch, *([1] * (residual.ndim - 1)))
    return residual.to(device=like.device, dtype=like.dtype)


class _ResidualInjector:
    """Forward hooks that add ControlNet residuals inside an unmodified AudioLDM2 UNet."""

    def __init__(self, unet: AudioLDM2UNet2DConditionModel):
        self.unet = unet
        self.slices = _skip_slices(unet)
        self.n_skips = self.slices[0].stop if self.slices else 0
        self.down: tuple[torch.Tensor, ...] | None = None
        self.mid: torch.Tensor | None = None
        self.handles: list[Any] = []

    def set(self, down: Sequence[torch.Tensor], mid: torch.Tensor) -> None:
        if len(down) != self.n_skips:
            raise ValueError(
                f"apply_control: {len(down)} down-block residuals given, but this UNet's up blocks read "
                f"{self.n_skips} skip connections; was the ControlNet built from this UNet?"
            )
        self.down, self.mid = tuple(down), mid

    def _up_hook(self, index: int):
        def hook(module, args, kwargs):
            if self.down is None:
                return None
            if "res_hidden_states_tuple" in kwargs:
                skips = kwargs["res_hidden_states_tuple"]
            elif len(args) > 1:
                skips = args[1]
            else:
                raise RuntimeError("apply_control: the up block was called without res_hidden_states_tuple")
            residuals = self.down[self.slices[index]]
            added = tuple(
                skip + _match_batch(res, skip, f"down-block residual {self.slices[index].start + j}")
                for j, (skip, res) in enumerate(zip(skips, residuals))
            )
            if "res_hidden_states_tuple" in kwargs:
                kwargs = {**kwargs, "res_hidden_states_tuple": added}
            else:
                args = (args[0], added, *args[2:])
            return args, kwargs

        return hook

    def _mid_hook(self, module, args, output):
        if self.mid is None:
            return None
        return output + _match_batch(self.mid, output, "mid-block residual")

    def attach(self) -> None:
        for i, block in enumerate(self.unet.up_blocks):
            self.handles.append(block.register_forward_pre_hook(self._up_hook(i), with_kwargs=True))
        self.handles.append(self.unet.mid_block.register_forward_hook(self._mid_hook))

    def detach(self) -> None:
        while self.handles:
            self.handles.pop().remove()


@contextlib.contextmanager
def apply_control(
    unet: AudioLDM2UNet2DConditionModel, down_residuals: Sequence[torch.Tensor], mid_residual: torch.Tensor
) -> Iterator[AudioLDM2UNet2DConditionModel]:
    """Within the block, every forward of ``unet`` adds these residuals to its skips and mid block.

    The UNet is not modified: forward pre-hooks on its up blocks add ``down_residuals`` to the
    ``res_hidden_states_tuple`` they receive, and a forward hook adds ``mid_residual`` to the mid
    block's output (the same places diffusers' ``down_block_additional_residuals`` /
    ``mid_block_additional_residual`` enter a ``UNet2DConditionModel``). The hooks are removed on
    exit, also when the block raises. Residuals of batch B are tiled when the UNet runs k × B rows.

    Parameters
    ----------
    unet : AudioLDM2UNet2DConditionModel
        The frozen backbone UNet.
    down_residuals, mid_residual
        From :class:`EEGControlNet`'s forward.

    Yields
    ------
    AudioLDM2UNet2DConditionModel
        The same ``unet``.
    """
    injector = _ResidualInjector(unet)
    injector.set(down_residuals, mid_residual)
    injector.attach()
    try:
        yield unet
    finally:
        injector.detach()


def _expand_batch(value: Any, batch: int) -> Any:
    """A batch-1 tensor viewed as ``batch`` rows (anything else unchanged)."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == 1 and batch != 1:
        return value.expand(batch, *value.shape[1:])
    return value


def expand_conditioning(conditioning: Mapping[str, Any] | None, batch: int) -> dict[str, Any]:
    """UNet conditioning kwargs with batch-1 tensors expanded to ``batch`` rows (others unchanged)."""
    return {key: _expand_batch(value, batch) for key, value in (conditioning or {}).items()}


def controlled_noise_prediction(
    unet: AudioLDM2UNet2DConditionModel,
    controlnet: EEGControlNet,
    latents: torch.Tensor,
    timestep: torch.Tensor | float | int,
    eeg: torch.Tensor,
    subject: Any = None,
    conditioning: Mapping[str, Any] | None = None,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """ε predicted by the frozen UNet steered by the EEG ControlNet (what training and sampling call).

    Parameters
    ----------
    unet, controlnet
        The backbone UNet and the ControlNet built from it.
    latents, timestep
        ``z_t`` ``(B, 8, frames, bins)`` and the diffusion step(s).
    eeg, subject
        ``(B, C, T)`` windows and their subject indices (see :meth:`EEGControlNet.forward`).
    conditioning : mapping
        The constant text conditioning (``backbone.conditioning`` or ``backbone.unet_conditioning(B)``:
        ``encoder_hidden_states``, ``encoder_hidden_states_1``, masks); batch-1 tensors are expanded.
    conditioning_scale : float
        Multiplies the ControlNet's residuals.

    Returns
    -------
    torch.Tensor
        ε, shape of ``latents``.
    """
    kwargs = expand_conditioning(conditioning, latents.shape[0])
    if not bool(controlnet.active_at(timestep).any()):  # below control_min_timestep: the backbone alone
        return unet(latents, timestep, **kwargs, return_dict=False)[0]
    down, mid = controlnet(latents, timestep, eeg, subject, conditioning_scale=conditioning_scale, **kwargs)
    with apply_control(unet, down, mid):
        return unet(latents, timestep, **kwargs, return_dict=False)[0]


def guided_noise_prediction(
    unet: AudioLDM2UNet2DConditionModel,
    controlnet: EEGControlNet,
    latents: torch.Tensor,
    timestep: torch.Tensor | float | int,
    eeg: torch.Tensor,
    subject: Any = None,
    conditioning: Mapping[str, Any] | None = None,
    conditioning_scale: float = 1.0,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """The UNet's prediction steered by the EEG, with guidance on the control: ``ε_base + w·(ε_EEG − ε_base)``.

    The frozen backbone alone is the unconditional model, so classifier-free guidance on the EEG needs
    no extra training (Ho & Salimans 2022 with the condition "the ControlNet's residuals"): ``w = 1``
    is the paper's sampling (one UNet pass), ``w > 1`` pushes each step further from what the
    backbone would do without the EEG (two UNet passes where the ControlNet acts).

    Parameters
    ----------
    unet, controlnet, latents, timestep, eeg, subject, conditioning, conditioning_scale
        As for :func:`controlled_noise_prediction`.
    guidance_scale : float
        ``w`` (≥ 0; 0 = the backbone alone, 1 = no guidance).
    """
    controlled = controlled_noise_prediction(unet, controlnet, latents, timestep, eeg, subject, conditioning,
                                             conditioning_scale)
    if guidance_scale == 1.0 or not bool(controlnet.active_at(timestep).any()):
        return controlled
    base = unet(latents, timestep, **expand_conditioning(conditioning, latents.shape[0]), return_dict=False)[0]
    return base + guidance_scale * (controlled - base)


@contextlib.contextmanager
def attach_controlnet(
    unet: AudioLDM2UNet2DConditionModel,
    controlnet: EEGControlNet,
    eeg: torch.Tensor,
    subject: Any = None,
    conditioning_scale: float = 1.0,
) -> Iterator[AudioLDM2UNet2DConditionModel]:
    """Within the block, every ``unet(...)`` call is steered by ``controlnet`` reading ``eeg``.

    A forward pre-hook on the UNet runs the ControlNet on the same latents, timestep and text
    conditioning the UNet receives, and the residual hooks of :func:`apply_control` add its outputs.
    So a stock ``AudioLDM2Pipeline`` (whose ``unet`` is this UNet) samples EEG-conditioned audio
    unchanged. With classifier-free guidance the pipeline doubles the batch; the EEG is tiled so both
    halves are controlled, as in diffusers' ControlNet pipelines.

    Parameters
    ----------
    unet, controlnet
        The backbone UNet and the ControlNet built from it.
    eeg, subject
        ``(B, C, T)`` windows and subject indices for the B samples being generated.
    conditioning_scale : float
        Multiplies the ControlNet's residuals.
    """
    signature = inspect.signature(unet.forward)
    injector = _ResidualInjector(unet)
    names = (
        "encoder_hidden_states",
        "encoder_hidden_states_1",
        "attention_mask",
        "encoder_attention_mask",
        "encoder_attention_mask_1",
        "cross_attention_kwargs",
        "timestep_cond",
    )

    def run_controlnet(module, args, kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        sample = bound["sample"]
        rows, batch = sample.shape[0], eeg.shape[0]
        if rows % batch:
            raise ValueError(
                f"attach_controlnet: the UNet runs a batch of {rows}, not a multiple of the {batch} EEG windows"
            )
        repeat = rows // batch
        window = eeg.repeat(repeat, 1, 1) if repeat > 1 else eeg
        who = subject
        if subject is not None and repeat > 1:
            who = _subject_tensor(subject, batch, eeg.device, "attach_controlnet").repeat(repeat)
        extra = {name: bound[name] for name in names if bound.get(name) is not None}
        down, mid = controlnet(
            sample, bound["timestep"], window, who, conditioning_scale=conditioning_scale, **extra
        )
        injector.set(down, mid)
        return None

    handle = unet.register_forward_pre_hook(run_controlnet, with_kwargs=True)
    injector.attach()
    try:
        yield unet
    finally:
        handle.remove()
        injector.detach()


# --------------------------------------------------------------------------------------------------
# What notebook 03 shows
# --------------------------------------------------------------------------------------------------


def _shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return tuple(value[0].shape)
    return None


def trace_shapes(
    controlnet: EEGControlNet,
    latents: torch.Tensor,
    timestep: torch.Tensor | float | int,
    eeg: torch.Tensor,
    subject: Any = None,
    conditioning: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run the ControlNet once and record the output shape of each stage (works on ``meta``).

    Returns
    -------
    list of dict
        Rows ``{"stage", "module", "output_shape", "parameters"}`` in execution order: the inputs,
        the subject layer, each projector layer, conv_in, each down block, the mid block, and the
        residuals of each zero convolution.
    """
    rows: list[dict[str, Any]] = [
        {"stage": "input: eeg", "module": "", "output_shape": tuple(eeg.shape), "parameters": 0},
        {"stage": "input: latents z_t", "module": "", "output_shape": tuple(latents.shape), "parameters": 0},
    ]
    watched: list[tuple[str, nn.Module]] = []
    if controlnet.subject_layer is not None:
        watched.append(("S: subject layer", controlnet.subject_layer))
    conv_index = 0
    for layer in controlnet.projector.layers:
        if isinstance(layer, nn.Conv1d):
            conv_index += 1
            watched.append((f"P: conv{conv_index}", layer))
    watched.append(("P: output (aligned, reshaped)", controlnet.projector))
    watched.append(("conv_in(z_t)", controlnet.conv_in))
    for i, block in enumerate(controlnet.down_blocks):
        watched.append((f"down block {i}", block))
    watched.append(("mid block", controlnet.mid_block))
    for i, conv in enumerate(controlnet.controlnet_down_blocks):
        watched.append((f"zero conv → skip {i}", conv))
    watched.append(("zero conv → mid", controlnet.controlnet_mid_block))

    def make_hook(stage: str):
        def hook(module, args, output):
            rows.append(
                {
                    "stage": stage,
                    "module": type(module).__name__,
                    "output_shape": _shape(output),
                    "parameters": sum(p.numel() for p in module.parameters()),
                }
            )

        return hook

    handles = [module.register_forward_hook(make_hook(stage)) for stage, module in watched]
    try:
        with torch.no_grad():
            controlnet(latents, timestep, eeg, subject, **expand_conditioning(conditioning, latents.shape[0]))
    finally:
        for handle in handles:
            handle.remove()
    return rows


def parameter_counts(unet: nn.Module, controlnet: EEGControlNet) -> dict[str, int]:
    """Parameter counts of the parts, and trainable (ControlNet) versus frozen (UNet) totals."""

    def count(module: nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    zero_convs = count(controlnet.controlnet_down_blocks) + count(controlnet.controlnet_mid_block)
    counts = {
        "subject_layer": count(controlnet.subject_layer),
        "projector": count(controlnet.projector),
        "encoder_copy": sum(p.numel() for p in controlnet.encoder_parameters()),
        "zero_convs": zero_convs,
        "controlnet_total": count(controlnet),
        "controlnet_trainable": sum(p.numel() for p in controlnet.parameters() if p.requires_grad),
        "unet_total": count(unet),
        "unet_trainable": sum(p.numel() for p in unet.parameters() if p.requires_grad),
    }
    counts["unet_frozen"] = counts["unet_total"] - counts["unet_trainable"]
    return counts


def perturb_zero_convs(controlnet: EEGControlNet, std: float = 0.02, seed: int = 0) -> EEGControlNet:
    """A copy of ``controlnet`` whose zero convolutions hold small random weights (for contrast)."""
    perturbed = copy.deepcopy(controlnet)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [*perturbed.controlnet_down_blocks, perturbed.controlnet_mid_block]:
            noise = torch.randn(conv.weight.shape, generator=generator) * std
            conv.weight.copy_(noise.to(conv.weight))
    return perturbed


def zero_init_check(
    unet: AudioLDM2UNet2DConditionModel,
    controlnet: EEGControlNet,
    latents: torch.Tensor,
    timestep: torch.Tensor | float | int,
    eeg: torch.Tensor,
    subject: Any = None,
    conditioning: Mapping[str, Any] | None = None,
    perturb_std: float = 0.02,
    seed: int = 0,
) -> dict[str, Any]:
    """ε of the base UNet, of the controlled UNet, and of one with randomly initialised output convs.

    Returns
    -------
    dict
        ``eps_base``, ``eps_controlled``, ``eps_perturbed`` (tensors on CPU) and the maximum absolute
        differences ``max_abs_diff_zero_init`` (0 by construction) and ``max_abs_diff_perturbed``.
    """
    kwargs = expand_conditioning(conditioning, latents.shape[0])
    with torch.no_grad():
        base = unet(latents, timestep, **kwargs, return_dict=False)[0]
        controlled = controlled_noise_prediction(unet, controlnet, latents, timestep, eeg, subject, conditioning)
        perturbed_net = perturb_zero_convs(controlnet, std=perturb_std, seed=seed)
        perturbed = controlled_noise_prediction(unet, perturbed_net, latents, timestep, eeg, subject, conditioning)
    return {
        "eps_base": base.float().cpu(),
        "eps_controlled": controlled.float().cpu(),
        "eps_perturbed": perturbed.float().cpu(),
        "max_abs_diff_zero_init": float((controlled - base).abs().max()),
        "max_abs_diff_perturbed": float((perturbed - base).abs().max()),
        "perturb_std": perturb_std,
    }


def controlnet_summary(
    unet: nn.Module, controlnet: EEGControlNet, shapes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A JSON-ready description: config, projector plan, residual shapes and parameter counts."""
    config = {k: v for k, v in dict(controlnet.config).items() if not k.startswith("_")}
    summary = {
        "config": config,
        "projector_plan": controlnet.plan.to_dict(),
        "projector_layers": controlnet.plan.layer_table(),
        "n_down_residuals": controlnet.n_residuals,
        "parameters": parameter_counts(unet, controlnet),
    }
    if shapes is not None:
        summary["shapes"] = [{**row, "output_shape": list(row["output_shape"] or [])} for row in shapes]
    return summary


def plot_zero_init(check: Mapping[str, Any], sample: int = 0, channel: int = 0):
    """Three panels from :func:`zero_init_check`: ε of the base UNet, the change the zero-initialised
    ControlNet makes (exactly 0), and the change random output convolutions would make.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    base = check["eps_base"][sample, channel]
    zero_change = (check["eps_controlled"] - check["eps_base"])[sample, channel]
    random_change = (check["eps_perturbed"] - check["eps_base"])[sample, channel]
    limit = max(float(random_change.abs().max()), 1e-12)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True, constrained_layout=True)
    panels = (
        ("ε of the frozen UNet alone", base, "viridis", None),
        (f"zero-init ControlNet: Δε (max |Δ| = {float(zero_change.abs().max()):.1g})", zero_change, "RdBu_r", limit),
        (
            f"random output convs (σ = {check['perturb_std']:g}): Δε "
            f"(max |Δ| = {float(random_change.abs().max()):.2g})",
            random_change,
            "RdBu_r",
            limit,
        ),
    )
    for ax, (title, image, cmap, lim) in zip(axes, panels):
        shown = ax.imshow(
            image.T.numpy(),  # frequency bins on the vertical axis, time to the right
            origin="lower",
            aspect="auto",
            cmap=cmap,
            vmin=None if lim is None else -lim,
            vmax=lim,
            interpolation="nearest",
        )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("latent frame")
        fig.colorbar(shown, ax=ax, shrink=0.85)
    axes[0].set_ylabel("latent frequency bin")
    fig.suptitle(f"Noise prediction, latent channel {channel}, window {sample}", fontsize=10)
    return fig
