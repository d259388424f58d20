"""Every figure the notebooks show, one function each (matplotlib / seaborn / MNE).

The functions take what the package computes (a traced preprocessing step, a training log, a results
dict) and return the figure; none computes a result itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mne
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .audio import (
    CLIP_SAMPLES,
    FMAX,
    HOP_LENGTH,
    N_MELS,
    SAMPLE_RATE,
    display_mel_db,
    mel_db,
    n_frames,
)
from .data.forward_model import ForwardModel
from .data.nmedt import hydrocel_montage
from .data.preprocessing import TracedStep, hydrocel_info
from .data.windows import EEGMusicWindows, Splits
from .models.backbone import Backbone
from .sampling.clips import read_wav
from .training.loop import read_log
from .utils import atomic_file


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG (110 dpi, tight box), atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return path


def show_saved(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` (:func:`save_figure`), close it and display the PNG: the notebook shows exactly the file."""
    from IPython.display import Image, display

    path = save_figure(fig, path)
    plt.close(fig)
    display(Image(filename=str(path)))
    return path


# Notebook 00: the backbone

def plot_mels(mels, titles: Sequence[str] | None = None, *, columns: int = 4, title: str | None = None,
              path: str | os.PathLike | None = None):
    """Log-mel spectrograms ``(N, 1, frames, 64)`` side by side (time in s, mel bin up), one colour scale.

    Saved as PNG to ``path`` when given; returns the figure.
    """

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
        save_figure(fig, path)
    return fig


@torch.no_grad()
def plot_levels(metrics: Mapping[str, Any], *, path: str | os.PathLike | None = None):
    """Real clips against samples (:func:`~eeg2music.evaluation.backbone_quality.evaluate_backbone`'s metrics): level per mel band, spread per latent channel."""

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
        save_figure(fig, path)
    return fig


def plot_forward_process(backbone: Backbone, latents: torch.Tensor, timesteps: Sequence[int] = (0, 100, 300, 600, 999),
                         *, seed: int = 0, path: str | os.PathLike | None = None):
    """The forward (noising) process on one clip's latent: ``z_t = √ᾱ_t z_0 + √(1-ᾱ_t) ε`` for a few t.

    Top row: latent channel 0 (time × frequency); bottom row: what the VAE decodes from ``z_t``.
    """

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
        save_figure(fig, path)
    return fig


# Notebook 01: the dataset

def plot_eeg_and_music(raw, audio: np.ndarray | None, sr: int, start_s: float = 0.0, seconds: float = 10.0,
                       channels: Sequence[str] = ("E11", "E6", "E55", "E62", "E75", "E36", "E104")):
    """A stretch of EEG (a few channels, µV) above the mel spectrogram of the music heard meanwhile.

    Returns
    -------
    matplotlib.figure.Figure
    """


    fs = raw.info["sfreq"]
    picks = [c for c in channels if c in raw.ch_names]
    start, stop = int(start_s * fs), min(raw.n_times, int((start_s + seconds) * fs))
    data = raw.get_data(picks=picks, start=start, stop=stop) * 1e6
    data = data - np.median(data, axis=1, keepdims=True)
    times = start_s + np.arange(data.shape[1]) / fs
    rows = 2 if audio is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(11, 6 if rows == 2 else 4), sharex=True, squeeze=False, layout="constrained")
    spacing = max(4 * np.median(np.std(data, axis=1)), 1.0)
    for i, name in enumerate(picks):
        axes[0, 0].plot(times, data[i] - i * spacing, lw=0.7)
    axes[0, 0].set_yticks([-i * spacing for i in range(len(picks))], picks)
    axes[0, 0].set_title(f"EEG (offset per channel, {spacing:.0f} µV apart), {fs:g} Hz")
    if audio is not None:
        clip = audio[int(start_s * sr) : int((start_s + seconds) * sr)]
        mel = display_mel_db(clip, sr)
        axes[1, 0].imshow(mel, origin="lower", aspect="auto", cmap="magma",
                          extent=(start_s, start_s + len(clip) / sr, 0, mel.shape[0]))
        axes[1, 0].set(ylabel="mel band", title="the music (log-mel spectrogram)")
    axes[-1, 0].set_xlabel("time from song onset (s)")
    return fig


def plot_forward_model(model: ForwardModel, fs: float = 125.0, subjects: Iterable[int] = (0, 1)):
    """A figure of the forward model: source topographies, TRF kernels of two subjects, the mixing.

    Returns
    -------
    matplotlib.figure.Figure
    """

    info = mne.create_info(model.channel_names, 125.0, "eeg")
    info.set_montage(hydrocel_montage())
    n_sources = len(model.source_names)
    fig = plt.figure(figsize=(3.0 * n_sources, 7.5), layout="constrained")
    grid = fig.add_gridspec(2, n_sources)
    for j, name in enumerate(model.source_names):
        ax = fig.add_subplot(grid[0, j])
        pattern = model.patterns[0, j] - model.patterns[0, j].mean()  # average reference
        mne.viz.plot_topomap(pattern, info, axes=ax, show=False, contours=4)
        ax.set_title(name, fontsize=10)
    ax = fig.add_subplot(grid[1, : n_sources // 2])
    tau_ms = np.arange(int(0.5 * fs)) / fs * 1000
    for subject_index, style in zip(subjects, ("-", "--")):
        if subject_index >= model.n_subjects:
            continue
        kernels = model.kernels(subject_index, fs)
        for k in (0, 4, 7, 8):
            ax.plot(tau_ms, kernels[k], style, label=f"{model.feature_names[k]} · P{model.subjects[subject_index]:02d}")
    ax.set(xlabel="lag (ms)", ylabel="response (a.u.)", title="response kernels (TRFs) of two subjects")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[1, n_sources // 2 :])
    image = ax.imshow(model.mixing, aspect="auto", cmap="RdBu_r", vmin=-np.abs(model.mixing).max(), vmax=np.abs(model.mixing).max())
    ax.set(yticks=range(n_sources), yticklabels=model.source_names, xticks=range(len(model.feature_names)), title="feature → source mixing")
    ax.set_xticklabels(model.feature_names, rotation=60, ha="right", fontsize=7)
    fig.colorbar(image, ax=ax)
    return fig


# Notebook 02: preprocessing, windows and splits

def _before_after(steps: Sequence[TracedStep]) -> tuple[TracedStep, TracedStep]:
    """The recording once its channels are final (after dropping) and at the end of the pipeline."""
    final = steps[-1].ch_names
    before = next(step for step in steps if step.ch_names == final)
    return before, steps[-1]


def plot_step_traces(
    steps: Sequence[TracedStep], channel: str = "E11", seconds: float = 10.0, clamp_limit: float | None = 20.0
):
    """One channel's first ``seconds`` after each step, one panel per step."""

    fig, axes = plt.subplots(len(steps), 1, figsize=(10, 1.5 * len(steps) + 0.8), sharex=True, squeeze=False)
    for ax, step in zip(axes[:, 0], steps):
        values, unit = step.display()
        row = values[step.ch_names.index(channel)]
        n = min(int(seconds * step.sfreq), row.size)
        ax.plot(np.arange(n) / step.sfreq, row[:n], lw=0.7, color="k")
        title = step.name
        if step.name == "clamp" and clamp_limit:
            at_limit = np.abs(row) >= clamp_limit * (1 - 1e-6)
            title += f" at ±{clamp_limit:g}: {int(at_limit.sum())} of {row.size} samples of {channel} capped"
            if at_limit[:n].any():
                for sign in (-1, 1):
                    ax.axhline(sign * clamp_limit, color="tab:red", lw=0.8, ls="--")
        ax.set_title(title, loc="left", fontsize=9)
        ax.set_ylabel(unit)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(f"Channel {channel} after each step (first {seconds:g} s)")
    fig.tight_layout()
    return fig


def plot_montage_before_after(steps: Sequence[TracedStep], seconds: float = 10.0):
    """All channels × time as images, before scaling (µV) and at the end (IQR units)."""

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, step, title in zip(axes, _before_after(steps), ("before (channels kept)", "after the pipeline")):
        values, unit = step.display()
        n = min(int(seconds * step.sfreq), values.shape[1])
        limit = float(np.percentile(np.abs(values[:, :n]), 99)) or 1.0
        image = ax.imshow(values[:, :n], aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                          extent=(0, n / step.sfreq, len(step.ch_names) - 0.5, -0.5), interpolation="nearest")
        fig.colorbar(image, ax=ax, label=unit)
        ax.set_title(title)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("channel (E1 … E124)")
    fig.tight_layout()
    return fig


def plot_value_distributions(steps: Sequence[TracedStep], clamp_limit: float | None = 20.0):
    """Pooled sample values before and after, and how unequal the channels' scales are before."""

    before, after = _before_after(steps)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    values, unit = before.display()
    axes[0].hist(values.ravel(), bins=200, color="tab:blue", log=True)
    axes[0].set(title="before: all samples", xlabel=unit, ylabel="count (log)")
    scaled, scaled_unit = after.display()
    axes[1].hist(scaled.ravel(), bins=200, color="tab:orange", log=True)
    axes[1].set(title="after: all samples", xlabel=scaled_unit)
    if clamp_limit:
        for sign in (-1, 1):
            axes[1].axvline(sign * clamp_limit, color="tab:red", ls="--", lw=0.8)
    q25, q75 = np.percentile(values, [25, 75], axis=1)
    order = np.argsort(q75 - q25)
    axes[2].bar(np.arange(len(order)), (q75 - q25)[order], color="tab:blue", width=1.0)
    axes[2].set(title="before: IQR per channel (sorted)", xlabel="channels", ylabel=f"IQR ({unit})")
    fig.tight_layout()
    return fig


def plot_channel_topomaps(steps: Sequence[TracedStep], clamp_limit: float | None = 20.0):
    """Scalp maps: each channel's IQR before scaling (µV), and its peak |value| once scaled (IQR units)."""

    before, after = _before_after(steps)
    scaled = next((step for step in steps if step.name == "robust scale"), after)
    info = hydrocel_info(before.ch_names, before.sfreq)
    values, unit = before.display()
    q25, q75 = np.percentile(values, [25, 75], axis=1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    image, _ = mne.viz.plot_topomap(q75 - q25, info, axes=axes[0], show=False, cmap="viridis")
    fig.colorbar(image, ax=axes[0], label=f"IQR ({unit})", shrink=0.8)
    axes[0].set_title("spread before scaling")
    peaks, scaled_unit = np.abs(scaled.data).max(axis=1), scaled.display()[1]
    image, _ = mne.viz.plot_topomap(peaks, info, axes=axes[1], show=False, cmap="magma")
    fig.colorbar(image, ax=axes[1], label=f"max |value| ({scaled_unit})", shrink=0.8)
    title = "peak |value| once scaled"
    if clamp_limit:
        capped = 100.0 * np.mean(np.abs(after.data) >= clamp_limit * (1 - 1e-6))
        title += f"\n(clamp at ±{clamp_limit:g} caps {capped:.3f} % of all samples)"
    axes[1].set_title(title)
    fig.tight_layout()
    return fig


_SPLIT_COLOURS = {"gap": "#d9d9d9", "train": "#4c72b0", "val": "#dd8452", "test": "#55a868", "ood": "#c44e52"}


def plot_split_layout(splits: Splits):
    """Songs × chunks, each chunk coloured by its split (grey: gap; white: past the song's end)."""

    songs = sorted(splits.n_chunks)
    width = max(splits.n_chunks.values())
    names = list(_SPLIT_COLOURS)
    grid = np.full((len(songs), width), np.nan)
    for row, song in enumerate(songs):
        grid[row, : splits.n_chunks[song]] = names.index("gap")
        for name, chunks in splits.chunk_ranges.get(song, {}).items():
            grid[row, chunks.start : chunks.stop] = names.index(name)
    fig, ax = plt.subplots(figsize=(min(14, 5 + 0.12 * width), 0.45 * len(songs) + 1.6))
    cmap = ListedColormap([_SPLIT_COLOURS[name] for name in names])
    cmap.set_bad("white")
    ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5,
              interpolation="nearest", extent=(-0.5, width - 0.5, len(songs) - 0.5, -0.5))
    ax.set_yticks(range(len(songs)), [f"song {song}" for song in songs])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"chunk ({splits.spec.clip_seconds:g} s each)")
    counts = splits.counts()
    ax.legend(handles=[Patch(color=_SPLIT_COLOURS[n], label=f"{n} ({counts[n]} windows)" if n in counts else n)
                       for n in names if n in counts or n == "gap"],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    title = "Split of every song's chunks"
    if splits.loso_subject is not None:
        title += f" — participant {splits.loso_subject} held out (test/ood only)"
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_window_pair(dataset: EEGMusicWindows, i: int = 0, channels: Sequence[str] = ("E11", "E36", "E62", "E75", "E104")):
    """One window: its audio clip (if attached) above its EEG (a few channels, offset)."""

    item = dataset[i]
    names = dataset.index.channel_names
    shown = [name for name in channels if name in names] or names[:5]
    has_audio = "audio" in item
    fig, axes = plt.subplots(2 if has_audio else 1, 1, figsize=(10, 5.5 if has_audio else 3.2), squeeze=False)
    seconds = dataset.spec.clip_seconds
    if has_audio:
        audio = item["audio"].numpy()
        axes[0, 0].plot(np.arange(audio.size) / dataset.spec.audio_sr, audio, lw=0.3, color="k")
        axes[0, 0].set(title=f"audio clip: song {item['song']}, chunk {item['chunk']} "
                             f"({item['chunk'] * seconds:g}–{(item['chunk'] + 1) * seconds:g} s)",
                       ylabel="amplitude", xlim=(0, seconds))
    ax = axes[-1, 0]
    eeg = item["eeg"].numpy()
    lag = dataset.spec.lag_seconds
    t = np.arange(eeg.shape[1]) / dataset.sfreq
    spacing = max(float(np.percentile(np.abs(eeg), 99)) * 2, 1e-6)
    for k, name in enumerate(shown):
        ax.plot(t, eeg[names.index(name)] - k * spacing, lw=0.6)
    ax.set_yticks([-k * spacing for k in range(len(shown))], shown)
    ax.set(xlabel=f"time in the window (s); the EEG lags the audio by {lag:g} s", xlim=(0, seconds),
           title=f"EEG window: participant {dataset.subjects[item['subject']]}, {eeg.shape[0]} channels × "
                 f"{eeg.shape[1]} samples at {dataset.sfreq:g} Hz ({dataset.index.units})")
    fig.tight_layout()
    return fig


# Notebook 03: the ControlNet

def plot_zero_init(check: Mapping[str, Any], sample: int = 0, channel: int = 0):
    """Three panels from :func:`~eeg2music.models.controlnet_diagnostics.zero_init_check`: ε of the base UNet, the change the zero-initialised
    ControlNet makes (exactly 0), and the change random output convolutions would make.

    Returns
    -------
    matplotlib.figure.Figure
    """

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


# Notebook 04: training

def plot_noised_latents(latent: torch.Tensor, scheduler, timesteps: Sequence[int] = (0, 100, 300, 600, 999),
                        *, seed: int = 0, channel: int = 0):
    """One latent channel at several steps of the forward process :math:`z_t = \\sqrt{\\bar\\alpha_t} z_0 + \\sqrt{1-\\bar\\alpha_t}\\epsilon`.

    Parameters
    ----------
    latent : torch.Tensor
        ``(8, frames, bins)``, one clip's latent.
    scheduler
        The backbone's noise schedule (``add_noise``, ``alphas_cumprod``).
    timesteps : sequence of int
        The steps to show (clipped to the schedule's length).
    seed : int
        Seed of the noise.
    channel : int
        Which latent channel to draw.
    """

    n_train = int(scheduler.config.num_train_timesteps)
    steps = [min(int(t), n_train - 1) for t in timesteps]
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    z0 = latent.detach().float().cpu()
    # One colour scale for all panels: ±3 covers the unit-variance noise, wider if the latent is.
    limit = max(3.0, float(z0[channel].abs().quantile(0.995)))
    fig, axes = plt.subplots(1, len(steps), figsize=(2.2 * len(steps), 3.4), sharey=True, layout="constrained")
    for ax, t in zip(np.atleast_1d(axes), steps):
        zt = scheduler.add_noise(z0[None], noise[None], torch.tensor([t]))[0]
        abar = float(scheduler.alphas_cumprod[t])
        image = ax.imshow(zt[channel].numpy(), origin="lower", aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit)
        ax.set_title(f"t = {t}\n$\\sqrt{{\\bar\\alpha_t}}$ = {math.sqrt(abar):.2f}", fontsize=9)
        ax.set_xlabel("latent bin (frequency)")
    np.atleast_1d(axes)[0].set_ylabel("latent frame (time, 40 ms)")
    fig.colorbar(image, ax=axes, shrink=0.8, label=f"channel {channel}")
    fig.suptitle("The forward (noising) process on one clip's latent")
    return fig


def plot_alignment(log: Sequence[Mapping[str, float]], chance: Mapping[str, float] | None = None):
    """InfoNCE loss and held-out retrieval accuracy over the alignment steps."""

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


def plot_training_curves(log, *, smooth: int = 10, baseline: float | None = None):
    """Training loss (raw and a moving average) and the validation losses with and without the EEG.

    Parameters
    ----------
    log : DataFrame or path-like
        ``train_log.csv`` (see :func:`read_log`).
    smooth : int
        Window of the moving average of the training loss (steps).
    baseline : float, optional
        The validation loss of the backbone alone (``eeg_evidence["val_loss_backbone_only"]``), drawn as
        a reference: a zero-initialised ControlNet computes exactly that at step 0.
    """

    frame = read_log(log) if not isinstance(log, pd.DataFrame) else log
    train_frame = frame[["step", "loss"]].assign(smoothed=frame["loss"].rolling(max(1, smooth), min_periods=1).mean())
    val = frame.dropna(subset=["val_loss"]).melt(
        id_vars="step", value_vars=["val_loss", "val_loss_eeg_zeroed"], var_name="validation", value_name="val")
    val["validation"] = val["validation"].map({"val_loss": "true EEG", "val_loss_eeg_zeroed": "EEG zeroed"})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    sns.lineplot(train_frame, x="step", y="loss", ax=axes[0], alpha=0.3, color="C0", label="per step")
    sns.lineplot(train_frame, x="step", y="smoothed", ax=axes[0], color="C0", label=f"moving average ({smooth})")
    axes[0].set(title="training loss", ylabel="MSE")
    if len(val):
        sns.lineplot(val, x="step", y="val", hue="validation", style="validation", markers=True, ax=axes[1])
    if baseline is not None:
        axes[1].axhline(baseline, color="grey", ls=":", label="backbone alone (the ControlNet at step 0)")
        axes[1].set_xlim(left=0)
        axes[1].legend()
    axes[1].set(title="validation loss (fixed windows, noise and timesteps)", ylabel="MSE")
    for ax in axes:
        ax.ticklabel_format(axis="y", useOffset=False)
    return fig


def plot_eeg_evidence(summary: Mapping[str, Any], per_window: str | os.PathLike | None = None):
    """How much the true EEG lowers the validation loss against each control, overall and by timestep.

    Parameters
    ----------
    summary : dict
        ``train_summary.json`` (its ``eeg_evidence``).
    per_window : path-like, optional
        ``val_per_window.csv``: adds the gain over the EEG-zeroed control against the diffusion timestep.
    """

    evidence = summary["eeg_evidence"]
    labels = {"eeg_zeroed": "EEG zeroed", "eeg_shuffled": "EEG of another clip", "backbone_only": "backbone alone"}
    gains = pd.DataFrame([{"control": label, "gain": evidence[f"gain_vs_{key}"], "se": evidence[f"gain_vs_{key}_se"]}
                          for key, label in labels.items() if f"gain_vs_{key}" in evidence])
    table = pd.read_csv(per_window) if per_window is not None and Path(per_window).is_file() else None
    by_timestep = table is not None and "timestep" in table
    fig, axes = plt.subplots(1, 2 if by_timestep else 1, figsize=(11 if by_timestep else 5.5, 3.8),
                             layout="constrained", squeeze=False)
    ax = axes[0, 0]
    sns.barplot(gains, x="control", y="gain", hue="control", ax=ax, palette="deep", legend=False)
    ax.errorbar(range(len(gains)), gains["gain"], yerr=1.96 * gains["se"], fmt="none", ecolor="k", capsize=4)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(title=f"loss(control) − loss(true EEG), {evidence['n_windows']} windows (95 % CI)",
           ylabel="gain (MSE; > 0: the EEG helps)", xlabel="")
    if by_timestep:
        gain = table.assign(gain=table["loss_eeg_zeroed"] - table["loss_eeg"])
        edges = np.linspace(0, max(int(gain["timestep"].max()) + 1, 5), 6).round().astype(int)
        gain["timesteps"] = pd.cut(gain["timestep"], bins=edges, right=False,
                                   labels=[f"{lo}–{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])])
        sns.barplot(gain, x="timesteps", y="gain", ax=axes[0, 1], color="C2", errorbar=("se", 1.96))
        axes[0, 1].axhline(0, color="k", lw=0.8)
        axes[0, 1].set(title="gain over the EEG-zeroed control by diffusion timestep", ylabel="gain (MSE)",
                       xlabel="timestep t")
    return fig


# Notebook 05: sampling

def plot_mel_comparison(examples: Sequence[Mapping[str, Any]], labels: Mapping[str, str], out_path: str | os.PathLike | None = None,
                        dynamic_range_db: float = 80.0):
    """True vs generated mel spectrograms, one row per example, with one shared dB colour scale.

    All panels share ``[max − dynamic_range_db, max]`` dB (the maximum over every panel), so a quieter
    or blurrier reconstruction looks quieter or blurrier, not rescaled.
    """


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


# Notebook 06: evaluation

def _tick_label(label: str) -> str:
    """A model label on two lines at its comma ("ControlNet+subject,\nmean"), so six models fit side by side."""
    return label.replace(", ", ",\n")


def plot_identification(results, labels: Mapping[str, str], embedders: Sequence[str], out_path: str | Path,
                        split: str = "test"):
    """Song-ID and segment-ID top-1 with 95 % CIs per model and embedder, against chance (dashed)."""

    rows = []
    for run, per_embedder in results.get(split, {}).items():
        for embedder in embedders:
            for metric, name in (("song_id_top1", "song-ID top-1"), ("segment_id_top1", "segment-ID top-1")):
                entry = per_embedder.get(embedder, {}).get("metrics", {}).get(metric)
                if entry is not None:
                    rows.append({"model": _tick_label(labels.get(run, run)), "embedder": embedder, "metric": name,
                                 "value": entry["value"], "low": entry["ci_low"], "high": entry["ci_high"],
                                 "chance": entry["chance"]})
    frame = pd.DataFrame(rows)
    metrics = list(dict.fromkeys(frame["metric"])) if len(frame) else []
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(5.5 * max(1, len(metrics)), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = frame[frame["metric"] == metric].reset_index(drop=True)
        sns.barplot(data=part, x="model", y="value", hue="embedder", ax=ax, errorbar=None, alpha=0.85)
        # Error bars from the bootstrap intervals, placed on the bars seaborn drew.
        for container, (_, group) in zip(ax.containers, part.groupby("embedder", sort=False)):
            for bar, (_, row) in zip(container, group.iterrows()):
                x = bar.get_x() + bar.get_width() / 2
                ax.errorbar(x, row["value"], yerr=[[row["value"] - row["low"]], [row["high"] - row["value"]]],
                            color="black", capsize=3, lw=1)
        for chance in sorted(set(part["chance"])):
            ax.axhline(chance, ls="--", color="gray", lw=1)
        ax.set_title(f"{metric} ({split}); dashed: chance")
        ax.set_ylabel("fraction of clips")
        ax.set_xlabel("")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    save_figure(fig, out_path)
    return fig


def plot_distributions(results, labels: Mapping[str, str], embedder: str, out_path: str | Path):
    """Per-clip cosine and song rank per model, test and OOD side by side (seaborn box + strip plots)."""

    rows = []
    for split, per_run in results.items():
        for run, per_embedder in per_run.items():
            clips = per_embedder.get(embedder, {}).get("per_clip")
            if not clips:
                continue
            for i in range(len(clips["cosine"])):
                rows.append({"split": split, "model": _tick_label(labels.get(run, run)), "cosine": clips["cosine"][i],
                             "segment rank": clips.get("segment_rank", [np.nan] * (i + 1))[i],
                             "song rank": clips.get("song_rank", [np.nan] * (i + 1))[i]})
    frame = pd.DataFrame(rows)
    panels = [c for c in ("cosine", "song rank", "segment rank") if c in frame and frame[c].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, column in zip(axes[0], panels):
        data = frame[frame[column].notna()]
        sns.boxplot(data=data, x="model", y=column, hue="split", ax=ax, fliersize=0, linewidth=1)
        sns.stripplot(data=data, x="model", y=column, hue="split", ax=ax, dodge=True, size=2.5, alpha=0.5,
                      palette="dark:black", legend=False)
        ax.set_xlabel("")
        ax.set_title(f"per-clip {column} ({embedder})" + (" — 1 is best" if "rank" in column else ""))
        ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    save_figure(fig, out_path)
    return fig


def plot_confusions(results, labels: Mapping[str, str], embedder: str, out_path: str | Path, split: str = "test"):
    """Song-ID confusion matrices (rows: song heard; columns: song named; row-normalised), one per model."""

    runs = [r for r, per in results.get(split, {}).items() if embedder in per and per[embedder]["n_songs"] > 1]
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(4.2 * max(1, len(runs)), 3.8), squeeze=False)
    for ax, run in zip(axes[0], runs):
        confusion = results[split][run][embedder]["song_confusion"]
        counts = np.asarray(confusion["counts"], float)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)
        songs = confusion["songs"]
        sns.heatmap(share, ax=ax, vmin=0, vmax=1, cmap="mako", square=True, cbar=ax is axes[0][-1],
                    xticklabels=songs, yticklabels=songs)
        accuracy = results[split][run][embedder]["metrics"]["song_id_top1"]["value"]
        ax.set_title(f"{labels.get(run, run)}\nsong-ID {100 * accuracy:.0f} %", fontsize=10)
        ax.set_xlabel("song named")
        ax.set_ylabel("song heard")
    fig.suptitle(f"Song identification ({split}, {embedder}); chance = 1 / {len(confusion['songs']) if runs else '?'}",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_path)
    return fig
