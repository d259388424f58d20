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
    widths, trained here on the simulated songs by :func:`~eeg2music.models.tiny_backbone.train_tiny_backbone`; Griffin-Lim stands in
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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AudioLDM2Pipeline,
    AudioLDM2UNet2DConditionModel,
    AutoencoderKL,
    DDIMScheduler,
)
from diffusers.training_utils import compute_snr
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .._compat import hub_offline
from ..audio import (
    CLIP_SAMPLES,
    CLIP_SECONDS,
    HOP_LENGTH,
    N_MELS,
    SAMPLE_RATE,
    griffin_lim,
    n_frames,
    padded_frames,
    waveform_to_mel,
)
from ..paths import PACKAGE_DIR, stage_dir
from ..utils import (
    atomic_directory,
    check_safetensors,
    count_parameters,
    load_pretrained,
    read_json,
    write_json,
)

#: The file that marks a complete backbone folder (written last; eeg2music.run_inputs checks it).
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
SHIPPED_BACKBONE_DIR = PACKAGE_DIR / "assets" / "tiny_backbone"


#: Mel frames per latent frame in both backbones (the VAE's time down-sampling).
VAE_GRID = 4


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


def backbone_kind_of(backbone: str | Path) -> str:
    """``"audioldm2"`` or ``"tiny"`` for a backbone folder, from its marker files alone, without loading it
    (``""``: the default tiny one; what :func:`load_backbone` would return)."""
    if str(backbone or "") == "":
        return "tiny"
    folder = Path(str(backbone)).expanduser()
    if (folder / BACKBONE_MARKER).is_file():
        try:
            return str(read_json(folder / BACKBONE_MARKER).get("kind", "tiny"))
        except (OSError, ValueError):
            return "tiny"
    return "audioldm2" if (folder / AUDIOLDM2_MARKER).is_file() else "tiny"


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


def clean_latent_estimate(scheduler, noisy: torch.Tensor, prediction: torch.Tensor, timestep) -> torch.Tensor:
    """The clean latent z₀ implied by the UNet's prediction at ``timestep`` (the scheduler's ``prediction_type``).

    ε: z₀ = (z_t − √(1−ᾱ)·ε)/√ᾱ; v: z₀ = √ᾱ·z_t − √(1−ᾱ)·v (exact at the zero-SNR last step, where z₀ = −v);
    sample: the prediction itself. The same estimate a DDIM step computes as ``pred_original_sample``.
    """
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    alpha_bar = scheduler.alphas_cumprod.to(noisy.device)[torch.as_tensor(timestep, device=noisy.device).long()]
    alpha_bar = alpha_bar.to(noisy.dtype).reshape(-1, *([1] * (noisy.ndim - 1)))
    if prediction_type == "epsilon":
        return (noisy - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt().clamp_min(1e-4)
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * prediction
    if prediction_type == "sample":
        return prediction
    raise ValueError(f"scheduler prediction_type {prediction_type!r}: expected epsilon, v_prediction or sample")


def min_snr_weight(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) for the scheduler's prediction type.

    The weight on the x₀-error is min(SNR, γ); expressed on the ε-loss it is min(SNR, γ)/SNR, on the
    v-loss min(SNR, γ)/(SNR + 1) — the latter stays finite at the zero-SNR last step.
    """

    snr = compute_snr(scheduler, timesteps)
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type == "v_prediction":
        return snr.clamp(max=gamma) / (snr + 1.0)
    if prediction_type == "sample":
        return snr.clamp(max=gamma)
    return snr.clamp(max=gamma) / snr
