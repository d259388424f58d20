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
# * a plain-words reading generated from the numbers, and a self-contained report.
#
# It writes `metrics.json`, `metrics.csv`, `report.md` (+ `report_assets/`), `report.html` (one file,
# figures and audio embedded) and the figures into `out_dir`.

# %% tags=["parameters"]
sample_dir = ""  # notebook 05 out_dir (holds samples.json), "" → outputs/05_sample
clap_checkpoint = ""  # LAION-CLAP checkpoint (.pt, e.g. 630k-audioset-best.pt), "" → not used
encodec_weights = ""  # EnCodec 24 kHz weights file, "" → not used
audioldm2_dir = ""  # local AudioLDM2 folder whose CLAP embeds the clips, "" → not used
backbone = ""  # backbone folder for the offline "vae-latent" embedder, "" → the one notebook 05 used
n_boot = 1000  # bootstrap resamples of the clips for the 95 % intervals
n_perm = 1000  # shuffled pairings for the permutation tests
out_dir = ""  # where metrics and the report go, "" → outputs/06_evaluate
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

from eeg2music.paths import stage_dir
from eeg2music.sampling.clips import load_samples
from eeg2music.utils import resolve_device

record = load_samples(stage_dir("sample", sample_dir))
out_folder = stage_dir("evaluate", out_dir)
out_folder.mkdir(parents=True, exist_ok=True)
labels = {run: entry["label"] for run, entry in record["models"].items()}
display(pd.DataFrame(record["splits"]).T)
columns = ["label", "kind", "setting", "scheduler", "steps", "clips", "seconds_per_clip"]
display(pd.DataFrame(record["models"]).T[[c for c in columns if c in next(iter(record["models"].values()))]])

# %% [markdown]
# ## 2. Embeddings: comparing music the way a listener would
#
# Two waveforms of the same music can differ sample by sample (a phase shift, another vocoder) while
# sounding alike, and EEG carries a few Hz of bandwidth — nowhere near enough to pin down a waveform.
# So the paper compares clips through **neural audio embeddings**: LAION-CLAP (a music–text model;
# similar embeddings ↔ similar sound) and EnCodec (a neural codec's encoder). Give `clap_checkpoint`,
# `encodec_weights` or `audioldm2_dir` to use them (local files; nothing is downloaded).
#
# Without weights, the **offline set** is used, and the report says so: `mel-stats`, interpretable
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

figures = {
    "Song- and segment-identification (test split) with 95 % CIs; dashed: chance": out_folder / "identification.png",
    f"Per-clip cosine and ranks (`{primary}`), test and unseen song": out_folder / "distributions.png",
    f"Song-identification confusion matrices (test split, `{primary}`)": out_folder / "confusions.png",
}
paths = iter(figures.values())
plot_identification(results, labels, [e.name for e in embedders], next(paths))
plot_distributions(results, labels, primary, next(paths))
plot_confusions(results, labels, primary, next(paths))
plt.show()

# %% [markdown]
# ### Generation against the encoder alone
#
# For ControlNets whose EEG encoder was aligned to the audio first, notebook 05 measured the encoder's
# own song identification on the test windows (`encoder_only.json`). The generated audio can show at
# most what the encoder knows: the last column is the share of it that survives generation.

# %%
from eeg2music.utils import read_json

encoder_file = stage_dir("sample", sample_dir) / "encoder_only.json"
encoder_only = read_json(encoder_file) if encoder_file.is_file() else {}
rows = {}
for run, retrieval in encoder_only.items():
    generated = {e.name: results["test"][run][e.name]["metrics"].get("song_id_top1", {}).get("value")
                 for e in embedders if run in results.get("test", {})}
    rows[labels.get(run, run)] = {"encoder song-ID": retrieval["song_top1"], "encoder segment top-1": retrieval["segment_top1"],
                                  **{f"generated song-ID ({name})": value for name, value in generated.items()},
                                  **{f"kept ({name})": (value / retrieval["song_top1"] if value is not None and retrieval["song_top1"] else None)
                                     for name, value in generated.items()}}
display(pd.DataFrame(rows).T.round(3) if rows else Markdown("No model with an aligned EEG encoder was sampled."))

# %% [markdown]
# ### The subject layer's effect
#
# The two ControlNets differ only by the per-participant channel-mixing layer $S_s$, and they
# reconstructed the same windows from the same noise, so we compare them clip by clip: the mean paired
# difference (with subject layer − without) of the cosine to the true clip and of the true song's rank,
# with a bootstrap interval. An interval that contains 0 means no measurable effect at this size.

# %%
from eeg2music.evaluation.report import paired_differences

with_s = [run for run, m in record["models"].items() if m["kind"] == "controlnet" and m["subject_cond"]]
without_s = [run for run, m in record["models"].items() if m["kind"] == "controlnet" and not m["subject_cond"]]
subject_rows = {}
if with_s and without_s:
    for e in embedders:
        for metric in ("cosine", "song_rank"):
            difference = paired_differences(results, "test", e.name, [(with_s[0], without_s[0])], metric=metric,
                                            seed=seed).get((with_s[0], without_s[0]))
            if difference:
                subject_rows[f"{e.name} · {metric}"] = difference
display(pd.DataFrame(subject_rows).T.round(4) if subject_rows else Markdown("Needs a ControlNet with and one without the subject layer."))

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
# The reading below is generated from the numbers above (verdicts come from whether an interval
# excludes chance, comparisons from paired bootstrap differences), so it changes when they do.

# %%
from eeg2music.evaluation.report import plain_words_reading

ood_songs = record["splits"].get("ood", {}).get("songs", [])
reading = plain_words_reading(results, record["models"], primary, embedder_note=embedder_note(embedders[0]),
                              ood_song=ood_songs[0] if ood_songs else None, seed=seed)
display(Markdown("\n\n".join(reading)))

# %% [markdown]
# ## 7. The report
#
# Everything above goes into `metrics.json` (all numbers, per-clip values, the reading), `metrics.csv`
# (one row per split × model × embedding × metric) and the report: `report.md` beside its figures and
# example clips, and `report.html`, a single file with the figures and audio embedded, to share.

# %%
from eeg2music.evaluation.report import write_evaluation
from eeg2music.sampling.clips import choose_examples

mel_figure = record["folder"] / "mel_comparison.png"
if mel_figure.is_file():
    figures["True vs generated mel spectrograms (notebook 05)"] = mel_figure
written = write_evaluation(
    out_folder, record=record, results=results, embedders=embedders, reading=reading, figures=figures,
    examples=choose_examples(record, n_test=2, n_ood=1),
    settings={"sample_dir": str(record["folder"]), "n_boot": resamples[0], "n_perm": resamples[1], "seed": seed,
              "embedders": ", ".join(e.name for e in embedders), "offline embedders": offline},
)
for name, path in written.items():
    print(f"{name}: {path}")

# %% [markdown]
# ## Recap
#
# In this notebook we evaluated the reconstructions the way the paper does — FAD, CLAP score (cosine),
# Pearson and MSE of paired embeddings — and went further: song and segment identification against
# their chance levels, 95 % bootstrap intervals for every number, permutation tests against shuffled
# pairings, and paired model differences. We compared clips both by what they sound like overall and by
# their time course (`mel-envelope`), which is what the EEG follows. We read what the numbers say in plain
# words (generated from them), and wrote `metrics.json`, `metrics.csv` and a self-contained report with
# figures and audio.
