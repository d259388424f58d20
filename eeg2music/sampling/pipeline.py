"""Sampling reconstructions: every model, the test chunks and the out-of-distribution song, to WAV.

One pipeline class, :class:`EEGMusicPipeline`, turns EEG windows into 3.5 s waveforms for every model
the project trains or registers (:mod:`eeg2music.training`, :mod:`eeg2music.models.model_folder`):

``controlnet`` (``subject_cond`` on or off)
    The paper's model. Start from Gaussian noise ``z_T`` in the backbone's latent space
    ``(8, 88, 16)`` and denoise it with the frozen UNet steered by the EEG ControlNet,
    ``ε = ε_θ(z_t, t, c, EEG)``, with a diffusers scheduler: **DDIM** (the paper's sampler, 200 steps,
    η = 0, deterministic given ``z_T``) or **DPM-Solver++** (a second-order multistep solver of the same
    probability-flow ODE, ≈ 20 steps for comparable quality). Then VAE decoder → mel → vocoder.
``convnet``
    The baseline regresses the clip's latent from the EEG directly; there is no diffusion: its
    prediction goes through the same VAE decoder and vocoder, so any difference comes from the model.
``unconditional``
    The backbone alone (no EEG): the reference a decoder must beat to show it uses the EEG.

Reproducibility
---------------
Every clip gets its own ``torch.Generator``, seeded by :func:`clip_seed` from ``(seed, song, chunk,
subject)`` — not from the model, so all models (and both schedulers) start from the *same* noise for
the same clip, which makes their comparison paired. Noise is drawn per clip (diffusers'
``randn_tensor`` with a list of generators) and Griffin-Lim inverts one clip at a time, so a clip's
waveform does not depend on the batch it was sampled in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from ..models.backbone import clean_latent_estimate
from ..models.controlnet import controlled_noise_prediction, expand_conditioning

#: The samplers :class:`EEGMusicPipeline` offers (names as the parameter takes them).
SCHEDULERS = ("ddim", "dpmsolver++")


CLIP_STREAM = 0x5A3B1E  # separates the sampling seeds from training's streams of the same seed


def model_setting(trained, guidance_scale: float = 1.0, strength: float = 1.0) -> str:
    """How a model was trained and is sampled, in a few words (the report's "setting" column).

    The paper's setting is a ControlNet whose P is trained from scratch with it, on timesteps drawn
    uniformly from every diffusion step, sampled without guidance from pure noise; anything else is named.
    """
    restart = ("" if strength == 1.0 else ", its one-step estimate from pure noise (the conditional mean), not a sample"
               if strength == 0.0 else f", from its own first estimate, last {strength:g} of the steps")
    if trained is None or trained.kind == "unconditional":
        return "backbone alone" + restart
    training = trained.config.get("training", {})
    if trained.kind == "convnet":
        return f"regression, {training.get('steps')} steps"
    parts = [f"{training.get('steps')} steps"]
    align = int(training.get("align_steps") or 0)
    parts.append(f"S and P aligned first ({align} contrastive steps)" if align else "P from scratch (paper)")
    min_t = training.get("control_min_timestep")
    draw = training.get("timestep_sampling") or "uniform"
    where = "every t" if not min_t else f"t ≥ {min_t}"
    parts.append(f"{where}, uniform (paper)" if draw == "uniform" and not min_t else f"{where}, {draw} timesteps")
    parts.append("no guidance (paper)" if guidance_scale == 1.0 else f"EEG guidance w = {guidance_scale:g}")
    return ", ".join(parts) + restart


def clip_seed(seed: int, song: int, chunk: int, subject: int) -> int:
    """The sampling seed of one clip: a well-mixed 63-bit function of ``(seed, song, chunk, subject)``.

    ``subject`` is the participant number (stable whatever the dataset's subject order). The model is
    deliberately not an input: every model starts from the same noise for the same clip.
    """
    entropy = [CLIP_STREAM, int(seed) % 2**63, int(song), int(chunk), int(subject) % 2**63]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0]) >> 1


def clip_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per clip, seeded with ``seeds`` (CPU generators: draws match across devices)."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def restart_index(n_steps: int, strength: float) -> int:
    """Index of the timestep where a sampler run with ``strength`` begins (0 = from pure noise).

    The last ``round(strength · n_steps)`` steps run (at least one), as in diffusers' img2img pipelines.
    """
    run = min(n_steps, max(1, int(round(float(strength) * n_steps))))
    return n_steps - run


def make_scheduler(name: str, config: Mapping[str, Any]):
    """A fresh sampler configured from the backbone's training noise schedule.

    Parameters
    ----------
    name : {"ddim", "dpmsolver++"}
        DDIM (η = 0, the paper's) or DPM-Solver++ (diffusers' ``DPMSolverMultistepScheduler`` with
        ``algorithm_type="dpmsolver++"``, second order).
    config : mapping
        ``backbone.scheduler.config``: the β schedule and prediction type the UNet was trained with.

    Returns
    -------
    diffusers.SchedulerMixin
        A new scheduler object (a pipeline call mutates its state, so it is never shared).
    """

    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    raise ValueError(f"parameter 'scheduler': {name!r} is not one of {list(SCHEDULERS)}")


class EEGMusicPipeline:
    """EEG → waveform for a trained model (ControlNet, ConvNet) or the unconditional backbone.

    A plain class in the manner of a diffusers pipeline (``__call__`` returning
    ``AudioPipelineOutput``, ``progress_bar``, ``set_progress_bar_config``, ``device``, ``to``) rather
    than a ``DiffusionPipeline`` subclass: its components are a :class:`~eeg2music.models.backbone.Backbone`
    (whose mel front end, latent scaling, constant text conditioning and Griffin-Lim stand-in vocoder
    are not pipeline modules) and one of three model kinds, two of which have no diffusion at all or
    no network; ``DiffusionPipeline``'s component registry, ``components`` and ``save_pretrained``
    would describe neither faithfully.

    Parameters
    ----------
    backbone : eeg2music.models.backbone.Backbone
        The frozen latent diffusion model the model was trained with.
    model : eeg2music.train.TrainedModel or None
        A loaded model folder (:func:`eeg2music.models.model_folder.load_trained_model`); ``None`` is the
        unconditional backbone.

    Examples
    --------
    >>> pipe = EEGMusicPipeline(backbone, load_trained_model("outputs/04_train/controlnet_subject"))
    >>> gens = clip_generators([clip_seed(0, song, chunk, subject)])
    >>> wave = pipe(eeg[None], subject=[3], num_inference_steps=20, generator=gens).audios[0]
    """

    def __init__(self, backbone, model=None):
        self.backbone = backbone
        self.model = model
        self.kind = "unconditional" if model is None else model.kind
        if self.kind not in ("controlnet", "convnet", "unconditional"):
            raise ValueError(f"EEGMusicPipeline: unknown model kind {self.kind!r}")
        if self.kind != "unconditional" and model.module is None:
            raise ValueError(f"EEGMusicPipeline: the {self.kind} model from {model.path} has no weights loaded")
        self._progress_bar_config: dict[str, Any] = {}

    # -- diffusers-style plumbing --------------------------------------------------------------------

    @property
    def module(self) -> torch.nn.Module | None:
        """The trained network (ControlNet or ConvNet), or None for the unconditional model."""
        return None if self.model is None else self.model.module

    @property
    def subject_cond(self) -> bool:
        return bool(self.model is not None and self.model.subject_cond)

    @property
    def device(self) -> torch.device:
        """Where the UNet (and so the denoising loop) runs."""
        return next(self.backbone.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.unet.parameters()).dtype

    def to(self, device: str | torch.device) -> "EEGMusicPipeline":
        """Move the backbone's networks and the model to ``device``; returns ``self``."""
        for name in ("vae", "unet", "vocoder"):
            part = getattr(self.backbone, name, None)
            if isinstance(part, torch.nn.Module):
                part.to(device)
        if self.module is not None:
            self.module.to(device)
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        """Options for the denoising progress bar (``tqdm.auto`` keyword arguments, e.g. ``disable=True``)."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, iterable=None, total=None):

        if iterable is not None:
            return tqdm(iterable, **self._progress_bar_config)
        return tqdm(total=total, **self._progress_bar_config)

    # -- the call ------------------------------------------------------------------------------------

    def _batch_size(self, eeg, batch_size, generator, latents) -> int:
        if eeg is not None:
            return int(eeg.shape[0])
        if latents is not None:
            return int(latents.shape[0])
        if batch_size is not None:
            return int(batch_size)
        if isinstance(generator, (list, tuple)):
            return len(generator)
        if self.kind == "unconditional":
            return 1
        raise ValueError(f"EEGMusicPipeline ({self.kind}): eeg is required")

    def check_eeg(self, eeg: torch.Tensor, batch: int) -> torch.Tensor:
        if eeg.ndim != 3:
            raise ValueError(
                f"EEGMusicPipeline ({self.kind}): eeg must have shape (batch, channels, samples); "
                f"received shape {tuple(eeg.shape)}"
            )
        if eeg.shape[0] != batch:
            raise ValueError(f"EEGMusicPipeline: eeg has {eeg.shape[0]} windows but the batch has {batch} clips")
        return eeg.to(self.device, torch.float32)

    def _subject(self, subject, batch: int) -> torch.Tensor | None:
        if not self.subject_cond:
            return None  # the model has no subject layer: the identity of the listener is not an input
        if subject is None:
            raise ValueError(
                f"EEGMusicPipeline: the {self.kind} model from {self.model.path} was trained with "
                f"subject_cond=True; pass subject (one index into the training subjects per window)"
            )
        tensor = torch.as_tensor(subject, dtype=torch.long).reshape(-1)
        if tensor.numel() == 1 and batch > 1:
            tensor = tensor.expand(batch)
        if tensor.shape != (batch,):
            raise ValueError(f"EEGMusicPipeline: subject must hold {batch} indices (one per window), got {tuple(tensor.shape)}")
        return tensor.to(self.device)

    def prepare_latents(self, batch: int, generator, scheduler, latents: torch.Tensor | None = None) -> torch.Tensor:
        """``z_T``: one draw per clip from its own generator (batch-invariant), × the sampler's initial σ."""

        shape = (batch, *[int(s) for s in self.backbone.latent_shape])
        if isinstance(generator, (list, tuple)) and len(generator) != batch:
            raise ValueError(f"EEGMusicPipeline: {len(generator)} generators for a batch of {batch} clips")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"EEGMusicPipeline: latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(self.device, self.dtype) * scheduler.init_noise_sigma

    def _prediction(self, model_input, t, eeg, subject, conditioning, conditioning_scale, guidance_scale) -> torch.Tensor:
        """One UNet prediction at step ``t``: steered by the EEG (ControlNet) or the backbone alone."""
        if self.kind == "controlnet":
            return controlled_noise_prediction(
                self.backbone.unet, self.module, model_input, t, eeg, subject, conditioning, conditioning_scale, guidance_scale
            )
        return self.backbone.unet(model_input, t, **expand_conditioning(conditioning, model_input.shape[0]), return_dict=False)[0]

    def _conditioning(self, batch: int) -> dict[str, Any]:
        return {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v)
                for k, v in self.backbone.unet_conditioning(batch).items()}

    def first_estimate(self, noise, scheduler, eeg, subject, conditioning_scale, guidance_scale) -> torch.Tensor:
        """The model's one-step estimate of the clean latent from pure noise ``z_T`` (at the first timestep).

        At the last training step the noisy latent holds (almost) nothing of the clip, so this is the
        model's conditional mean: what the EEG alone says the clip is (for the backbone alone, the mean clip).
        """
        t = scheduler.timesteps[0]
        model_input = scheduler.scale_model_input(noise, t)
        prediction = self._prediction(model_input, t, eeg, subject, self._conditioning(noise.shape[0]),
                                      conditioning_scale, guidance_scale)
        return clean_latent_estimate(scheduler, model_input, prediction, t)

    def _denoise(self, latents, scheduler, eeg, subject, conditioning_scale, guidance_scale, show_progress,
                 begin: int = 0) -> torch.Tensor:
        conditioning = self._conditioning(latents.shape[0])
        steps = scheduler.timesteps[begin:]
        for t in (self.progress_bar(steps) if show_progress else steps):
            model_input = scheduler.scale_model_input(latents, t)
            noise_pred = self._prediction(model_input, t, eeg, subject, conditioning, conditioning_scale, guidance_scale)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → waveforms ``(B, 56000)`` on the CPU: VAE decoder → mel → vocoder.

        Either vocoder inverts the batch at once; Griffin-Lim starts every clip from the same phase,
        so a clip's waveform does not depend on its neighbours in the batch.
        """
        vae_dtype = next(self.backbone.vae.parameters()).dtype
        mel = self.backbone.decode(latents.to(vae_dtype))
        waves = torch.as_tensor(self.backbone.mel_to_wave(mel)).float().cpu()
        return waves.reshape(len(mel), -1)

    @torch.no_grad()
    def __call__(
        self,
        eeg: torch.Tensor | np.ndarray | None = None,
        subject: Any = None,
        num_inference_steps: int = 20,
        scheduler: str = "dpmsolver++",
        conditioning_scale: float = 1.0,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        guidance_scale: float = 1.0,
        strength: float = 1.0,
        batch_size: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        show_progress: bool = True,
    ):
        """Reconstruct the music heard during each EEG window.

        Parameters
        ----------
        eeg : Tensor or ndarray, shape (B, channels, samples) or (channels, samples)
            Preprocessed EEG windows (what :class:`~eeg2music.data.windows.EEGMusicWindows` returns);
            ignored by the unconditional model (then give ``batch_size`` or a list of generators).
        subject : int, sequence of int or Tensor, optional
            Index of each window's participant among the training subjects; required by models
            trained with ``subject_cond=True``, ignored by the others.
        num_inference_steps : int
            Denoising steps (the paper: 200 with DDIM; 20 suffice with DPM-Solver++). Ignored by the
            ConvNet, which does not diffuse.
        scheduler : {"ddim", "dpmsolver++"}
            The sampler, configured from the backbone's training schedule (:func:`make_scheduler`).
        conditioning_scale : float
            Multiplies the ControlNet's residuals (1 = as trained; 0 = the backbone alone).
        guidance_scale : float
            Guidance on the EEG, ``ε_base + w·(ε_EEG − ε_base)`` (:func:`~eeg2music.models.controlnet.controlled_noise_prediction`):
            1 = the paper's sampling; > 1 amplifies what the EEG changes. ControlNet only.
        strength : float
            In [0, 1]: the share of the denoising trajectory the sampler runs. 1 = from pure noise (the
            paper's sampling); below 1, two stages: the model's one-step estimate of the clip from ``z_T``
            (:meth:`first_estimate`, its conditional mean), noised to the step where the last ``strength``
            of the trajectory begins (with the clip's own noise), then denoised from there — SDEdit, as
            img2img pipelines' ``strength``; fMRI decoders start diffusion from a low-level estimate the same
            way. Lower keeps more of the estimate's time course, higher more of the sampler's detail; 0
            returns the estimate itself (one model call, no sampling).
        generator : torch.Generator or list of torch.Generator, optional
            The initial noise's source; a list (one per clip, :func:`clip_generators`) makes every
            clip reproducible on its own, whatever the batch.
        batch_size : int, optional
            Clips to generate when there is no EEG (unconditional model).
        latents : Tensor, optional
            ``z_T`` to start from (unit variance), instead of drawing it.
        output_type : {"np", "pt", "latent"}
            Waveforms as a NumPy array or a tensor, or the final latents (no decoding).
        return_dict : bool
            Return an ``AudioPipelineOutput`` (else a one-element tuple).
        show_progress : bool
            Show a progress bar over the denoising steps.

        Returns
        -------
        diffusers.pipelines.pipeline_utils.AudioPipelineOutput
            ``audios``: ``(B, 56000)`` float32 waveforms at 16 kHz (or the latents).
        """

        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"EEGMusicPipeline: output_type {output_type!r} is not one of ['np', 'pt', 'latent']")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"parameter 'scheduler': {scheduler!r} is not one of {list(SCHEDULERS)}")
        if int(num_inference_steps) < 1:
            raise ValueError(f"parameter 'num_inference_steps': must be ≥ 1, got {num_inference_steps}")
        if not float(guidance_scale) >= 0.0:
            raise ValueError(f"parameter 'guidance_scale': must be ≥ 0, got {guidance_scale}")
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"parameter 'strength': must be in [0, 1], got {strength}")
        if eeg is not None:
            eeg = torch.as_tensor(eeg)
            if eeg.ndim == 2:
                eeg = eeg[None]  # one window (channels, samples)
        batch = self._batch_size(eeg, batch_size, generator, latents)
        if self.kind != "unconditional":
            if eeg is None:
                raise ValueError(f"EEGMusicPipeline ({self.kind}): eeg is required")
            eeg = self.check_eeg(eeg, batch)
            subject = self._subject(subject, batch)

        if self.kind == "convnet":
            # A regression to the latent: no noise, no steps; same decoder as the diffusion models.
            result = self.module(eeg, subject).to(self.dtype)
        else:
            sampler = make_scheduler(scheduler, self.backbone.scheduler.config)
            sampler.set_timesteps(int(num_inference_steps), device=self.device)
            start = self.prepare_latents(batch, generator, sampler, latents)
            if float(strength) == 0.0:
                # No sampling: the model's conditional mean given the EEG, from the clip's own z_T.
                result = self.first_estimate(start, sampler, eeg, subject, float(conditioning_scale), float(guidance_scale))
            else:
                begin = restart_index(len(sampler.timesteps), strength)
                if begin:
                    # Two stages: the model's one-step estimate from z_T, noised back to the step `begin` with the
                    # same noise, then the last `strength` of the trajectory (SDEdit; img2img's `strength`).
                    estimate = self.first_estimate(start, sampler, eeg, subject, float(conditioning_scale),
                                                   float(guidance_scale))
                    restart_t = sampler.timesteps[begin]
                    noise = start / sampler.init_noise_sigma
                    start = sampler.add_noise(estimate, noise, restart_t.reshape(1))
                    if hasattr(sampler, "set_begin_index"):  # multistep solvers track their step; DDIM reads it from t
                        sampler.set_begin_index(begin)
                result = self._denoise(start, sampler, eeg, subject, float(conditioning_scale), float(guidance_scale),
                                       show_progress, begin)

        if output_type != "latent":
            result = self.decode(result)
            if output_type == "np":
                result = result.numpy()
        if not return_dict:
            return (result,)
        return AudioPipelineOutput(audios=result)
