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
# # 03 · The EEG ControlNet: projector, subject layer and zero convolutions
#
# *Code: `eeg2music.models.projector`, `eeg2music.models.subject_layer`, `eeg2music.models.controlnet`, `eeg2music.models.controlnet_diagnostics`; figures in `eeg2music.plots`.*
#
# The backbone of notebook 00 turns noise into music; it has never seen EEG. Postolache et al. steer it
# with a **ControlNet** (Zhang et al., 2023): a trainable copy of the UNet's encoder that reads the
# noisy latent *and* the EEG, and whose features are added to the frozen UNet's skip connections. This
# notebook builds that network and looks inside it. You will see
#
# * how the **projector P** turns an EEG window (channels × samples) into a feature map the size of
#   the UNet's first layer, and how its strides follow from the sampling rate;
# * the optional **subject layer S**: one channel-mixing matrix per participant;
# * the ControlNet itself: what it copies from the UNet, the **zero convolutions**, the shape of every
#   tensor on the way, and which parameters train and which stay frozen;
# * why zero initialisation matters: at step 0 the controlled model predicts *exactly* what the base
#   model predicts, whatever the EEG;
# * the same network for the real AudioLDM2-music UNet (124-channel EEG at 1 kHz, the paper's setting),
#   built on PyTorch's `meta` device: every shape, no memory.
#
# It writes `<out_dir>/controlnet_summary.json` (plans, shapes, parameter counts) and the figure.

# %% tags=["parameters"]
backbone = ""  # backbone folder (AudioLDM2-music or tiny); empty: the default tiny backbone of notebook 00
eeg_sfreq = 125.0  # EEG sampling rate in Hz (125: the cleaned NMED-T release; 1000: the raw one)
eeg_channels = 124  # EEG channels after preprocessing (E1 … E124)
n_subjects = 20  # participants the subject layer keeps a matrix for (NMED-T has 20)
subject_cond = True  # build the per-subject layer S (False: no subject parameters at all)
out_dir = ""  # where controlnet_summary.json and the figure go; empty: outputs/03_controlnet
seed = 0  # seeds the initialisation of P and S and the example inputs
device = "auto"  # "auto", "cpu", "cuda", "cuda:N" or "mps"
smoke = False  # tiny sizes for tests (the smoke backbone, a batch of one)

# %%
from eeg2music import checks
from eeg2music.params import resolve_parameters

params = resolve_parameters("03_controlnet", globals(), checks=checks.controlnet_parameters)

# %% [markdown]
# ## 1. The backbone we steer
#
# The ControlNet is built *from* a UNet: it copies its input convolution, its timestep embedding, its
# down blocks and its mid block, weights included. We load the backbone chosen by `backbone` (the
# default tiny one is found in, or trained into, the default run folder) and freeze its UNet: in this
# method nothing of the backbone is ever trained.
#
# The UNet works on latents of shape (8 channels, 88 frames, 16 bins): 3.5 s of audio → 350 mel frames
# (hop 10 ms) padded to 352 → ÷4 by the VAE, so one latent frame covers **40 ms** (25 Hz), and 64 mel
# bins ÷4 → 16 frequency bins.

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from eeg2music.models.controlnet import EEGControlNet
from eeg2music.models.controlnet_diagnostics import (
    controlnet_summary,
    parameter_counts,
    trace_shapes,
    zero_init_check,
)
from eeg2music.models.projector import projector_plan
from eeg2music.paths import stage_dir
from eeg2music.plots import plot_zero_init
from eeg2music.run_inputs import ensure_backbone
from eeg2music.utils import resolve_device, seed_everything, write_json

seed_everything(seed)
target = resolve_device(device)
out = stage_dir("controlnet", out_dir)
out.mkdir(parents=True, exist_ok=True)

bb = ensure_backbone(backbone, smoke=smoke, seed=seed, device=str(target))
unet = bb.unet.requires_grad_(False).eval()
channels, frames, bins = bb.latent_shape
print(f"backbone: {bb.kind}; latents {tuple(bb.latent_shape)}; UNet widths {tuple(unet.config.block_out_channels)}; "
      f"{sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters (frozen)")

# %% [markdown]
# ## 2. P: from EEG samples to the UNet's first feature map
#
# The ControlNet adds the EEG to its copy of the UNet right after `conv_in`: $h = \mathrm{conv_{in}}(z_t)
# + P(\mathrm{eeg})$. So P must output exactly what `conv_in` outputs: `block_out_channels[0]` feature
# maps × 88 frames × 16 bins. P is a stack of four strided 1-D convolutions over time; the last one has
# `block_out_channels[0] × 16` channels, reshaped into feature maps × frequency bins. The paper gives the
# 1 kHz case for AudioLDM2 (124 → 256 → 512 → 1024 → 2048 channels, strides 5, 2, 2, 2; 2048 = 128 × 16).
# `projector_plan` derives the layout for any sampling rate and backbone with four rules:
#
# 1. **total stride** = samples per window ÷ latent frames, rounded: one EEG frame per 40 ms latent frame
#    (1 kHz: 3500 / 88 → 40; 125 Hz: 438 / 88 → 5);
# 2. **strides**: that number factored over the four layers, largest first (40 → 5·2·2·2; 5 → 5·1·1·1);
# 3. **widths** double from layer to layer up to `block_out_channels[0] × bins`;
# 4. **kernels** of 2 × stride + 1 samples (3 where the stride is 1), centred, overlapping their
#    neighbours; between layers GroupNorm (no batch statistics, so a window's features never depend on
#    the rest of its batch) and the UNet's SiLU; the last layer is linear.
#
# The conv stack yields ⌈samples / stride⌉ frames: 3500 / 40 = 87.5 → **88**, the half frame padded,
# just as the VAE pads 350 mel frames to 352. If a window still differs from the latent by at most one
# frame, P crops or repeats the last frame (keeping frame *k* of the EEG on latent frame *k*); a larger
# mismatch means the frame rates differ, and P resamples linearly. The table compares the rate chosen
# here with the raw data's 1 kHz.

# %%
plans = {
    f"{rate:g} Hz": projector_plan(eeg_channels, rate, 3.5, frames, bins, unet.config.block_out_channels[0])
    for rate in dict.fromkeys([eeg_sfreq, 1000.0])
}
for name, plan in plans.items():
    print(f"{name}: {plan.eeg_samples} samples → total stride {plan.total_stride} → {plan.exact_frames:g} frames "
          f"→ conv stack {plan.conv_frames} → alignment '{plan.alignment}' → {plan.latent_frames} latent frames")
display(pd.concat({name: pd.DataFrame(plan.layer_table()).set_index("layer") for name, plan in plans.items()}))

# %% [markdown]
# ## 3. S: one channel-mixing matrix per participant
#
# Heads, caps and brains differ: the same cortical source projects onto the electrodes differently in
# each participant. Following Défossez et al. (2023), the optional **subject layer** multiplies each
# window by a learned C × C matrix specific to its participant, before P. Each matrix starts as the
# identity, so the layer begins as a no-op and learns only the re-mixing the data justify. For a
# participant never seen in training (leave-one-subject-out), `allow_unknown_subject=True` adds a path
# for subject index −1: the mean of the learned matrices, or a separate learned one.
#
# With `subject_cond=False` the layer does not exist at all: the same P reads every participant's EEG.
#
# In the paper, S and P learn only through the diffusion loss, together with the ControlNet. They can
# also be trained first, on their own, to map an EEG window close to its clip's audio latent and far
# from the other clips' (a contrastive loss, as Défossez et al. decode speech): notebook 04 does that
# when `align_steps` > 0 (`eeg2music.training.alignment`), and the trained S and P then start the ControlNet.

# %% [markdown]
# ## 4. The ControlNet, tensor by tensor
#
# `EEGControlNet.from_unet` copies `conv_in`, the timestep embedding, every down block and the mid block
# of the UNet *with their weights*, adds S and P, and one **zero-initialised 1 × 1 convolution** per skip
# connection of the down path and one for the mid block. Running it on a batch shows every shape: the
# residuals it returns have exactly the shapes of the UNet skips they are added to. (The inputs are
# stand-ins: Gaussian noise for both the latent $z_t$ and the EEG, which robust scaling has put on a unit
# scale; here we study the architecture, not the data.)

# %%
controlnet = EEGControlNet.from_unet(
    unet, eeg_channels=eeg_channels, eeg_sfreq=eeg_sfreq, clip_seconds=3.5, latent_frames=frames,
    latent_bins=bins, n_subjects=n_subjects, subject_cond=subject_cond,
)
batch = 1 if smoke else 2
generator = torch.Generator().manual_seed(seed)
latents = torch.randn(batch, channels, frames, bins, generator=generator).to(target)
eeg = torch.randn(batch, eeg_channels, controlnet.plan.eeg_samples, generator=generator).to(target)
subjects = torch.arange(batch, device=target) % n_subjects
timestep = 500
shapes = trace_shapes(controlnet, latents, timestep, eeg, subjects, bb.conditioning)
display(pd.DataFrame(shapes).assign(output_shape=lambda d: d.output_shape.map(str)))

# %% [markdown]
# ## 5. What trains and what stays frozen
#
# Only the ControlNet (with S and P) is trained; the UNet it steers stays frozen. The encoder copy starts
# from the backbone's weights, so training begins from features that already describe music.

# %%
counts = parameter_counts(unet, controlnet)
display(pd.Series(counts, name="parameters").to_frame().assign(millions=lambda d: d.parameters / 1e6))

# %% [markdown]
# ## 6. Why zero initialisation keeps the base model intact
#
# Every residual passes through a 1 × 1 convolution whose weights and bias are zero, so at initialisation
# the ControlNet adds exactly 0 to the UNet: the controlled model predicts the same noise ε as the base
# model, whatever the EEG. Training therefore starts from the pretrained generator, and the first
# gradient step moves only the zero convolutions (the gradient reaching everything before them is
# multiplied by their zero weights); from the second step on, the whole ControlNet learns. For contrast,
# the right panel gives the output convolutions small random weights, as an ordinary initialisation would:
# the untrained, EEG-dependent features then perturb the generator from the first step.

# %%
check = zero_init_check(unet, controlnet, latents, timestep, eeg, subjects, bb.conditioning, seed=seed)
print(f"max |ε_controlled − ε_base| = {check['max_abs_diff_zero_init']:.3g} at initialisation; "
      f"{check['max_abs_diff_perturbed']:.3g} with random output convolutions")
assert check["max_abs_diff_zero_init"] == 0.0, "the zero-initialised ControlNet changed the base model"
fig = plot_zero_init(check)
fig.savefig(out / "zero_init.png", dpi=120)
plt.show()

# %% [markdown]
# ## 7. The real AudioLDM2-music UNet, on the `meta` device
#
# The same construction for the checkpoint the paper steers (`cvssp/audioldm2-music`), fed the raw
# NMED-T EEG: 124 channels at 1 kHz, 3.5 s windows. On PyTorch's `meta` device tensors have shapes and
# dtypes but no storage, so the full-size UNet and ControlNet are built and run in seconds, with no
# weights and no memory: a check that every shape fits before a GPU is ever rented.

# %%
from eeg2music.models.backbone import build_audioldm2_music_on_meta

real_backbone = build_audioldm2_music_on_meta()
real_unet = real_backbone.unet
real = EEGControlNet.from_unet(
    real_unet, eeg_channels=124, eeg_sfreq=1000.0, clip_seconds=3.5, latent_frames=88, latent_bins=16,
    n_subjects=20, subject_cond=subject_cond,
)
with torch.device("meta"):
    real_latents, real_eeg = torch.zeros(2, 8, 88, 16), torch.zeros(2, 124, real.plan.eeg_samples)
real_shapes = trace_shapes(real, real_latents, timestep, real_eeg, torch.tensor([0, 1], device="meta"),
                           real_backbone.conditioning)
display(pd.DataFrame(real_shapes).assign(output_shape=lambda d: d.output_shape.map(str)))
real_counts = parameter_counts(real_unet, real)
print(f"AudioLDM2-music: {real.n_residuals} skip residuals + 1 mid; ControlNet "
      f"{real_counts['controlnet_total'] / 1e6:.1f} M parameters (P {real_counts['projector'] / 1e6:.1f} M) "
      f"next to a {real_counts['unet_total'] / 1e6:.1f} M UNet")

# %% [markdown]
# ## 8. The summary
#
# Everything above, as JSON for the report and for later notebooks.

# %%
summary = {
    "backbone": {"kind": bb.kind, "latent_shape": list(bb.latent_shape), "path": backbone or "default tiny"},
    "controlnet": controlnet_summary(unet, controlnet, shapes),
    "zero_init": {k: v for k, v in check.items() if not k.startswith("eps_")},
    "audioldm2_music_meta": controlnet_summary(real_unet, real, real_shapes),
    "parameters_given": params,
}
path = write_json(out / "controlnet_summary.json", summary)
print(f"wrote {path}")

# %% [markdown]
# ## Recap
#
# In this notebook we built the EEG ControlNet of Postolache et al. on the chosen backbone: the projector
# P, whose strides follow from the sampling rate so that one EEG frame lands on each 40 ms latent frame;
# the optional subject layer S, an identity-initialised channel mixing per participant; and the trainable
# copy of the UNet encoder whose residuals enter the frozen UNet through zero convolutions. We traced
# every tensor's shape, counted what trains and what stays frozen, and saw that at initialisation the
# controlled model predicts exactly what the base model predicts. The same network fits the real
# AudioLDM2-music UNet with 1 kHz EEG. Notebook 04 trains it.
