# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (eeg2music)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · The backbone: a latent diffusion model of music
#
# *Code: `eeg2music.models.backbone`, `eeg2music.models.tiny_backbone`, `eeg2music.evaluation.backbone_quality`; figures in `eeg2music.plots`.*
#
# Postolache et al. do not train a music generator: they *steer* a pretrained one, AudioLDM2, with
# EEG. Before any EEG appears, this notebook opens that generator and checks that it models the music
# we will ask it to reconstruct. You will see
#
# * the **audio front end**: how 3.5 s of audio becomes AudioLDM2's log-mel spectrogram (and back);
# * the **VAE**: a mel spectrogram squeezed into an 8 × 88 × 16 latent and decoded again — listen to
#   what survives;
# * the **forward diffusion process**: how a latent dissolves into Gaussian noise, the path the UNet
#   learns to walk backwards;
# * **unconditional samples** from the UNet (no EEG yet), shown and played beside real clips, and a
#   distribution distance that says whether they are music of the right kind.
#
# Two faces, one interface (`eeg2music.models.backbone.Backbone`): the real **AudioLDM2-music**, when
# `backbone` points to a local diffusers folder (its weights cannot be downloaded here), or the
# **tiny backbone** — the same diffusers classes at small widths, trained on the simulator's songs.
# A tiny backbone trained with the `"shipped"` recipe comes with the package (training it takes
# longer than this notebook's budget); `retrain=True` trains one here.
#
# It writes the backbone folder (diffusers `save_pretrained`, safetensors) and
# `<out_dir>/backbone_summary.json`, plus the figures.

# %% tags=["parameters"]
data_root = ""  # NMED-T folder with the stimuli WAVs; empty: the simulated default dataset
out_dir = ""  # where the backbone folder, backbone_summary.json and figures go; empty: outputs/00_backbone
seed = 0  # seeds training, sampling and the evaluation crops
device = "auto"  # "auto", "cpu", "cuda", "cuda:N" or "mps"
smoke = False  # tiny sizes for tests: trains a very small backbone in seconds, few samples and steps
backbone = ""  # a local AudioLDM2-music folder (diffusers layout) or a backbone folder; empty: the tiny one
retrain = False  # train the tiny backbone here instead of using the shipped (or an existing) one
preset = "default"  # training recipe when retraining: "default" (minutes) or "shipped" (the shipped backbone's)
vae_steps = 0  # VAE training steps (0: the preset's)
unet_steps = 0  # UNet training steps (0: the preset's)
n_samples = 128  # unconditional samples drawn for the evaluation (and the size of every compared real set)
sample_steps = 50  # DDIM steps for those samples
timing_steps = [20, 200]  # DDIM step counts whose sampling time per clip is measured
n_listen = 3  # clips rendered as audio players in each listening section

# %%
from eeg2music.params import resolve_parameters

params = resolve_parameters("00_backbone", globals(), choices={"preset": ("default", "shipped")})

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from eeg2music.audio import CLIP_SAMPLES, SAMPLE_RATE, player, waveform_to_mel
from eeg2music.data.song_audio import SongSplit, audio_fingerprint, load_song_audio
from eeg2music.evaluation.backbone_quality import evaluate_backbone, time_sampling
from eeg2music.models.backbone import TRAINING_FILE, diffusion_target, load_backbone
from eeg2music.models.tiny_backbone import (
    TinyTrainingSettings,
    backbone_provenance,
    describe_provenance,
    prepare_backbone_folder,
)
from eeg2music.paths import stage_dir
from eeg2music.plots import plot_forward_process, plot_levels, plot_mels
from eeg2music.run_inputs import ensure_dataset
from eeg2music.utils import read_json, resolve_device, seed_everything, write_json

seed_everything(seed)
out_path = stage_dir("backbone", out_dir)
out_path.mkdir(parents=True, exist_ok=True)
torch_device = resolve_device(device)
if smoke:  # the smallest run that still exercises every step
    n_samples, sample_steps, timing_steps, n_listen = min(n_samples, 4), min(sample_steps, 4), [2, 5], 1
print(f"device: {torch_device}; outputs → {out_path}")

# %% [markdown]
# ## 1. From sound to a mel spectrogram
#
# AudioLDM2 never sees a waveform. Its front end, which `eeg2music.audio` reproduces exactly, turns
# 16 kHz audio into a **log-mel spectrogram**: each clip is normalised (mean removed, peak 0.5), cut
# into 1024-sample Hann windows every 160 samples (10 ms → 100 frames per second), and each window's
# magnitude spectrum is summed into 64 mel bands between 0 and 8 kHz (a scale spaced like pitch
# perception: fine at low frequencies, coarse at high ones), then compressed with `log(max(x, 1e-5))`.
# A 3.5 s clip gives 350 frames, padded to 352 so that the VAE can halve time twice.
#
# The music is the stimulus audio of the dataset: the simulator's ten songs by default. The last
# seconds of every song are **held out**: the backbone never trains on them, we use them to test it.

# %%
data_path = ensure_dataset(data_root, smoke=smoke, seed=seed)
songs = load_song_audio(data_path)
holdout = TinyTrainingSettings.preset("smoke" if smoke else preset).holdout_seconds
split = SongSplit.from_audio(songs, holdout_seconds=holdout)
heldout_clips, heldout_songs = split.heldout_clips()
print(f"{len(songs)} songs, {sum(map(len, songs.values())) / SAMPLE_RATE:.0f} s of audio; "
      f"last {holdout} s of each held out → {len(heldout_clips)} clips of 3.5 s")

# %%
example = heldout_clips[0]
example_mel = waveform_to_mel(example)
fig, axes = plt.subplots(2, 1, figsize=(9, 4.5), sharex=True)
axes[0].plot(np.arange(CLIP_SAMPLES) / SAMPLE_RATE, example, lw=0.3)
axes[0].set(ylabel="amplitude", title=f"song {heldout_songs[0]}: 3.5 s at 16 kHz")
axes[1].imshow(example_mel[0, 0, :350].T, origin="lower", aspect="auto", cmap="magma", extent=(0, 3.5, 0, 64))
axes[1].set(xlabel="time (s)", ylabel="mel bin", title=f"log-mel {tuple(example_mel.shape)}")
fig.tight_layout()
fig.savefig(out_path / "mel_example.png", dpi=110)
display(player(example))

# %% [markdown]
# ## 2. The backbone
#
# A latent diffusion model has four parts, all diffusers / transformers classes:
#
# * a **VAE** (`AutoencoderKL`) that compresses the mel 4× in time and in frequency into 8 channels;
# * a **UNet** (`AudioLDM2UNet2DConditionModel`) that predicts the noise in a noisy latent, with
#   self-attention over the whole clip and cross-attention to a constant "text" embedding (the
#   paper ignores text: one fixed conditioning, computed once);
# * a **noise schedule** (`DDIMScheduler`, AudioLDM2's β's; section 4 says what the tiny one changes);
# * a **vocoder** from mel to waveform: AudioLDM2's HiFi-GAN, or Griffin-Lim for the tiny backbone.
#
# With `backbone` empty we use the tiny one. Unless `retrain` (or `smoke`) is set, the folder already
# in the run folder or the shipped one is used; training records its seed, settings and timings in
# `training.json` beside the weights.

# %%
overrides = {k: v for k, v in {"vae_steps": vae_steps, "unet_steps": unet_steps}.items() if v > 0}
settings = TinyTrainingSettings.preset("smoke" if smoke else preset, **overrides)
command = (f"papermill 00_backbone.ipynb out.ipynb -p seed {seed} -p retrain true -p preset {preset}"
           + "".join(f" -p {k} {v}" for k, v in overrides.items()) + (" -p smoke true" if smoke else ""))
backbone_path, source = prepare_backbone_folder(
    backbone, out_path / ("backbone_smoke" if smoke else "backbone"), data_path, smoke=smoke, seed=seed,
    device=device, retrain=retrain, settings=settings, command=command,
)
model = load_backbone(backbone_path, device=torch_device)
training = read_json(backbone_path / TRAINING_FILE) if (backbone_path / TRAINING_FILE).is_file() else None
print(f"{source}: {describe_provenance(backbone_provenance(backbone_path))}\n{model}")
if training and training["data"]["fingerprint"] != audio_fingerprint(songs):
    print("note: this backbone was trained on other audio than this dataset's; set retrain=True to train on it")

# %%
counts = model.parameter_counts()
display(Markdown("\n".join([
    "| component | class | parameters |", "|---|---|---|",
    *[f"| {name} | `{type(getattr(model, name)).__name__}` | {count / 1e6:.2f} M |" for name, count in counts.items()],
    f"| vocoder | {'HiFi-GAN' if model.vocoder is not None else 'Griffin-Lim (fast, 32 iterations)'} | |",
    f"\nLatent of a 3.5 s clip: **{model.latent_shape}** (channels, time, frequency); UNet widths "
    f"{tuple(model.unet.config.block_out_channels)}; VAE scaling factor {model.scaling_factor:.3f}.",
])))

# %% [markdown]
# ## 3. The VAE round trip
#
# The diffusion model lives in the VAE's latent space, so the VAE bounds what any reconstruction can
# sound like. We encode held-out clips (the posterior mean, × the scaling factor that gives the
# latents unit variance) and decode them. Two numbers: the mean absolute error of the log-mel (natural
# log units: 0.1 ≈ 10 % in magnitude) and a spectral SNR, `10 log10(Σ M² / Σ (M - M̂)²)` on the mel
# magnitudes. Then listen: the original, the original through the vocoder alone (Griffin-Lim's own
# artefacts), and the VAE reconstruction.

# %%
start = time.perf_counter()
evaluation = evaluate_backbone(model, split, n_samples=n_samples, num_inference_steps=sample_steps, seed=seed)
evaluation_seconds = time.perf_counter() - start
metrics = evaluation.metrics
print("held-out reconstruction:", {k: round(v, 3) for k, v in metrics["reconstruction"].items()})
k = min(4, len(evaluation.real_mels))
fig = plot_mels(torch.cat([evaluation.real_mels[:k], evaluation.reconstructed_mels[:k]]),
                   [f"song {s}: original" for s in heldout_songs[:k]] + ["VAE reconstruction"] * k, columns=k,
                   path=out_path / "vae_round_trip.png")

# %%
for i in range(min(n_listen, len(heldout_clips))):
    display(Markdown(f"**song {heldout_songs[i]}** — original · vocoder only · VAE + vocoder"))
    mel = evaluation.real_mels[i : i + 1]
    for wave in (heldout_clips[i], model.mel_to_wave(mel)[0], model.mel_to_wave(evaluation.reconstructed_mels[i : i + 1])[0]):
        display(player(wave))

# %% [markdown]
# ## 4. The forward diffusion process, and what the UNet learns
#
# Training a diffusion model needs no labels: take a clean latent `z_0`, pick a step `t` out of 1000,
# mix in Gaussian noise, `z_t = √ᾱ_t · z_0 + √(1 − ᾱ_t) · ε`, and ask the UNet for a target it can
# recover `z_0` from. The schedule ᾱ_t (AudioLDM2's "scaled linear" β's) decides how fast the
# signal-to-noise ratio falls. At sampling time the UNet walks this path backwards from pure noise;
# DDIM takes large strides along it (20 to 200 steps instead of 1000).

# %%
fig = plot_forward_process(model, model.encode(evaluation.real_mels[:1]), seed=seed,
                              path=out_path / "forward_process.png")

# %% [markdown]
# AudioLDM2 predicts the noise `ε`. Then the clean latent a sampling step aims at is
# `ẑ_0 = (z_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t`: at the noisiest steps `√ᾱ_t` is about 0.01, so any error in
# `ε̂` comes back a hundred times larger. A big UNet can afford that; a small one cannot — the
# first tiny backbone, trained on `ε`, drew latents twice as wide as real ones. The tiny backbone
# therefore predicts the **velocity** `v = √ᾱ_t·ε − √(1−ᾱ_t)·z_0` (≈ −`z_0` at high noise: the
# model is asked for the music, not for the noise it was just given), with the β's rescaled so
# that the last step is pure noise (zero terminal SNR), as at sampling time. This is its loss on
# a batch of real latents, written out:

# %%
z0 = model.encode(evaluation.reference_mels[:8].to(model.device))
noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed)).to(z0)
t = torch.linspace(0, model.scheduler.config.num_train_timesteps - 1, len(z0)).long().to(z0.device)
z_t = model.scheduler.add_noise(z0, noise, t)                      # the forward process
target = diffusion_target(model.scheduler, z0, noise, t)        # ε, or v for the tiny backbone
prediction = model.unet(z_t, t, **model.unet_conditioning(len(z0)), return_dict=False)[0]
per_step = (prediction - target).pow(2).mean(dim=(1, 2, 3))
print(f"prediction type {model.scheduler.config.prediction_type!r}; loss per t:",
      {int(step): round(float(loss), 4) for step, loss in zip(t, per_step)})

# %% [markdown]
# ## 5. Unconditional samples: is it music of the right kind?
#
# Now the backbone alone, without EEG: `n_samples` latents drawn from noise with DDIM, decoded, shown
# beside real clips. A listener should hear the simulator's instruments, tempi and harmony; the
# spectrogram should show its harmonic lines and drum onsets.

# %%
k = min(4, len(evaluation.sample_mels), len(evaluation.reference_mels))
fig = plot_mels(torch.cat([evaluation.reference_mels[:k], evaluation.sample_mels[:k]]),
                   [f"real crop {i}" for i in range(k)] + [f"sample {i}" for i in range(k)],
                   columns=k, path=out_path / "samples_vs_real.png")
for i in range(min(n_listen, len(evaluation.sample_latents))):
    display(player(model.mel_to_wave(evaluation.sample_mels[i : i + 1])[0]))

# %% [markdown]
# ### Distribution distances
#
# Listening convinces; a number compares. We fit a Gaussian to each set of clips and compute the
# **Fréchet distance** to a set of real training crops (the distance FAD uses), on two feature sets
# so that neither can be matched by accident: the mel's mean and spread over time in 8 mel bands
# (spectral balance and dynamics, after the decoder), and each latent channel's mean and spread
# (what the UNet itself makes). The floor is a second, independent set of real crops of the same
# size: we report every distance **over that floor** (1 = as close as real clips are to each
# other). "Gaussian latents" decodes noise without the UNet — what the UNet adds is the gap
# between that row and the samples; white noise is the ceiling.

# %%
frechet = metrics["frechet"]
rows = ["real_vs_real", "samples", "gaussian_latents", "white_noise", "heldout"]
display(Markdown("\n".join(
    ["| compared with real training crops | mel statistics | ÷ floor | latent statistics | ÷ floor |", "|---|---|---|---|---|"]
    + [f"| {row.replace('_', ' ')} | " + " | ".join(
        f"{frechet[f].get(row, float('nan')):.3f} | {frechet[f].get(row, float('nan')) / frechet[f]['real_vs_real']:.2f}"
        for f in ("mel_statistics", "latent_statistics")) + " |" for row in rows])))

# %% [markdown]
# The same question channel by channel, and in decibels: are the sampled latents as wide as real
# ones, and are the samples as loud, with the same balance from bass to treble?

# %%
latent_table = pd.DataFrame({k: metrics["latents"][k] for k in
                             ("real_mean", "sample_mean", "real_std", "sample_std", "std_ratio")}).round(3)
latent_table.index.name = "latent channel"
display(latent_table.T)
loud = metrics["loudness"]
print(f"mel level: real {loud['real_mel_level_db']:.1f} dB, samples {loud['sample_mel_level_db']:.1f} dB; "
      f"vocoded RMS: real {loud['real_vocoded_rms_dbfs']:.1f} dBFS, samples {loud['sample_vocoded_rms_dbfs']:.1f} dBFS; "
      f"largest per-band difference {loud['max_band_difference_db']:.1f} dB")
fig = plot_levels(metrics, path=out_path / "levels.png")

# %% [markdown]
# Last, a song classifier (logistic regression on real clips' per-bin mel statistics) says whether
# the samples sound like *one* of the songs.

# %%
classifier = metrics["song_classifier"]
print(f"song classifier: held-out accuracy {classifier['heldout_accuracy']:.2f} (chance {classifier['chance']:.2f}); "
      f"samples assigned with p ≥ 0.5: {classifier['samples_confident_fraction']:.0%} "
      f"(mean max p {classifier['samples_mean_max_probability']:.2f}; noise {classifier['noise_mean_max_probability']:.2f}); "
      f"per song: {classifier['samples_per_song']}")

# %% [markdown]
# ## 6. Cost of a sample
#
# The EEG decoding of notebooks 04–06 samples one clip per EEG window, so the sampler's cost matters.
# We time noise → waveform for one clip at the step counts in `timing_steps` (the paper uses 200
# DDIM steps).

# %%
timings = time_sampling(model, timing_steps, seed=seed)
print({k: round(v, 2) for k, v in timings.items()})

# %%
summary = {
    "kind": model.kind,
    "source": source,
    "backbone_dir": str(backbone_path),
    "parameters": counts,
    "latent_shape": list(model.latent_shape),  # (channels, time, frequency) of a 3.5 s clip
    "clip_seconds": 3.5,
    "unet_block_out_channels": list(model.unet.config.block_out_channels),
    "scaling_factor": model.scaling_factor,
    "reconstruction_heldout": metrics["reconstruction"],
    "frechet": frechet,
    "frechet_features": metrics["frechet_features"],
    "latents": metrics["latents"],
    "loudness": metrics["loudness"],
    "scheduler": metrics["scheduler"],
    "provenance": backbone_provenance(backbone_path),
    "song_classifier": classifier,
    "n_samples": n_samples,
    "sample_steps": sample_steps,
    "sampling_seconds_per_clip": timings,
    "evaluation_seconds": evaluation_seconds,
    "training": None if training is None else {
        "seconds": training["timing_seconds"], "settings": training["settings"], "seed": training["seed"],
        "command": training["command"], "data_fingerprint": training["data"]["fingerprint"],
        "device": training["device"], "torch_threads": training["torch_threads"],
    },
    "data_root": str(data_path),
    "data_fingerprint": audio_fingerprint(songs),
    "device": str(torch_device),
    "parameters_run": params,
}
write_json(out_path / "backbone_summary.json", summary)
print(f"wrote {out_path / 'backbone_summary.json'}")

# %% [markdown]
# ## Recap
#
# In this notebook we opened the generator the rest of the project steers. Audio becomes AudioLDM2's
# log-mel spectrogram (100 frames/s, 64 mel bands), the VAE compresses a 3.5 s clip into an
# 8 × 88 × 16 latent, and the UNet turns Gaussian noise into such latents step by step, conditioned
# on nothing but a constant embedding. We measured how much of a held-out clip survives the VAE, saw
# the forward process that defines training and the loss the UNet learns (v-prediction for the tiny
# backbone, because ε-prediction amplifies a small UNet's errors at high noise), and checked — by ear,
# by eye, with Fréchet distances on mel and on latent statistics over the real-vs-real floor, and
# with the latents' spread and the samples' loudness per band — that unconditional samples are
# music of the simulator's kind and not noise. Notebook 03 builds the EEG ControlNet on this UNet; notebook 04 trains it.
