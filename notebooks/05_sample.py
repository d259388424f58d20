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
# # 05 · Sampling: music reconstructed from EEG, by every model
#
# *Code: `eeg2music.sampling.pipeline`, `eeg2music.sampling.inputs`, `eeg2music.sampling.clips`; figures in `eeg2music.plots`.*
#
# Notebook 04 trained the decoders. Here we use them: for EEG windows they never saw in training — the
# held-out **test chunks** of the training songs and the whole **out-of-distribution song** — every model
# generates the 3.5 s of music it thinks the participant was hearing. You will see
#
# * how sampling works for each model: the ControlNet denoises random latents while reading the EEG;
#   the ConvNet baseline decodes its regressed latent directly; the unconditional backbone ignores the EEG;
# * the two samplers: **DDIM**, which the paper uses with 200 steps, and **DPM-Solver++**, a higher-order
#   solver of the same equation that needs about 20;
# * why every clip gets its own random seed, so that results reproduce and do not depend on batching;
# * true and generated mel spectrograms side by side, and players to listen.
#
# It writes `<out_dir>/wav/` (true and generated clips, 16 kHz WAV), `samples.json` (what notebook 06
# evaluates) and `mel_comparison.png`.

# %% tags=["parameters"]
models = ["controlnet_subject", "controlnet", "convnet", "unconditional"]  # runs to sample (folders of train_dir)
train_dir = ""  # notebook 04 out_dir, "" → outputs/04_train (a missing default run is trained now)
backbone = ""  # backbone folder, "" → the one the models were trained with
run_dir = ""  # notebook 02 output folder or cache, "" → the cache the models were trained on
scheduler = "dpmsolver++"  # "dpmsolver++" (≈ 20 steps) or "ddim" (the paper's sampler, 200 steps)
num_inference_steps = 20  # denoising steps of the diffusion models
conditioning_scale = 1.0  # multiplies the ControlNet residuals (1: as trained, 0: the backbone alone)
guidance_scale = 1.0  # guidance on the EEG, eps_base + w (eps_EEG - eps_base): 1 is the paper's sampling, above 1 amplifies the EEG
strength = 1.0  # share of the denoising steps run: 1 from pure noise (the paper's); below 1 from the model's own first estimate, noised back; 0 that estimate itself
decode_means = True  # also decode each ControlNet's one-step estimate from the same noise (its conditional mean given the EEG), as "<run>_estimate"
max_clips = 0  # EEG windows per split (test, OOD) for every model, 0 → the default for the size
subjects = []  # participants to sample (NMED-T numbers, e.g. [2, 3]), [] → all
batch_size = 8  # clips per pipeline call
out_dir = ""  # where WAVs and samples.json go, "" → outputs/05_sample
data_root = ""  # NMED-T folder holding the stimuli WAVs, "" → the folder the cache was built from
stimuli_dir = ""  # folder with the stimulus WAVs, "" → the one notebook 02 used, else data_root or data_root/stimuli
seed = 0  # seeds every clip's initial noise and the choice of clips
device = "auto"  # "auto", "cpu", "cuda", "cuda:N" or "mps"
smoke = False  # tiny sizes for tests: a few clips per split

# %%
from eeg2music import checks
from eeg2music.params import resolve_parameters
from eeg2music.sampling.pipeline import SCHEDULERS

params = resolve_parameters("05_sample", globals(), choices={"scheduler": SCHEDULERS}, checks=checks.sample_parameters)

# %% [markdown]
# ## 1. The models and what they were trained on
#
# Every model folder of notebook 04 records the backbone it steers and the data it was trained on (the
# preprocessed cache, the EEG rate and channels, the participants, how chunks were split). Sampling
# must use exactly those: a ControlNet is tied to its UNet, and a subject layer to the order of its
# participants. The cell below loads the four models — training any default run that is missing — and
# rebuilds the test and out-of-distribution windows of their cache, with the audio the participants heard.

# %%
import pandas as pd
import torch
from IPython.display import display

from eeg2music.paths import stage_dir
from eeg2music.run_inputs import ensure_backbone
from eeg2music.sampling.clips import default_max_clips
from eeg2music.sampling.inputs import (
    check_models_agree,
    ensure_models,
    sampling_datasets,
)
from eeg2music.utils import resolve_device, seed_everything

seed_everything(seed)
target = resolve_device(device)
out_folder = stage_dir("sample", out_dir)
trained = ensure_models(models, train_dir, backbone=backbone, smoke=smoke, seed=seed, device=str(target))
backbone_dir, data_config = check_models_agree(trained, backbone)
backbone_model = ensure_backbone(backbone_dir, smoke=smoke, seed=seed, device=str(target))
datasets = sampling_datasets(data_config, run_dir=run_dir, data_root=data_root, stimuli_dir=stimuli_dir, smoke=smoke,
                             seed=seed)
limits = default_max_clips(smoke) if max_clips == 0 else {split: max_clips for split in datasets}
for participant in subjects:  # read as numbers by the validation cell; each must be in the models' cache
    checks.among("subjects", participant, list(datasets["test"].subjects), datasets["test"].index.path)
display(pd.DataFrame({
    run: {"kind": m.kind, "subject_cond": m.subject_cond, "folder": str(m.path)} for run, m in trained.items()
}).T)
print(f"backbone: {backbone_model!r}")
print(", ".join(f"{split}: {len(ds)} windows, {len(ds.clips())} clips" for split, ds in datasets.items())
      + f"; sampling up to {limits} windows per split")

# %% [markdown]
# ## 2. From noise to music, guided by EEG
#
# A diffusion model generates by running its noising process backwards. Start from pure noise
# $z_T \sim \mathcal N(0, I)$ of the latent's shape (8 × 88 × 16 for 3.5 s) and repeatedly ask the UNet
# which noise $\hat\epsilon = \epsilon_\theta(z_t, t, c, \mathrm{EEG})$ it sees; a **sampler** turns that
# prediction into a slightly cleaner $z_{t'}$, until $z_0$. The VAE decoder maps $z_0$ to a mel
# spectrogram, and a vocoder (HiFi-GAN for AudioLDM2, Griffin-Lim for the tiny backbone) to a waveform.
#
# * **DDIM** (η = 0) takes the deterministic step
#   $z_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat z_0 + \sqrt{1-\bar\alpha_{t'}}\,\hat\epsilon$ with
#   $\hat z_0 = (z_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$: a first-order solver of
#   the probability-flow ODE. The paper samples with 200 steps.
# * **DPM-Solver++** solves the same ODE with a second-order multistep method in the data
#   prediction $\hat z_0$, so it reaches a comparable endpoint in about 20 steps — ten times fewer UNet
#   calls. Same model, same noise; `benchmarks/bench_sampler.py` checks that the metrics agree.
#
# The ConvNet has no noise and no steps: its regressed latent is decoded by the same VAE and vocoder.
# The unconditional model is the backbone alone: with the ControlNet's residuals scaled by 0, the two
# are identical.
#
# **Seeds.** Every clip draws its noise from its own generator, seeded by (seed, song, chunk,
# participant) — not by the model. All models therefore start from the *same* noise for the same
# clip, which pairs their comparison, and a clip's result does not depend on what else is in its batch.
#
# **Guidance on the EEG.** The frozen backbone *is* the unconditional model, so at each step we can
# also ask it what it would predict without the EEG and move further along the difference:
# $\hat\epsilon = \hat\epsilon_{\text{base}} + w\,(\hat\epsilon_{\text{EEG}} - \hat\epsilon_{\text{base}})$
# (classifier-free guidance with the ControlNet as the condition; no extra training). $w = 1$ is the
# paper's sampling; $w > 1$ costs a second UNet pass per step. Here is the whole loop for one clip,
# written out with DDIM, before the package's batched sampler does the same for every clip:

# %%
from diffusers import DDIMScheduler

from eeg2music.models.controlnet import controlled_noise_prediction
from eeg2music.sampling.pipeline import EEGMusicPipeline, clip_generators, clip_seed
from eeg2music.utils import cpu_threads_for

first_run = next((run for run, m in trained.items() if m.kind == "controlnet"), None)
window = datasets["test"][0]
if first_run is not None:
    controlnet = trained[first_run].module.to(target)
    eeg_window = torch.as_tensor(window["eeg"][None], device=target)
    subject_window = torch.tensor([window["subject"]], device=target)
    sampler = DDIMScheduler.from_config(backbone_model.scheduler.config)
    sampler.set_timesteps(2 * num_inference_steps, device=target)
    text = backbone_model.unet_conditioning(1)
    z = torch.randn((1, *backbone_model.latent_shape), generator=torch.Generator().manual_seed(seed)).to(target)
    with torch.no_grad():
        for t in sampler.timesteps:
            eps_eeg = controlled_noise_prediction(backbone_model.unet, controlnet, z, t, eeg_window,
                                                  subject_window, text, conditioning_scale)
            eps_base = backbone_model.unet(z, t, **text, return_dict=False)[0]        # the backbone alone
            prediction = eps_base + guidance_scale * (eps_eeg - eps_base)             # guidance on the EEG
            z = sampler.step(prediction, t, z).prev_sample                           # one DDIM step
    print(f"{first_run}: one clip in {len(sampler.timesteps)} DDIM steps with w = {guidance_scale}; "
          f"latent std {z.std():.2f}")

# %% [markdown]
# **Sample or estimate.** At the first step $z_T$ holds nothing of the clip, so that step's $\hat z_0$ is
# the model's *conditional mean*: what the EEG alone says the clip is, a regression like the ConvNet's
# (blurred, but following the clip's time course). The following steps add the detail no EEG determines:
# a plausible clip, not an average one, which can stray from the true clip's time course. `strength`
# $s < 1$ trades between the two: the sampler takes that first estimate, noises it back to the step where
# the last $s$ of its trajectory begins (with the clip's own noise) and runs only those steps — SDEdit,
# as fMRI decoders start diffusion from a low-level reconstruction. $s = 1$ (the default) is the paper's
# sampling from pure noise; $s = 0$ returns the estimate itself. With `decode_means`, every ControlNet
# gets a second row, "…, mean": the same model's estimate from the same $z_T$, so that notebook 06 can
# measure, clip by clip, what sampling keeps of what the model knows.

# %%
demo_clip = datasets["test"].windows[0]
demo_seed = clip_seed(seed, demo_clip.song, demo_clip.chunk, demo_clip.subject)
print(f"test window: participant {demo_clip.subject}, song {demo_clip.song}, chunk {demo_clip.chunk} → seed {demo_seed}")
first_run = first_run or next(iter(trained))
pipe = EEGMusicPipeline(backbone_model, trained[first_run])
eeg = datasets["test"][0]["eeg"][None]
subject_index = [datasets["test"][0]["subject"]]
with cpu_threads_for(target):  # one thread when other processes keep the CPU busy (see eeg2music.utils.cpu_threads_for)
    latents = {name: pipe(eeg, subject_index, num_inference_steps=n, scheduler=name, output_type="latent",
                          generator=clip_generators([demo_seed]), conditioning_scale=conditioning_scale,
                          guidance_scale=guidance_scale).audios
               for name, n in (("dpmsolver++", num_inference_steps), ("ddim", 2 * num_inference_steps))}
gap = (latents["dpmsolver++"] - latents["ddim"]).norm() / latents["ddim"].norm()
print(f"{first_run}: DPM-Solver++ ({num_inference_steps} steps) vs DDIM ({2 * num_inference_steps} steps) "
      f"on the same noise: relative latent difference {gap:.3f}")

# %% [markdown]
# ## 3. Reconstructing the test set and the unseen song
#
# Every model reconstructs the same windows: the test chunks of the training songs and chunks of the
# out-of-distribution song, spread evenly over songs and drawn at random over chunks and participants
# (seeded). Clips go through the pipeline in batches; the WAVs (32-bit float, the model's output
# unclipped) and `samples.json` are written into a temporary folder and moved into place at the end,
# so an interrupted run never leaves a half-written sampling folder.

# %%
from eeg2music.models.tiny_backbone import backbone_provenance
from eeg2music.sampling.clips import sample_models

estimates = [run for run, model in trained.items() if model.kind == "controlnet"] if decode_means else []
record = sample_models(
    trained, backbone_model, datasets, out_folder, scheduler=scheduler, num_inference_steps=num_inference_steps,
    conditioning_scale=conditioning_scale, guidance_scale=guidance_scale, strength=strength, seed=seed, max_clips=limits, subjects=subjects or None,
    batch_size=batch_size, estimates=estimates, info={"backbone": backbone_dir, "backbone_provenance": backbone_provenance(backbone_dir), "data": data_config, "smoke": smoke, "device": str(target)},
)
timing = pd.DataFrame(record["models"]).T[["label", "scheduler", "steps", "clips", "seconds_per_clip"]]
display(timing)
print(f"{len(record['clips'])} reconstructions → {out_folder / 'samples.json'}")

# %% [markdown]
# ### The encoder alone: how much of the song the EEG holds
#
# A ControlNet whose $S$ and $P$ were first aligned to the audio (notebook 04, `align_steps`) carries
# an EEG encoder that decodes by itself: rank the test clips' audio embeddings by their similarity to
# each test window's EEG embedding. That is the ceiling of what its generated audio can show; notebook
# 06 compares the two. (Runs trained the paper's way, without alignment, have no such encoder.)

# %%
from eeg2music.models.model_folder import load_aligner
from eeg2music.training.alignment import encode_clip_latents, retrieval_accuracy
from eeg2music.utils import write_json

encoder_only = {}
test_latents = None
for run, trained_model in trained.items():
    aligned = trained_model.kind == "controlnet" and trained_model.config["training"].get("align_steps")
    aligner = load_aligner(trained_model.path.parent) if aligned else None
    if aligner is None:
        continue
    test_latents = test_latents or encode_clip_latents(backbone_model, datasets["test"])
    encoder_only[run] = retrieval_accuracy(aligner, datasets["test"].eeg_only(), test_latents)
write_json(out_folder / "encoder_only.json", encoder_only)
display(pd.DataFrame(encoder_only).T if encoder_only else "no aligned encoder among these models")

# %% [markdown]
# ## 4. Looking: true and generated mel spectrograms
#
# Each row is one EEG window (a participant hearing one chunk); the first column is what they heard, the
# others what each model reconstructed from their EEG. All panels share one dB colour scale (per-clip
# normalised as the backbone sees audio), so a blurred or quieter reconstruction looks blurred or
# quieter. Look for the rhythm (vertical stripes of onsets), the register of the bass and the lead
# (horizontal bands) and the overall brightness: these are what 3.5 s of EEG can carry. The last row is
# the song no model saw in training.

# %%
import matplotlib.pyplot as plt

from eeg2music.plots import plot_mel_comparison
from eeg2music.sampling.clips import choose_examples, load_samples

loaded = load_samples(out_folder)
labels = {run: entry["label"] for run, entry in loaded["models"].items()}
examples = choose_examples(loaded, n_test=3, n_ood=1)
fig = plot_mel_comparison(examples, labels, out_folder / "mel_comparison.png")
plt.show()

# %% [markdown]
# ## 5. Listening
#
# The same windows as players (no loudness normalisation, so what is quiet sounds quiet). With the tiny
# backbone the sound is Griffin-Lim's: phasey and buzzy; judge the rhythm, the pitch register and the
# instrumentation rather than the fidelity.

# %%
from eeg2music.sampling.clips import listening_table

display(listening_table(examples, labels))

# %% [markdown]
# ## Recap
#
# In this notebook we generated music from EEG with every model: the ControlNet denoising random latents under
# the EEG's guidance (with DPM-Solver++ in 20 steps rather than the paper's 200 DDIM steps), the ConvNet
# decoding its regressed latent, and the unconditional backbone as the no-EEG reference — on the held-out test
# chunks and on a song no model saw. Each clip's noise came from its own seed, shared by all models, so the
# comparison is paired and reproducible. We saw that the model's first estimate of a clip is its conditional
# mean, and that `strength` restarts the sampler from it. We looked at true and generated spectrograms on one
# scale and listened to them. Notebook 06 turns these WAVs into numbers: the paper's metrics, song and segment
# identification with confidence intervals. Executed, notebooks 05 and 06 are the report: `make demo` exports
# both to self-contained HTML in `outputs/notebooks/`.
