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
# # 01 · Exploring NMED-T: EEG of people listening to music
#
# *Code: `eeg2music.data.nmedt`, `eeg2music.data.recordings`, `eeg2music.data.simulate`, `eeg2music.data.summary`; figures in `eeg2music.plots`.*
#
# Everything downstream learns from one dataset: **NMED-T**, the Naturalistic Music EEG Dataset — Tempo
# (Losorelli et al., ISMIR 2017). Twenty participants listened to ten complete songs while a 128-electrode
# EGI HydroCel net recorded their EEG. This notebook meets the dataset the way a reader of its files
# does, and teaches what we will need later:
#
# 1. **The songs and the participants** — what was played, at which tempo, for how long, and who listened.
# 2. **The two published layouts** — the *cleaned* release (one file per song, 125 Hz, 125 channels) and the
#    *raw* recordings (one file per participant and session, 1 kHz, 129 channels, song onsets found from
#    trigger codes) — and what our reader turns them into: one `mne.io.Raw` per participant × song.
# 3. **The montage** — where the electrodes sit, which ones are on the face, and the vertex reference.
# 4. **EEG beside the music** — a stretch of EEG under the spectrogram of what was heard.
# 5. **The brain's response to the music** — the event-related potential (ERP) to note onsets, averaged
#    with MNE: the evidence, visible by eye, that the EEG follows the music.
# 6. **The simulator** — when no real data is given, the pipeline runs on a simulation written in the real
#    NMED-T formats; we look at its forward model (music → auditory features → brain sources → scalp).
#
# It writes `dataset_summary.json` (format, sampling rate, channels, participants, songs, and for raw data
# the onset sample of every song in every recording) and the figures into `out_dir`.

# %% tags=["parameters"]
data_root = ""  # NMED-T folder (cleaned songNN_Imputed.mat and/or raw PP_R_raw.mat files); empty: the simulated default
stimuli_dir = ""  # folder with the stimulus WAVs if not in data_root or data_root/stimuli; empty: look there only
layout = "auto"  # which files to explore: "auto" (cleaned when present), "cleaned" or "raw"
example_subject = 0  # participant shown in the figures (e.g. 2 for P02); 0: the first one
example_song = 0  # song shown in the figures (21–30); 0: the first one with a WAV
seconds_shown = 10.0  # length of the EEG stretch shown beside the spectrogram, in seconds
max_erp_recordings = 24  # recordings averaged for the note-onset ERP (participant × song); 0: all
out_dir = ""  # where dataset_summary.json and the figures go; empty: outputs/01_explore_data
seed = 0  # seed of the simulated dataset (used only when data_root is "")
smoke = False  # tiny simulated dataset for tests (3 participants × 3 songs of 15 s)

# %%
from eeg2music import checks
from eeg2music.params import resolve_parameters

params = resolve_parameters("01_explore_data", globals(), choices={"layout": ("auto", "cleaned", "raw")},
                            checks=checks.explore_data_parameters)

# %%
import time

import matplotlib.pyplot as plt
import mne
import numpy as np
import pandas as pd
from IPython.display import Audio, display

from eeg2music.data.nmedt import read_stimulus, scan_nmedt
from eeg2music.data.recordings import read_recording, recording_info
from eeg2music.data.simulate import envelope_decoding, load_simulation
from eeg2music.data.summary import dataset_summary, onset_evoked
from eeg2music.paths import stage_dir
from eeg2music.plots import plot_eeg_and_music, plot_forward_model, show_saved
from eeg2music.run_inputs import ensure_dataset
from eeg2music.utils import seed_everything, write_json

mne.set_log_level("error")
seed_everything(seed)
started = time.perf_counter()
out = stage_dir("data", out_dir)  # made when the first figure is saved, once the data has been read


folder = scan_nmedt(ensure_dataset(data_root, smoke=smoke, seed=seed), stimuli_dir or None)
layout = folder.resolve_layout(layout)
print(f"{folder.root}: layouts present {list(folder.layouts)}, exploring {layout!r}; "
      f"stimulus WAVs for songs {sorted(folder.stimuli) or 'none'}" + (" (simulated dataset)" if folder.simulated else ""))

# %% [markdown]
# ## 1 · The songs
#
# The ten stimuli are full commercial songs (electronica, trip-hop, pop, one Bowie track) chosen to span
# tempi from 56 to 150 beats per minute — the "T" of NMED-T. Each song's **trigger number** (21–30) is
# its ID everywhere: in file names, in variable names (`data21`), in the raw files' event codes. The
# public release does not include the audio (copyright); a user who owns the songs adds the WAVs. The
# reader never needs them to read the EEG — only the stages that look at the music do.

# %%
summary = dataset_summary(folder, layout)
songs_table = pd.DataFrame(
    [{"song": s["id"], "title": s["title"], "artist": s["artist"], "BPM": s["bpm"], "duration (s)": s["duration_s"],
      "WAV": folder.stimuli[s["id"]].name if s["id"] in folder.stimuli else "missing"} for s in summary["songs"]]
).set_index("song")
display(songs_table)

# %% [markdown]
# ## 2 · Participants, files and what the reader returns
#
# NMED-T numbers its participants 2–23 (without 18 and 22); the cleaned files list them as `"P02"` … in a
# cell array `subsNN`, and the raw files carry the number in their name (`02_1_raw.mat`: participant 2,
# recording session 1). We keep them as **ints** everywhere.
#
# * **Cleaned** — `songNN_Imputed.mat` holds `dataNN`, electrodes × time × participants in µV at 125 Hz.
#   The authors high-passed at 0.3 Hz, notched 59–61 Hz, low-passed at 50 Hz, downsampled by 8, removed
#   artefacts (imputing what they removed, hence the name) and dropped the 4 face electrodes, keeping the
#   vertex reference as the 125th row.
# * **Raw** — `PP_R_raw.mat` (MATLAB v7.3, i.e. HDF5) holds `X`, 129 × time at 1 kHz (row 129 is the all-zero
#   vertex reference), and `DIN_1`, the trigger events. Each song starts exactly **1 s before the `128`
#   trigger that follows its song trigger**. The reader streams only that song's samples from the HDF5 file,
#   so a 1.5 GB recording never has to fit in memory.
#
# `iter_recordings` turns either layout into the object EEG users expect: an `mne.io.RawArray` per
# participant × song, in **volts**, with the HydroCel channel names (`E1` … `E128`, `Cz`) and electrode
# positions, and the participant and song in its metadata (`recording_info`).

# %%
print(f"{summary['format']}: {summary['n_recordings']} recordings, {len(summary['subjects'])} participants "
      f"{summary['subjects']}, {len(summary['songs'])} songs, {summary['n_channels']} channels at {summary['fs']:g} Hz")
if layout == "raw":
    onsets = pd.DataFrame([{"file": r["file"], "participant": r["subject"], "recording": r["recording"],
                            **{f"song {k}": v for k, v in r["onset_samples"].items()}} for r in summary["recordings"]])
    print("onset sample of each song in each raw recording (the 128 trigger after the song trigger, minus 1 s):")
    display(onsets.set_index("file"))

subject = example_subject or summary["subjects"][0]
song = example_song or next((s["id"] for s in summary["songs"] if s["id"] in folder.stimuli), summary["songs"][0]["id"])
checks.among("example_subject", subject, summary["subjects"], folder.root)
checks.among("example_song", song, [s["id"] for s in summary["songs"]], folder.root)
raw = read_recording(folder, subject, song, layout)
print(raw)
print("metadata:", recording_info(raw))

# %% [markdown]
# ## 3 · The montage
#
# The HydroCel Geodesic Sensor Net spreads 128 electrodes evenly over the head and face; MNE ships their
# positions (`GSN-HydroCel-129` includes the vertex `Cz`). `E125`–`E128` sit on the face, beside and
# below the eyes: they mostly record eye movements and blinks, which is why the cleaned release and the
# paper's preprocessing drop them. On the right, how much each electrode varies during this recording
# (robust spread, µV): blinks inflate the frontal electrodes.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), layout="constrained")
face = [name for name in ("E125", "E126", "E127", "E128", "Cz") if name in raw.ch_names]
raw.plot_sensors(axes=axes[0], show_names=face, show=False)
axes[0].set_title(f"{len(raw.ch_names)} electrodes ({', '.join(face)} named)")
spread = np.subtract(*np.percentile(raw.get_data(), [75, 25], axis=1)) * 1e6
picks = [i for i, name in enumerate(raw.ch_names) if name != "Cz"]  # the reference has no spread of its own
image, _ = mne.viz.plot_topomap(spread[picks], mne.pick_info(raw.info, picks), axes=axes[1], show=False, cmap="viridis")
fig.colorbar(image, ax=axes[1], label="inter-quartile range (µV)")
axes[1].set_title(f"P{subject:02d}, song {song}: spread per electrode")
show_saved(fig, out / "montage.png")

# %% [markdown]
# ## 4 · EEG beside the music
#
# A few channels across the scalp (frontal `E11`, fronto-central `E6`, parietal `E62`, occipital `E75`,
# left and right central `E36`, `E104`) over the first seconds of the song, above the log-mel spectrogram
# of the audio. EEG is dominated by activity that has nothing to do with the music — slow drifts, alpha
# waves (8–12 Hz, strongest at the back of the head), blinks (large, slow deflections at the front). The
# response to the music is small and buried in it: single traces do not show it, averages do.

# %%
audio = read_stimulus(folder, song, sr=16000) if song in folder.stimuli else None
if audio is None:
    print(f"no WAV for song {song}: showing the EEG alone (looked in {[str(d) for d in folder.stimuli_dirs]})")
show_saved(plot_eeg_and_music(raw, audio, 16000, seconds=seconds_shown), out / "eeg_and_music.png")
if audio is not None:
    display(Audio(audio[: int(seconds_shown * 16000)], rate=16000))

# %% [markdown]
# ## 5 · The brain's response to note onsets
#
# Each new note or drum hit evokes a stereotyped response in auditory cortex: the **P1–N1–P2 complex**, a
# small positivity near 50 ms, a negativity near 100 ms and a positivity near 200 ms, largest at
# fronto-central electrodes with reversed polarity at the sides of the head. We find the note onsets in the
# audio (peaks of spectral flux), cut the EEG into epochs from −100 to 500 ms around each onset
# (`mne.Epochs`, band-passed 1–15 Hz, average reference, baseline-corrected), and average. Noise unrelated
# to the onsets averages out as 1/√N; what remains is the brain following the music.

# %%
evoked, used = onset_evoked(folder, layout, max_recordings=max_erp_recordings or None)
if evoked is None:
    print("no stimulus WAVs: note onsets cannot be found without the audio, so no ERP")
else:
    n1_time = evoked.copy().pick(["E6", "E7", "E106", "E11"] if "E106" in evoked.ch_names else evoked.ch_names[:4]).crop(0.05, 0.2)
    n1_latency = float(n1_time.times[np.argmin(n1_time.data.mean(axis=0))])
    print(f"fronto-central N1 at {1000 * n1_latency:.0f} ms")
    joint = evoked.plot_joint(times=[0.05, n1_latency, 0.2], title=f"ERP to note onsets ({len(used)} recordings)",
                              show=False)
    show_saved(joint, out / "onset_erp.png")

# %% [markdown]
# ## 6 · The simulator and its forward model
#
# Without a real NMED-T folder, `data_root=""` builds the embedded default: a simulation written in **the
# same file formats**, so everything above — and every later stage — runs through the reader real data
# goes through. The simulation is explicit about how EEG comes to carry music:
#
# 1. Ten synthetic songs at the NMED-T tempi, each with its own key, instruments (drums, bass, chords, a
#    lead, a voice-like formant line, effects) and sections, so *which song* and *which part* differ in
#    sound.
# 2. **Auditory features**: envelopes of seven octave bands (which instruments play), spectral-flux onsets,
#    and a beat pulse.
# 3. **Response kernels** (temporal response functions shaped like the P1–N1–P2 complex) with a latency and
#    a gain specific to each participant.
# 4. **Four cortical sources** — left and right auditory cortex, a central (SMA) beat source, a frontal
#    source — each a current dipole; its **scalp pattern** is computed at the HydroCel electrode positions
#    (with small per-participant differences in position and orientation, the anatomy a subject layer can
#    learn).
# 5. Background EEG (1/f activity from 48 random dipoles, alpha, sensor noise), blinks, and for raw files
#    60 Hz mains, drift and electrode offsets, at a chosen **SNR** — the RMS ratio of the music-driven to
#    the background EEG (0 = no music in the EEG).

# %%
if folder.simulated:
    record, model = load_simulation(folder.root)
    print(f"simulated with preset {record['preset']!r}, seed {record['seed']}, SNR {record['snr']:g} "
          f"({record['snr_db']:.1f} dB)" if record["snr_db"] is not None else "SNR 0 (no music in the EEG)")
    show_saved(plot_forward_model(model, fs=summary["fs"] if layout == "cleaned" else 125.0), out / "forward_model.png")
    truth = pd.DataFrame(record["forward_model"]["subjects"]).T.rename_axis("participant")
    display(truth.head(10))
    display(Audio(read_stimulus(folder, song, sr=16000)[: 8 * 16000], rate=16000))
else:
    print("a real dataset: no simulator ground truth to show")

# %% [markdown]
# The ground truth is known, so we can check that the EEG really carries the music. A **backward model**
# (ridge regression from the time-lagged EEG of all channels to the audio envelope, trained on some songs,
# tested on another) reconstructs the envelope of an unheard song; a *shuffled-song control* correlates the
# same reconstruction with another song's envelope — what chance looks like.

# %%
if folder.stimuli and len(folder.stimuli) >= 2:
    decoding_songs = sorted(folder.stimuli)[:3]
    decoding_subjects = summary["subjects"][: 2 if smoke else 3]
    decoding = envelope_decoding(folder, layout, songs=decoding_songs, subjects=decoding_subjects, max_seconds=30.0)
    print(f"envelope reconstruction (songs {decoding_songs}, participants {decoding_subjects}, leave-one-song-out): "
          f"r = {decoding['r_true']:.2f} "
          f"vs shuffled-song control r = {decoding['r_control']:.2f}")
else:
    decoding = None
    print("the backward model needs the WAVs of at least two songs")

# %% [markdown]
# ## The summary for later stages

# %%
summary["example"] = {"subject": subject, "song": song}
summary["envelope_decoding"] = None if decoding is None else {k: decoding[k] for k in ("r_true", "r_control", "layout")}
summary["elapsed_s"] = round(time.perf_counter() - started, 1)
summary_path = write_json(out / "dataset_summary.json", summary)
print(f"wrote {summary_path} ({summary['format']}, {summary['fs']:g} Hz, {summary['n_channels']} channels, "
      f"{len(summary['subjects'])} participants, {len(summary['songs'])} songs) in {summary['elapsed_s']} s")

# %% [markdown]
# ## Recap
#
# In this notebook we met NMED-T as its files present it: ten songs identified by their trigger numbers,
# twenty participants, a cleaned release at 125 Hz and raw recordings at 1 kHz whose songs start 1 s before
# the `128` trigger that follows each song trigger. Our reader turns both into one `mne.io.Raw` per
# participant × song, in volts, with the HydroCel names and montage, streaming raw songs from HDF5. We saw
# that the EEG is dominated by activity unrelated to the music, yet that averaging around note onsets
# reveals the fronto-central P1–N1–P2 response, and — on the simulator, whose forward model we inspected —
# that a linear backward model recovers the music's envelope far above a shuffled-song control. Next,
# notebook 02 preprocesses these recordings and cuts them into 3.5 s windows paired with the music.
