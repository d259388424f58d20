"""The tiny backbone: AudioLDM2's classes at small widths, trained here on the dataset's songs.

:func:`build_tiny_backbone` makes one; :func:`train_tiny_backbone` trains its VAE, then its UNet
(v-prediction on a zero-terminal-SNR schedule, Min-SNR weighting) on random clips of the songs;
:func:`install_shipped_backbone` copies the one shipped with the package, and
:func:`backbone_provenance` says which backbone a folder holds.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..audio import (
    CLIP_FRAMES_PADDED,
    CLIP_SAMPLES,
    SAMPLE_RATE,
    n_frames,
    waveform_to_mel,
)
from ..data.song_audio import (
    SongSplit,
    audio_fingerprint,
    load_song_audio,
    random_clips,
)
from ..utils import (
    atomic_directory,
    cpu_thread_count,
    read_json,
    resolve_device,
    seed_everything,
)
from .backbone import (
    AUDIOLDM2_MARKER,
    BACKBONE_MARKER,
    SHIPPED_BACKBONE_DIR,
    TRAINING_FILE,
    VAE_GRID,
    Backbone,
    diffusion_target,
    min_snr_weight,
    missing_backbone_message,
    tiny_scheduler_config,
)

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


def _train_unet(backbone: Backbone, sampler: _ClipSampler, settings: TinyTrainingSettings, generator, progress: bool,
                log: list[dict]) -> None:

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

    if not (SHIPPED_BACKBONE_DIR / BACKBONE_MARKER).is_file():
        raise FileNotFoundError(
            f"{SHIPPED_BACKBONE_DIR}: no shipped tiny backbone in this installation; train one with notebook 00 "
            f"(-p retrain true) or eeg2music.models.tiny_backbone.train_tiny_backbone"
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
