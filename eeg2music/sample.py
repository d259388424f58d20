"""Sampling reconstructions: every model, the test chunks and the out-of-distribution song, to WAV.

One pipeline class, :class:`EEGMusicPipeline`, turns EEG windows into 3.5 s waveforms for every model
the project trains or registers (``eeg2music.train``):

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

Outputs of :func:`sample_models` (notebook 05)
----------------------------------------------
``<out_dir>/wav/true/song{S}_chunk{C:03d}.wav``
    The true clip (the same for every subject who heard it), 16 kHz mono, 56 000 samples.
``<out_dir>/wav/<run>/sub{P:02d}_song{S}_chunk{C:03d}.wav``
    A reconstruction, same rate and length (32-bit float WAV: the model's output, unclipped).
``<out_dir>/samples.json``
    Written last (its presence means the folder is complete): the settings, one entry per model
    (kind, label, model folder, seconds per clip) and one row per generated clip (``model``,
    ``subject``, ``subject_index``, ``song``, ``chunk``, ``split``, ``true_wav``, ``generated_wav``,
    ``scheduler``, ``steps``, ``seconds_per_clip``, ``seed``); paths are relative to ``out_dir``.
    :func:`load_samples` reads and checks it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio import CLIP_SAMPLES, SAMPLE_RATE, mel_db
from .utils import atomic_directory, atomic_file, cpu_threads_for, disk_full_error, free_bytes, read_json, write_json

__all__ = [
    "SCHEDULERS",
    "DEFAULT_RUNS",
    "MODEL_LABELS",
    "DEMO_MAX_CLIPS",
    "SMOKE_MAX_CLIPS",
    "default_max_clips",
    "SAMPLES_NAME",
    "clip_seed",
    "clip_generators",
    "make_scheduler",
    "EEGMusicPipeline",
    "Clip",
    "select_clips",
    "write_wav",
    "read_wav",
    "sample_clips",
    "cpu_threads_for",
    "sample_models",
    "load_samples",
    "ensure_models",
    "sampling_datasets",
    "check_models_agree",
    "clip_order",
    "choose_examples",
    "mel_db",
    "plot_mel_comparison",
    "listening_table",
]

#: The samplers :class:`EEGMusicPipeline` offers (names as the parameter takes them).
SCHEDULERS = ("ddim", "dpmsolver++")
#: The runs notebook 05 samples by default, in the order of the comparison table.
DEFAULT_RUNS = ("controlnet_subject", "controlnet", "convnet", "unconditional")
#: How the report names each default run.
MODEL_LABELS = {
    "controlnet_subject": "ControlNet+subject",
    "controlnet": "ControlNet",
    "convnet": "ConvNet",
    "convnet_subject": "ConvNet+subject",
    "unconditional": "unconditional",
}
#: Windows reconstructed per split and model by notebook 05 at its default size (sized for the demo's
#: budget on two CPU cores: 10 windows of every test song, so that song identification is measured
#: with a 95 % interval of about ±8 points — 36 windows gave ±14, too wide to tell 20 % from the 11 %
#: chance level) and at smoke size (tests).
DEMO_MAX_CLIPS = {"test": 90, "ood": 24}
SMOKE_MAX_CLIPS = {"test": 4, "ood": 2}
#: The file that marks a complete sampling folder.
SAMPLES_NAME = "samples.json"
#: Sub-folder of the WAV files.
WAV_DIR = "wav"
#: Version of the samples.json layout.
SAMPLES_FORMAT = 1
#: Fields every clip row of samples.json carries.
CLIP_FIELDS = ("model", "subject", "subject_index", "song", "chunk", "split", "true_wav", "generated_wav",
               "scheduler", "steps", "seconds_per_clip", "seed")

_CLIP_STREAM = 0x5A3B1E  # separates the sampling seeds from training's streams of the same seed


def default_max_clips(smoke: bool = False) -> dict[str, int]:
    """Windows per split that notebook 05 reconstructs when ``max_clips=0``."""
    return dict(SMOKE_MAX_CLIPS if smoke else DEMO_MAX_CLIPS)


def model_label(run: str, kind: str | None = None, subject_cond: bool | None = None) -> str:
    """The display name of a run: ``MODEL_LABELS`` for the default runs, else derived from its kind."""
    if run in MODEL_LABELS:
        return MODEL_LABELS[run]
    if kind is None:
        return run
    base = {"controlnet": "ControlNet", "convnet": "ConvNet", "unconditional": "unconditional"}.get(kind, kind)
    return f"{base}+subject ({run})" if subject_cond else f"{base} ({run})"


# --------------------------------------------------------------------------------------------------
# Seeds and schedulers
# --------------------------------------------------------------------------------------------------

def model_setting(trained, guidance_scale: float = 1.0) -> str:
    """How a model was trained and is sampled, in a few words (the report's "setting" column).

    The paper's setting is a ControlNet whose P is trained from scratch with it, at every diffusion
    step, sampled without guidance; anything else is named.
    """
    if trained is None or trained.kind == "unconditional":
        return "backbone alone"
    training = trained.config.get("training", {})
    if trained.kind == "convnet":
        return f"regression, {training.get('steps')} steps"
    parts = [f"{training.get('steps')} steps"]
    align = int(training.get("align_steps") or 0)
    parts.append(f"S and P aligned first ({align} contrastive steps)" if align else "P from scratch (paper)")
    min_t = training.get("control_min_timestep")
    parts.append("every t (paper)" if not min_t else f"t ≥ {min_t}")
    parts.append("no guidance (paper)" if guidance_scale == 1.0 else f"EEG guidance w = {guidance_scale:g}")
    return ", ".join(parts)


def clip_seed(seed: int, song: int, chunk: int, subject: int) -> int:
    """The sampling seed of one clip: a well-mixed 63-bit function of ``(seed, song, chunk, subject)``.

    ``subject`` is the participant number (stable whatever the dataset's subject order). The model is
    deliberately not an input: every model starts from the same noise for the same clip.
    """
    entropy = [_CLIP_STREAM, int(seed) % 2**63, int(song), int(chunk), int(subject) % 2**63]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0]) >> 1


def clip_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per clip, seeded with ``seeds`` (CPU generators: draws match across devices)."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


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
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    raise ValueError(f"parameter 'scheduler': {name!r} is not one of {list(SCHEDULERS)}")


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------

class EEGMusicPipeline:
    """EEG → waveform for a trained model (ControlNet, ConvNet) or the unconditional backbone.

    A plain class in the manner of a diffusers pipeline (``__call__`` returning
    ``AudioPipelineOutput``, ``progress_bar``, ``set_progress_bar_config``, ``device``, ``to``) rather
    than a ``DiffusionPipeline`` subclass: its components are a :class:`~eeg2music.backbone.Backbone`
    (whose mel front end, latent scaling, constant text conditioning and Griffin-Lim stand-in vocoder
    are not pipeline modules) and one of three model kinds, two of which have no diffusion at all or
    no network; ``DiffusionPipeline``'s component registry, ``components`` and ``save_pretrained``
    would describe neither faithfully.

    Parameters
    ----------
    backbone : eeg2music.backbone.Backbone
        The frozen latent diffusion model the model was trained with.
    model : eeg2music.train.TrainedModel or None
        A loaded model folder (:func:`eeg2music.train.load_trained_model`); ``None`` is the
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
        from tqdm.auto import tqdm

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

    def _check_eeg(self, eeg: torch.Tensor, batch: int) -> torch.Tensor:
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
        from diffusers.utils.torch_utils import randn_tensor

        shape = (batch, *[int(s) for s in self.backbone.latent_shape])
        if isinstance(generator, (list, tuple)) and len(generator) != batch:
            raise ValueError(f"EEGMusicPipeline: {len(generator)} generators for a batch of {batch} clips")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"EEGMusicPipeline: latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(self.device, self.dtype) * scheduler.init_noise_sigma

    def _denoise(self, latents, scheduler, eeg, subject, conditioning_scale, guidance_scale, show_progress) -> torch.Tensor:
        from .controlnet import expand_conditioning, guided_noise_prediction

        unet = self.backbone.unet
        batch = latents.shape[0]
        conditioning = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v)
                        for k, v in self.backbone.unet_conditioning(batch).items()}
        steps = scheduler.timesteps
        for t in (self.progress_bar(steps) if show_progress else steps):
            model_input = scheduler.scale_model_input(latents, t)
            if self.kind == "controlnet":
                noise_pred = guided_noise_prediction(
                    unet, self.module, model_input, t, eeg, subject, conditioning, conditioning_scale, guidance_scale
                )
            else:
                noise_pred = unet(model_input, t, **expand_conditioning(conditioning, batch), return_dict=False)[0]
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → waveforms ``(B, 56000)`` on the CPU: VAE decoder → mel → vocoder.

        Griffin-Lim draws its random initial phase for the whole array it is given, so without a
        neural vocoder the clips are inverted one at a time: a clip's waveform must not depend on its
        neighbours in the batch.
        """
        vae_dtype = next(self.backbone.vae.parameters()).dtype
        mel = self.backbone.decode(latents.to(vae_dtype))
        if getattr(self.backbone, "vocoder", None) is not None:
            waves = self.backbone.mel_to_wave(mel)
        else:
            waves = torch.cat([torch.as_tensor(self.backbone.mel_to_wave(mel[i : i + 1])) for i in range(len(mel))])
        waves = torch.as_tensor(waves).float().cpu()
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
            Preprocessed EEG windows (what :class:`~eeg2music.windows.EEGMusicWindows` returns);
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
            Guidance on the EEG, ``ε_base + w·(ε_EEG − ε_base)`` (:func:`~eeg2music.controlnet.guided_noise_prediction`):
            1 = the paper's sampling; > 1 amplifies what the EEG changes. ControlNet only.
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
        from diffusers.pipelines.pipeline_utils import AudioPipelineOutput

        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"EEGMusicPipeline: output_type {output_type!r} is not one of ['np', 'pt', 'latent']")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"parameter 'scheduler': {scheduler!r} is not one of {list(SCHEDULERS)}")
        if int(num_inference_steps) < 1:
            raise ValueError(f"parameter 'num_inference_steps': must be ≥ 1, got {num_inference_steps}")
        if not float(guidance_scale) >= 0.0:
            raise ValueError(f"parameter 'guidance_scale': must be ≥ 0, got {guidance_scale}")
        if eeg is not None:
            eeg = torch.as_tensor(eeg)
            if eeg.ndim == 2:
                eeg = eeg[None]  # one window (channels, samples)
        batch = self._batch_size(eeg, batch_size, generator, latents)
        if self.kind != "unconditional":
            if eeg is None:
                raise ValueError(f"EEGMusicPipeline ({self.kind}): eeg is required")
            eeg = self._check_eeg(eeg, batch)
            subject = self._subject(subject, batch)

        if self.kind == "convnet":
            # A regression to the latent: no noise, no steps; same decoder as the diffusion models.
            result = self.module(eeg, subject).to(self.dtype)
        else:
            sampler = make_scheduler(scheduler, self.backbone.scheduler.config)
            sampler.set_timesteps(int(num_inference_steps), device=self.device)
            start = self.prepare_latents(batch, generator, sampler, latents)
            result = self._denoise(start, sampler, eeg, subject, float(conditioning_scale), float(guidance_scale),
                                   show_progress)

        if output_type != "latent":
            result = self.decode(result)
            if output_type == "np":
                result = result.numpy()
        if not return_dict:
            return (result,)
        return AudioPipelineOutput(audios=result)


# --------------------------------------------------------------------------------------------------
# Which clips: a balanced, reproducible selection
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Clip:
    """One EEG window to reconstruct: its split, position in that split's dataset and identity."""

    split: str
    index: int
    subject: int
    subject_index: int
    song: int
    chunk: int


def _clips_of(dataset, split: str) -> list[Clip]:
    """Every window of a split as a :class:`Clip`, read from the window list (no EEG is loaded)."""
    clips = []
    for i, ref in enumerate(dataset.windows):
        clips.append(Clip(split, i, int(ref.subject), int(dataset.index.subject_index(ref.subject)),
                          int(ref.song), int(ref.chunk)))
    return clips


def select_clips(
    dataset,
    split: str,
    *,
    max_clips: int = 0,
    subjects: Sequence[int] | None = None,
    seed: int = 0,
) -> list[Clip]:
    """The windows of a split to reconstruct: all of them, or ``max_clips`` spread evenly.

    With a limit, every song gets a near-equal share (song identification needs every song), and
    within a song the windows are drawn at random (seeded), so chunks and subjects are mixed. The
    selection depends only on the split and ``seed``, never on the model, so all models are
    compared on the same clips.

    Parameters
    ----------
    dataset : eeg2music.windows.EEGMusicWindows
        The split's windows.
    split : str
        Its name (recorded in each :class:`Clip`).
    max_clips : int
        At most this many windows (0 = all).
    subjects : sequence of int, optional
        Only these participant numbers.
    seed : int
        Seeds the draw.

    Returns
    -------
    list of Clip
        Sorted by song, chunk and subject.
    """
    if max_clips < 0:
        raise ValueError(f"parameter 'max_clips': must be ≥ 0, got {max_clips}")
    clips = _clips_of(dataset, split)
    if subjects:
        try:
            wanted = {int(s) for s in subjects}
        except (TypeError, ValueError):
            raise ValueError(f"parameter 'subjects': {list(subjects)} are not all participant numbers (e.g. [2, 3])") from None
        unknown = wanted - {c.subject for c in clips}
        if unknown:
            raise ValueError(
                f"parameter 'subjects': participant(s) {sorted(unknown)} have no window in split {split!r} "
                f"(participants there: {sorted({c.subject for c in clips})})"
            )
        clips = [c for c in clips if c.subject in wanted]
    if max_clips and len(clips) > max_clips:
        rng = np.random.default_rng(np.random.SeedSequence([_CLIP_STREAM, int(seed), sum(map(ord, split))]))
        by_song: dict[int, list[Clip]] = {}
        for clip in clips:
            by_song.setdefault(clip.song, []).append(clip)
        queues = {song: [members[i] for i in rng.permutation(len(members))] for song, members in sorted(by_song.items())}
        chosen: list[Clip] = []
        # Round-robin over songs: a near-equal share each, songs with fewer windows simply run out.
        while len(chosen) < max_clips:
            for song in list(queues):
                if queues[song] and len(chosen) < max_clips:
                    chosen.append(queues[song].pop())
        clips = chosen
    return sorted(clips, key=lambda c: (c.song, c.chunk, c.subject))


# --------------------------------------------------------------------------------------------------
# WAV files
# --------------------------------------------------------------------------------------------------

def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "FLOAT") -> Path:
    """Write a mono waveform atomically (:func:`eeg2music.utils.atomic_file`: a temporary file, then rename).

    32-bit float keeps the model's output as it is (no clipping, no quantisation): the metrics read
    exactly what was generated.
    """
    import soundfile

    path = Path(path)
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(wave)):
        raise ValueError(f"{path}: the waveform holds {int(np.sum(~np.isfinite(wave)))} non-finite samples")
    try:
        with atomic_file(path, suffix=".wav") as tmp:
            soundfile.write(tmp, wave, int(sample_rate), subtype=subtype, format="WAV")
    except soundfile.LibsndfileError as err:
        # libsndfile reports a full disk as "System error."; the free space tells it apart.
        free = free_bytes(path.parent)
        if free is not None and free < wave.nbytes + 2**20:
            raise disk_full_error(path, err) from err
        raise
    return path


def read_wav(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, n_samples: int | None = CLIP_SAMPLES) -> np.ndarray:
    """Read a mono clip written by :func:`write_wav`, checking its rate (and length)."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such WAV file")
    wave, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    if rate != sample_rate:
        raise ValueError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz")
    if wave.ndim != 1:
        raise ValueError(f"{path}: {wave.shape[1]} channels, expected mono")
    if n_samples is not None and len(wave) != n_samples:
        raise ValueError(f"{path}: {len(wave)} samples, expected {n_samples}")
    return wave


def true_wav_name(song: int, chunk: int) -> str:
    return f"song{int(song)}_chunk{int(chunk):03d}.wav"


def generated_wav_name(subject: int, song: int, chunk: int) -> str:
    return f"sub{int(subject):02d}_song{int(song)}_chunk{int(chunk):03d}.wav"


# --------------------------------------------------------------------------------------------------
# Running the pipeline over clips
# --------------------------------------------------------------------------------------------------

def sample_clips(
    pipeline: EEGMusicPipeline,
    dataset,
    clips: Sequence[Clip],
    *,
    scheduler: str = "dpmsolver++",
    num_inference_steps: int = 20,
    conditioning_scale: float = 1.0,
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "",
    threads: int = -1,
) -> tuple[np.ndarray, float, int]:
    """Reconstruct ``clips`` of ``dataset`` in batches; return the waveforms, the wall time, the threads used.

    ``threads`` sets torch's CPU threads while sampling (:func:`cpu_threads_for`; negative = automatic).
    The other parameters are those of :class:`EEGMusicPipeline` and :func:`sample_models`.

    Returns
    -------
    waves : ndarray, shape (n_clips, 56000)
    seconds : float
        Wall time of the pipeline calls (loading the EEG excluded).
    threads : int
        torch's CPU threads while sampling.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"parameter 'batch_size': must be ≥ 1, got {batch_size}")
    pipeline.set_progress_bar_config(disable=True)  # one bar over clips, not one per batch
    waves: list[np.ndarray] = []
    seconds = 0.0
    bar = tqdm(total=len(clips), desc=desc or f"sample {pipeline.kind}", unit="clip", disable=not progress)
    with cpu_threads_for(pipeline.device, threads) as used:
        for start in range(0, len(clips), batch_size):
            seconds += _sample_batch(pipeline, dataset, clips[start : start + batch_size], waves, scheduler,
                                     num_inference_steps, conditioning_scale, seed, guidance_scale)
            bar.update(min(batch_size, len(clips) - start))
    bar.close()
    return (np.concatenate(waves) if waves else np.zeros((0, CLIP_SAMPLES), np.float32)), seconds, used


def _sample_batch(pipeline, dataset, batch, waves, scheduler, num_inference_steps, conditioning_scale, seed,
                  guidance_scale: float = 1.0) -> float:
    """Reconstruct one batch of clips into ``waves``; return the pipeline's wall time."""
    eeg = None
    if pipeline.kind != "unconditional":
        eeg = torch.from_numpy(np.stack([dataset.eeg(c.index) for c in batch]))
    generators = clip_generators([clip_seed(seed, c.song, c.chunk, c.subject) for c in batch])
    tic = time.perf_counter()
    out = pipeline(
        eeg,
        subject=[c.subject_index for c in batch],
        num_inference_steps=num_inference_steps,
        scheduler=scheduler,
        conditioning_scale=conditioning_scale,
        guidance_scale=guidance_scale,
        generator=generators,
        batch_size=len(batch),
        show_progress=False,
    )
    waves.append(np.asarray(out.audios, dtype=np.float32))
    return time.perf_counter() - tic


def sample_models(
    models: Mapping[str, Any],
    backbone,
    datasets: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    scheduler: str = "dpmsolver++",
    num_inference_steps: int = 20,
    conditioning_scale: float = 1.0,
    guidance_scale: float = 1.0,
    seed: int = 0,
    max_clips: int | Mapping[str, int] = 0,
    subjects: Sequence[int] | None = None,
    batch_size: int = 8,
    splits: Sequence[str] = ("test", "ood"),
    progress: bool = True,
    info: Mapping[str, Any] | None = None,
    threads: int = -1,
) -> dict[str, Any]:
    """Reconstruct the selected clips of ``splits`` with every model; write WAVs and ``samples.json``.

    Parameters
    ----------
    models : mapping run name → TrainedModel or None
        What to sample (``None`` = the unconditional backbone), in table order.
    backbone : eeg2music.backbone.Backbone
        The backbone all models were trained with.
    datasets : mapping split → EEGMusicWindows
        With audio attached (the true clips are written too).
    out_dir : path-like
        Notebook 05's folder.
    scheduler, num_inference_steps, conditioning_scale, guidance_scale
        As for :class:`EEGMusicPipeline`.
    seed : int
        Sampling seed (:func:`clip_seed`) and clip-selection seed.
    max_clips : int or mapping split → int
        Windows per split (0 = all), see :func:`select_clips`.
    subjects : sequence of int, optional
        Only these participant numbers.
    batch_size : int
        Clips per pipeline call.
    splits : sequence of str
        Which splits to reconstruct (those missing from ``datasets`` are an error).
    progress : bool
        Progress bars and one line per model.
    info : mapping, optional
        Extra settings to record (backbone path, data config…).
    threads : int
        CPU threads while sampling (:func:`cpu_threads_for`: negative = one when the machine is busy).

    Returns
    -------
    dict
        The content of ``samples.json`` (paths relative to ``out_dir``).
    """
    out_dir = Path(out_dir)
    missing = [s for s in splits if s not in datasets]
    if missing:
        raise ValueError(f"no dataset for split(s) {missing}; available: {sorted(datasets)}")
    if not models:
        raise ValueError("no model to sample")
    say = print if progress else (lambda *a, **k: None)
    limits = {s: (max_clips.get(s, 0) if isinstance(max_clips, Mapping) else int(max_clips)) for s in splits}
    selection = {s: select_clips(datasets[s], s, max_clips=limits[s], subjects=subjects, seed=seed) for s in splits}
    for split, clips in selection.items():
        if not clips:
            raise ValueError(f"split {split!r}: no window selected (max_clips={limits[split]}, subjects={subjects})")

    samples_path = out_dir / SAMPLES_NAME
    # A stale samples.json must never describe the WAVs being replaced: remove it first.
    samples_path.unlink(missing_ok=True)
    wav_root = out_dir / WAV_DIR
    model_entries: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    with atomic_directory(wav_root) as tmp_root:
        true_written: set[tuple[int, int]] = set()
        for split, clips in selection.items():
            for clip in clips:
                if (clip.song, clip.chunk) not in true_written:
                    wave = datasets[split].audio_clip(clip.song, clip.chunk)
                    write_wav(tmp_root / "true" / true_wav_name(clip.song, clip.chunk), wave)
                    true_written.add((clip.song, clip.chunk))
        for run, trained in models.items():
            pipeline = EEGMusicPipeline(backbone, trained)
            kind = pipeline.kind
            steps = 0 if kind == "convnet" else int(num_inference_steps)
            sampler = "none" if kind == "convnet" else scheduler
            total_seconds, total_clips = 0.0, 0
            for split, clips in selection.items():
                waves, seconds, used_threads = sample_clips(
                    pipeline, datasets[split], clips, scheduler=scheduler, num_inference_steps=num_inference_steps,
                    conditioning_scale=conditioning_scale, guidance_scale=guidance_scale, seed=seed,
                    batch_size=batch_size, progress=progress, desc=f"{run} · {split}", threads=threads,
                )
                per_clip = seconds / len(clips)
                total_seconds += seconds
                total_clips += len(clips)
                for clip, wave in zip(clips, waves):
                    name = generated_wav_name(clip.subject, clip.song, clip.chunk)
                    write_wav(tmp_root / run / name, wave)
                    rows.append({
                        "model": run,
                        "subject": clip.subject,
                        "subject_index": clip.subject_index,
                        "song": clip.song,
                        "chunk": clip.chunk,
                        "split": split,
                        "true_wav": f"{WAV_DIR}/true/{true_wav_name(clip.song, clip.chunk)}",
                        "generated_wav": f"{WAV_DIR}/{run}/{name}",
                        "scheduler": sampler,
                        "steps": steps,
                        "seconds_per_clip": round(per_clip, 4),
                        "seed": clip_seed(seed, clip.song, clip.chunk, clip.subject),
                        "peak": round(float(np.max(np.abs(wave))), 4),
                    })
            model_entries[run] = {
                "kind": kind,
                "label": model_label(run, kind, pipeline.subject_cond),
                "subject_cond": pipeline.subject_cond,
                "model_dir": None if trained is None else str(trained.path),
                "scheduler": sampler,
                "steps": steps,
                "setting": model_setting(trained, guidance_scale),
                "clips": total_clips,
                "seconds": round(total_seconds, 3),
                "seconds_per_clip": round(total_seconds / max(total_clips, 1), 4),
                "cpu_threads": used_threads if pipeline.device.type == "cpu" else None,
            }
            say(f"[sample] {run}: {total_clips} clips in {total_seconds:.1f} s "
                f"({total_seconds / max(total_clips, 1):.2f} s/clip, {sampler}"
                + (f", {steps} steps" if steps else "")
                + (f", {used_threads} CPU thread{'s' if used_threads != 1 else ''})"
                   if pipeline.device.type == "cpu" else ")"))

    record = {
        "format_version": SAMPLES_FORMAT,
        "sample_rate": SAMPLE_RATE,
        "clip_samples": CLIP_SAMPLES,
        "scheduler": scheduler,
        "num_inference_steps": int(num_inference_steps),
        "conditioning_scale": float(conditioning_scale),
        "guidance_scale": float(guidance_scale),
        "seed": int(seed),
        "max_clips": limits,
        "subjects": None if not subjects else [int(s) for s in subjects],
        "splits": {s: {"clips": len(c), "songs": sorted({x.song for x in c}),
                       "subjects": sorted({x.subject for x in c}), "segments": len({(x.song, x.chunk) for x in c})}
                   for s, c in selection.items()},
        "models": model_entries,
        **dict(info or {}),
        "clips": rows,
    }
    write_json(samples_path, record)
    return record


# --------------------------------------------------------------------------------------------------
# Reading samples.json back (notebook 06)
# --------------------------------------------------------------------------------------------------

def load_samples(sample_dir: str | os.PathLike, check_files: bool = True) -> dict[str, Any]:
    """Read ``samples.json`` of a sampling folder and check it; WAV paths become absolute.

    Parameters
    ----------
    sample_dir : path-like
        Notebook 05's folder (or the ``samples.json`` file itself).
    check_files : bool
        Check that every referenced WAV exists.

    Returns
    -------
    dict
        The record, with ``true_path`` / ``generated_path`` (absolute ``Path``) added to each clip row
        and ``folder`` set to the sampling folder.

    Raises
    ------
    FileNotFoundError
        No samples.json (notebook 05 has not run, or did not finish) or a missing WAV.
    ValueError
        A record without the fields notebook 06 needs, naming the file and the field.
    """
    path = Path(sample_dir).expanduser().resolve()
    if path.is_dir():
        path = path / SAMPLES_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no {SAMPLES_NAME}. Run notebook 05 (05_sample) first, or point sample_dir to its out_dir."
        )
    record = read_json(path)
    for key in ("format_version", "sample_rate", "clip_samples", "models", "clips"):
        if key not in record:
            raise ValueError(f"{path}: field {key!r} is missing; is this a samples.json written by notebook 05?")
    if record["format_version"] != SAMPLES_FORMAT:
        raise ValueError(f"{path}: format_version {record['format_version']}, this code reads {SAMPLES_FORMAT}")
    folder = path.parent
    for i, row in enumerate(record["clips"]):
        absent = [f for f in CLIP_FIELDS if f not in row]
        if absent:
            raise ValueError(f"{path}: clip row {i} lacks {absent}")
        if row["model"] not in record["models"]:
            raise ValueError(f"{path}: clip row {i} names model {row['model']!r}, not among {sorted(record['models'])}")
        row["true_path"] = folder / row["true_wav"]
        row["generated_path"] = folder / row["generated_wav"]
        if check_files:
            for key in ("true_path", "generated_path"):
                if not row[key].is_file():
                    raise FileNotFoundError(f"{path}: clip row {i} refers to {row[key]}, which does not exist")
    record["folder"] = folder
    return record


# --------------------------------------------------------------------------------------------------
# Notebook 05's inputs: the model folders, the backbone they share, the windows they were trained on
# --------------------------------------------------------------------------------------------------

def _run_settings(run: str) -> tuple[str, bool]:
    """``(model kind, subject_cond)`` of a default run name (``controlnet_subject`` → controlnet, True)."""
    kind, _, suffix = run.partition("_")
    if kind not in ("controlnet", "convnet", "unconditional") or suffix not in ("", "subject"):
        raise ValueError(
            f"parameter 'models': no model folder for run {run!r}, and it is not a default run name that can "
            f"be trained here (controlnet_subject, controlnet, convnet, convnet_subject, unconditional)"
        )
    if kind == "unconditional" and suffix:
        raise ValueError(f"parameter 'models': {run!r}: the unconditional model has no subject layer")
    return kind, suffix == "subject"


def ensure_models(
    runs: Sequence[str],
    train_dir: str | os.PathLike = "",
    *,
    backbone: str | os.PathLike = "",
    smoke: bool = False,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Load the model folder of every run; in the default run folder, train (or register) missing ones.

    Parameters
    ----------
    runs : sequence of str
        Run names (folders of ``train_dir``), e.g. :data:`DEFAULT_RUNS`.
    train_dir : path-like
        Notebook 04's output folder; ``""`` = the default run folder (``outputs/04_train``), where a
        missing default run is trained now with :func:`eeg2music.train.train` at the size ``smoke``
        selects (the unconditional model is registered, it has nothing to train). A missing run in an
        explicit ``train_dir`` is an error: nothing is written into a folder the user chose.
    backbone : path-like
        Backbone folder for runs trained now (``""`` = the default tiny backbone).
    smoke, seed, device
        Passed to training.
    progress : bool
        Say what is reused and what is trained.

    Returns
    -------
    dict
        Run → :class:`eeg2music.train.TrainedModel`, in the order of ``runs``.
    """
    from .paths import stage_dir
    from .train import (MODEL_CONFIG_NAME, MODEL_DIR_NAME, TrainConfig, load_trained_model, register_unconditional,
                        train)

    if not runs:
        raise ValueError("parameter 'models': empty; name at least one run (e.g. controlnet_subject)")
    if len(set(runs)) != len(runs):
        raise ValueError(f"parameter 'models': {list(runs)} names a run twice")
    say = print if progress else (lambda *a, **k: None)
    root = stage_dir("train", train_dir)
    default = train_dir in ("", None)
    models: dict[str, Any] = {}
    for run in runs:
        folder = root / run / MODEL_DIR_NAME
        if not (folder / MODEL_CONFIG_NAME).is_file():
            if not default:
                raise FileNotFoundError(
                    f"parameter 'train_dir': no model folder {folder} (no {MODEL_CONFIG_NAME}). Train it with notebook "
                    f"04 (out_dir={root}), or leave train_dir empty to use and complete the default run folder."
                )
            kind, subject_cond = _run_settings(run)
            if kind == "unconditional":
                data = next((m.config.get("data") for m in models.values() if m.config.get("data")), None)
                say(f"[sample] no {run!r} model in {root}: registering the unconditional backbone (nothing to train)")
                register_unconditional("", backbone, data=data, smoke=smoke)
            else:
                say(f"[sample] no {run!r} model in {root}: training it now (model={kind}, subject_cond={subject_cond}, "
                    f"smoke={smoke}) — notebook 04 does the same with its default parameters")
                config = TrainConfig.from_overrides({
                    "model": kind, "subject_cond": subject_cond, "backbone": str(backbone or ""), "smoke": smoke,
                    "seed": seed, "device": device, "run_name": run,
                })
                train(config, progress=progress)
        else:
            trained_smoke = (read_json(folder / MODEL_CONFIG_NAME).get("training") or {}).get("smoke")
            note = ""
            if trained_smoke is not None and bool(trained_smoke) != bool(smoke):
                note = f" (note: trained with smoke={trained_smoke}, this run has smoke={smoke})"
            say(f"[sample] using the {run!r} model in {folder}{note}")
        models[run] = load_trained_model(folder, device=device)
    return models


def check_models_agree(models: Mapping[str, Any], backbone: str | os.PathLike = "") -> tuple[str, dict[str, Any]]:
    """The backbone folder and data config shared by all models, checked.

    Every ControlNet is tied to the UNet it was trained on, and every model to the EEG channels,
    rate and subject order of its training cache, so models trained on different backbones or caches
    cannot be compared on one set of windows: that is an error naming the runs.

    Parameters
    ----------
    models : mapping run → TrainedModel
    backbone : path-like
        An explicit backbone folder (``""`` = the one the models record).

    Returns
    -------
    backbone_path : str
    data : dict
        The data config of the trained models (``cache_dir``, ``window_spec``, ``subjects``…);
        empty if only the unconditional model is sampled.
    """
    recorded = {run: str(Path(m.config.get("backbone", "")).resolve()) for run, m in models.items() if m.config.get("backbone")}
    distinct = sorted(set(recorded.values()))
    if len(distinct) > 1:
        raise ValueError(
            "the models were trained on different backbones: "
            + "; ".join(f"{run} → {path}" for run, path in recorded.items())
            + ". Sample models of one backbone together (parameter 'models')."
        )
    if backbone not in ("", None):
        chosen = str(Path(backbone).expanduser().resolve())
        if distinct and distinct[0] != chosen:
            print(f"[sample] warning: parameter 'backbone' {chosen} differs from the folder the models were "
                  f"trained with ({distinct[0]}); the ControlNets expect the UNet they were trained on")
    elif distinct:
        chosen = distinct[0]
    else:
        chosen = ""
    keys = ("cache_key", "sfreq", "channels", "subjects", "window_spec")
    data_configs = {run: m.config.get("data") or {} for run, m in models.items() if m.kind != "unconditional"}
    data_configs = {run: d for run, d in data_configs.items() if d}
    reference_run = next(iter(data_configs), None)
    for run, data in data_configs.items():
        different = [k for k in keys if data.get(k) != data_configs[reference_run].get(k)]
        if different:
            raise ValueError(
                f"runs {reference_run!r} and {run!r} were trained on different data ({', '.join(different)} differ); "
                f"sample models of one preprocessed cache together"
            )
    return chosen, dict(data_configs[reference_run]) if reference_run else {}


def sampling_datasets(
    data: Mapping[str, Any],
    *,
    run_dir: str | os.PathLike = "",
    data_root: str | os.PathLike = "",
    smoke: bool = False,
    seed: int = 0,
    splits: Sequence[str] = ("test", "ood"),
    progress: bool = True,
    stimuli_dir: str | os.PathLike = "",
) -> dict[str, Any]:
    """The windows to reconstruct, with their audio: the splits the models were trained with.

    Parameters
    ----------
    data : mapping
        The models' data config (:func:`check_models_agree`). Its cache, window spec (and, when
        recorded, held-out participant and song lengths) rebuild the training run's splits, which are
        then checked against the window counts it recorded. Empty (only the unconditional model):
        notebook 02's splits of ``run_dir`` (or of the default run folder).
    run_dir : path-like
        Notebook 02's output folder, to use its splits instead of the recorded ones.
    data_root : path-like
        NMED-T folder holding the stimuli WAVs (``""`` = the folder the cache was built from).
    smoke, seed
        For the default cache when nothing else names one.
    splits : sequence of str
        Splits to return.
    progress : bool
        Print what is used.
    stimuli_dir : path-like
        Folder holding the stimulus WAVs (``""`` = the one notebook 02 paired the EEG with, else the
        NMED-T folder's own).

    Returns
    -------
    dict
        Split → :class:`eeg2music.windows.EEGMusicWindows` with audio attached.

    Raises
    ------
    FileNotFoundError
        The recorded cache is gone.
    ValueError
        Participants or window counts differ from the training run's (subject indices or splits would
        not match), or a split is missing.
    """
    from .preprocess import open_cache
    from .windows import SUMMARY_FILE, WindowSpec, load_stage_windows, load_windows

    stimuli = data_root if data_root not in ("", None) else True
    stage = Path(run_dir).expanduser().resolve() if run_dir not in ("", None) else None
    if stage is not None or not data.get("cache_dir"):
        from .paths import stage_dir
        from .train import TrainConfig, training_windows

        folder = stage or stage_dir("preprocess")
        if (folder / SUMMARY_FILE).is_file():
            datasets = load_stage_windows(folder, stimuli=stimuli, verbose=progress, stimuli_dir=stimuli_dir or None)
        else:
            config = TrainConfig(run_dir=str(stage or ""), data_root=str(data_root or ""), smoke=smoke, seed=seed,
                                 stimuli_dir=str(stimuli_dir or ""))
            datasets, _ = training_windows(config, progress=progress)
    else:
        try:
            index = open_cache(data["cache_dir"])
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the models were trained on the preprocessed cache {data['cache_dir']}, which is gone or incomplete. "
                f"Re-run notebook 02 (same preprocessing), or give run_dir to point to notebook 02's output folder."
            ) from None
        song_seconds = {int(k): float(v) for k, v in (data.get("song_seconds") or {}).items()} or None
        datasets = load_windows(index, WindowSpec.from_dict(data["window_spec"]), loso_subject=data.get("loso_subject"),
                                stimuli=stimuli, song_seconds=song_seconds, verbose=progress,
                                stimuli_dir=stimuli_dir or data.get("stimuli_dir") or None)
    some = next(iter(datasets.values()))
    if data.get("subjects") and list(some.index.subjects) != list(data["subjects"]):
        raise ValueError(
            f"the cache {some.index.path} holds participants {list(some.index.subjects)}, but the models were trained "
            f"on {list(data['subjects'])}: their subject indices would not match"
        )
    recorded = data.get("windows") or {}
    different = {s: (len(datasets[s]), recorded[s]) for s in splits if s in recorded and s in datasets
                 and len(datasets[s]) != recorded[s]}
    if different:
        raise ValueError(
            "the windows rebuilt for sampling differ from the training run's "
            + ", ".join(f"{s}: {now} now, {then} in training" for s, (now, then) in different.items())
            + " — the splits cannot be reproduced (different song lengths, window spec or held-out participant); "
              "give run_dir = the notebook 02 folder the models were trained from"
        )
    missing = [s for s in splits if s not in datasets]
    if missing:
        raise ValueError(f"the windows have no split(s) {missing} (splits: {sorted(datasets)}); "
                         f"e.g. ood_song=None in notebook 02 leaves no OOD split")
    return {s: datasets[s] for s in splits}


# --------------------------------------------------------------------------------------------------
# Looking and listening (notebook 05, and the report of notebook 06)
# --------------------------------------------------------------------------------------------------

def clip_order(record: Mapping[str, Any], split: str, run: str) -> list[Mapping[str, Any]]:
    """The clip rows of one model and split, in a fixed order (song, chunk, subject).

    Every model is sampled on the same clips, so this order pairs the models' rows with each other.
    """
    rows = [r for r in record["clips"] if r["model"] == run and r["split"] == split]
    return sorted(rows, key=lambda r: (int(r["song"]), int(r["chunk"]), int(r["subject"])))


def choose_examples(record: Mapping[str, Any], n_test: int = 2, n_ood: int = 1) -> list[dict[str, Any]]:
    """A few clips to look at and listen to: test clips of ``n_test`` songs, ``n_ood`` clips of the unseen song.

    Deterministic: for the i-th song the middle sampled chunk, preferring a different listener for each
    example, so the examples span songs and subjects.

    Parameters
    ----------
    record : dict
        A sampling record (:func:`load_samples`, or what :func:`sample_models` returns).

    Returns
    -------
    list of dict
        ``split``, ``song``, ``chunk``, ``subject``, ``true_path``, ``generated`` (run → path).
    """
    folder = Path(record.get("folder", "."))
    runs = list(record["models"])
    if not runs:
        return []
    picks: list[tuple[str, Mapping[str, Any]]] = []
    used_subjects: set[int] = set()
    for split, n in (("test", n_test), ("ood", n_ood)):
        rows = clip_order(record, split, runs[0])
        by_song: dict[int, list[Mapping[str, Any]]] = {}
        for row in rows:
            by_song.setdefault(int(row["song"]), []).append(row)
        songs = sorted(by_song)
        if split == "test":
            # Spread the examples over the songs (first, middle, last…), one clip each.
            count = min(n, len(songs))
            chosen_songs = [songs[round(i * (len(songs) - 1) / max(count - 1, 1))] for i in range(count)]
            groups = [by_song[s] for s in dict.fromkeys(chosen_songs)]
        else:
            groups = [by_song[s] for s in songs[:1]] * min(n, len(rows))
        for i, group in enumerate(groups):
            ordered = sorted(group, key=lambda r: (abs(int(r["chunk"]) - int(group[len(group) // 2]["chunk"])),
                                                   int(r["subject"]) in used_subjects))
            if split == "ood":
                # Several clips of one song: spread them over the song.
                ordered = [group[round(i * (len(group) - 1) / max(len(groups) - 1, 1))]]
            row = next((r for r in ordered if int(r["subject"]) not in used_subjects), ordered[0])
            used_subjects.add(int(row["subject"]))
            picks.append((split, row))
    examples = []
    for split, pick in picks:
        key = (split, int(pick["song"]), int(pick["chunk"]), int(pick["subject"]))
        generated = {}
        for row in record["clips"]:
            if (row["split"], int(row["song"]), int(row["chunk"]), int(row["subject"])) == key:
                generated[row["model"]] = Path(row.get("generated_path") or folder / row["generated_wav"])
        examples.append({"split": split, "song": key[1], "chunk": key[2], "subject": key[3],
                         "true_path": Path(pick.get("true_path") or folder / pick["true_wav"]),
                         "generated": {run: generated[run] for run in runs if run in generated}})
    return examples


def plot_mel_comparison(examples: Sequence[Mapping[str, Any]], labels: Mapping[str, str], out_path: str | os.PathLike | None = None,
                        dynamic_range_db: float = 80.0):
    """True vs generated mel spectrograms, one row per example, with one shared dB colour scale.

    All panels share ``[max − dynamic_range_db, max]`` dB (the maximum over every panel), so a quieter
    or blurrier reconstruction looks quieter or blurrier, not rescaled.
    """
    import matplotlib.pyplot as plt

    from .audio import FMAX, HOP_LENGTH

    if not examples:
        raise ValueError("plot_mel_comparison: no example to show")
    runs = list(examples[0]["generated"])
    columns = ["true"] + runs
    panels = [[mel_db(read_wav(ex["true_path"]))] + [mel_db(read_wav(ex["generated"][r])) for r in runs] for ex in examples]
    vmax = max(float(p.max()) for row in panels for p in row)
    vmin = vmax - dynamic_range_db
    seconds = panels[0][0].shape[0] * HOP_LENGTH / SAMPLE_RATE
    fig, axes = plt.subplots(len(examples), len(columns), figsize=(2.6 * len(columns), 2.1 * len(examples)),
                             squeeze=False, sharex=True, sharey=True)
    image = None
    for i, (example, row) in enumerate(zip(examples, panels)):
        for j, (column, mel) in enumerate(zip(columns, row)):
            ax = axes[i][j]
            image = ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                              extent=(0, seconds, 0, 64))
            if i == 0:
                ax.set_title("true clip" if column == "true" else labels.get(column, column), fontsize=9)
            if j == 0:
                where = "OOD song" if example["split"] == "ood" else "test"
                ax.set_ylabel(f"{where} · song {example['song']}\nchunk {example['chunk']} · P{example['subject']:02d}\nmel bin",
                              fontsize=8)
            if i == len(examples) - 1:
                ax.set_xlabel("time (s)")
    fig.colorbar(image, ax=axes, shrink=0.8, label=f"dB (mel bins 0–{FMAX / 1000:g} kHz)")
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=110, bbox_inches="tight")
    return fig


def listening_table(examples: Sequence[Mapping[str, Any]], labels: Mapping[str, str]):
    """An HTML table of ``IPython.display.Audio`` players: one row per example, true clip then each model.

    Players use ``normalize=False`` so loudness differences are heard as they are; samples beyond ±1
    (possible for an unclipped reconstruction) are clipped for playback only.
    """
    import html as html_lib

    from IPython.display import HTML

    from .audio import player

    if not examples:
        return HTML("<p>no example</p>")
    runs = list(examples[0]["generated"])
    header = "".join(f"<th>{html_lib.escape(h)}</th>" for h in ["clip", "true"] + [labels.get(r, r) for r in runs])
    body = []
    for example in examples:
        where = "OOD song" if example["split"] == "ood" else "test"
        cells = [f"<td>{where}: song {example['song']}, chunk {example['chunk']}, P{example['subject']:02d}</td>"]
        for path in [example["true_path"]] + [example["generated"][r] for r in runs]:
            cells.append(f"<td>{player(read_wav(path))._repr_html_()}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return HTML(f"<table><tr>{header}</tr>{''.join(body)}</table>")
