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
# # 02 · Preprocessing, windows and splits
#
# *Code: `eeg2music.data.preprocessing`, `eeg2music.data.cache`, `eeg2music.data.windows`, `eeg2music.data.pairing`; figures in `eeg2music.plots`.*
#
# Before a model can learn to turn EEG into music, the EEG must be made comparable across electrodes,
# participants and songs, and cut into examples that pair **3.5 s of EEG with the 3.5 s of music** the
# participant was hearing. This notebook teaches and runs the three parts of that stage:
#
# 1. **The paper's minimal preprocessing.** Postolache et al. deliberately do almost nothing: drop the
#    face electrodes, centre each channel, scale it robustly (median and inter-quartile range), clamp
#    the outliers. We apply each step to one recording and look at what it does to one channel and to
#    the whole montage.
# 2. **An on-disk cache.** The whole dataset is streamed through the pipeline, one recording at a time,
#    into float32 files that later stages memory-map (so memory stays flat even for the 1 kHz raw files).
# 3. **Windows and splits.** Each song is cut into 3.5 s chunks; chunks are assigned to train /
#    validation / test *within* each song with a gap between them, one whole song is held out as
#    *out-of-distribution*, and optionally one participant is held out entirely.
#
# It writes the cache, `preprocess_summary.json` (what ran, the splits and their sizes) and the figures
# into `out_dir`.

# %% tags=["parameters"]
data_root = ""  # NMED-T folder (cleaned and/or raw files); empty: the simulated default dataset
stimuli_dir = ""  # folder with the stimulus WAVs if not in data_root or data_root/stimuli; empty: look there only
layout = "auto"  # which NMED-T files to read: "auto" (cleaned when present), "cleaned" or "raw"
filtering = "none"  # "none" (the paper) or "cleaned_release" (0.3 Hz high-pass, 59–61 Hz notch, 50 Hz low-pass)
resample_sfreq = 0.0  # resample the EEG to this rate in Hz, e.g. 125 for raw 1 kHz files; 0 keeps its rate
bad_channels = "error"  # a flat or all-NaN channel: "error", "exclude" (from every recording) or "interpolate"
lag_seconds = 0.0  # how far each EEG window lies behind its audio clip, in seconds
ood_song = 21  # the song held out whole as out-of-distribution; 0 for none
loso_subject = 0  # participant number held out entirely (leave-one-subject-out); 0 for none
val_fraction = 0.1  # share of each training song's chunks used for validation
test_fraction = 0.1  # share of each training song's chunks used for testing (at least two chunks where the song can spare them)
gap_chunks = 1  # unused 3.5 s chunks between train, val and test within a song
allow_stimulus_mismatch = False  # pair a WAV with EEG that lasts over 1 s longer or shorter, cutting the song within the shorter; False stops
out_dir = ""  # where the cache, summary and figures go; empty: outputs/02_preprocess
seed = 0  # seed of the simulated dataset (used only when data_root is "")
smoke = False  # tiny simulated dataset for tests (3 participants × 3 songs of 15 s)

# %%
from eeg2music import checks
from eeg2music.data.preprocessing import BAD_CHANNEL_MODES, FILTERINGS
from eeg2music.params import resolve_parameters

params = resolve_parameters(
    "02_preprocess",
    globals(),
    choices={"layout": ("auto", "cleaned", "raw"), "filtering": FILTERINGS, "bad_channels": BAD_CHANNEL_MODES},
    checks=checks.preprocess_parameters,
)

# %%
import time

import pandas as pd
from IPython.display import Audio, display

from eeg2music.data.cache import build_cache
from eeg2music.data.nmedt import scan_nmedt
from eeg2music.data.pairing import (
    load_stage_windows,
    load_stimuli,
    pair_eeg_and_audio,
    write_preprocess_summary,
)
from eeg2music.data.preprocessing import Preprocessing, trace_steps
from eeg2music.data.recordings import iter_recordings, recording_info
from eeg2music.data.windows import EEGMusicWindows, WindowSpec, make_splits
from eeg2music.paths import stage_dir
from eeg2music.plots import (
    plot_channel_topomaps,
    plot_montage_before_after,
    plot_split_layout,
    plot_step_traces,
    plot_value_distributions,
    plot_window_pair,
    show_saved,
)
from eeg2music.run_inputs import default_cache_dir, ensure_dataset
from eeg2music.utils import seed_everything

seed_everything(seed)
started = time.perf_counter()
out = stage_dir("preprocess", out_dir)  # made below, once the data is known to fit the parameters
cache_dir = default_cache_dir(smoke) if out_dir == "" else out / "cache"


folder = scan_nmedt(ensure_dataset(data_root, smoke=smoke, seed=seed), stimuli_dir or None)
layout = folder.resolve_layout(layout)
cfg = Preprocessing(filtering=filtering, resample_sfreq=resample_sfreq or None, bad_channels=bad_channels)
if smoke:
    gap_chunks = 0  # smoke songs last 15 s = 4 chunks: no room for gaps next to 1 train, 1 val, 2 test chunks
    print("smoke run: gap_chunks = 0")
spec = WindowSpec(lag_seconds=lag_seconds, ood_song=ood_song or None, val_fraction=val_fraction,
                      test_fraction=test_fraction, gap_chunks=gap_chunks)
# Before any work, from the files' headers: the held-out song and participant are in this folder, every
# song has its WAV and lasts as long as its EEG, and the splits fit the songs.
pairing = pair_eeg_and_audio(folder, layout, spec, loso_subject=loso_subject or None,
                                 allow_length_mismatch=allow_stimulus_mismatch, sfreq=resample_sfreq or None)
out.mkdir(parents=True, exist_ok=True)
print(f"{folder.root}: layouts {list(folder.layouts)}, reading {layout!r}; songs {list(pairing.songs)} paired with "
      f"their WAVs in {folder.stimuli_dir}; windows per split {pairing.splits.counts()}; configuration key {cfg.key()}")
for number, step in enumerate(cfg.steps(), start=1):
    print(f"  {number}. {step}")

# %% [markdown]
# ## 1 · One recording, step by step
#
# We follow one participant listening to one song through the pipeline:
#
# * **Drop the face and reference channels.** The HydroCel net's electrodes `E125`–`E128` sit on the
#   cheeks and below the eyes: they record mostly eye movements and muscle. The NMED-T authors removed
#   them from the cleaned release; the raw files still have them. The vertex electrode `Cz` is the
#   recording reference, so it is identically zero. Both layouts end with the same 124 channels.
# * **Centre** each channel on the mean of its first 1000 samples (8 s at 125 Hz), removing the
#   electrode's DC offset.
# * **Robust scaling**: subtract each channel's median and divide by its inter-quartile range (IQR),
#   so every electrode contributes on the same scale whatever its impedance. Median and IQR, unlike
#   mean and standard deviation, are barely moved by a few huge artefacts.
# * **Clamp** to ±20 IQR: blinks and movement spikes are capped instead of dominating a training batch.
#
# Note that centring is *absorbed* by robust scaling — subtracting any constant shifts the median by the
# same constant — so with the paper's settings the centring step leaves the output unchanged; it only
# matters in an ablation without scaling. We keep it for fidelity to the paper.

# %%
candidates = [song for song in pairing.songs if song != ood_song]  # at least one: pair_eeg_and_audio checked it
example = next(raw for song in candidates for raw in iter_recordings(folder, layout, songs=[song]))
info = recording_info(example)
example_song = info["song"]
steps = trace_steps(example, cfg)
channel = "E11"  # frontal midline (near Fz): where eye blinks show most
print(f"participant {info['subject']}, song {info['song']}: {len(example.ch_names)} channels × {example.n_times} samples "
      f"at {example.info['sfreq']:g} Hz → " + " → ".join(step.name for step in steps))
show_saved(plot_step_traces(steps, channel=channel, seconds=10.0, clamp_limit=cfg.clamp), out / "steps_one_channel.png")

# %% [markdown]
# The same recording across the whole montage. Before scaling (left, µV) some channels are much
# larger than others; after the pipeline (right, IQR units) every channel has the same spread and the
# large transients are capped.

# %%
show_saved(plot_montage_before_after(steps, seconds=10.0), out / "montage_before_after.png")

# %% [markdown]
# Distributions tell the same story: before, the pooled samples have heavy tails and the channels'
# IQRs span a wide range; after, the values sit in a few units around zero, with the clamped tails
# piled up at ±20.

# %%
show_saved(plot_value_distributions(steps, clamp_limit=cfg.clamp), out / "distributions.png")

# %% [markdown]
# Where on the scalp does this matter? Left: each channel's IQR before scaling — the channels the
# robust scaler shrinks the most. Right: each channel's largest excursion once scaled, in IQR units —
# large where artefacts such as blinks (frontal channels) stand out from the channel's ongoing activity;
# whatever exceeds ±20 is what the clamp caps.

# %%
show_saved(plot_channel_topomaps(steps, clamp_limit=cfg.clamp), out / "topomaps.png")

# %% [markdown]
# ## 2 · The whole dataset, into a cache
#
# `build_cache` streams every recording (participant × song) through the same pipeline and writes one
# float32 `.npy` file per recording plus an `index.json`. The cache folder's name contains a hash of the
# configuration and of the data files, so running this notebook again reuses it, and changing any
# parameter above (or the data) builds a new one. It is written under a temporary name and renamed
# when complete: an interrupted run is never mistaken for a finished cache.

# %%
index = build_cache(folder, cfg, cache_dir, layout=layout)
flagged = {f"P{e.subject:02d} song {e.song}": e.bad_channels for e in index.recordings if e.bad_channels}
print(f"{len(index.recordings)} recordings, {len(index.subjects)} participants, songs {list(index.songs)}, "
      f"{index.n_channels} channels at {index.sfreq:g} Hz; flagged channels: {flagged or 'none'}")

# %% [markdown]
# ## 3 · Windows and splits
#
# A song is cut into consecutive **chunks** of 3.5 s. Chunk *c* pairs the audio from *c*·3.5 s to
# (*c*+1)·3.5 s (56 000 samples at 16 kHz) with the EEG of the same span, shifted by `lag_seconds`
# (the brain answers the sound after a delay); at 125 Hz an EEG window has 438 samples. A window whose
# EEG would start before its recording (a negative lag) or run past its end is dropped, and counted by
# reason. Each song's audio and EEG were checked to last as long as each other before any work (a WAV
# cut short would otherwise silently remove the song's later chunks).
#
# The splits follow the paper. Within each training song, the first chunks are for **training**, then
# come **validation** and **test** chunks, separated by unused *gap* chunks so that no window — nor the
# slow drifts of the EEG around it — straddles two splits. The test chunks measure generalisation to
# unheard *excerpts* of known songs; each song keeps at least two of them where it can spare them, so
# that identifying the *segment* (when in the song) is a harder question than identifying the song.
# One whole song (`ood_song`) is never trained on: it measures
# generalisation to *unknown music*. With `loso_subject`, one participant's EEG is kept out of training
# altogether and used only for testing.

# %%
song_seconds = pairing.song_seconds  # chunks must fit in the audio too
splits = make_splits(index, spec, loso_subject=loso_subject or None, song_seconds=song_seconds)
show_saved(plot_split_layout(splits), out / "split_layout.png")

# %%
counts = pd.DataFrame(
    {name: {"windows": len(refs), "clips (song, chunk)": len({(r.song, r.chunk) for r in refs}),
            "participants": len({r.subject for r in refs}), "songs": len({r.song for r in refs}),
            "dropped: EEG before the start": splits.dropped_before_start[name],
            "dropped: EEG past the end": splits.dropped_past_end()[name]}
     for name, refs in splits.items()}
).T
display(counts)

# %% [markdown]
# ## 4 · One training example
#
# `EEGMusicWindows` is a PyTorch `Dataset`: each item holds the EEG window (channels × samples,
# float32), the participant's index (for a subject-specific layer), the song and chunk, and the audio
# clip — or, in training, the clip's latent, computed once per (song, chunk) because every participant
# heard the same music.

# %%
audio = load_stimuli(folder, [example_song], sr=spec.audio_sr) if example_song in folder.stimuli else None
train_windows = [r for r in splits["train"] if r.song == example_song] or splits["train"]
dataset = EEGMusicWindows(index, train_windows, spec, audio=audio, name="train")
item = dataset[len(dataset) // 2]
print(dataset, {key: tuple(value.shape) if hasattr(value, "shape") else value for key, value in item.items()})
show_saved(plot_window_pair(dataset, len(dataset) // 2), out / "window_pair.png")
if "audio" in item:
    display(Audio(item["audio"].numpy(), rate=spec.audio_sr))
else:
    print(f"no stimulus WAV for song {example_song} in {[str(d) for d in folder.stimuli_dirs]}: EEG only")

# %% [markdown]
# ## 5 · What the later stages read
#
# `preprocess_summary.json` records the steps, the cache and the splits; notebooks 03–06 rebuild exactly
# these datasets with one call, `eeg2music.data.pairing.load_stage_windows(preprocess_dir)`.

# %%
summary_path = write_preprocess_summary(
    out, index, splits, song_seconds=song_seconds, parameters=params,
    extra={"elapsed_s": round(time.perf_counter() - started, 1), "example": {"subject": info["subject"], "song": example_song},
           "stimuli_dir": str(folder.stimuli_dirs[0]) if stimuli_dir else "", "lost_windows": pairing.lost_windows},
)
check = load_stage_windows(out, verbose=False)
assert {name: len(ds) for name, ds in check.items()} == splits.counts()
print(f"wrote {summary_path}; windows per split: {splits.counts()}; {time.perf_counter() - started:.1f} s in all")

# %% [markdown]
# ## Recap
#
# In this notebook we applied the paper's minimal preprocessing — drop the face and reference channels,
# centre, scale each channel by its median and IQR, clamp at ±20 — and saw how it equalises the
# electrodes and caps artefacts (mostly frontal blinks); we streamed the whole dataset through it into
# a memory-mapped, configuration-keyed cache; and we cut every song into 3.5 s chunks, paired each with
# its EEG window (and lag), and split them into train / validation / test ranges within each song with
# gaps between them, one whole out-of-distribution song and, optionally, one held-out participant.
# Next, notebook 03 builds the ControlNet that reads these EEG windows.
