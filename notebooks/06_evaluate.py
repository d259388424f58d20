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
# # 06 · Evaluation: how close are the reconstructions, and is it the EEG?
#
# *Code: `eeg2music.evaluation.embedders`, `eeg2music.evaluation.metrics`, `eeg2music.evaluation.report`; figures in `eeg2music.plots`.*
#
# Notebook 05 reconstructed music from EEG with four models. Here we measure what they got right, with
# the paper's metrics and with what the paper lacks. You will see
#
# * why the comparison happens in an **embedding space** (CLAP, EnCodec — or, offline, documented
#   stand-ins) rather than on waveforms;
# * the paper's four metrics — **FAD**, the **CLAP score** (cosine), **Pearson** and **MSE** of paired
#   embeddings — for every model, in distribution and on the unseen song;
# * **song and segment identification**: can one tell, from the reconstruction alone, which song and
#   which 3.5 s of it the participant heard? With the chance level stated;
# * **95 % bootstrap intervals** for every number and a **permutation test** against shuffled pairings;
# * a plain-words reading generated from the numbers, the spectrograms and, to listen, example clips.
#
# It writes `metrics.json`, `metrics.csv` and the figures into `out_dir`. The report is this notebook,
# executed, with notebook 05: `make demo` exports both to self-contained HTML (figures and audio inside).

# %% tags=["parameters"]
sample_dir = ""  # notebook 05 out_dir (holds samples.json), "" → outputs/05_sample
clap_checkpoint = ""  # LAION-CLAP checkpoint (.pt, e.g. 630k-audioset-best.pt), "" → not used
encodec_weights = ""  # EnCodec 24 kHz weights file, "" → not used
audioldm2_dir = ""  # local AudioLDM2 folder whose CLAP embeds the clips, "" → not used
backbone = ""  # backbone folder for the offline "vae-latent" embedder, "" → the one notebook 05 used
n_boot = 1000  # bootstrap resamples of the clips for the 95 % intervals
n_perm = 1000  # shuffled pairings for the permutation tests
out_dir = ""  # where metrics and the report go, "" → outputs/06_evaluate
ablation_dir = ""  # benchmarks/ablation_decoding.py's run folder, "" → outputs/ablation (shown if it is there)
seed = 0  # seeds the bootstrap and the permutations
device = "auto"  # "auto", "cpu", "cuda", "cuda:N" or "mps" (for the network embedders)
smoke = False  # tiny sizes for tests: fewer resamples

# %%
from eeg2music import checks
from eeg2music.params import resolve_parameters

params = resolve_parameters("06_evaluate", globals(), checks=checks.evaluate_parameters)

# %% [markdown]
# ## 1. The reconstructions
#
# `samples.json` lists every generated clip with the window it came from (participant, song, chunk,
# split) and its true clip. All models reconstructed the same windows from the same initial noise, so
# every comparison below is paired.

# %%
import pandas as pd
from IPython.display import Markdown, display

from eeg2music.models.tiny_backbone import describe_provenance
from eeg2music.paths import stage_dir
from eeg2music.sampling.clips import load_samples
from eeg2music.utils import resolve_device

record = load_samples(stage_dir("sample", sample_dir))
out_folder = stage_dir("evaluate", out_dir)
out_folder.mkdir(parents=True, exist_ok=True)
labels = {run: entry["label"] for run, entry in record["models"].items()}

# %% [markdown]
# The windows of each split, the models with how each was trained and sampled (and its seconds per
# clip), and the backbone they steer:

# %%
display(pd.DataFrame(record["splits"]).T)
columns = ["label", "kind", "setting", "scheduler", "steps", "clips", "seconds_per_clip"]
display(pd.DataFrame(record["models"]).T[[c for c in columns if c in next(iter(record["models"].values()))]])
print(describe_provenance(record["backbone_provenance"]) if record.get("backbone_provenance") else record.get("backbone"))

# %% [markdown]
# ## 2. Embeddings: comparing music the way a listener would
#
# Two waveforms of the same music can differ sample by sample (a phase shift, another vocoder) while
# sounding alike, and EEG carries a few Hz of bandwidth — nowhere near enough to pin down a waveform.
# So the paper compares clips through **neural audio embeddings**: LAION-CLAP (a music–text model;
# similar embeddings ↔ similar sound) and EnCodec (a neural codec's encoder). Give `clap_checkpoint`,
# `encodec_weights` or `audioldm2_dir` to use them (local files; nothing is downloaded).
#
# Without weights, the **offline set** is used, and the cell below says so: `mel-stats`, interpretable
# statistics of each clip (mean and spread of every mel band, chroma, onset strength, tempo,
# brightness, loudness; z-scored with the true clips' statistics), and `vae-latent`, the backbone's
# own VAE latent averaged over time. Neither is CLAP: their numbers compare the models of this run,
# not the paper's values.
#
# All of these pool over time: they say what a clip sounds like, not *when* things happen in it. Yet
# auditory EEG follows the time course of the music — onsets, beats, instruments entering — far more
# than its timbre. So one more embedding is always computed, `mel-envelope`: the log-mel spectrogram
# pooled into 8 band groups × 100 ms bins, each band's mean over the clip removed. It asks whether a
# reconstruction is loud where, and when, its clip is.

# %%
from eeg2music.evaluation.embedders import make_embedders
from eeg2music.evaluation.report import embed_samples, embedder_note
from eeg2music.run_inputs import ensure_backbone

target = resolve_device(device)
offline = not (clap_checkpoint or encodec_weights or audioldm2_dir)
vae_backbone = ensure_backbone(backbone or record.get("backbone", ""), smoke=smoke, seed=seed,
                               device=str(target)) if offline else None
embedders = make_embedders(clap_checkpoint, encodec_weights, audioldm2_dir, backbone=vae_backbone, device=str(target))
if offline:
    print("No CLAP or EnCodec weights given: the offline set below is used; its numbers compare the models of "
          "this run with one another, not with the paper's.")
for embedder in embedders:
    print(f"{embedder.name} ({getattr(embedder, 'dim', '?')}-d): {embedder_note(embedder)}")
embeddings = embed_samples(record, embedders)

# %% [markdown]
# ## 3. The metrics
#
# For each split × model × embedding, with $g_i$ and $x_i$ the embeddings of the $i$-th generated and
# true clip:
#
# * **FAD** — fit a Gaussian to each set, $\mathcal N(\mu_g, \Sigma_g)$ and $\mathcal N(\mu_x, \Sigma_x)$;
#   $\mathrm{FAD} = \lVert\mu_g-\mu_x\rVert^2 + \mathrm{tr}\,\Sigma_g + \mathrm{tr}\,\Sigma_x - 2\,\mathrm{tr}(\Sigma_g\Sigma_x)^{1/2}$.
#   It asks whether the reconstructions *as a set* sound like the real music, ignoring which is which.
#   Lower is better.
# * **Cosine (the CLAP score on CLAP embeddings)** $\frac1n\sum_i \cos(g_i, x_i)$, **Pearson** $r$ across
#   dimensions and **MSE** — pair by pair: is each reconstruction close to *its own* true clip?
# * **Segment-ID** — for each reconstruction, rank every distinct true clip of the split by cosine
#   similarity; top-1 is a hit if its own clip comes first (chance: 1 / number of segments).
#   **Song-ID** ranks the songs by the mean similarity to each song's clips (chance: 1 / songs).
#   Before ranking, each set is centred on its own mean. A generator never sounds exactly like the real
#   music (that is what FAD measures), so all its reconstructions share an offset from the true clips;
#   left in, that offset decides every cosine, and the one true clip nearest to it — a *hub* — comes
#   first for nearly every reconstruction. Centred, identification asks whether the reconstructions
#   differ from one another the way the true clips do.
#
# Every number gets a 95 % bootstrap interval (clips resampled with replacement), and every paired
# number a **permutation test**: shuffle which reconstruction goes with which true clip many times; if
# the observed value is rarely reached, the pairing — the EEG — carries information.

# %%
from eeg2music.evaluation.report import comparison_table, evaluate_samples

resamples = (min(n_boot, 200), min(n_perm, 200)) if smoke else (n_boot, n_perm)
results = evaluate_samples(record, embeddings, standardize={e.name: bool(e.standardize) for e in embedders},
                           n_boot=resamples[0], n_perm=resamples[1], seed=seed)
primary = embedders[0].name
for split in results:
    for embedder in embedders:
        display(Markdown(f"**{split}** · `{embedder.name}` — value [95 % CI]"))
        display(comparison_table(results, split, embedder.name, labels))

# %% [markdown]
# ## 4. Identification and distributions
#
# The bars show the share of reconstructions whose own song (left) or own segment (right) ranks first,
# with bootstrap intervals; the dashed line is chance. The box plots show the per-clip cosine and ranks
# (rank 1 is best), so one can see whether a mean comes from many modest successes or a few clear ones.
# The confusion matrix shows which songs are mistaken for which: rows are the songs heard.

# %%
import matplotlib.pyplot as plt

from eeg2music.plots import plot_confusions, plot_distributions, plot_identification

plot_identification(results, labels, [e.name for e in embedders], out_folder / "identification.png")
plot_distributions(results, labels, primary, out_folder / "distributions.png")
plot_confusions(results, labels, primary, out_folder / "confusions.png")
plt.show()

# %% [markdown]
# ### Generation against the encoder alone
#
# For ControlNets whose EEG encoder was aligned to the audio first, notebook 05 measured the encoder's
# own identification on the test windows (`encoder_only.json`): which 3.5 s segment, which song. The
# generated audio can show at most what the encoder knows; "kept" is the share of it that survives
# generation, for the samples and for the model's mean (its one-step estimate, when notebook 05 decoded it).

# %%
from eeg2music.evaluation.report import encoder_only_table
from eeg2music.utils import read_json

encoder_file = record["folder"] / "encoder_only.json"
encoder_only = read_json(encoder_file) if encoder_file.is_file() else {}
table = encoder_only_table(encoder_only, results, labels, [e.name for e in embedders], models=record["models"])
display(table if table is not None else Markdown("No model with an aligned EEG encoder was sampled."))

# %% [markdown]
# ### Where the time course goes: the model's mean and its samples
#
# All models reconstructed the same windows, so two of them can be compared clip by clip: the paired
# difference in the share of segments identified, in percentage points, with a bootstrap interval. The
# pairs answer the report's questions: does the ControlNet beat the ConvNet and the backbone alone? And,
# for the "mean" row (the ControlNet's one-step estimate from the same noise: what the EEG alone says the
# clip is), how much of what the model knows does sampling keep? A sample adds detail the EEG does not
# determine; where the embedding follows the time course, that detail counts against it.

# %%
from eeg2music.evaluation.report import paired_identification_table

table = paired_identification_table(results, record["models"], [e.name for e in embedders], seed=seed)
display(table if table is not None else Markdown("Needs two models sampled on the same clips."))

# %% [markdown]
# ### Which lever bought how much
#
# The training levers cost one training each, more than this report's budget: the paper's setting, the
# ControlNet acting only at high noise, the encoder aligned first, the cubic timestep draw, then guidance
# and a restart from the model's mean at sampling. `benchmarks/ablation_decoding.py` trains and samples
# them on this run's data, seed and clips (about half an hour on two CPU cores) and writes `ablation.json`;
# its rows appear here when it has run.

# %%
from eeg2music.evaluation.report import ablation_table
from eeg2music.paths import ABLATION_NAME, stage_dir

ablation_file = stage_dir("ablation", ablation_dir) / ABLATION_NAME
table = ablation_table(read_json(ablation_file), ["mel-envelope", "mel-stats"]) if ablation_file.is_file() else None
display(table if table is not None else
        Markdown(f"No ablation yet (`{ablation_file}`): `python benchmarks/ablation_decoding.py` makes it."))

# %% [markdown]
# ### The subject layer's effect
#
# The two ControlNets differ only by the per-participant channel-mixing layer $S_s$, and they
# reconstructed the same windows from the same noise, so we compare them clip by clip: the mean paired
# difference (with subject layer − without) of the cosine to the true clip and of the true song's rank,
# with a bootstrap interval. An interval that contains 0 means no measurable effect at this size.

# %%
from eeg2music.evaluation.report import subject_layer_table

table = subject_layer_table(results, record["models"], [e.name for e in embedders], seed=seed)
display(table if table is not None else Markdown("Needs a ControlNet with and one without the subject layer."))

# %% [markdown]
# A per-listener layer helps only as far as listeners differ in ways the shared model does not absorb. On
# simulated data the differences are known: each listener's scalp patterns, response latency and gain.

# %%
from eeg2music.audio import CLIP_SECONDS
from eeg2music.evaluation.report import listener_differences_table

frame_ms = 1000 * CLIP_SECONDS / vae_backbone.latent_shape[1]  # the time step of P's output and of the latent
listeners = listener_differences_table(record["data"].get("data_root"), latent_frame_ms=frame_ms)
display(listeners if listeners is not None else Markdown("Real recordings: the listeners' differences are not known."))

# %% [markdown]
# ## 5. The permutation test
#
# Observed value, its mean over shuffled pairings and the one-sided p-value
# $(1 + \#\{\text{shuffles at least as good}\}) / (1 + N)$. The unconditional model never saw the EEG,
# so its p-values should be unremarkable: it is the test's own control.

# %%
from eeg2music.evaluation.report import permutation_table

for split in results:
    display(Markdown(f"**{split}** · `{primary}`"))
    display(permutation_table(results, split, primary, labels))

# %% [markdown]
# ## 6. What the numbers say
#
# The reading below is generated from the numbers of the first embedding (the tables above hold the
# others), so it changes when they do. A verdict against chance comes from whether the 95 % bootstrap
# interval over clips contains the chance level; the p-values from shuffling which reconstruction is
# paired with which true clip; a comparison of two models from the paired bootstrap interval of their
# clip-by-clip difference.
#
# Two caveats. The bootstrap resamples clips as if independent, but windows of the same song segment
# heard by different listeners share their audio, so the intervals are if anything too narrow; the
# permutation test does not have this problem. FAD is biased upwards with few clips: compare it only
# between models evaluated on the same clips, as here; its bootstrap interval sits higher still (a
# resample repeats clips, which inflates the distance), so it may not contain the estimate itself.

# %%
from eeg2music.evaluation.report import plain_words_reading

reading = plain_words_reading(results, record["models"], primary, seed=seed)
display(Markdown("\n\n".join(reading)))

# %% [markdown]
# ## 7. Looking and listening
#
# Numbers say how often a reconstruction lands near its clip, not what it sounds like. The true and
# generated mel spectrograms notebook 05 drew (one shared dB scale; the last row is the unseen song),
# then players: the true clip, then each model's reconstruction from the EEG of the same window, for
# two test windows and one of the unseen song (no loudness normalisation; clipped to ±1 for playback).

# %%
from IPython.display import Image

from eeg2music.sampling.clips import choose_examples, listening_table

mel_figure = record["folder"] / "mel_comparison.png"
display(Image(filename=mel_figure) if mel_figure.is_file() else Markdown("Notebook 05 drew no `mel_comparison.png`."))
display(listening_table(choose_examples(record, n_test=2, n_ood=1), labels))

# %% [markdown]
# ## 8. The numbers on disk
#
# Everything above goes into `metrics.json` (all numbers, per-clip values, the reading, the settings
# below) and `metrics.csv` (one row per split × model × embedding × metric).

# %%
from eeg2music.evaluation.report import write_metrics

settings = {"sample_dir": str(record["folder"]), "n_boot": resamples[0], "n_perm": resamples[1], "seed": seed,
            "embedders": ", ".join(e.name for e in embedders), "offline embedders": offline}
written = write_metrics(out_folder, record=record, results=results, embedders=embedders, reading=reading,
                        settings=settings)
display(pd.Series(settings, name="value").to_frame())
print("\n".join(f"{name}: {path}" for name, path in written.items()))

# %% [markdown]
# ## Recap
#
# In this notebook we evaluated the reconstructions the way the paper does — FAD, CLAP score (cosine), Pearson
# and MSE of paired embeddings — and went further: song and segment identification against their chance
# levels, 95 % bootstrap intervals for every number, permutation tests against shuffled pairings, paired model
# differences (the ControlNet's mean against its own samples among them: what sampling keeps of what the model
# knows), and — on simulated data — how much the listeners differ, which bounds what the subject layer can do.
# We compared clips both by what they sound like overall and by their time course (`mel-envelope`), which is
# what the EEG follows. We read what the numbers say in plain words (generated from them), looked at
# the spectrograms, listened to examples, and wrote `metrics.json` and `metrics.csv`.
#
# This executed notebook, with notebook 05, is the report. `make demo` exports both to self-contained HTML
# (figures and audio players inside): `outputs/notebooks/05_sample.html` and `06_evaluate.html`. After a
# papermill run of your own, `jupyter nbconvert --to html <executed.ipynb>` gives the same page.
