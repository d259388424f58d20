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
# # 04 · Training the EEG ControlNet and the ConvNet baseline
#
# *Code: `eeg2music.training` (`config`, `data`, `objectives`, `alignment`, `loop`), `eeg2music.models.model_folder`; figures in `eeg2music.plots`.*
#
# The backbone of notebook 00 generates music from noise; it has never seen EEG. Here we teach a
# **ControlNet** (notebook 03) to steer it with the EEG recorded while a participant listened to a clip,
# as Postolache et al. do, and we train the **ConvNet baseline**, which maps the EEG to the audio latent
# directly. You will see
#
# * what the training examples are: 3.5 s EEG windows paired with the latents of the audio clips;
# * the objective: ε-prediction on noised latents for the ControlNet, plain regression for the ConvNet;
# * how training runs (HF `accelerate`, the same loop on one CPU or many GPUs; checkpoints that resume
#   bit for bit);
# * a first test of whether the model uses the EEG at all: its validation loss against the same model
#   with the EEG zeroed, or with the EEG of another clip.
#
# It writes `<out_dir>/<run_name>/`: `model/` (what notebooks 05–06 load), `checkpoints/`,
# `train_log.csv`, `train_summary.json`, `val_per_window.csv` and the figures. Run it once per model:
# `-p model controlnet -p subject_cond true` (and `false`), then `-p model convnet`.

# %% tags=["parameters"]
subject_cond = True  # per-subject channel-mixing layer on the EEG (the paper's optional subject conditioning)
model = "controlnet"  # "controlnet" (the paper's model) or "convnet" (the direct-regression baseline)
backbone = ""  # backbone folder (AudioLDM2-music or tiny); empty: the default tiny backbone
preset = "auto"  # settings left at None: "paper", "demo" or "smoke"; "auto": paper for an AudioLDM2 backbone, demo for the tiny one
steps = None  # optimiser steps; None: the preset's (ControlNet 200, ConvNet 400; smoke 6)
batch_size = None  # EEG windows per step; None: the preset's (ControlNet 8, ConvNet 16; smoke 2 / 4)
lr = None  # AdamW learning rate; None: the preset's (paper 1e-4; demo 1e-3, for the tiny backbone)
control_min_timestep = None  # ControlNet trains and acts at diffusion steps ≥ this; None: the preset's (0, every step)
timestep_sampling = None  # how training draws diffusion steps: "uniform" (the paper's) or "cubic" (biased to high noise); None: the preset's (paper uniform, demo cubic)
align_steps = 0  # ControlNet: steps of contrastive EEG-audio pre-training of the subject layer and P first; 0: the paper's P trained from scratch
align_batch_size = 64  # windows per contrastive step (more windows, more negatives)
resume = False  # continue from the run's last complete checkpoint instead of starting afresh
run_dir = ""  # notebook 02's output folder or a cache; empty: the default run folder's (built if missing)
run_name = ""  # run folder name; empty: controlnet_subject, controlnet or convnet
out_dir = ""  # folder holding the run folders; empty: outputs/04_train
data_root = ""  # NMED-T folder, read only to build a missing cache; empty: the simulator
stimuli_dir = ""  # folder with the stimulus WAVs; empty: the one notebook 02 used, else data_root or data_root/stimuli
seed = 0  # seeds the initialisation, the data order and every noise draw
device = "auto"  # "auto", "cpu", "cuda", "cuda:N" or "mps"
smoke = False  # tiny sizes for tests: a few steps on the smoke dataset

# %%
from eeg2music import checks
from eeg2music.params import resolve_parameters
from eeg2music.training.config import PRESET_NAMES

params = resolve_parameters("04_train", globals(), choices={"model": ("controlnet", "convnet"), "preset": PRESET_NAMES},
                            checks=checks.train_parameters)

# %% [markdown]
# ## 1. The training examples
#
# Notebook 02 cut every recording into **windows**: participant × song × 3.5 s chunk, the EEG of the
# chunk (124 channels) paired with the audio clip the participant heard. Chunks of each training song
# are split into train, validation and test ranges; one song is held out whole (out of distribution)
# and is never seen here.
#
# The models never see the waveform. Their target is the clip's **latent** $z_0$: the backbone's VAE
# encoding of its log-mel spectrogram, an array of 8 channels × 88 frames (40 ms each) × 16 frequency
# bins. Every participant heard the same clip, so each (song, chunk) is encoded **once** and cached;
# the windows of 20 participants share it. The cell below finds (or builds) the preprocessed cache and
# the backbone, and encodes the clips.

# %%
import json

import numpy as np
import pandas as pd
from IPython.display import display

from eeg2music.run_inputs import ensure_backbone
from eeg2music.training.config import TrainConfig
from eeg2music.training.data import load_training_data
from eeg2music.utils import resolve_device

cfg = TrainConfig.from_overrides({k: params[k] for k in (
    "model", "subject_cond", "backbone", "preset", "steps", "batch_size", "lr", "control_min_timestep",
    "timestep_sampling", "align_steps",
    "align_batch_size", "resume", "run_dir", "run_name", "out_dir", "data_root", "stimuli_dir", "seed", "device",
    "smoke")}).resolved()
target = resolve_device(device)
backbone_model = ensure_backbone(cfg.backbone, smoke=smoke, seed=seed, device=str(target))
data = load_training_data(cfg, backbone_model)
run_folder = cfg.run_folder()
print(f"EEG windows: {data.eeg_channels} channels × {data.eeg_samples} samples at {data.eeg_sfreq:g} Hz, "
      f"{data.n_subjects} participants; data: {data.info['source']}; run folder: {run_folder}")
display(pd.DataFrame({"windows": data.info["windows"], "clips (song, chunk)": data.info["clips"]}))

# %% [markdown]
# ## 2. The objective
#
# **ControlNet.** The backbone was trained to undo the *forward process*, which mixes a clean latent
# with Gaussian noise at step $t$ of a fixed schedule $\bar\alpha_t$ (from 1 at $t=0$ to ≈ 0 at
# $t=T-1$):
#
# $$z_t = \sqrt{\bar\alpha_t}\,z_0 + \sqrt{1-\bar\alpha_t}\,\epsilon, \qquad \epsilon \sim \mathcal N(0, I).$$
#
# Its UNet $\epsilon_\theta(z_t, t, c)$ predicts the noise $\epsilon$ (here $c$ is the constant "text"
# conditioning, which the paper ignores) — AudioLDM2 does; the tiny backbone predicts the velocity
# $v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,z_0$ instead (notebook 00 says why), and the
# loss below is the same with $v$ in place of $\epsilon$. The ControlNet reads the EEG $x$ of participant $s$ through
# the subject layer $S_s$ and the projector $P$, and adds residuals to the frozen UNet's skip
# connections. Only its parameters $\phi$ are trained, with the backbone's own loss:
#
# $$\mathcal L(\phi) = \mathbb E_{(z_0,\,x,\,s),\ t \sim \mathcal U\{0,\dots,T-1\},\ \epsilon}\
#   \big\lVert \epsilon - \epsilon_{\theta,\phi}\big(z_t, t, c, P(S_s\,x)\big) \big\rVert_2^2 .$$
#
# At a large $t$ the noisy latent says little about the clip, and the EEG is the only hint of what to
# denoise towards; at a small $t$ the latent itself gives the answer away. The picture shows one
# clip's latent (one channel) along the forward process.
#
# That asymmetry matters for a short run. Predicting $\epsilon$, the loss values a better guess of the
# clean latent by the signal-to-noise ratio $\bar\alpha_t/(1-\bar\alpha_t)$, which is small exactly where the
# EEG is informative; with $t$ drawn uniformly, the EEG's share of the gradient drowns in the noise of a
# few hundred steps. So on the tiny backbone $t$ is drawn **cubic**, $t = \lfloor(1-u^3)\,T\rfloor$ with
# $u \sim \mathcal U(0, 1)$, as T2I-Adapter trains its adapters: 4 draws in 5 land in the noisier half,
# where the EEG decides what the clip becomes, and the ControlNet still sees (and later steers) the
# low-noise steps where the backbone fills in the details. The paper's uniform draw is
# `timestep_sampling="uniform"` (the default for AudioLDM2); `control_min_timestep` can in addition keep
# the ControlNet out of the steps below it altogether.
#
# **ConvNet baseline.** No noise, no backbone in the loop: a convolutional network $f_\psi$ regresses
# the latent from the EEG, $\mathcal L(\psi) = \mathbb E\,\lVert z_0 - f_\psi(S_s\,x)\rVert_2^2$. Its
# output is decoded by the same VAE and vocoder, so the comparison isolates the model. A regression
# predicts the *average* of what fits the EEG: expect blurred spectrograms.

# %%
import matplotlib.pyplot as plt

from eeg2music.plots import plot_noised_latents

latent = data.latents.latents[0]
fig = plot_noised_latents(latent, backbone_model.scheduler, seed=seed)
run_folder.mkdir(parents=True, exist_ok=True)
fig.savefig(run_folder / "noised_latents.png", dpi=120)
plt.show()

# %% [markdown]
# Here is that loss for one batch, written out with a freshly built ControlNet (its zero convolutions
# make it exactly the backbone's loss): draw $t$ and $\epsilon$, noise the latents, run the frozen
# UNet steered by the ControlNet, compare with the target.

# %%
import torch

from eeg2music.models.backbone import diffusion_target
from eeg2music.models.controlnet import controlled_noise_prediction
from eeg2music.training.loop import build_model

batch = [data.train[i] for i in range(4)]
eeg = torch.stack([item["eeg"] for item in batch]).float()
subject = torch.tensor([item["subject"] for item in batch])
z0 = data.latents.lookup([item["song"] for item in batch], [item["chunk"] for item in batch])
if cfg.model == "controlnet":
    fresh = build_model(cfg, backbone_model, data).cpu()
    generator = torch.Generator().manual_seed(seed)
    T, u = backbone_model.scheduler.config.num_train_timesteps, torch.rand(len(z0), generator=generator)
    t = ((1 - u**3) * T).long() if cfg.timestep_sampling == "cubic" else (u * T).long()  # the run's draw of t
    noise = torch.randn(z0.shape, generator=generator)
    z_t = backbone_model.scheduler.add_noise(z0, noise, t)
    with torch.no_grad():
        prediction = controlled_noise_prediction(backbone_model.unet.cpu(), fresh, z_t, t, eeg, subject,
                                                 backbone_model.unet_conditioning(len(z0)))
    loss = (prediction - diffusion_target(backbone_model.scheduler, z0, noise, t)).pow(2).mean()
    print(f"t = {t.tolist()}: loss {loss:.4f} (the backbone alone, since the zero convolutions output 0)")

# %% [markdown]
# ### Aligning the EEG encoder to the audio first (optional)
#
# That loss tells $S$ and $P$ little at first: the zero convolutions must learn *that* the EEG
# matters before $P$ can learn *what* in it matters. With `align_steps` > 0, $S$ and $P$ are first
# trained on their own (`eeg2music.training.alignment`), with a small head each for the EEG and for the clip's
# latent, so that an EEG window's embedding is closer (in cosine) to its own clip's than to the other
# clips' of the batch — the contrastive InfoNCE loss of CLIP, as Défossez et al. (2023) use to decode
# speech from MEG/EEG:
#
# $$\mathcal L_{\text{NCE}} = -\frac1B\sum_i \log \frac{\exp(\tau\,\langle e_i, a_i\rangle)}{\sum_j \exp(\tau\,\langle e_i, a_j\rangle)}$$
#
# (both directions; windows of the same clip heard by different participants count as positives of each
# other). The trained $S$ and $P$ then start the ControlNet. `align_steps=0` keeps the paper's setting.

# %%
from eeg2music.models.aligner import build_aligner_for

if cfg.model == "controlnet":
    aligner = build_aligner_for(fresh, z0.shape[1], subject_cond=cfg.subject_cond, n_subjects=data.n_subjects)
    clip_ids = torch.tensor([item["song"] * 1000 + item["chunk"] for item in batch])
    with torch.no_grad():
        print(f"InfoNCE of an untrained aligner on {len(batch)} windows: "
              f"{aligner.loss(eeg, subject, z0, clip_ids):.3f} (log {len(batch)} = {np.log(len(batch)):.3f} for uniform scores)")

# %% [markdown]
# ## 3. Training
#
# One loop, `eeg2music.training.loop.train`, runs here, from the command line
# (`python -m eeg2music.train --model controlnet --subject_cond true`) and on several GPUs
# (`accelerate launch -m eeg2music.train …`). It uses AdamW with the paper's settings (betas
# (0.95, 0.999), ε $10^{-6}$, weight decay $10^{-3}$, gradient clipping at 1), bf16 mixed precision on
# a GPU and float32 on a CPU; the backbone stays frozen in eval mode. The learning rate is the paper's
# $10^{-4}$ for AudioLDM2, whose ControlNet trains for many thousands of steps. The tiny backbone gets
# $10^{-3}$: this demo trains for a few hundred steps on a CPU, and at $10^{-4}$ the zero convolutions
# hardly leave zero in that time (on the simulator: no significant gain over the EEG-zeroed control
# after 300 steps at $10^{-4}$, a gain of about 4 standard errors after 200 steps at $10^{-3}$).
#
# Every batch and every noise draw is a function of the seed and the step number, and checkpoints
# (every `checkpoint_every` steps, written to a temporary folder and then renamed) hold the weights,
# the optimiser's moments, the learning-rate schedule and the random states. A run stopped at any
# point and restarted with `resume=True` therefore ends with the **same weights, bit for bit** (on a
# CPU) as a run that was never interrupted.

# %%
from eeg2music.training.loop import train

result = train(cfg, backbone=backbone_model, data=data)
summary = result.summary
print(json.dumps({"learning_rate": summary["config"]["lr"], **{k: summary[k] for k in (
    "steps", "epochs", "final_train_loss", "final_val_loss", "train_seconds", "samples_per_second", "device")}}, indent=1))

# %% [markdown]
# ## 4. Loss curves
#
# The training loss is noisy: each step sees a few windows at random timesteps, and the loss depends
# strongly on $t$. The validation loss is computed on fixed windows with fixed noise and timesteps
# (spread evenly over $0 \dots T-1$), so successive values are comparable. Both are mean squared errors
# in latent units. For the ControlNet, the dotted line is the backbone alone: thanks to the zero
# convolutions, that is exactly where training starts.

# %%
from eeg2music.plots import plot_alignment

if summary.get("alignment"):
    retrieval = summary["alignment"]["retrieval"]
    fig = plot_alignment(summary["alignment"]["log"], {"segment chance": retrieval["segment_chance"],
                                                        "song chance": retrieval["song_chance"]})
    fig.savefig(run_folder / "alignment.png", dpi=120)
    plt.show()
    print(f"encoder-only retrieval on the validation windows: segment top-1 {retrieval['segment_top1']:.0%} "
          f"(chance {retrieval['segment_chance']:.0%}), song {retrieval['song_top1']:.0%} "
          f"(chance {retrieval['song_chance']:.0%})")

# %%
from eeg2music.plots import plot_training_curves

fig = plot_training_curves(result.log_path, smooth=max(1, cfg.steps // 20),
                           baseline=summary["eeg_evidence"].get("val_loss_backbone_only"))
fig.savefig(run_folder / "loss_curves.png", dpi=120)
plt.show()

# %% [markdown]
# ## 5. Does the model use the EEG?
#
# A lower loss alone does not show that: a ControlNet could learn to improve the backbone on this
# music whatever the EEG says. So we evaluate the trained model on the same validation windows, noise
# and timesteps with
#
# * the **true EEG**;
# * the **EEG zeroed** — zero EEG is unlike any real window, though, so a model can
#   do worse with it merely because it is unusual;
# * the **EEG of another clip** (and its participant) — the stricter control: a realistic input that
#   carries the wrong information;
# * for the ControlNet, the **backbone alone** (no ControlNet).
#
# Gains are paired differences, window by window (positive: the true EEG helps), with their
# standard errors. The right panel shows where in the diffusion the EEG helps.

# %%
from eeg2music.plots import plot_eeg_evidence

evidence = summary["eeg_evidence"]
display(pd.Series(evidence).to_frame("value"))
fig = plot_eeg_evidence(summary, run_folder / "val_per_window.csv")
fig.savefig(run_folder / "eeg_evidence.png", dpi=120)
plt.show()
verdict = "below" if evidence["eeg_beats_zeroed"] else "NOT below"
print(f"validation loss with the true EEG {evidence['val_loss']:.5f} is {verdict} the EEG-zeroed "
      f"{evidence['val_loss_eeg_zeroed']:.5f} (gain {evidence['gain_vs_eeg_zeroed']:+.5f} "
      f"± {evidence['gain_vs_eeg_zeroed_se']:.5f} s.e.)")

# %% [markdown]
# ## 6. The model folder
#
# `model/` holds `eeg2music_model.json` (the model kind, `subject_cond`, the backbone, the data
# configuration — cache, sampling rate, channels, participants, window spec — and the training
# configuration) and the weights in diffusers' `save_pretrained` layout (safetensors). Notebooks 05
# and 06 load every model the same way, with `load_trained_model`. The unconditional baseline (the
# backbone alone) needs no training; it is registered here too, so the later notebooks find all four.

# %%
from eeg2music.models.model_folder import load_trained_model, register_unconditional

loaded = load_trained_model(result.model_dir, device="cpu")
unconditional_dir = register_unconditional(cfg.out_dir, data.backbone_path, data=data.info, smoke=smoke)
print(f"{loaded.kind} (subject_cond={loaded.subject_cond}) → {loaded.path}")
print(f"unconditional baseline registered → {unconditional_dir}")
print("checkpoints:", sorted(p.name for p in (run_folder / "checkpoints").iterdir() if not p.name.startswith(".")))

# %% [markdown]
# ## Recap
#
# In this notebook we trained the decoder of EEG to music: the windows of 3.5 s of EEG paired with the latents
# of their audio clips (encoded once per clip and shared by all participants), the ε-prediction loss through
# the frozen backbone for the ControlNet, on timesteps drawn uniformly as in the paper or biased to high noise
# (`timestep_sampling`), and a latent regression for the ConvNet baseline, with one `accelerate` loop whose
# checkpoints resume bit for bit. We compared the validation loss with the true EEG against the same model
# with the EEG zeroed and with the EEG of another clip, the first evidence of whether the model uses the EEG,
# and we saved a model folder that notebooks 05 (sampling) and 06 (evaluation) load. Next: notebook 05
# generates music from the test EEG with every model.
