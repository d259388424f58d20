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

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..evaluation.metrics import identification
from ..models.aligner import EEGAudioAligner, build_aligner_for, init_controlnet_from
from ..models.model_folder import ALIGNER_FILE, ALIGNER_WEIGHTS, ALIGNMENT_DIR_NAME
from ..utils import atomic_directory, read_json, write_json
from .config import TrainConfig
from .data import INIT_STREAM, TrainingData, derived_seed

ALIGNMENT_LR = 1e-3


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

    The ranking is notebook 06's (:func:`eeg2music.evaluation.metrics.identification`, uncentred: the two encoders
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


def pretrain_alignment(model, cfg: TrainConfig, backbone, data: TrainingData, run: Path, device, progress: bool):
    """Contrastive pre-training of S and P (:mod:`eeg2music.training.alignment`), copied into the ControlNet.

    The aligner (both encoders) is saved in ``<run>/aligner/`` so its encoder-only retrieval can be
    measured on the test windows later; the returned record goes into ``train_summary.json``.
    """
    torch.manual_seed(derived_seed(INIT_STREAM, cfg.seed, 1))
    aligner = build_aligner_for(model, int(backbone.latent_shape[0]), subject_cond=cfg.subject_cond,
                                n_subjects=data.n_subjects)
    result = train_alignment(aligner, data.train, data.val, data.latents, steps=cfg.align_steps,
                             batch_size=cfg.align_batch_size, seed=cfg.seed, device=device,
                             eval_every=max(cfg.align_steps // 4, 1), progress=progress)
    copied = init_controlnet_from(model, aligner.to(next(model.parameters()).device))
    with atomic_directory(run / ALIGNMENT_DIR_NAME) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in aligner.state_dict().items()},
                  str(tmp / ALIGNER_WEIGHTS))
        write_json(tmp / ALIGNER_FILE, {"dim": aligner.eeg_head[-1].out_channels, "subject_cond": cfg.subject_cond,
                                          "n_subjects": data.n_subjects, "latent_channels": int(backbone.latent_shape[0]),
                                          "plan": model.plan.to_dict(), "result": result.to_dict()})
    if progress:
        print(f"[train] aligned S and P in {result.seconds:.0f} s: validation segment top-1 "
              f"{result.retrieval['segment_top1']:.0%} (chance {result.retrieval['segment_chance']:.0%}), song "
              f"{result.retrieval['song_top1']:.0%} (chance {result.retrieval['song_chance']:.0%}); "
              f"{len(copied)} tensors copied into the ControlNet", flush=True)
    return {**result.to_dict(), "copied": len(copied), "folder": str(run / ALIGNMENT_DIR_NAME)}


def previous_alignment(run: Path, resume_from) -> dict[str, Any] | None:
    """A resumed run's alignment record (written when the run started)."""
    record = run / ALIGNMENT_DIR_NAME / ALIGNER_FILE
    if resume_from is None or not record.is_file():
        return None
    return {**read_json(record)["result"], "folder": str(record.parent)}
