"""Contrastive EEG ↔ audio alignment: the InfoNCE loss, encoder-only retrieval, and the hand-over to the ControlNet.

The EEG here is synthetic and *made* from the clip latents (a fixed random mixing plus noise), so a
working aligner must learn to retrieve the right clip; a broken one stays at chance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eeg2music.models.aligner import (
    EEGAudioAligner,
    build_aligner_for,
    init_controlnet_from,
)
from eeg2music.models.controlnet import EEGControlNet
from eeg2music.models.tiny_backbone import build_tiny_backbone
from eeg2music.training.alignment import retrieval_accuracy, train_alignment

CHANNELS, SFREQ, CLIP_SECONDS = 6, 25.0, 3.5
SAMPLES = int(round(SFREQ * CLIP_SECONDS))  # 88: one EEG sample per latent frame


class SyntheticWindows:
    """Windows of EEG that encode their clip's latent: ``eeg = M · latent.mean(bins) + noise`` per subject."""

    def __init__(self, latents: dict, subjects: int, seed: int, noise: float = 0.3):
        generator = torch.Generator().manual_seed(seed)
        mixing = torch.randn(CHANNELS, 8, generator=torch.Generator().manual_seed(99))
        self.items = []
        for (song, chunk), latent in latents.items():
            for subject in range(subjects):
                signal = mixing @ latent.mean(dim=2)  # (channels, frames)
                eeg = signal + noise * torch.randn(signal.shape, generator=generator)
                self.items.append({"eeg": eeg.float(), "subject": subject, "song": song, "chunk": chunk})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def clips(self):
        return sorted({(item["song"], item["chunk"]) for item in self.items})


def _aligner(subject_cond: bool = True) -> EEGAudioAligner:
    return EEGAudioAligner(eeg_channels=CHANNELS, eeg_sfreq=SFREQ, eeg_samples=SAMPLES, clip_seconds=CLIP_SECONDS,
                           latent_channels=8, latent_frames=88, latent_bins=16, first_block_channels=16,
                           n_subjects=2, subject_cond=subject_cond, dim=8)


def _latents(n_clips: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {(21 + i % 3, i): torch.randn(8, 88, 16, generator=generator) for i in range(n_clips)}


def test_infonce_counts_windows_of_one_clip_as_positives():
    torch.manual_seed(0)
    aligner = _aligner()
    eeg, subject, latents = torch.randn(4, CHANNELS, SAMPLES), torch.tensor([0, 1, 0, 1]), torch.randn(4, 8, 88, 16)
    with torch.no_grad():
        aligner.log_scale.fill_(0.0)  # τ = 1
        e, a = aligner.embed_eeg(eeg, subject), aligner.embed_audio(latents)
        assert torch.allclose(e.norm(dim=1), torch.ones(4)) and torch.allclose(a.norm(dim=1), torch.ones(4))
        # all four from one clip: every column is a positive, so the loss is the log-sum-exp minus the mean logit
        same = aligner.loss(eeg, subject, latents, torch.zeros(4, dtype=torch.long))
        logits = e @ a.T
        expected_rows = -(logits.log_softmax(dim=1)).mean(dim=1).mean()
        expected_cols = -(logits.T.log_softmax(dim=1)).mean(dim=1).mean()
        assert same.item() == pytest.approx(0.5 * (expected_rows + expected_cols).item(), rel=1e-5)
        distinct = aligner.loss(eeg, subject, latents, torch.arange(4))
        expected = 0.5 * (-logits.log_softmax(1).diagonal().mean() - logits.T.log_softmax(1).diagonal().mean())
        assert distinct.item() == pytest.approx(expected.item(), rel=1e-5)


def test_alignment_learns_to_retrieve_the_clip_the_eeg_encodes():
    torch.manual_seed(0)
    train_set = SyntheticWindows(_latents(12, seed=1), subjects=2, seed=2)
    # the validation clips get their own chunk numbers (the two draws would otherwise share keys)
    val_latents = _latents(6, seed=3)
    val_latents = {(song, chunk + 100): latent for (song, chunk), latent in val_latents.items()}
    val_set = SyntheticWindows(val_latents, subjects=2, seed=4)
    all_latents = {**_latents(12, seed=1), **val_latents}
    aligner = _aligner()
    before = retrieval_accuracy(aligner, val_set, all_latents)
    result = train_alignment(aligner, train_set, val_set, all_latents, steps=60, batch_size=12, lr=3e-3, seed=0,
                             eval_every=30, progress=False)
    after = result.retrieval
    assert after["n_clips"] == 6 and after["segment_chance"] == pytest.approx(1 / 6)
    assert after["segment_top1"] >= 0.75, (before, after)  # chance is 1/6
    assert after["segment_top1"] > before["segment_top1"]
    assert [e["step"] for e in result.log if "val_segment_top1" in e] == [30, 60]
    assert result.log[-1]["loss"] < result.log[0]["loss"]
    assert math.isfinite(result.seconds) and result.steps == 60


def test_aligned_subject_layer_and_projector_start_the_controlnet():
    backbone = build_tiny_backbone(seed=0, size="smoke")
    controlnet = EEGControlNet.from_unet(backbone.unet, eeg_channels=CHANNELS, eeg_sfreq=SFREQ,
                                         clip_seconds=CLIP_SECONDS, latent_frames=88, latent_bins=16, n_subjects=2,
                                         subject_cond=True, eeg_samples=SAMPLES)
    aligner = build_aligner_for(controlnet, 8, subject_cond=True, n_subjects=2)
    with torch.no_grad():
        for parameter in aligner.parameters():
            parameter.add_(torch.randn_like(parameter))
    copied = init_controlnet_from(controlnet, aligner)
    assert copied and all(name.startswith(("projector.", "subject_layer.")) for name in copied)
    for name, tensor in aligner.projector.state_dict().items():
        torch.testing.assert_close(controlnet.projector.state_dict()[name], tensor)
    torch.testing.assert_close(controlnet.subject_layer.weight, aligner.subject_layer.weight)
    # the zero convolutions are untouched: the ControlNet still leaves the backbone as it is
    assert all(float(conv.weight.abs().sum()) == 0.0 for conv in controlnet.controlnet_down_blocks)
    # without a subject layer on either side, only P moves
    plain = EEGControlNet.from_unet(backbone.unet, eeg_channels=CHANNELS, eeg_sfreq=SFREQ, clip_seconds=CLIP_SECONDS,
                                    latent_frames=88, latent_bins=16, n_subjects=2, subject_cond=False,
                                    eeg_samples=SAMPLES)
    assert all(name.startswith("projector.") for name in init_controlnet_from(plain, aligner))
    assert np.isfinite(float(aligner.log_scale))
