"""Aligning the EEG encoder to the audio first: a contrastive (CLIP / InfoNCE) pre-training of P.

The paper trains the projector P from scratch, together with the ControlNet, through the diffusion loss
alone. That loss says little about the EEG early on: a zero-initialised ControlNet first has to learn
*that* its input matters before P can learn *what* in it matters ("sudden convergence" after thousands
of steps). Défossez et al. (2023) showed for MEG/EEG speech that an encoder trained with a contrastive
loss against the stimulus' representation decodes far better; EEG-to-music models that align the EEG to
an audio embedding before generating follow the same route.

Here the EEG encoder is exactly the ControlNet's front end — the subject layer S and the projector P,
with the same layout — followed by a small head; the audio side is a head on the clip's VAE latent
(the representation the ControlNet must steer towards). Both heads give a time-resolved embedding,
``(dim, latent_frames)``, compared by cosine similarity. The loss is InfoNCE over the batch with every
window of the same clip counted as a positive (20 listeners hear the same clip, so a batch holds
several true pairs per clip). After training, S and P initialise the ControlNet's (:func:`init_controlnet_from`).

The encoder also decodes on its own: rank the candidate clips' audio embeddings by their similarity to
an EEG window's (:func:`retrieval_accuracy`) — segment identification in Défossez et al.'s sense and
3.5 s song identification as PredANN reports it. Generation cannot show more of the song than this.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .controlnet import EEGProjector, ProjectorPlan, SubjectLayer, projector_plan
from .metrics import identification

#: Defaults of the alignment stage (steps are set per run: 0 = the paper's P from scratch).
ALIGNMENT_DIM = 16
ALIGNMENT_LR = 1e-3
ALIGNMENT_TEMPERATURE = 0.1


class EEGAudioAligner(nn.Module):
    """EEG encoder (S, P, a head) and audio encoder (a head on the VAE latent), embedding into one space.

    Parameters
    ----------
    eeg_channels, eeg_sfreq, eeg_samples, clip_seconds
        The EEG window (as for :class:`~eeg2music.controlnet.EEGControlNet`).
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


def _clip_ids(songs: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
    return songs.long() * 100_000 + chunks.long()


@dataclass
class AlignmentResult:
    """What :func:`train_alignment` did: the losses, the retrieval on held-out windows, the time."""

    steps: int
    batch_size: int
    seconds: float
    log: list[dict[str, float]]
    retrieval: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _latent_lookup(latents) -> Callable[[Sequence[tuple[int, int]]], torch.Tensor]:
    """``(song, chunk)`` keys → latents, from a ``ClipLatents`` (``lookup``) or a mapping of tensors."""
    if hasattr(latents, "lookup"):
        return lambda keys: latents.lookup([s for s, _ in keys], [c for _, c in keys])
    return lambda keys: torch.stack([torch.as_tensor(latents[key]) for key in keys])


@torch.no_grad()
def encode_clip_latents(backbone, dataset, *, batch_size: int = 16) -> dict[tuple[int, int], torch.Tensor]:
    """The VAE latent of every distinct clip of a dataset with audio (``dataset.audio_clip(song, chunk)``)."""
    clips = dataset.clips()
    table: dict[tuple[int, int], torch.Tensor] = {}
    for start in range(0, len(clips), batch_size):
        keys = clips[start : start + batch_size]
        waves = torch.from_numpy(np.stack([dataset.audio_clip(song, chunk) for song, chunk in keys]))
        latents = backbone.encode(backbone.wave_to_mel(waves)).float().cpu()
        table.update(zip(keys, latents))
    return table


@torch.no_grad()
def retrieval_accuracy(aligner: EEGAudioAligner, dataset, latents, *, batch_size: int = 64,
                       device: torch.device | str = "cpu", max_windows: int = 0) -> dict[str, float]:
    """Encoder-only decoding: rank every distinct clip of ``dataset`` for each EEG window.

    The ranking is notebook 06's (:func:`eeg2music.metrics.identification`, uncentred: the two encoders
    were trained into one space, there is no generator offset to remove), so the encoder's song-ID and
    the generated audio's are the same measure.

    Parameters
    ----------
    aligner : EEGAudioAligner
    dataset : EEGMusicWindows
        Windows without audio (``eeg``, ``subject``, ``song``, ``chunk``).
    latents : ClipLatents or mapping
        The latent of every (song, chunk) of ``dataset`` (a ``ClipLatents`` or ``{(song, chunk): tensor}``,
        e.g. :func:`encode_clip_latents`).
    max_windows : int
        Evenly spaced windows to use (0 = all).

    Returns
    -------
    dict
        ``segment_top1`` / ``segment_top10`` (the true clip among the split's clips; top-10 is 1 when there
        are at most 10), ``song_top1`` (songs scored by the mean similarity to their clips), their chance
        levels ``segment_chance`` / ``song_chance``, ``n_windows``, ``n_clips``.
    """
    aligner = aligner.eval().to(device)
    lookup = _latent_lookup(latents)
    positions = np.arange(len(dataset))
    if max_windows and len(positions) > max_windows:
        positions = np.linspace(0, len(positions) - 1, max_windows).round().astype(int)
    eeg_rows, audio_rows, songs, chunks = [], [], [], []
    for start in range(0, len(positions), batch_size):
        items = [dataset[int(i)] for i in positions[start : start + batch_size]]
        eeg = torch.stack([item["eeg"] for item in items]).to(device).float()
        subject = torch.tensor([item["subject"] for item in items], device=device)
        keys = [(item["song"], item["chunk"]) for item in items]
        eeg_rows.append(aligner.embed_eeg(eeg, subject).cpu())
        audio_rows.append(aligner.embed_audio(lookup(keys).to(device).float()).cpu())
        songs += [song for song, _ in keys]
        chunks += [chunk for _, chunk in keys]
    result = identification(torch.cat(eeg_rows).numpy(), torch.cat(audio_rows).numpy(), songs, chunks,
                            top_k=(1, 10), song_top_k=(1,))
    segment, song = result["segment"], result["song"]
    return {"segment_top1": float(segment["hits"][1].mean()),
            "segment_top10": float(segment["hits"][10].mean()) if 10 in segment["hits"] else 1.0,
            "song_top1": float(song["hits"][1].mean()) if 1 in song["hits"] else 1.0,
            "segment_chance": 1.0 / segment["n_candidates"], "song_chance": 1.0 / song["n_candidates"],
            "n_windows": int(len(positions)), "n_clips": int(segment["n_candidates"])}


def train_alignment(aligner: EEGAudioAligner, train_set, val_set, latents, *, steps: int, batch_size: int,
                    lr: float = ALIGNMENT_LR, seed: int = 0, device: torch.device | str = "cpu",
                    eval_every: int = 0, val_windows: int = 256, progress: bool = True) -> AlignmentResult:
    """Train the aligner with InfoNCE on ``train_set``; measure retrieval on ``val_set`` as it trains.

    Parameters
    ----------
    aligner : EEGAudioAligner
    train_set, val_set : EEGMusicWindows
        Windows without audio; their clips' latents are looked up in ``latents``.
    latents : ClipLatents or mapping
        The latent of every clip (see :func:`retrieval_accuracy`).
    steps, batch_size, lr, seed
        AdamW steps (weight decay 1e-3, the paper's ControlNet setting), windows per step, learning
        rate, and the seed of the window order.
    eval_every : int
        Steps between retrieval measurements on ``val_set`` (0: only at the end).
    val_windows : int
        Validation windows per measurement (evenly spaced).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    aligner = aligner.to(device).train()
    if hasattr(latents, "lookup"):
        latents = latents.to(device)
    lookup = _latent_lookup(latents)
    optimizer = torch.optim.AdamW(aligner.parameters(), lr=lr, weight_decay=1e-3)
    rng = np.random.default_rng(seed)
    order, cursor = rng.permutation(len(train_set)), 0
    log: list[dict[str, float]] = []
    started = time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc="align EEG ↔ audio", disable=not progress, leave=False):
        if cursor + batch_size > len(order):
            order, cursor = rng.permutation(len(train_set)), 0
        items = [train_set[int(i)] for i in order[cursor : cursor + batch_size]]
        cursor += batch_size
        eeg = torch.stack([item["eeg"] for item in items]).to(device).float()
        subject = torch.tensor([item["subject"] for item in items], device=device)
        songs = torch.tensor([item["song"] for item in items], device=device)
        chunks = torch.tensor([item["chunk"] for item in items], device=device)
        z0 = lookup([(item["song"], item["chunk"]) for item in items]).to(device).float()
        loss = aligner.loss(eeg, subject, z0, _clip_ids(songs, chunks))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(aligner.parameters(), 1.0)
        optimizer.step()
        entry = {"step": step, "loss": loss.item()}
        if step == steps or (eval_every and step % eval_every == 0):
            entry.update({f"val_{k}": v for k, v in retrieval_accuracy(
                aligner, val_set, latents, device=device, max_windows=val_windows).items()
                if k in ("segment_top1", "segment_top10", "song_top1")})
            aligner.train()
            if progress:
                print(f"[align] step {step}/{steps}: loss {entry['loss']:.3f}, val segment top-1 "
                      f"{entry['val_segment_top1']:.0%}, top-10 {entry['val_segment_top10']:.0%}, song "
                      f"{entry['val_song_top1']:.0%}", flush=True)
        log.append(entry)
    seconds = time.perf_counter() - started
    retrieval = retrieval_accuracy(aligner, val_set, latents, device=device)
    return AlignmentResult(steps=steps, batch_size=batch_size, seconds=seconds, log=log, retrieval=retrieval)


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


def plot_alignment(log: Sequence[Mapping[str, float]], chance: Mapping[str, float] | None = None):
    """InfoNCE loss and held-out retrieval accuracy over the alignment steps."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
    left.plot([e["step"] for e in log], [e["loss"] for e in log], lw=0.8)
    left.set(xlabel="step", ylabel="InfoNCE loss", title="Contrastive alignment")
    evaluated = [e for e in log if "val_segment_top1" in e]
    for key, label in (("val_segment_top1", "segment top-1"), ("val_segment_top10", "segment top-10"),
                       ("val_song_top1", "song top-1")):
        right.plot([e["step"] for e in evaluated], [100 * e[key] for e in evaluated], "o-", label=label)
    for level in (chance or {}).values():
        right.axhline(100 * level, color="grey", lw=0.8, ls=":")
    right.set(xlabel="step", ylabel="% of validation windows", title="Encoder-only retrieval (validation)")
    right.legend()
    return fig
