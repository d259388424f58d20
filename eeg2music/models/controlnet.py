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
:class:`EEGControlNet`
    The trainable part: a copy of the UNet's encoder reading ``z_t`` plus P(S(EEG)), with the zero
    convolutions (the projector P and subject layer S are :mod:`eeg2music.models.projector` and
    :mod:`eeg2music.models.subject_layer`; ``save_pretrained`` writes all of it).
:func:`apply_control`, :func:`attach_controlnet`, :func:`controlled_noise_prediction`
    Adding the residuals to the *unmodified* UNet through forward hooks, for a single call, for every
    call (e.g. inside the stock ``AudioLDM2Pipeline``), and the prediction training and sampling use
    (with guidance on the EEG when ``guidance_scale`` ≠ 1).

What notebook 03 shows of it (shapes, parameter counts, the zero-init check) is
:mod:`eeg2music.models.controlnet_diagnostics`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
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

from .projector import EEGProjector, check_eeg, projector_plan
from .subject_layer import SubjectLayer, subject_tensor

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
        Accept :data:`~eeg2music.models.subject_layer.UNKNOWN_SUBJECT` (−1), see :class:`SubjectLayer`.
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
        check_eeg(eeg, plan.eeg_channels, plan.eeg_samples, plan.eeg_sfreq, "EEGControlNet")
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
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """The frozen UNet's prediction steered by the EEG ControlNet (what training and sampling call).

    With ``guidance_scale`` w ≠ 1, guidance on the control: ``ε_base + w·(ε_EEG − ε_base)``. The frozen
    backbone alone is the unconditional model, so classifier-free guidance on the EEG needs no extra
    training (Ho & Salimans 2022 with the condition "the ControlNet's residuals"): ``w = 1`` is the
    paper's sampling (one UNet pass), ``w > 1`` pushes each step further from what the backbone would do
    without the EEG (two UNet passes where the ControlNet acts).

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
    guidance_scale : float
        ``w`` (≥ 0; 0 = the backbone alone, 1 = no guidance).

    Returns
    -------
    torch.Tensor
        The prediction (ε or v, the backbone's own target), shape of ``latents``.
    """
    kwargs = expand_conditioning(conditioning, latents.shape[0])
    if not bool(controlnet.active_at(timestep).any()):  # below control_min_timestep: the backbone alone
        return unet(latents, timestep, **kwargs, return_dict=False)[0]
    down, mid = controlnet(latents, timestep, eeg, subject, conditioning_scale=conditioning_scale, **kwargs)
    with apply_control(unet, down, mid):
        controlled = unet(latents, timestep, **kwargs, return_dict=False)[0]
    if guidance_scale == 1.0:
        return controlled
    base = unet(latents, timestep, **kwargs, return_dict=False)[0]
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
            who = subject_tensor(subject, batch, eeg.device, "attach_controlnet").repeat(repeat)
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
