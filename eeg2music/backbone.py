"""The latent diffusion backbone we steer: AudioLDM2-music from a local folder, or a tiny one trained here.

The paper steers a pretrained AudioLDM2. Its weights cannot be downloaded on machines without
internet, so the backbone has two faces with one interface, :class:`Backbone`:

``kind="audioldm2"``
    The real AudioLDM2-music (``cvssp/audioldm2-music``), read from a local diffusers folder with
    :func:`load_backbone`. Its VAE, UNet, DDIM scheduler and HiFi-GAN vocoder are used as published;
    the text stack (CLAP, Flan-T5, GPT-2) runs once to encode a fixed prompt (the paper ignores text:
    one constant conditioning), and that conditioning is cached in a small safetensors file.
``kind="tiny"``
    The same diffusers classes (``AutoencoderKL`` on AudioLDM2's mel, ``AudioLDM2UNet2DConditionModel``
    with cross-attention on a constant embedding, AudioLDM2's ``DDIMScheduler`` schedule) with small
    widths, trained here on the simulated songs by :func:`train_tiny_backbone`; Griffin-Lim stands in
    for the vocoder.

Shapes for a 3.5 s clip (docs/ARCHITECTURE.md): waveform ``(B, 56000)`` at 16 kHz → log-mel
``(B, 1, 352, 64)`` (:mod:`eeg2music.audio`) → latent ``(B, 8, 88, 16)`` = (channels, time, frequency).

Folder written by :meth:`Backbone.save` (diffusers ``save_pretrained`` per component, safetensors)::

    vae/  unet/  scheduler/  [vocoder/]  conditioning.safetensors  [training.json]  backbone.json

``backbone.json`` is written last: its presence marks a complete folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._compat import hub_offline
from .audio import (
    CLIP_FRAMES_PADDED,
    CLIP_SAMPLES,
    CLIP_SECONDS,
    HOP_LENGTH,
    N_MELS,
    SAMPLE_RATE,
    griffin_lim,
    log_mel_to_db,
    n_frames,
    padded_frames,
    waveform_to_mel,
)
from .metrics import frechet_distance
from .paths import stage_dir
from .utils import atomic_directory, check_safetensors, count_parameters, load_pretrained, read_json, write_json

#: The file that marks a complete backbone folder (written last; eeg2music.pipeline checks it).
BACKBONE_MARKER = "backbone.json"
#: The file that marks a diffusers AudioLDM2 snapshot (the pipeline's index of its components).
AUDIOLDM2_MARKER = "model_index.json"
#: The constant "text" conditioning, next to the weights (tiny) or in the cache folder (AudioLDM2).
CONDITIONING_FILE = "conditioning.safetensors"
#: Training record of a tiny backbone (settings, losses, held-out numbers, timings).
TRAINING_FILE = "training.json"
#: The two faces of the backbone.
KINDS = ("tiny", "audioldm2")
#: The checkpoint the paper's reproduction steers (diffusers layout on the Hugging Face hub).
AUDIOLDM2_MUSIC_REPO = "cvssp/audioldm2-music"
#: The prompt encoded once for the real backbone's constant conditioning (the paper ignores text).
DEFAULT_PROMPT = ""
#: Griffin-Lim iterations used by the tiny backbone's ``mel_to_wave``.
GRIFFIN_LIM_ITERS = 32
#: The folder, inside the package, of the tiny backbone shipped with the repository.
SHIPPED_BACKBONE_DIR = Path(__file__).resolve().parent / "assets" / "tiny_backbone"

#: Mel frames per latent frame in both backbones (the VAE's time down-sampling).
VAE_GRID = 4


# ---------------------------------------------------------------------------------------------------
# Published AudioLDM2-music configuration
# ---------------------------------------------------------------------------------------------------


def audioldm2_scheduler_config() -> dict[str, Any]:
    """AudioLDM2's noise schedule as a ``DDIMScheduler`` config (also the tiny backbone's).

    From the original AudioLDM2 config (``linear_start`` 0.0015, ``linear_end`` 0.0195, 1000 steps,
    ε-prediction) as diffusers' conversion script writes it into the checkpoints' ``scheduler/``.
    """
    return dict(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def tiny_scheduler_config(prediction_type: str = "v_prediction", zero_terminal_snr: bool = True) -> dict[str, Any]:
    """The tiny backbone's noise schedule: AudioLDM2's β's, by default with v-prediction and a zero-SNR last step.

    With AudioLDM2's ε-prediction the last step keeps ᾱ_T ≈ 1.5e-4 of the signal, and the clean latent
    a DDIM step implies, ``(z_t − √(1−ᾱ)·ε̂) / √ᾱ``, multiplies the UNet's ε-error by 1/√ᾱ_T ≈ 80. A
    small UNet cannot make that error small enough: the shipped ε-backbone's implied z₀ at t = 999 had
    std 4.3 (real latents: 1.0) and its samples came out twice as wide as real latents. Predicting
    v = √ᾱ·ε − √(1−ᾱ)·z₀ (≈ −z₀ at high noise) removes the division; rescaling the β's to a zero
    terminal SNR (Lin et al. 2024) makes the first sampling step start from pure noise, as at training
    time, and "trailing" timestep spacing makes DDIM actually visit t = 999.
    """
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type {prediction_type!r}: expected 'epsilon' or 'v_prediction'")
    if zero_terminal_snr and prediction_type == "epsilon":
        raise ValueError("zero_terminal_snr needs prediction_type='v_prediction' (ε is undefined at SNR 0)")
    config = audioldm2_scheduler_config()
    config.update(prediction_type=prediction_type, rescale_betas_zero_snr=bool(zero_terminal_snr),
                  timestep_spacing="trailing" if zero_terminal_snr else "leading",
                  steps_offset=0 if zero_terminal_snr else 1)
    return config


def audioldm2_music_config() -> dict[str, Any]:
    """The published architecture of ``cvssp/audioldm2-music`` (UNet, VAE, vocoder, scheduler).

    Values follow the original AudioLDM2 configuration (model_channels 128, channel_mult (1, 2, 3, 5),
    attention at downsampling rates 2, 4, 8, two res-blocks per level, context dims (768, 1024) plus an
    extra self-attention transformer; VAE ch 128, ch_mult (1, 2, 4), 8 latent channels; HiFi-GAN with
    upsampling (5, 4, 2, 2, 2) = 160 = the mel hop) as diffusers' ``convert_original_audioldm2_to_diffusers``
    maps it: per-block ``cross_attention_dim`` ``[None, 768, 1024]`` (self-attention, then
    cross-attention on the GPT-2 tokens and on the Flan-T5 tokens).

    Returns
    -------
    dict
        ``unet``, ``vae``, ``vocoder`` (kwargs of ``SpeechT5HifiGanConfig``) and ``scheduler`` configs,
        and ``conditioning``: the shapes of the constant UNet kwargs at batch 1 for an empty prompt
        (8 GPT-2 tokens of width 768; one Flan-T5 token of width 1024 and its mask).

    Notes
    -----
    Only used to build the architecture without weights (tests, shape checks); a real folder's own
    ``config.json`` files are what :func:`load_backbone` uses. ``attention_head_dim`` is left at the
    class default (the conversion script sets none) and the VAE's learnt ``scaling_factor`` is not
    reproduced here: neither changes a weight shape.
    """
    unet = dict(
        sample_size=256,
        in_channels=8,
        out_channels=8,
        block_out_channels=(128, 256, 384, 640),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=[[None, 768, 1024]] * 4,
        transformer_layers_per_block=1,
    )
    vae = dict(
        sample_size=1024,
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(128, 256, 512),
        latent_channels=8,
        layers_per_block=2,
    )
    vocoder = dict(
        model_in_dim=N_MELS,
        sampling_rate=SAMPLE_RATE,
        upsample_initial_channel=1024,
        upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[16, 16, 8, 4, 4],
        resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        normalize_before=False,
    )
    conditioning = {
        "encoder_hidden_states": (1, 8, 768),
        "encoder_hidden_states_1": (1, 1, 1024),
        "encoder_attention_mask_1": (1, 1),
    }
    return dict(unet=unet, vae=vae, vocoder=vocoder, scheduler=audioldm2_scheduler_config(), conditioning=conditioning)


def build_audioldm2_music_on_meta() -> "Backbone":
    """The AudioLDM2-music backbone built on the ``meta`` device: real shapes, no memory, no weights.

    For tests and shape planning (the ControlNet, the projector P). Parameters and the placeholder
    conditioning live on ``meta``; the scheduler is real (it holds no weights).
    """
    hub_offline()
    from accelerate import init_empty_weights
    from diffusers import AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    config = audioldm2_music_config()
    with init_empty_weights():
        unet = AudioLDM2UNet2DConditionModel(**config["unet"])
        vae = AutoencoderKL(**config["vae"])
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**config["vocoder"]))
    conditioning = {}
    for name, shape in config["conditioning"].items():
        dtype = torch.long if "mask" in name else torch.float32
        conditioning[name] = torch.empty(shape, dtype=dtype, device="meta")
    return Backbone(
        "audioldm2",
        vae=vae,
        unet=unet,
        scheduler=DDIMScheduler(**config["scheduler"]),
        vocoder=vocoder,
        conditioning=conditioning,
        metadata={"source": f"{AUDIOLDM2_MUSIC_REPO} configuration on the meta device (no weights)"},
    )


# ---------------------------------------------------------------------------------------------------
# The tiny backbone's architecture
# ---------------------------------------------------------------------------------------------------

#: Width of the tiny backbone's constant "text" tokens (its cross-attention dimension).
TINY_CONTEXT_DIM = 32
#: Number of constant "text" tokens (AudioLDM2's GPT-2 generates 8).
TINY_CONTEXT_TOKENS = 8

TINY_SIZES = ("default", "smoke")


def tiny_backbone_config(size: str = "default", prediction_type: str = "v_prediction",
                         zero_terminal_snr: bool = True) -> dict[str, Any]:
    """Architecture of the tiny backbone: AudioLDM2's classes and layout at widths two CPU cores can train.

    Parameters
    ----------
    size : {"default", "smoke"}
        ``default``: VAE widths (16, 32, 64) and UNet widths (32, 64, 128), one res-block per level,
        self- plus cross-attention at the coarsest level (22 × 4 positions, 160 ms each: the whole clip
        in one attention window) and in the mid block. ``smoke``: the smallest that keeps every shape.

    Returns
    -------
    dict
        ``vae`` and ``unet`` kwargs, ``scheduler`` (:func:`tiny_scheduler_config`), ``conditioning`` shapes.

    Notes
    -----
    Each attention layer is one transformer (self-attention, cross-attention on the constant tokens,
    feed-forward) rather than AudioLDM2's three, and only the coarsest level attends (AudioLDM2 attends
    at its three coarser levels): on two CPU cores attention at 44 × 8 positions and the two extra
    transformers would more than double a training step, and of the ControlNet's too. The VAE keeps AudioLDM2's factor 4 and 8 latent channels, so a
    3.5 s clip has the same ``(8, 88, 16)`` latent as with the real backbone; its mid-block attention
    is dropped (1408 positions per clip, the largest cost of a step).
    """
    if size not in TINY_SIZES:
        raise ValueError(f"tiny backbone size {size!r}: expected one of {TINY_SIZES}")
    smoke = size == "smoke"
    vae_widths = (8, 16, 16) if smoke else (16, 32, 64)
    unet_widths = (16, 32, 32) if smoke else (32, 64, 128)
    vae = dict(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=vae_widths,
        latent_channels=8,
        layers_per_block=1,
        norm_num_groups=vae_widths[0] // 2,
        sample_size=CLIP_FRAMES_PADDED,
        mid_block_add_attention=False,
    )
    unet = dict(
        sample_size=CLIP_FRAMES_PADDED // 4,
        in_channels=8,
        out_channels=8,
        block_out_channels=unet_widths,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=[[TINY_CONTEXT_DIM]] * 3,
        attention_head_dim=2 if smoke else 4,
        norm_num_groups=unet_widths[0] // 2 if smoke else 32,
    )
    conditioning = {"encoder_hidden_states": (1, TINY_CONTEXT_TOKENS, TINY_CONTEXT_DIM)}
    scheduler = tiny_scheduler_config(prediction_type, zero_terminal_snr)
    return dict(vae=vae, unet=unet, scheduler=scheduler, conditioning=conditioning)


def tiny_conditioning(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny backbone's constant "text" tokens: fixed N(0, 1) draws from ``seed`` (saved with the weights)."""
    generator = torch.Generator().manual_seed(int(seed) + 7919)
    shape = (1, TINY_CONTEXT_TOKENS, TINY_CONTEXT_DIM)
    return {"encoder_hidden_states": torch.randn(shape, generator=generator)}


def build_tiny_backbone(seed: int = 0, size: str = "default", prediction_type: str = "v_prediction",
                        zero_terminal_snr: bool = True) -> "Backbone":
    """A randomly initialised tiny backbone (seeded), ready to train or to stand in for tests.

    Parameters
    ----------
    seed : int
        Seeds the initial weights and the constant conditioning.
    size : {"default", "smoke"}
        See :func:`tiny_backbone_config`.
    prediction_type, zero_terminal_snr
        The noise schedule (:func:`tiny_scheduler_config`).
    """
    from diffusers import AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler

    config = tiny_backbone_config(size, prediction_type, zero_terminal_snr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        vae = AutoencoderKL(**config["vae"])
        unet = AudioLDM2UNet2DConditionModel(**config["unet"])
    return Backbone(
        "tiny",
        vae=vae,
        unet=unet,
        scheduler=DDIMScheduler(**config["scheduler"]),
        vocoder=None,
        conditioning=tiny_conditioning(seed),
        metadata={"size": size, "seed": int(seed), "trained": False},
    )


# ---------------------------------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------------------------------


def _module_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


class Backbone:
    """A latent diffusion model on AudioLDM2's mel: VAE, UNet, noise schedule, vocoder, constant conditioning.

    Parameters
    ----------
    kind : {"tiny", "audioldm2"}
        Which face (see the module docstring).
    vae : diffusers.AutoencoderKL
        Mel ``(B, 1, frames, 64)`` ↔ latent ``(B, 8, frames / 4, 16)``.
    unet : diffusers.AudioLDM2UNet2DConditionModel
        ε-prediction network (the same class for both kinds, so the ControlNet has one code path).
    scheduler : diffusers.DDIMScheduler
        The training noise schedule (β's, prediction type); samplers are built from its config.
    vocoder : transformers.SpeechT5HifiGan or None
        Mel → waveform; None means Griffin-Lim (:func:`eeg2music.audio.griffin_lim`).
    conditioning : dict of str to Tensor
        The constant "text" kwargs of the UNet at batch 1, exactly those its attention layers read:
        AudioLDM2: ``encoder_hidden_states`` (GPT-2 tokens, 1 × 8 × 768), ``encoder_hidden_states_1``
        (Flan-T5 tokens) and ``encoder_attention_mask_1``; tiny: ``encoder_hidden_states``
        (1 × 8 × 32 fixed random tokens).
    metadata : dict, optional
        Where it came from, how it was trained (saved into ``backbone.json``).
    griffin_lim_iters : int
        Griffin-Lim iterations of :meth:`mel_to_wave` when there is no vocoder.
    """

    def __init__(
        self,
        kind: str,
        *,
        vae,
        unet,
        scheduler,
        vocoder=None,
        conditioning: Mapping[str, torch.Tensor],
        metadata: Mapping[str, Any] | None = None,
        griffin_lim_iters: int = GRIFFIN_LIM_ITERS,
    ):
        if kind not in KINDS:
            raise ValueError(f"backbone kind {kind!r}: expected one of {KINDS}")
        for name, tensor in conditioning.items():
            if not isinstance(tensor, torch.Tensor) or tensor.shape[0] != 1:
                raise ValueError(f"conditioning {name!r}: expected a tensor with batch size 1")
        self.kind = kind
        self.vae = vae
        self.unet = unet
        self.scheduler = scheduler
        self.vocoder = vocoder
        self.conditioning = dict(conditioning)
        self.metadata = dict(metadata or {})
        self.griffin_lim_iters = int(griffin_lim_iters)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v / 1e6:.2f}M" for k, v in self.parameter_counts().items())
        return f"Backbone(kind={self.kind!r}, latent_shape={self.latent_shape}, {counts})"

    # --- geometry ------------------------------------------------------------------------------------

    @property
    def vae_scale_factor(self) -> int:
        """Down-sampling of the VAE in time and frequency (4 for AudioLDM2 and the tiny one)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        """The VAE's latent scaling factor (latents are divided by it before decoding)."""
        return float(self.vae.config.scaling_factor)

    def latent_shape_for(self, seconds: float = CLIP_SECONDS) -> tuple[int, int, int]:
        """Latent ``(channels, time, frequency)`` of a clip of ``seconds`` (as ``AudioLDM2Pipeline`` sizes it)."""
        frames = padded_frames(n_frames(int(round(seconds * SAMPLE_RATE))), self.vae_scale_factor)
        return (
            int(self.vae.config.latent_channels),
            frames // self.vae_scale_factor,
            N_MELS // self.vae_scale_factor,
        )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Latent of one 3.5 s clip: ``(8, 88, 16)``."""
        return self.latent_shape_for(CLIP_SECONDS)

    @property
    def device(self) -> torch.device:
        """Device of the UNet's parameters."""
        return _module_device_dtype(self.unet)[0]

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the UNet's parameters."""
        return _module_device_dtype(self.unet)[1]

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (``vae``, ``unet`` and ``vocoder`` when present)."""
        counts = {"vae": count_parameters(self.vae), "unet": count_parameters(self.unet)}
        if self.vocoder is not None:
            counts["vocoder"] = count_parameters(self.vocoder)
        return counts

    # --- conditioning --------------------------------------------------------------------------------

    def unet_conditioning(self, batch_size: int, device=None, dtype=None) -> dict[str, torch.Tensor]:
        """The constant conditioning expanded to ``batch_size`` (views, no copies), ready for ``unet(**…)``.

        Parameters
        ----------
        batch_size : int
            Batch of the latents it goes with.
        device, dtype : optional
            Default: the UNet's. Masks keep their integer dtype.
        """
        unet_device, unet_dtype = _module_device_dtype(self.unet)
        device = unet_device if device is None else torch.device(device)
        dtype = unet_dtype if dtype is None else dtype
        out = {}
        for name, tensor in self.conditioning.items():
            target_dtype = dtype if tensor.is_floating_point() else tensor.dtype
            tensor = tensor.to(device=device, dtype=target_dtype)
            out[name] = tensor.expand(int(batch_size), *tensor.shape[1:])
        return out

    # --- audio ↔ mel ↔ latent ------------------------------------------------------------------------

    def wave_to_mel(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        """AudioLDM2 log-mel ``(B, 1, frames, 64)`` of 16 kHz waveforms ``(B, samples)``, on the VAE's device.

        Each clip is normalised as AudioLDM normalises its training audio (mean removed, peak 0.5).
        """
        device, _ = _module_device_dtype(self.vae)
        wave = torch.as_tensor(wave, dtype=torch.float32)
        if device.type != "meta":
            wave = wave.to(device)
        return waveform_to_mel(wave, normalize=True, pad_to_multiple=self.vae_scale_factor)

    @torch.no_grad()
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Mel ``(B, 1, frames, 64)`` → latents ``(B, 8, frames / 4, 16)``: posterior **mean** × scaling factor.

        The mean (not a sample) makes a clip's latent deterministic, so latents can be cached and a
        reconstruction is repeatable; AudioLDM2 samples the posterior during its own training, whose
        standard deviation is small next to the mean for a trained VAE.
        """
        device, dtype = _module_device_dtype(self.vae)
        posterior = self.vae.encode(mel.to(device=device, dtype=dtype)).latent_dist
        return posterior.mean * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, 8, T, 16)`` → log-mel ``(B, 1, 4T, 64)`` (divides by the scaling factor first)."""
        device, dtype = _module_device_dtype(self.vae)
        return self.vae.decode(latents.to(device=device, dtype=dtype) / self.scaling_factor).sample

    @torch.no_grad()
    def mel_to_wave(self, mel: torch.Tensor, length: int | None = CLIP_SAMPLES) -> torch.Tensor:
        """Log-mel ``(B, 1, frames, 64)`` → waveform ``(B, length)`` float32 on the CPU.

        The vocoder (HiFi-GAN) when there is one, else Griffin-Lim. ``length`` defaults to one clip
        (56 000 samples: the padding frames are cut off, as ``AudioLDM2Pipeline`` cuts its output);
        None keeps ``frames * 160`` samples.
        """
        if mel.ndim == 3:
            mel = mel[:, None]
        frames = mel.shape[2]
        out_length = frames * HOP_LENGTH if length is None else int(length)
        if self.vocoder is None:
            return griffin_lim(mel, n_iter=self.griffin_lim_iters, length=out_length)
        device, dtype = _module_device_dtype(self.vocoder)
        wave = self.vocoder(mel[:, 0].to(device=device, dtype=dtype)).float().cpu()
        if wave.ndim == 1:
            wave = wave[None]
        if wave.shape[-1] < out_length:
            wave = torch.nn.functional.pad(wave, (0, out_length - wave.shape[-1]))
        return wave[:, :out_length]

    def latents_to_wave(self, latents: torch.Tensor, length: int | None = CLIP_SAMPLES) -> torch.Tensor:
        """Decode latents and vocode them: ``(B, 8, 88, 16)`` → ``(B, 56000)``."""
        return self.mel_to_wave(self.decode(latents), length=length)

    # --- unconditional generation ---------------------------------------------------------------------

    @torch.no_grad()
    def sample_latents(
        self,
        batch_size: int,
        num_inference_steps: int = 200,
        *,
        generator: torch.Generator | None = None,
        seconds: float = CLIP_SECONDS,
        eta: float = 0.0,
        progress: bool = True,
    ) -> torch.Tensor:
        """Unconditional DDIM samples from the backbone (guidance 1: the constant conditioning only).

        Parameters
        ----------
        batch_size : int
            Clips to generate.
        num_inference_steps : int
            DDIM steps (the paper samples with 200).
        generator : torch.Generator, optional
            For reproducible noise (on the CPU; the noise is moved to the UNet's device).
        seconds : float
            Clip length (3.5 s → latents ``(8, 88, 16)``).
        eta : float
            DDIM η (0: deterministic given the initial noise).
        progress : bool
            Show a progress bar.

        Returns
        -------
        Tensor, shape (batch_size, 8, T, 16)
            Latents (scaled like :meth:`encode`'s output), on the UNet's device.
        """
        from diffusers import DDIMScheduler
        from tqdm.auto import tqdm

        device, dtype = _module_device_dtype(self.unet)
        sampler = DDIMScheduler.from_config(self.scheduler.config)
        sampler.set_timesteps(int(num_inference_steps), device=device)
        shape = (int(batch_size), *self.latent_shape_for(seconds))
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
        latents = latents * sampler.init_noise_sigma
        conditioning = self.unet_conditioning(batch_size)
        for t in tqdm(sampler.timesteps, desc="DDIM", disable=not progress, leave=False):
            model_input = sampler.scale_model_input(latents, t)
            noise = self.unet(model_input, t, **conditioning, return_dict=False)[0]
            latents = sampler.step(noise, t, latents, eta=eta, generator=generator).prev_sample
        return latents

    # --- device, persistence --------------------------------------------------------------------------

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Backbone":
        """Move (and cast floating weights of) every component and the conditioning; returns self."""
        # diffusers warns on any dtype argument, even None: pass only what changes
        kwargs = {key: value for key, value in (("device", device), ("dtype", dtype)) if value is not None}
        for module in (self.vae, self.unet, self.vocoder):
            if module is not None and kwargs:
                module.to(**kwargs)
        for name, tensor in self.conditioning.items():
            target_dtype = dtype if (dtype is not None and tensor.is_floating_point()) else tensor.dtype
            self.conditioning[name] = tensor.to(device=device, dtype=target_dtype)
        return self

    def eval(self) -> "Backbone":
        """Put every component in eval mode; returns self."""
        for module in (self.vae, self.unet, self.vocoder):
            if module is not None:
                module.eval()
        return self

    def requires_grad_(self, requires_grad: bool = False) -> "Backbone":
        """Freeze (default) or unfreeze every component; returns self."""
        for module in (self.vae, self.unet, self.vocoder):
            if module is not None:
                module.requires_grad_(requires_grad)
        return self

    def describe(self) -> dict[str, Any]:
        """What ``backbone.json`` records: kind, shapes, parameter counts, audio front end, metadata."""
        return {
            "format": "eeg2music-backbone",
            "format_version": 1,
            "kind": self.kind,
            "latent_shape": list(self.latent_shape),
            "vae_scale_factor": self.vae_scale_factor,
            "scaling_factor": self.scaling_factor,
            "parameters": self.parameter_counts(),
            "conditioning": {name: list(tensor.shape) for name, tensor in self.conditioning.items()},
            "vocoder": "SpeechT5HifiGan" if self.vocoder is not None else f"griffin_lim({self.griffin_lim_iters})",
            "audio": {
                "sample_rate": SAMPLE_RATE,
                "clip_seconds": CLIP_SECONDS,
                "clip_samples": CLIP_SAMPLES,
                "mel": "AudioLDM2: n_fft 1024, hop 160, win 1024, 64 mels 0-8000 Hz, magnitude, log(clamp(x, 1e-5))",
            },
            "metadata": self.metadata,
        }

    def save(self, path: str | os.PathLike, extra_files: Mapping[str, Any] | None = None) -> Path:
        """Write the backbone folder atomically (``save_pretrained`` per component, safetensors).

        Parameters
        ----------
        path : path-like
            Folder to create (replaced if it exists).
        extra_files : dict, optional
            ``{file name: JSON-able data}`` written beside the weights (e.g. ``training.json``).

        Returns
        -------
        Path
            The folder; ``backbone.json`` inside it is written last.
        """
        from safetensors.torch import save_file

        if any(t.device.type == "meta" for t in self.conditioning.values()):
            raise ValueError("cannot save a backbone built on the meta device (it has no weights)")
        path = Path(path).expanduser().resolve()
        with atomic_directory(path) as tmp:
            self.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            self.unet.save_pretrained(tmp / "unet", safe_serialization=True)
            self.scheduler.save_pretrained(tmp / "scheduler")
            if self.vocoder is not None:
                self.vocoder.save_pretrained(tmp / "vocoder", safe_serialization=True)
            tensors = {name: t.detach().to("cpu").contiguous() for name, t in self.conditioning.items()}
            save_file(tensors, str(tmp / CONDITIONING_FILE), metadata={"kind": self.kind})
            for name, data in (extra_files or {}).items():
                write_json(tmp / name, data)
            write_json(tmp / BACKBONE_MARKER, self.describe())
        return path


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def missing_backbone_message(path: str | os.PathLike) -> str:
    """What to download and where to put it, for a backbone folder that is not there."""
    return (
        f"no backbone folder at {str(path)!r}. For the real backbone, download the diffusers snapshot of "
        f"{AUDIOLDM2_MUSIC_REPO} on a machine with internet, e.g. `huggingface-cli download {AUDIOLDM2_MUSIC_REPO} "
        f"--local-dir /data/audioldm2-music` (or `AudioLDM2Pipeline.from_pretrained('{AUDIOLDM2_MUSIC_REPO}')"
        f".save_pretrained('/data/audioldm2-music')`), copy that folder here (it holds {AUDIOLDM2_MARKER}, unet/, "
        f"vae/, vocoder/, scheduler/, text_encoder/, text_encoder_2/, projection_model/, language_model/, "
        f"tokenizer/, tokenizer_2/, feature_extractor/) and pass its path as `backbone`. For the tiny backbone, "
        f"leave `backbone` empty or run notebook 00 (it writes {stage_dir('backbone') / 'backbone'})."
    )


def load_backbone(
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    prompt: str = DEFAULT_PROMPT,
    conditioning_cache: str | os.PathLike | None = None,
) -> Backbone:
    """Load a backbone folder: a local AudioLDM2 snapshot (``model_index.json``) or a saved backbone.

    Parameters
    ----------
    path : path-like
        A diffusers AudioLDM2 folder (e.g. a snapshot of ``cvssp/audioldm2-music``), or a folder written
        by :meth:`Backbone.save` (``backbone.json``; tiny, or a saved AudioLDM2 without its text stack).
    device, dtype : optional
        Where to put the weights (default: CPU, stored dtype).
    prompt : str
        AudioLDM2 only: the fixed prompt encoded once into the constant conditioning (default empty).
    conditioning_cache : path-like, optional
        AudioLDM2 only: folder of the cached conditioning (default
        ``<outputs>/00_backbone/conditioning_cache``); the text encoders run only on a cache miss.

    Raises
    ------
    FileNotFoundError
        For a missing folder (saying what to download and where to put it) or an incomplete one.
    ValueError
        For a folder that is neither an AudioLDM2 pipeline nor a backbone folder.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(missing_backbone_message(path))
    if not path.is_dir():
        raise NotADirectoryError(f"backbone {str(path)!r} is a file; expected a folder. " + missing_backbone_message(path))
    path = path.resolve()
    if (path / BACKBONE_MARKER).is_file():
        backbone = _load_saved_backbone(path)
    elif (path / AUDIOLDM2_MARKER).is_file():
        backbone = _load_audioldm2_folder(path, prompt=prompt, cache_dir=conditioning_cache, device=device)
    else:
        present = sorted(p.name for p in path.iterdir())[:20]
        raise FileNotFoundError(
            f"backbone folder {str(path)!r} has neither {AUDIOLDM2_MARKER} (an AudioLDM2 diffusers snapshot) nor "
            f"{BACKBONE_MARKER} (a complete backbone written by eeg2music; a folder without it was interrupted). "
            f"It holds: {present}. " + missing_backbone_message(path)
        )
    backbone.to(device=device, dtype=dtype)
    return backbone.eval()


def _require_dir(path: Path, what: str) -> Path:
    if not (path / "config.json").is_file() and not (path / "scheduler_config.json").is_file():
        raise FileNotFoundError(f"{path}: missing or incomplete {what} folder (no config file); the backbone folder is damaged")
    return path


def _load_saved_backbone(path: Path) -> Backbone:
    hub_offline()
    from diffusers import AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
    from safetensors.torch import load_file

    info = read_json(path / BACKBONE_MARKER)
    kind = info.get("kind")
    if info.get("format") != "eeg2music-backbone" or kind not in KINDS:
        raise ValueError(f"{path / BACKBONE_MARKER}: not an eeg2music backbone description (kind={kind!r})")
    vae = load_pretrained(AutoencoderKL, _require_dir(path / "vae", "vae"), "backbone's vae", local_files_only=True)
    unet = load_pretrained(AudioLDM2UNet2DConditionModel, _require_dir(path / "unet", "unet"), "backbone's unet",
                           local_files_only=True)
    scheduler = DDIMScheduler.from_pretrained(_require_dir(path / "scheduler", "scheduler"), local_files_only=True)
    vocoder = None
    if (path / "vocoder").is_dir():
        from transformers import SpeechT5HifiGan

        vocoder = load_pretrained(SpeechT5HifiGan, _require_dir(path / "vocoder", "vocoder"), "backbone's vocoder",
                                  local_files_only=True)
    conditioning_path = path / CONDITIONING_FILE
    if not conditioning_path.is_file():
        raise FileNotFoundError(f"{conditioning_path}: missing (the constant UNet conditioning of this backbone)")
    conditioning = load_file(str(check_safetensors(conditioning_path)))
    metadata = dict(info.get("metadata") or {})
    metadata["path"] = str(path)
    return Backbone(kind, vae=vae, unet=unet, scheduler=scheduler, vocoder=vocoder, conditioning=conditioning,
                    metadata=metadata)


def default_conditioning_cache_dir() -> Path:
    """Where the real backbone's encoded prompt is cached by default (``<outputs>/00_backbone/conditioning_cache``)."""
    return stage_dir("backbone") / "conditioning_cache"


def _conditioning_cache_file(path: Path, prompt: str, cache_dir: str | os.PathLike | None) -> Path:
    index = (path / AUDIOLDM2_MARKER).read_bytes()
    key = hashlib.sha256(json.dumps([str(path), prompt]).encode() + index).hexdigest()[:16]
    folder = Path(cache_dir).expanduser() if cache_dir not in (None, "") else default_conditioning_cache_dir()
    return folder / f"{path.name}-{key}.safetensors"


def encode_constant_prompt(pipeline, prompt: str = DEFAULT_PROMPT, device=None) -> dict[str, torch.Tensor]:
    """Run AudioLDM2's text stack once: the UNet kwargs for ``prompt`` at batch 1 (no guidance).

    Parameters
    ----------
    pipeline : diffusers.AudioLDM2Pipeline
        With its text encoders, projection model, language model and tokenizers.
    prompt : str
        The fixed prompt ("" by default: the paper ignores text).
    device : optional
        Where to run the text stack.

    Returns
    -------
    dict
        ``encoder_hidden_states`` (GPT-2 generated tokens), ``encoder_hidden_states_1`` (Flan-T5 tokens),
        ``encoder_attention_mask_1`` — what ``AudioLDM2Pipeline.__call__`` passes to its UNet.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    pipeline.to(device)
    with torch.no_grad():
        prompt_embeds, attention_mask, generated_prompt_embeds = pipeline.encode_prompt(
            prompt, device, num_waveforms_per_prompt=1, do_classifier_free_guidance=False
        )
    return {
        "encoder_hidden_states": generated_prompt_embeds.detach().float().cpu().contiguous(),
        "encoder_hidden_states_1": prompt_embeds.detach().float().cpu().contiguous(),
        "encoder_attention_mask_1": attention_mask.detach().long().cpu().contiguous(),
    }


def _load_audioldm2_folder(path: Path, *, prompt: str, cache_dir, device) -> Backbone:
    hub_offline()
    from diffusers import AudioLDM2Pipeline, AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
    from safetensors.torch import load_file, save_file
    from transformers import SpeechT5HifiGan

    index = read_json(path / AUDIOLDM2_MARKER)
    unet_entry = index.get("unet") or [None, None]
    if index.get("_class_name") != "AudioLDM2Pipeline" or unet_entry[-1] != "AudioLDM2UNet2DConditionModel":
        raise ValueError(
            f"{path / AUDIOLDM2_MARKER}: not an AudioLDM2 pipeline (pipeline {index.get('_class_name')!r}, UNet "
            f"{unet_entry[-1]!r}); expected a snapshot of {AUDIOLDM2_MUSIC_REPO} in the diffusers layout"
        )
    for component in ("vae", "unet", "scheduler", "vocoder"):
        if not (path / component).is_dir():
            raise FileNotFoundError(f"{path}: the AudioLDM2 folder lacks {component}/ (incomplete download?)")
    vae = load_pretrained(AutoencoderKL, path / "vae", "AudioLDM2's vae", local_files_only=True)
    unet = load_pretrained(AudioLDM2UNet2DConditionModel, path / "unet", "AudioLDM2's unet", local_files_only=True)
    scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    vocoder = load_pretrained(SpeechT5HifiGan, path / "vocoder", "AudioLDM2's vocoder", local_files_only=True)

    cache_file = _conditioning_cache_file(path, prompt, cache_dir)
    if cache_file.is_file():
        conditioning = load_file(str(cache_file))
    else:
        print(f"[eeg2music] encoding the constant prompt {prompt!r} with AudioLDM2's text stack (once; cached in {cache_file})")
        pipeline = AudioLDM2Pipeline.from_pretrained(
            path, vae=vae, unet=unet, scheduler=scheduler, vocoder=vocoder, local_files_only=True
        )
        conditioning = encode_constant_prompt(pipeline, prompt, device=device)
        del pipeline
        vae.to("cpu"), unet.to("cpu"), vocoder.to("cpu")
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_name(f".{cache_file.name}.partial")
        save_file(conditioning, str(partial), metadata={"prompt": prompt, "source": str(path)})
        os.replace(partial, cache_file)
    metadata = {"source": str(path), "prompt": prompt, "conditioning_cache": str(cache_file)}
    return Backbone("audioldm2", vae=vae, unet=unet, scheduler=scheduler, vocoder=vocoder,
                    conditioning=conditioning, metadata=metadata)


# ---------------------------------------------------------------------------------------------------
# Training data: the songs' audio, split in time
# ---------------------------------------------------------------------------------------------------


def load_song_audio(data_root: str | os.PathLike, songs: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Every song's stimulus audio of an NMED-T folder, float32 mono at 16 kHz (``{song_id: audio}``).

    Parameters
    ----------
    data_root : path-like
        An NMED-T folder with its stimuli WAVs (the simulator writes them in ``stimuli/``).
    songs : sequence of int, optional
        Song ids (default: every song the folder has audio for).

    Raises
    ------
    FileNotFoundError
        If the folder has no stimulus audio (or lacks a requested song's WAV), naming what was looked for.
    """
    from .nmedt import read_stimulus, scan_nmedt

    folder = scan_nmedt(data_root)
    available = sorted(int(song) for song in (folder.stimuli or {}))
    wanted = available if songs is None else [int(song) for song in songs]
    if not wanted:
        raise FileNotFoundError(
            f"{data_root}: no stimulus WAVs found (searched {[str(p) for p in folder.stimuli_dirs]}); the tiny "
            f"backbone is trained on the songs' audio: put the NMED-T stimuli (e.g. FirstFires.wav …) in a "
            f"stimuli/ folder beside the EEG files"
        )
    return {song: read_stimulus(folder, song, sr=SAMPLE_RATE) for song in wanted}


@dataclass(frozen=True)
class SongSplit:
    """Each song's audio cut in time: the head trains the backbone, the tail is held out to evaluate it."""

    train: dict[int, np.ndarray]
    heldout: dict[int, np.ndarray]
    holdout_seconds: float

    @classmethod
    def from_audio(cls, audio: Mapping[int, np.ndarray], holdout_seconds: float) -> "SongSplit":
        """Hold out the last ``holdout_seconds`` of every song (at least one clip must remain for training)."""
        holdout = int(round(holdout_seconds * SAMPLE_RATE))
        train, heldout = {}, {}
        for song, wave in audio.items():
            if len(wave) - holdout < CLIP_SAMPLES:
                raise ValueError(
                    f"song {song}: {len(wave) / SAMPLE_RATE:.1f} s of audio leaves less than one {CLIP_SECONDS} s clip "
                    f"for training after holding out {holdout_seconds} s"
                )
            train[song] = np.ascontiguousarray(wave[: len(wave) - holdout], dtype=np.float32)
            heldout[song] = np.ascontiguousarray(wave[len(wave) - holdout :], dtype=np.float32)
        return cls(train, heldout, float(holdout_seconds))

    def heldout_clips(self) -> tuple[np.ndarray, np.ndarray]:
        """Non-overlapping 3.5 s clips of the held-out tails: ``(clips (N, 56000), song ids (N,))``."""
        clips, labels = [], []
        for song, wave in sorted(self.heldout.items()):
            for start in range(0, len(wave) - CLIP_SAMPLES + 1, CLIP_SAMPLES):
                clips.append(wave[start : start + CLIP_SAMPLES])
                labels.append(song)
        if not clips:
            return np.zeros((0, CLIP_SAMPLES), np.float32), np.zeros(0, int)
        return np.stack(clips), np.asarray(labels)


def random_clips(audio: Mapping[int, np.ndarray], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 3.5 s crops (songs drawn uniformly, offsets uniform in each song): ``(clips, song ids)``."""
    songs = sorted(audio)
    labels = rng.choice(songs, size=int(n))
    clips = np.empty((int(n), CLIP_SAMPLES), np.float32)
    for i, song in enumerate(labels):
        wave = audio[int(song)]
        start = int(rng.integers(0, len(wave) - CLIP_SAMPLES + 1))
        clips[i] = wave[start : start + CLIP_SAMPLES]
    return clips, labels


def audio_fingerprint(audio: Mapping[int, np.ndarray]) -> str:
    """A short hash of the songs' audio (which data a backbone was trained on)."""
    digest = hashlib.sha256()
    for song in sorted(audio):
        digest.update(str(song).encode())
        digest.update(np.ascontiguousarray(audio[song], dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Training the tiny backbone
# ---------------------------------------------------------------------------------------------------


@dataclass
class TinyTrainingSettings:
    """What :func:`train_tiny_backbone` runs (every field is recorded in ``training.json``).

    Presets (:meth:`preset`): ``"smoke"`` (seconds; tests), ``"default"`` (a few minutes on two CPU
    cores: a usable but rough backbone), ``"shipped"`` (the recipe of the backbone shipped in
    ``eeg2music/assets/tiny_backbone``).

    Attributes
    ----------
    size : {"default", "smoke"}
        Architecture (:func:`tiny_backbone_config`).
    vae_steps, unet_steps : int
        Optimiser steps of the two stages (the VAE first, then the UNet on its frozen latents).
    batch_size : int
        Random 3.5 s crops per step (songs drawn uniformly, offsets uniformly).
    vae_crop_frames : int
        The VAE trains on windows of this many mel frames (a multiple of 4) cut from the clips: it is
        convolutional, so a 128-frame window teaches it as well as the 352-frame clip at 36 % of the cost.
    vae_lr, unet_lr : float
        AdamW learning rates (linear warm-up over ``warmup_steps``, then cosine decay).
    warmup_steps : int
    kl_weight : float
        Weight of the VAE's KL term (summed over the latent, per mel element) next to the mel L1.
    prediction_type : {"v_prediction", "epsilon"}
        What the UNet predicts (:func:`tiny_scheduler_config` says why v).
    zero_terminal_snr : bool
        Rescale the β's to a zero-SNR last step (needs v-prediction).
    min_snr_gamma : float
        Min-SNR-γ loss weighting of the UNet (0 disables it).
    ema_decay : float
        Ceiling of the UNet's exponential moving average (with warm-up); the EMA weights are saved.
    holdout_seconds : float
        The last seconds of every song never used for training (the evaluation's held-out clips).
    steps_per_epoch : int
        Steps between one-line progress summaries.
    scaling_batches : int
        Batches whose latents set the VAE's scaling factor (1 / their standard deviation).
    num_threads : int
        CPU threads: positive = that many, 0 = torch's default, negative = one when the machine is busy.
    """

    size: str = "default"
    vae_steps: int = 400
    unet_steps: int = 600
    batch_size: int = 8
    vae_crop_frames: int = 128
    vae_lr: float = 1e-3
    unet_lr: float = 1e-3
    warmup_steps: int = 50
    kl_weight: float = 1e-3
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    holdout_seconds: float = 7.0
    steps_per_epoch: int = 100
    scaling_batches: int = 8
    num_threads: int = -1

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TinyTrainingSettings":
        """A named preset with ``overrides`` applied (unknown names are an error)."""
        presets = {
            "smoke": dict(size="smoke", vae_steps=30, unet_steps=30, batch_size=4, vae_crop_frames=64,
                          warmup_steps=5, holdout_seconds=3.5, steps_per_epoch=15, scaling_batches=2),
            "default": {},
            "shipped": dict(vae_steps=2000, unet_steps=8000, warmup_steps=100, steps_per_epoch=200),
        }
        if name not in presets:
            raise ValueError(f"unknown training preset {name!r}; known: {sorted(presets)}")
        settings = replace(cls(), **presets[name])
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        return replace(settings, **overrides)


def _lr_schedule(optimizer, warmup: int, total: int):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=min(warmup, max(total - 1, 0)),
                                           num_training_steps=max(total, 1))


class _ClipSampler:
    """Random 3.5 s training crops (uniform over songs, then offsets) as AudioLDM2 log-mels on ``device``."""

    def __init__(self, audio: Mapping[int, np.ndarray], batch_size: int, seed: int, device: torch.device):
        self.audio = audio
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng(seed)
        self.device = device

    def mels(self, crop_frames: int | None = None) -> torch.Tensor:
        """A batch of log-mels ``(B, 1, 352, 64)``, or random ``crop_frames``-long windows of them.

        The VAE is convolutional (no attention), so it can learn from windows of the mel: a quarter of
        the clip costs a quarter of the step. Windows start on the VAE's 4-frame grid.
        """
        clips, _ = random_clips(self.audio, self.batch_size, self.rng)
        mel = waveform_to_mel(torch.from_numpy(clips).to(self.device))
        if crop_frames and crop_frames < mel.shape[2]:
            starts = self.rng.integers(0, (mel.shape[2] - crop_frames) // VAE_GRID + 1, size=len(mel)) * VAE_GRID
            mel = torch.stack([m[:, s : s + crop_frames] for m, s in zip(mel, starts)])
        return mel


def _epoch_line(stage: str, step: int, total: int, losses: list[float], started: float) -> str:
    return (f"[tiny backbone] {stage} step {step}/{total}: loss {np.mean(losses):.4f} "
            f"({time.perf_counter() - started:.0f} s)")


@torch.no_grad()
def _fold_mel_normalization(vae, mel: torch.Tensor) -> dict[str, float]:
    """Data-dependent initialisation: make the VAE see and emit standardised log-mels, inside its own convs.

    Log-mels sit around -5 with a spread of ~2 (natural-log units), far from the unit scale the
    initialisation assumes; training from there spends hundreds of steps learning an offset. Folding
    ``x̂ = (x - m) / s`` into the encoder's first convolution and ``x = s·x̂ + m`` into the decoder's last
    one keeps the VAE's interface (raw AudioLDM2 log-mels in and out, plain ``AutoencoderKL``) while it
    starts from the standardised problem.
    """
    mean, std = float(mel.mean()), float(mel.std().clamp_min(1e-3))
    conv_in, conv_out = vae.encoder.conv_in, vae.decoder.conv_out
    conv_in.weight.div_(std)
    conv_in.bias.sub_(mean * conv_in.weight.sum(dim=(1, 2, 3)))
    conv_out.weight.mul_(std)
    conv_out.bias.mul_(std).add_(mean)
    return {"mel_mean": mean, "mel_std": std}


def _train_vae(backbone: Backbone, sampler: _ClipSampler, settings: TinyTrainingSettings, generator, progress: bool,
               log: list[dict]) -> None:
    from tqdm.auto import tqdm

    vae = backbone.vae.train().requires_grad_(True)
    normalization = _fold_mel_normalization(vae, torch.cat([sampler.mels() for _ in range(2)]))
    log.append({"stage": "vae_init", **normalization})
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    schedule = _lr_schedule(optimizer, settings.warmup_steps, settings.vae_steps)
    started, window = time.perf_counter(), {"l1": [], "kl": []}
    bar = tqdm(range(1, settings.vae_steps + 1), desc="VAE", disable=not progress, leave=False)
    for step in bar:
        mel = sampler.mels(settings.vae_crop_frames)
        posterior = vae.encode(mel).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        l1 = (reconstruction - mel).abs().mean()
        # KL summed over latent elements, per mel element: comparable to the per-element L1
        kl = posterior.kl().mean() / mel[0].numel()
        loss = l1 + settings.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        window["l1"].append(l1.item()), window["kl"].append(kl.item())
        bar.set_postfix(l1=f"{l1.item():.3f}")
        if step % settings.steps_per_epoch == 0 or step == settings.vae_steps:
            entry = {"stage": "vae", "step": step, "l1": float(np.mean(window["l1"])),
                     "kl": float(np.mean(window["kl"])), "seconds": time.perf_counter() - started}
            log.append(entry)
            print(f"[tiny backbone] VAE step {step}/{settings.vae_steps}: mel L1 {entry['l1']:.3f}, "
                  f"KL/elem {entry['kl']:.3f} ({entry['seconds']:.0f} s)", flush=True)
            window = {"l1": [], "kl": []}
    vae.eval().requires_grad_(False)


@torch.no_grad()
def _set_latent_scaling(backbone: Backbone, sampler: _ClipSampler, batches: int) -> float:
    """AudioLDM2's ``scale_by_std``: scaling factor = 1 / std of the training latents (posterior means)."""
    latents = torch.cat([backbone.vae.encode(sampler.mels()).latent_dist.mean for _ in range(max(batches, 1))])
    scaling = float(1.0 / latents.float().std().clamp_min(1e-6))
    backbone.vae.register_to_config(scaling_factor=scaling)
    return scaling


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict under the scheduler's ``prediction_type``: ε, v or the clean latent.

    v = √ᾱ·ε − √(1−ᾱ)·z₀ (Salimans & Ho 2022): at high noise it is ≈ −z₀, so the model learns the clip
    itself where ε-prediction only learns the (almost free) noise and leaves z₀ to an ill-conditioned
    division by √ᾱ.
    """
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ValueError(f"scheduler prediction_type {prediction_type!r}: expected epsilon, v_prediction or sample")


def min_snr_weight(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) for the scheduler's prediction type.

    The weight on the x₀-error is min(SNR, γ); expressed on the ε-loss it is min(SNR, γ)/SNR, on the
    v-loss min(SNR, γ)/(SNR + 1) — the latter stays finite at the zero-SNR last step.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type == "v_prediction":
        return snr.clamp(max=gamma) / (snr + 1.0)
    if prediction_type == "sample":
        return snr.clamp(max=gamma)
    return snr.clamp(max=gamma) / snr


def _train_unet(backbone: Backbone, sampler: _ClipSampler, settings: TinyTrainingSettings, generator, progress: bool,
                log: list[dict]) -> None:
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    unet, scheduler = backbone.unet.train().requires_grad_(True), backbone.scheduler
    ema = EMAModel(unet.parameters(), decay=settings.ema_decay, use_ema_warmup=True, power=3 / 4)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=1e-2)
    schedule = _lr_schedule(optimizer, settings.warmup_steps, settings.unet_steps)
    device = sampler.device
    conditioning = backbone.unet_conditioning(sampler.batch_size)
    started, window = time.perf_counter(), []
    bar = tqdm(range(1, settings.unet_steps + 1), desc="UNet", disable=not progress, leave=False)
    for step in bar:
        with torch.no_grad():
            latents = backbone.vae.encode(sampler.mels()).latent_dist.mean * backbone.scaling_factor
        noise = torch.randn(latents.shape, generator=generator, device=device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator,
                                  device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, **conditioning, return_dict=False)[0]
        per_sample = (prediction - diffusion_target(scheduler, latents, noise, timesteps)).pow(2).mean(dim=(1, 2, 3))
        if settings.min_snr_gamma > 0:
            per_sample = per_sample * min_snr_weight(scheduler, timesteps, settings.min_snr_gamma)
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.step(unet.parameters())
        window.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % settings.steps_per_epoch == 0 or step == settings.unet_steps:
            entry = {"stage": "unet", "step": step, "loss": float(np.mean(window)),
                     "seconds": time.perf_counter() - started}
            log.append(entry)
            print(_epoch_line("UNet", step, settings.unet_steps, window, started), flush=True)
            window = []
    ema.copy_to(unet.parameters())
    unet.eval().requires_grad_(False)


def train_tiny_backbone(
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    smoke: bool = False,
    seed: int = 0,
    device: str = "auto",
    settings: TinyTrainingSettings | None = None,
    songs: Sequence[int] | None = None,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Train the tiny backbone on an NMED-T folder's song audio: the VAE first, then the UNet on its latents.

    Parameters
    ----------
    data_root : path-like
        An NMED-T folder with stimulus WAVs (the simulated dataset by default in the pipeline).
    out_dir : path-like
        The backbone folder to write (atomically; ``backbone.json`` last).
    smoke : bool
        Train the ``"smoke"`` preset (seconds) instead of ``"default"``; ignored when ``settings`` is given.
    seed : int
        Seeds the initial weights, the constant conditioning, the crops and the noise.
    device : str
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, …
    settings : TinyTrainingSettings, optional
        Steps, batch, learning rates, … (default: the preset chosen by ``smoke``).
    songs : sequence of int, optional
        Songs to train on (default: all the folder has audio for).
    progress : bool
        Progress bars (a one-line summary per epoch is printed regardless).
    command : str, optional
        How this run was launched (recorded in ``training.json`` for reproducibility).

    Returns
    -------
    Path
        ``out_dir``, a complete backbone folder (``load_backbone`` reads it) with ``training.json``.
    """
    from .utils import cpu_thread_count, resolve_device

    settings = settings or TinyTrainingSettings.preset("smoke" if smoke else "default")
    if settings.vae_crop_frames % VAE_GRID:
        raise ValueError(f"vae_crop_frames={settings.vae_crop_frames}: must be a multiple of {VAE_GRID}")
    torch_device = resolve_device(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_thread_count(settings.num_threads, torch_device))
    try:
        return _train_tiny_backbone(data_root, out_dir, settings=settings, seed=seed, device=torch_device,
                                    songs=songs, progress=progress, command=command)
    finally:
        torch.set_num_threads(threads)


def _train_tiny_backbone(data_root, out_dir, *, settings: TinyTrainingSettings, seed: int, device: torch.device,
                         songs, progress: bool, command: str | None) -> Path:
    from .utils import seed_everything

    torch_device = device
    seed_everything(seed)
    audio = load_song_audio(data_root, songs)
    split = SongSplit.from_audio(audio, settings.holdout_seconds)
    backbone = build_tiny_backbone(seed=seed, size=settings.size, prediction_type=settings.prediction_type,
                                   zero_terminal_snr=settings.zero_terminal_snr).to(torch_device)
    generator = torch.Generator(device=torch_device).manual_seed(int(seed))
    log: list[dict] = []
    print(f"[tiny backbone] training on {len(audio)} songs ({sum(map(len, split.train.values())) / SAMPLE_RATE:.0f} s "
          f"of audio, last {settings.holdout_seconds} s of each held out) on {torch_device}: "
          f"VAE {settings.vae_steps} steps, UNet {settings.unet_steps} steps, batch {settings.batch_size}", flush=True)

    started = time.perf_counter()
    _train_vae(backbone, _ClipSampler(split.train, settings.batch_size, seed + 1, torch_device), settings, generator,
               progress, log)
    vae_seconds = time.perf_counter() - started
    scaling = _set_latent_scaling(backbone, _ClipSampler(split.train, settings.batch_size, seed + 2, torch_device),
                                  settings.scaling_batches)
    started = time.perf_counter()
    _train_unet(backbone, _ClipSampler(split.train, settings.batch_size, seed + 3, torch_device), settings, generator,
                progress, log)
    unet_seconds = time.perf_counter() - started

    clips, _ = split.heldout_clips()
    reconstruction = reconstruction_metrics(backbone, clips) if len(clips) else {}
    import diffusers

    record = {
        "settings": asdict(settings),
        "seed": int(seed),
        "device": str(torch_device),
        "torch_threads": torch.get_num_threads(),
        "command": command,
        "data": {
            "data_root": str(Path(data_root).expanduser().resolve()),
            "songs": sorted(audio),
            "seconds_per_song": {str(s): len(a) / SAMPLE_RATE for s, a in sorted(audio.items())},
            "holdout_seconds": settings.holdout_seconds,
            "fingerprint": audio_fingerprint(audio),
        },
        "latent_scaling_factor": scaling,
        "timing_seconds": {"vae": vae_seconds, "unet": unet_seconds, "total": vae_seconds + unet_seconds},
        "heldout_reconstruction": reconstruction,
        "log": log,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }
    backbone.metadata.update({
        "trained": True,
        "training_seconds": vae_seconds + unet_seconds,
        "data_fingerprint": record["data"]["fingerprint"],
        "heldout_reconstruction": reconstruction,
        "settings": asdict(settings),
    })
    print(f"[tiny backbone] trained in {vae_seconds + unet_seconds:.0f} s (VAE {vae_seconds:.0f} s, UNet "
          f"{unet_seconds:.0f} s); held-out mel L1 {reconstruction.get('mel_l1', float('nan')):.3f}, "
          f"SNR {reconstruction.get('snr_db', float('nan')):.1f} dB → {out_dir}", flush=True)
    return backbone.to("cpu").save(out_dir, extra_files={TRAINING_FILE: record})


def install_shipped_backbone(out_dir: str | os.PathLike) -> Path:
    """Copy the tiny backbone shipped in ``eeg2music/assets/tiny_backbone`` to ``out_dir`` (atomically).

    Raises
    ------
    FileNotFoundError
        If this installation has no shipped backbone (train one with :func:`train_tiny_backbone`).
    """
    import shutil

    if not (SHIPPED_BACKBONE_DIR / BACKBONE_MARKER).is_file():
        raise FileNotFoundError(
            f"{SHIPPED_BACKBONE_DIR}: no shipped tiny backbone in this installation; train one with notebook 00 "
            f"(-p retrain true) or eeg2music.backbone.train_tiny_backbone"
        )
    out_dir = Path(out_dir).expanduser().resolve()
    with atomic_directory(out_dir) as tmp:
        for item in SHIPPED_BACKBONE_DIR.iterdir():
            if item.name == BACKBONE_MARKER:
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        shutil.copy2(SHIPPED_BACKBONE_DIR / BACKBONE_MARKER, tmp / BACKBONE_MARKER)
    return out_dir


def _weights_digest(folder: Path) -> str:
    """SHA-256 (16 hex digits) of every ``.safetensors`` file under a backbone folder, by relative path."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def backbone_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """What a backbone folder holds and where it came from: the shipped tiny backbone, another one, or AudioLDM2.

    Returns
    -------
    dict
        ``path``, ``kind`` (``"tiny"`` / ``"audioldm2"``), ``weights_digest``, ``shipped`` (the weights equal
        those shipped in ``eeg2music/assets/tiny_backbone``), ``recipe`` (the training settings' preset name
        when they equal one, else ``"custom"``), ``command``, ``seed`` and ``data_fingerprint`` from
        ``training.json`` when the folder has one.
    """
    folder = Path(path).expanduser().resolve()
    record: dict[str, Any] = {"path": str(folder)}
    if not (folder / BACKBONE_MARKER).is_file():
        record.update(kind="audioldm2" if (folder / AUDIOLDM2_MARKER).is_file() else "unknown", shipped=False)
        return record
    record["kind"] = read_json(folder / BACKBONE_MARKER).get("kind", "tiny")
    record["weights_digest"] = _weights_digest(folder)
    shipped_marker = SHIPPED_BACKBONE_DIR / BACKBONE_MARKER
    record["shipped"] = bool(shipped_marker.is_file() and record["weights_digest"] == _weights_digest(SHIPPED_BACKBONE_DIR))
    training_file = folder / TRAINING_FILE
    if training_file.is_file():
        training = read_json(training_file)
        settings = training.get("settings", {})
        presets = [name for name in ("shipped", "default", "smoke")
                   if asdict(TinyTrainingSettings.preset(name)) == settings]
        record.update(recipe=presets[0] if presets else "custom", command=training.get("command"),
                      seed=training.get("seed"), data_fingerprint=training.get("data", {}).get("fingerprint"))
    return record


def describe_provenance(record: Mapping[str, Any]) -> str:
    """One line for notebooks and reports: which backbone a run uses (see :func:`backbone_provenance`)."""
    if record.get("kind") != "tiny":
        return f"backbone: {record.get('kind')} from {record['path']}"
    if record.get("shipped"):
        return f"backbone: the shipped tiny backbone (recipe 'shipped', weights {record['weights_digest']}) in {record['path']}"
    return (f"backbone: a tiny backbone that is NOT the shipped one — {record['path']}: recipe "
            f"{record.get('recipe', 'unknown')!r}, seed {record.get('seed')}, data fingerprint "
            f"{record.get('data_fingerprint')}, weights {record.get('weights_digest')} (made by: {record.get('command')})")


# ---------------------------------------------------------------------------------------------------
# Evaluation: reconstruction, unconditional samples, a distribution distance
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def reconstruction_metrics(backbone: Backbone, clips: np.ndarray, batch_size: int = 16) -> dict[str, float]:
    """VAE round trip (mel → latent → mel) of 3.5 s clips: log-mel L1 and spectral SNR.

    Parameters
    ----------
    backbone : Backbone
    clips : ndarray, shape (N, 56000)
        Waveforms at 16 kHz.
    batch_size : int

    Returns
    -------
    dict
        ``mel_l1``: mean |log-mel error| over the real (unpadded) frames, in natural-log units;
        ``snr_db``: 10 log10(Σ M² / Σ (M − M̂)²) on the mel *magnitudes* M = exp(log-mel), pooled over
        clips; ``n_clips``.
    """
    frames = n_frames(CLIP_SAMPLES)
    abs_error, signal, noise, count = 0.0, 0.0, 0.0, 0
    for start in range(0, len(clips), batch_size):
        mel = backbone.wave_to_mel(torch.from_numpy(np.asarray(clips[start : start + batch_size])))
        reconstruction = backbone.decode(backbone.encode(mel)).float()
        mel, reconstruction = mel[:, :, :frames].float(), reconstruction[:, :, :frames]
        abs_error += float((reconstruction - mel).abs().sum())
        count += mel.numel()
        magnitude, estimate = mel.exp(), reconstruction.exp()
        signal += float(magnitude.pow(2).sum())
        noise += float((magnitude - estimate).pow(2).sum())
    return {
        "mel_l1": abs_error / max(count, 1),
        "snr_db": 10.0 * math.log10(signal / max(noise, 1e-12)),
        "n_clips": int(len(clips)),
    }


def mel_statistics(mel: torch.Tensor | np.ndarray, bands: int = 8) -> np.ndarray:
    """Per-clip features: mean and standard deviation over time of the log-mel in ``bands`` equal mel bands.

    Parameters
    ----------
    mel : (N, 1, frames, 64)
        Log-mels; only the 350 frames of a clip are used (the padding frames are dropped).
    bands : int
        Groups of adjacent mel bins (64 / bands bins each).

    Returns
    -------
    ndarray, shape (N, 2 * bands)
    """
    mel = torch.as_tensor(mel).float()[:, 0, : n_frames(CLIP_SAMPLES)]  # (N, frames, 64)
    grouped = mel.reshape(mel.shape[0], mel.shape[1], bands, N_MELS // bands).mean(-1)  # (N, frames, bands)
    return torch.cat([grouped.mean(1), grouped.std(1)], dim=1).numpy().astype(np.float64)


def latent_statistics(latents: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-clip features: mean and standard deviation of each latent channel over time and frequency.

    A second view of a clip next to :func:`mel_statistics`: what the UNet itself produces, before the
    VAE's decoder can smooth it. ``(N, C, T, F)`` → ``(N, 2C)``.
    """
    latents = torch.as_tensor(latents).float()
    return torch.cat([latents.mean(dim=(2, 3)), latents.std(dim=(2, 3))], dim=1).numpy().astype(np.float64)


def mel_level_db(mel: torch.Tensor | np.ndarray, bands: int = 8) -> tuple[float, np.ndarray]:
    """Loudness and spectral balance of a set of clips: mean mel power and mean level per band, in dB.

    Returns ``(level_db, band_db)``: 10·log10 of the mean squared mel magnitude over clips, frames and
    bins, and 20·log10(e)·mean log-mel in each of ``bands`` equal mel bands (``(bands,)``).
    """
    mel = torch.as_tensor(mel).float()[:, 0, : n_frames(CLIP_SAMPLES)]
    level = 10.0 * math.log10(float((2.0 * mel).exp().mean()))
    band = mel.reshape(mel.shape[0], mel.shape[1], bands, N_MELS // bands).mean(dim=(0, 1, 3))
    return level, log_mel_to_db(band.numpy().astype(np.float64))


def rms_dbfs(waves: torch.Tensor | np.ndarray) -> float:
    """Mean over clips of each clip's RMS level in dB re full scale."""
    waves = np.asarray(torch.as_tensor(waves).float().cpu().numpy(), np.float64)
    rms = np.sqrt((waves**2).mean(axis=-1)).clip(1e-10)
    return float(np.mean(20.0 * np.log10(rms)))


@dataclass
class BackboneEvaluation:
    """What :func:`evaluate_backbone` measured, with the mels to show."""

    metrics: dict[str, Any]
    real_mels: torch.Tensor
    real_songs: np.ndarray
    reconstructed_mels: torch.Tensor
    sample_mels: torch.Tensor
    sample_latents: torch.Tensor = field(repr=False)
    reference_mels: torch.Tensor = field(repr=False, default=None)


@torch.no_grad()
def evaluate_backbone(
    backbone: Backbone,
    split: SongSplit,
    *,
    n_samples: int = 128,
    num_inference_steps: int = 50,
    seed: int = 0,
    batch_size: int = 32,
    n_vocoded: int = 32,
    progress: bool = True,
) -> BackboneEvaluation:
    """Does the backbone generate the dataset's music? Unconditional samples against real clips, several ways.

    Parameters
    ----------
    backbone : Backbone
    split : SongSplit
        The songs' audio; its held-out tails are reconstructed, its training heads give the real sets.
    n_samples : int
        Unconditional samples to draw, and the size of every compared set (two independent sets of real
        training crops, Gaussian latents, white noise).
    num_inference_steps : int
        DDIM steps for the samples.
    seed : int
        Seeds the samples, the real crops and the baselines.
    batch_size : int
        Clips per UNet / VAE batch.
    n_vocoded : int
        Clips of each set vocoded to measure waveform loudness (the vocoder is the slow part).
    progress : bool

    Returns
    -------
    BackboneEvaluation
        ``metrics`` holds:

        * ``reconstruction``: the held-out VAE round trip (:func:`reconstruction_metrics`);
        * ``frechet``: per feature set (``mel_statistics``, ``latent_statistics``), the Fréchet distance
          from a reference set of real crops to another real set (the floor at this size), the samples,
          Gaussian latents decoded without the UNet, white noise (mel features only) and the held-out
          clips, plus ``samples_over_real`` and ``gaussian_over_real`` (each distance / the floor);
        * ``latents``: per-channel mean and std of real latents and of the samples, the std ratio and the
          mean difference in units of the real channel's std;
        * ``loudness``: mean mel power (dB), per-band level (spectral balance, dB) and vocoded RMS (dBFS)
          of real clips and samples, and their differences;
        * ``song_classifier``: a logistic regression on real clips' per-bin mel statistics — held-out
          accuracy and how confidently it assigns the samples to one song.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    heldout, heldout_songs = split.heldout_clips()

    def batched(function, items) -> torch.Tensor:
        return torch.cat([function(items[i : i + batch_size]).float().cpu() for i in range(0, len(items), batch_size)])

    def mels_of(clips: np.ndarray) -> torch.Tensor:
        return batched(lambda chunk: backbone.wave_to_mel(torch.from_numpy(np.ascontiguousarray(chunk))), clips)

    # 1. Real sets: a reference, a second independent set (the floor), the held-out tails.
    reference_clips, _ = random_clips(split.train, n_samples, rng)
    other_clips, _ = random_clips(split.train, n_samples, rng)
    reference_mels, other_mels = mels_of(reference_clips), mels_of(other_clips)
    reference_latents, other_latents = batched(backbone.encode, reference_mels), batched(backbone.encode, other_mels)
    heldout_mels = mels_of(heldout) if len(heldout) else torch.zeros(0, 1, CLIP_FRAMES_PADDED, N_MELS)
    reconstructed = batched(lambda m: backbone.decode(backbone.encode(m)), heldout_mels) if len(heldout) else heldout_mels
    reconstruction = reconstruction_metrics(backbone, heldout, batch_size) if len(heldout) else {}

    # 2. Unconditional samples, and what the VAE makes of Gaussian latents without the UNet.
    generator = torch.Generator().manual_seed(int(seed))
    latents = torch.cat([
        backbone.sample_latents(min(batch_size, n_samples - i), num_inference_steps, generator=generator,
                                progress=progress).float().cpu()
        for i in range(0, n_samples, batch_size)
    ])
    sample_mels = batched(backbone.decode, latents)
    gaussian = torch.randn(latents.shape, generator=generator)
    gaussian_mels = batched(backbone.decode, gaussian)
    noise_mels = mels_of(rng.standard_normal((n_samples, CLIP_SAMPLES)).astype(np.float32))

    # 3. Fréchet distances on two feature sets, each over the distance between two real sets.
    def distances(features, sets: dict[str, Any]) -> dict[str, float]:
        reference = features(sets.pop("reference"))
        values = {name: (frechet_distance(features(x), reference) if len(x) > 2 else float("nan"))
                  for name, x in sets.items()}
        floor = max(values["real_vs_real"], 1e-12)
        values.update(samples_over_real=values["samples"] / floor, gaussian_over_real=values["gaussian_latents"] / floor)
        return values

    frechet = {
        "mel_statistics": distances(mel_statistics, {
            "reference": reference_mels, "real_vs_real": other_mels, "samples": sample_mels,
            "gaussian_latents": gaussian_mels, "white_noise": noise_mels, "heldout": heldout_mels}),
        "latent_statistics": distances(latent_statistics, {
            "reference": reference_latents, "real_vs_real": other_latents, "samples": latents,
            "gaussian_latents": gaussian}),
    }

    # 4. The latents themselves, channel by channel.
    real = torch.cat([reference_latents, other_latents])
    real_mean, real_std = real.mean(dim=(0, 2, 3)), real.std(dim=(0, 2, 3))
    sample_mean, sample_std = latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3))
    latent_stats = {
        "real_mean": real_mean.tolist(), "real_std": real_std.tolist(),
        "sample_mean": sample_mean.tolist(), "sample_std": sample_std.tolist(),
        "std_ratio": (sample_std / real_std).tolist(),
        "mean_difference_in_real_std": ((sample_mean - real_mean) / real_std).tolist(),
    }
    latent_stats["max_std_error"] = float(np.max(np.abs(np.asarray(latent_stats["std_ratio"]) - 1.0)))
    latent_stats["max_mean_error"] = float(np.max(np.abs(latent_stats["mean_difference_in_real_std"])))

    # 5. Loudness and spectral balance: mel power, per-band level, and the vocoded waveform's RMS.
    real_level, real_bands = mel_level_db(reference_mels)
    sample_level, sample_bands = mel_level_db(sample_mels)
    k = min(n_vocoded, n_samples)
    real_rms, sample_rms = rms_dbfs(backbone.mel_to_wave(reference_mels[:k])), rms_dbfs(backbone.mel_to_wave(sample_mels[:k]))
    loudness = {
        "real_mel_level_db": real_level, "sample_mel_level_db": sample_level, "mel_level_difference_db": sample_level - real_level,
        "real_band_db": real_bands.tolist(), "sample_band_db": sample_bands.tolist(),
        "band_difference_db": (sample_bands - real_bands).tolist(),
        "max_band_difference_db": float(np.max(np.abs(sample_bands - real_bands))),
        "real_vocoded_rms_dbfs": real_rms, "sample_vocoded_rms_dbfs": sample_rms,
        "vocoded_rms_difference_db": sample_rms - real_rms, "n_vocoded": int(k),
    }

    # 6. Does a song classifier trained on real clips recognise the samples as one of the songs?
    train_clips, train_songs = random_clips(split.train, max(20 * len(split.train), 200), rng)

    def bin_features(mels: torch.Tensor) -> np.ndarray:
        mel = mels[:, 0, : n_frames(CLIP_SAMPLES)]
        return torch.cat([mel.mean(1), mel.std(1)], 1).numpy()

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    classifier.fit(bin_features(mels_of(train_clips)), train_songs)
    sample_probabilities = classifier.predict_proba(bin_features(sample_mels))
    classes = classifier.classes_
    song_classifier = {
        "heldout_accuracy": float((classifier.predict(bin_features(heldout_mels)) == heldout_songs).mean())
        if len(heldout_mels) else float("nan"),
        "chance": 1.0 / len(classes),
        "samples_mean_max_probability": float(sample_probabilities.max(1).mean()),
        "samples_confident_fraction": float((sample_probabilities.max(1) >= 0.5).mean()),
        "samples_per_song": {str(int(song)): int(count) for song, count in
                             zip(classes, np.bincount(sample_probabilities.argmax(1), minlength=len(classes)))},
        "noise_mean_max_probability": float(classifier.predict_proba(bin_features(noise_mels)).max(1).mean()),
    }
    metrics = {
        "reconstruction": reconstruction,
        "frechet": frechet,
        "frechet_features": {
            "mel_statistics": "per clip: mean and std over time of the log-mel in 8 mel bands (16 dims)",
            "latent_statistics": "per clip: mean and std over time and frequency of each of the 8 latent channels (16 dims)",
        },
        "latents": latent_stats,
        "loudness": loudness,
        "n_samples": int(n_samples),
        "num_inference_steps": int(num_inference_steps),
        "scheduler": {"prediction_type": backbone.scheduler.config.get("prediction_type"),
                      "rescale_betas_zero_snr": bool(backbone.scheduler.config.get("rescale_betas_zero_snr", False))},
        "song_classifier": song_classifier,
    }
    return BackboneEvaluation(metrics, heldout_mels, heldout_songs, reconstructed, sample_mels, latents, reference_mels)


# ---------------------------------------------------------------------------------------------------
# Timing and figures (notebook 00)
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def time_sampling(backbone: Backbone, steps: Sequence[int] = (20, 200), *, seed: int = 0) -> dict[str, float]:
    """Wall time to generate one 3.5 s clip (batch 1): DDIM for each step count, then VAE decode and vocoder.

    Returns
    -------
    dict
        ``{"ddim_<n>_steps_seconds": ..., ...}`` (noise → waveform) and ``"decode_and_vocode_seconds"``.
    """
    timings = {}
    generator = torch.Generator().manual_seed(int(seed))
    latents = backbone.sample_latents(1, 2, generator=generator, progress=False)  # warm-up
    for n in steps:
        start = time.perf_counter()
        latents = backbone.sample_latents(1, int(n), generator=generator, progress=False)
        sampling = time.perf_counter() - start
        start = time.perf_counter()
        backbone.latents_to_wave(latents)
        decoding = time.perf_counter() - start
        timings[f"ddim_{int(n)}_steps_seconds"] = sampling + decoding
        timings["decode_and_vocode_seconds"] = decoding
    return timings


def plot_mels(mels, titles: Sequence[str] | None = None, *, columns: int = 4, title: str | None = None,
              path: str | os.PathLike | None = None):
    """Log-mel spectrograms ``(N, 1, frames, 64)`` side by side (time in s, mel bin up), one colour scale.

    Saved as PNG to ``path`` when given; returns the figure.
    """
    import matplotlib.pyplot as plt

    mels = torch.as_tensor(mels).float().cpu()
    count = len(mels)
    rows = int(math.ceil(count / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False, sharey=True)
    frames = n_frames(CLIP_SAMPLES)
    for index, ax in enumerate(axes.flat):
        if index >= count:
            ax.axis("off")
            continue
        image = ax.imshow(mels[index, 0, :frames].T.numpy(), origin="lower", aspect="auto", cmap="magma",
                          vmin=-11.5, vmax=2.0, extent=(0, frames * HOP_LENGTH / SAMPLE_RATE, 0, N_MELS))
        if titles is not None:
            ax.set_title(titles[index], fontsize=9)
        if index % columns == 0:
            ax.set_ylabel("mel bin")
        if index >= count - columns:
            ax.set_xlabel("time (s)")
    fig.colorbar(image, ax=axes, shrink=0.8, label="log mel magnitude")
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


@torch.no_grad()
def plot_levels(metrics: Mapping[str, Any], *, path: str | os.PathLike | None = None):
    """Real clips against samples (:func:`evaluate_backbone`'s metrics): level per mel band, spread per latent channel."""
    import matplotlib.pyplot as plt

    loudness, latents = metrics["loudness"], metrics["latents"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    bands = np.arange(len(loudness["real_band_db"]))
    left.plot(bands, loudness["real_band_db"], "o-", label="real crops")
    left.plot(bands, loudness["sample_band_db"], "s--", label="samples")
    left.set(xlabel="mel band (8 bins each, low → high)", ylabel="mean log-mel (dB)", title="Spectral balance")
    left.legend()
    channels = np.arange(len(latents["real_std"]))
    right.bar(channels - 0.2, latents["real_std"], width=0.4, label="real latents")
    right.bar(channels + 0.2, latents["sample_std"], width=0.4, label="sampled latents")
    right.set(xlabel="latent channel", ylabel="standard deviation", title="Spread of the latents")
    right.legend()
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def plot_forward_process(backbone: Backbone, latents: torch.Tensor, timesteps: Sequence[int] = (0, 100, 300, 600, 999),
                         *, seed: int = 0, path: str | os.PathLike | None = None):
    """The forward (noising) process on one clip's latent: ``z_t = √ᾱ_t z_0 + √(1-ᾱ_t) ε`` for a few t.

    Top row: latent channel 0 (time × frequency); bottom row: what the VAE decodes from ``z_t``.
    """
    import matplotlib.pyplot as plt

    z0 = latents[:1].float().cpu()
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(int(seed)))
    alphas = backbone.scheduler.alphas_cumprod
    fig, axes = plt.subplots(2, len(timesteps), figsize=(3.0 * len(timesteps), 5.0), squeeze=False)
    frames = n_frames(CLIP_SAMPLES)
    for column, t in enumerate(timesteps):
        zt = z0 if t == 0 else backbone.scheduler.add_noise(z0, noise, torch.tensor([int(t)]))
        snr_db = 10 * math.log10(max(float(alphas[int(t)] / (1 - alphas[int(t)])), 1e-12))
        axes[0, column].imshow(zt[0, 0].T.numpy(), origin="lower", aspect="auto", cmap="coolwarm", vmin=-3, vmax=3)
        axes[0, column].set_title(f"t = {int(t)}  (SNR {snr_db:+.0f} dB)", fontsize=9)
        mel = backbone.decode(zt.to(backbone.device)).float().cpu()
        axes[1, column].imshow(mel[0, 0, :frames].T.numpy(), origin="lower", aspect="auto", cmap="magma",
                               vmin=-11.5, vmax=2.0)
        for row in range(2):
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
    axes[0, 0].set_ylabel("latent ch. 0\n(16 bins)")
    axes[1, 0].set_ylabel("decoded mel\n(64 bins)")
    fig.suptitle("Forward process q(z_t | z_0): the clip dissolves into Gaussian noise", y=1.0)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def prepare_backbone_folder(
    backbone: str | os.PathLike,
    target: str | os.PathLike,
    data_root: str | os.PathLike,
    *,
    smoke: bool = False,
    seed: int = 0,
    device: str = "auto",
    retrain: bool = False,
    settings: TinyTrainingSettings | None = None,
    command: str | None = None,
) -> tuple[Path, str]:
    """The backbone folder notebook 00 works with, and how it was obtained.

    Returns ``(folder, source)``: ``backbone`` itself when given (``"given"``); else ``target`` when it
    already holds a complete backbone and ``retrain`` is off (``"existing"``); else a tiny backbone
    trained now on ``data_root`` (``"trained"``: always at smoke size, or when ``retrain``), or the
    shipped one copied there (``"shipped"``).
    """
    if backbone not in ("", None):
        path = Path(backbone).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(missing_backbone_message(path))
        return path.resolve(), "given"
    target = Path(target).expanduser().resolve()
    if (target / BACKBONE_MARKER).is_file() and not retrain:
        return target, "existing"
    if smoke or retrain:
        return train_tiny_backbone(data_root, target, smoke=smoke, seed=seed, device=device, settings=settings,
                                   command=command), "trained"
    return install_shipped_backbone(target), "shipped"
