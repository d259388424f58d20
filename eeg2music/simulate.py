"""The embedded default: an NMED-T-format dataset simulated from music and an explicit EEG forward model.

Nothing real can be downloaded here, so the pipeline runs end to end on a simulation that is written in
the *real* NMED-T formats (``songNN_Imputed.mat`` and ``PP_R_raw.mat``, see :mod:`eeg2music.nmedt`) —
the reader under test is the one real data goes through. The simulation has three parts:

1. **Music** (:func:`synthesize_song`). Ten songs at the NMED-T tempos, each with its own key, scale,
   chord progression and instrumentation drawn from drums, bass, chords, a lead, a voice-like formant
   line and effects, arranged in sections (intro, verse, chorus, break, …) so that which instruments
   play changes over the song.
2. **What the auditory system follows** (:func:`eeg2music.audio.auditory_features`): band envelopes (which
   instruments are active), spectral-flux onsets, and a beat pulse (the predominant local pulse),
   at the EEG sampling rate.
3. **EEG** (:class:`ForwardModel`). Each feature is convolved with a response kernel (P1–N1–P2-like
   temporal response function) whose latency and gain are subject-specific; the responses drive four
   cortical sources (left and right auditory cortex, a central beat/onset source, a frontal source),
   modelled as current dipoles whose scalp patterns are computed at MNE's GSN-HydroCel electrode
   positions (infinite-medium dipole potentials, re-referenced); then come ongoing background EEG
   (1/f, from 48 random dipoles, plus sensor noise), alpha (occipito-parietal, subject-specific
   frequency), blinks (frontal and face channels), and for the raw layout 60 Hz line noise, drift and
   electrode offsets.

**SNR** is a linear amplitude ratio: the RMS over channels and time of the music-driven EEG divided by
the RMS of the ongoing background EEG (1/f + alpha + sensor noise, 0.3–50 Hz), on average over the
dataset's subjects and songs (each subject's gain scatters around it). ``snr=0`` means no music in the
EEG at all; ``snr_db`` may be given instead (``snr = 10 ** (snr_db / 20)``). Artifacts come on top.

Every random draw comes from ``seed``; ``simulation.json`` (written last, the marker of a complete
dataset) records the parameters and the ground truth (per-subject latency, gain, alpha frequency, song
orders and onsets).
"""

from __future__ import annotations

import functools
import json
import math
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import nmedt
from .audio import FEATURE_BAND_EDGES_HZ, AuditoryFeatures, auditory_features
from .nmedt import SONGS, SUBJECT_IDS

__all__ = [
    "PRESETS",
    "SongRecipe",
    "RECIPES",
    "synthesize_song",
    "ForwardModel",
    "build_forward_model",
    "simulate_nmedt",
    "resolve_simulation_parameters",
    "load_simulation",
    "plot_forward_model",
]

# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------

_ALL_SONGS = list(SONGS)

#: Named sizes of a simulated dataset; every entry can be overridden by keyword.
PRESETS: dict[str, dict[str, Any]] = {
    # The demo: all 20 participants, all 10 songs, 45 s each (12 clips of 3.5 s plus margin),
    # the cleaned layout only (raw at 1 kHz for 20 participants would be GBs; possible by parameter).
    "default": {
        "n_subjects": 20,
        "songs": _ALL_SONGS,
        "song_seconds": 45.0,
        "snr": 0.25,
        "layouts": ["cleaned"],
        "cleaned_fs": 125.0,
        "raw_fs": 1000.0,
        "n_recordings": 2,
        "gap_seconds": 6.0,
        "write_stimuli": True,
        "stimulus_sr": 44100,
    },
    # Tests and smoke runs: 3 participants, 3 songs of 15 s, both layouts.
    "smoke": {
        "n_subjects": 3,
        "songs": [21, 22, 23],
        "song_seconds": 15.0,
        "snr": 0.25,
        "layouts": ["cleaned", "raw"],
        "cleaned_fs": 125.0,
        "raw_fs": 1000.0,
        "n_recordings": 2,
        "gap_seconds": 4.0,
        "write_stimuli": True,
        "stimulus_sr": 44100,
    },
    # NMED-T's own sizes: full-length songs (song_seconds=0 → each song's real length), both layouts.
    "full": {
        "n_subjects": 20,
        "songs": _ALL_SONGS,
        "song_seconds": 0.0,
        "snr": 0.25,
        "layouts": ["cleaned", "raw"],
        "cleaned_fs": 125.0,
        "raw_fs": 1000.0,
        "n_recordings": 2,
        "gap_seconds": 20.0,
        "write_stimuli": True,
        "stimulus_sr": 44100,
    },
}


def resolve_simulation_parameters(preset: str = "default", **overrides: Any) -> dict[str, Any]:
    """A preset's parameters with ``overrides`` applied and checked (types, ranges, names).

    ``snr_db`` may be given instead of ``snr`` (``snr = 10 ** (snr_db / 20)``).

    Raises
    ------
    eeg2music.params.ParameterError
        An unknown preset or parameter, or a value of the wrong type or out of range.
    """
    from .params import ParameterError, coerce_float, coerce_mapping

    if preset not in PRESETS:
        raise ParameterError(f"unknown simulation preset {preset!r}; known: {sorted(PRESETS)}")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if "snr_db" in overrides:
        if "snr" in overrides:
            raise ParameterError("give either 'snr' (linear amplitude ratio) or 'snr_db', not both")
        overrides["snr"] = 10.0 ** (coerce_float("snr_db", overrides.pop("snr_db")) / 20.0)
    params = coerce_mapping(PRESETS[preset], overrides)
    params["songs"] = [int(s) for s in params["songs"]]
    params["layouts"] = [str(layout) for layout in params["layouts"]]
    checks = [
        (1 <= params["n_subjects"] <= len(SUBJECT_IDS), f"n_subjects must be 1–{len(SUBJECT_IDS)}"),
        (bool(params["songs"]) and set(params["songs"]) <= set(SONGS), f"songs must be a non-empty subset of {sorted(SONGS)}"),
        (len(set(params["songs"])) == len(params["songs"]), "songs must not repeat"),
        (params["song_seconds"] == 0 or params["song_seconds"] >= 5, "song_seconds must be >= 5 (or 0 for full length)"),
        (params["snr"] >= 0, "snr must be >= 0 (0 = no music in the EEG)"),
        (bool(params["layouts"]) and set(params["layouts"]) <= set(nmedt.LAYOUTS), f"layouts must be a non-empty subset of {nmedt.LAYOUTS}"),
        (params["cleaned_fs"] >= 50, "cleaned_fs must be >= 50 Hz"),
        (params["raw_fs"] >= 125, "raw_fs must be >= 125 Hz"),
        (params["n_recordings"] >= 1, "n_recordings must be >= 1"),
        (params["gap_seconds"] >= 2, "gap_seconds must be >= 2 (the 128 trigger comes 1 s into a song)"),
        (params["stimulus_sr"] >= 16000, "stimulus_sr must be >= 16000"),
    ]
    for ok, message in checks:
        if not ok:
            raise ParameterError(f"simulation parameter: {message} (got {_describe(params)})")
    params["preset"] = preset
    return params


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in params.items() if key != "songs" or len(value) < 12)


def _song_seconds(song_id: int, song_seconds: float) -> float:
    return float(SONGS[song_id].duration_s) if song_seconds == 0 else float(song_seconds)


# --------------------------------------------------------------------------------------------------
# Music
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SongRecipe:
    """The identity of a simulated song: tempo, key, harmony, instruments and arrangement.

    Patterns are 16-step strings (one character per sixteenth note of a 4/4 bar): ``x`` a hit,
    ``.`` a rest; bass patterns use ``r`` (root), ``o`` (octave), ``f`` (fifth).
    """

    song_id: int
    bpm: float
    root_midi: int
    scale: tuple[int, ...]
    progression: tuple[int, ...]  # scale degrees of the chord roots, one chord per bar
    drums: dict[str, str]  # drum name → 16-step pattern
    kit: str
    bass: str
    bass_pattern: str
    chords: str
    chord_pattern: str  # 16-step pattern; "x..............." = one chord per bar
    lead: str
    lead_density: float
    voice: str  # "" = no voice; else vowel sequence e.g. "aoe"
    voice_octave: int
    effects: tuple[str, ...]
    arrangement: tuple[str, ...]  # section names in order, cycled to fill the song
    swing: float = 0.0
    reverb_s: float = 0.8


MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
DORIAN = (0, 2, 3, 5, 7, 9, 10)
MIXOLYDIAN = (0, 2, 4, 5, 7, 9, 10)
PHRYGIAN = (0, 1, 3, 5, 7, 8, 10)

#: Which parts play in each kind of section.
SECTION_PARTS: dict[str, frozenset[str]] = {
    "intro": frozenset({"chords", "fx"}),
    "verse": frozenset({"drums", "bass", "chords", "voice"}),
    "build": frozenset({"drums", "chords", "lead", "fx"}),
    "chorus": frozenset({"drums", "bass", "chords", "lead", "voice", "fx"}),
    "break": frozenset({"chords", "voice", "fx"}),
    "groove": frozenset({"drums", "bass", "lead"}),
    "outro": frozenset({"drums", "chords"}),
}

RECIPES: dict[int, SongRecipe] = {
    r.song_id: r
    for r in (
        # First Fires — downtempo, brushed kit, warm sub bass, electric piano, soft "oo" voice, crackle.
        SongRecipe(21, SONGS[21].bpm, 50, MINOR, (0, 5, 2, 6), {"kick": "x.....x...x.....", "snare": "....x.......x...", "shaker": "x.x.x.x.x.x.x.x."},
                   "soft", "sub", "r.....r...f.....", "ep", "x.....x.........", "strings", 0.25, "ou", 5, ("crackle",),
                   ("intro", "verse", "chorus", "break", "chorus", "outro"), swing=0.12, reverb_s=1.6),
        # Oino — funky drum machine, square bass, organ stabs, falsetto "ah", square lead.
        SongRecipe(22, SONGS[22].bpm, 57, MIXOLYDIAN, (0, 3, 4, 3), {"kick": "x..x..x...x..x..", "clap": "....x.......x...", "hat": "x.xxx.xxx.xxx.xx"},
                   "machine", "square_bass", "r..r..o...r..f..", "organ", "..x...x...x...x.", "square_lead", 0.45, "ae", 5, ("sweep",),
                   ("intro", "groove", "verse", "chorus", "groove", "chorus"), swing=0.05, reverb_s=0.6),
        # Tiptoes — glitchy: bit-crushed kit, plucked arpeggios, bells, noise bursts.
        SongRecipe(23, SONGS[23].bpm, 62, DORIAN, (0, 3, 6, 4), {"kick": "x......x..x.....", "snare": "....x..x....x.x.", "hat": "xx.xx.xxx.x.xx.x"},
                   "crushed", "saw_bass", "r.r...r.f...r.o.", "pluck", "x.x.x.x.x.x.x.x.", "bells", 0.55, "", 0, ("noise_bursts", "chimes"),
                   ("intro", "verse", "build", "chorus", "break", "chorus"), reverb_s=1.0),
        # Careless Love — congas and shaker, round sub bass, marimba chords, pad, flute, male "oh".
        SongRecipe(24, SONGS[24].bpm, 55, MAJOR, (0, 4, 5, 3), {"conga": "x..x..x.x..x.x..", "shaker": "x.xxx.xxx.xxx.xx", "kick": "x.......x......."},
                   "hand", "sub", "r...r..fr...o...", "marimba", "x..x..x...x..x..", "flute", 0.35, "oa", 4, ("crackle",),
                   ("intro", "verse", "chorus", "break", "verse", "chorus"), swing=0.1, reverb_s=1.2),
        # Lebanese Blonde — trip-hop breakbeat, dub bass, sitar-like lead, strings pad, female "ah-ee".
        SongRecipe(25, SONGS[25].bpm, 52, PHRYGIAN, (0, 1, 0, 6), {"kick": "x.........x..x..", "snare": "....x.......x..x", "hat": "x.x.x.x.x.xxx.x."},
                   "acoustic", "dub", "r.....r.r.....f.", "strings", "x...............", "sitar", 0.5, "ai", 5, ("sweep", "delay"),
                   ("intro", "verse", "groove", "chorus", "break", "chorus"), swing=0.08, reverb_s=1.4),
        # Canopée — bright tropical: rim and claps, plucky synth, whistle lead, "ee" voice.
        SongRecipe(26, SONGS[26].bpm, 64, MAJOR, (0, 5, 3, 4), {"kick": "x...x...x...x...", "rim": "..x..x....x..x..", "hat": "..x...x...x...x.", "clap": "....x.......x..."},
                   "bright", "pluck_bass", "r..o..r...f..o..", "pluck", "..x..x..x..x..x.", "whistle", 0.4, "ie", 6, ("chimes",),
                   ("intro", "groove", "chorus", "verse", "chorus", "outro"), reverb_s=0.9),
        # Doing Yoga — electro-pop: four-on-the-floor, saw bass, supersaw chords, voice, riser.
        SongRecipe(27, SONGS[27].bpm, 60, MINOR, (0, 5, 3, 6), {"kick": "x...x...x...x...", "clap": "....x.......x...", "hat": "..x...x...x...x."},
                   "machine", "saw_bass", "r.r.r.r.o.r.r.r.", "supersaw", "x...x...x...x...", "square_lead", 0.5, "ao", 5, ("riser",),
                   ("intro", "verse", "build", "chorus", "verse", "chorus"), reverb_s=0.9),
        # Until the Sun Needs to Rise — deep house: kick, off-beat open hats, rolling bass, pumping pad, vocal chops.
        SongRecipe(28, SONGS[28].bpm, 58, DORIAN, (0, 3, 5, 4), {"kick": "x...x...x...x...", "open_hat": "..x...x...x...x.", "hat": "xxxxxxxxxxxxxxxx", "clap": "....x.......x..."},
                   "house", "saw_bass", ".rr..rr..rr..rr.", "pad", "x...............", "pluck_lead", 0.3, "eo", 5, ("riser", "pump"),
                   ("intro", "groove", "build", "chorus", "break", "chorus"), reverb_s=1.5),
        # Silent Shout — dark electro: heavy kick, 16th saw arpeggio, pitched-down voice, noise sweeps.
        SongRecipe(29, SONGS[29].bpm, 45, PHRYGIAN, (0, 0, 1, 6), {"kick": "x...x...x...x...", "snare": "....x.......x...", "hat": "x.x.x.x.x.x.x.x."},
                   "heavy", "square_bass", "r.r.r.r.r.r.r.r.", "pad", "x.......x.......", "saw_arp", 1.0, "uo", 3, ("sweep", "riser"),
                   ("intro", "build", "chorus", "groove", "chorus", "outro"), reverb_s=1.1),
        # The Last Thing You Should Do — fast jazzy breaks, upright bass, piano, sax-like lead, baritone voice.
        SongRecipe(30, SONGS[30].bpm, 53, DORIAN, (1, 4, 0, 5), {"kick": "x.....x...x.....", "snare": "....x..x.x..x..x", "ride": "x.xxx.xxx.xxx.xx"},
                   "jazz", "upright", "r.f.o.f.r.f.o.f.", "piano", "x..x.....x..x...", "sax", 0.55, "ao", 3, ("delay",),
                   ("intro", "groove", "verse", "chorus", "groove", "chorus"), swing=0.15, reverb_s=1.3),
    )
}

_VOWELS = {  # formant frequencies (Hz) and bandwidths, after Peterson & Barney
    "a": ((800, 1150, 2900), (80, 90, 120)),
    "e": ((400, 1700, 2600), (60, 80, 120)),
    "i": ((300, 2200, 3000), (50, 90, 120)),
    "o": ((450, 800, 2830), (70, 80, 100)),
    "u": ((325, 700, 2530), (50, 60, 170)),
}


def _midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _adsr(n: int, sr: int, attack: float, decay: float, sustain: float, release: float) -> np.ndarray:
    """An amplitude envelope over ``n`` samples; the release starts ``release`` s before the end."""
    t = np.arange(n) / sr
    env = np.minimum(1.0, t / max(attack, 1e-4))
    env = np.where(t > attack, sustain + (1 - sustain) * np.exp(-(t - attack) / max(decay, 1e-4)), env)
    tail = max(1, int(release * sr))
    if n > tail:
        env[-tail:] *= np.linspace(1.0, 0.0, tail)
    return env


_TABLE_SIZE = 4096
_SNAPSHOTS_S = (0.0, 0.08, 0.25, 0.8)  # times at which decaying spectra are sampled into wavetables


def _wavetable(amps: np.ndarray, freq: float, sr: int) -> np.ndarray:
    """One period of ``sum_h amps[h] sin(2π h x + 0.7 h)``, band-limited below Nyquist at ``freq``."""
    h = np.arange(1, len(amps) + 1)
    keep = (h * freq < sr / 2 - 200) & (np.abs(amps) >= 0.004 * (np.max(np.abs(amps)) or 1.0))
    x = np.arange(_TABLE_SIZE) / _TABLE_SIZE
    return (amps[keep, None] * np.sin(2 * np.pi * h[keep, None] * x[None, :] + 0.7 * h[keep, None])).sum(axis=0)


def _additive(freq: float, n: int, sr: int, amps: np.ndarray, decays: np.ndarray | None = None,
              vibrato: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Harmonics ``h·freq`` with amplitudes ``amps`` (each decaying at ``decays`` per second if given),
    optionally with vibrato; rendered by wavetable look-up, so the cost does not grow with harmonics."""
    t = np.arange(n) / sr
    rate, cents = vibrato
    if cents:
        onset = np.clip(t / 0.3, 0, 1)  # vibrato fades in, as a singer's does
        cycles = np.cumsum(freq * 2 ** (cents * onset * np.sin(2 * np.pi * rate * t) / 1200.0)) / sr
    else:
        cycles = freq * t
    position = (cycles % 1.0) * _TABLE_SIZE
    index = position.astype(np.int64)
    frac = position - index
    following = (index + 1) % _TABLE_SIZE

    def look_up(table: np.ndarray) -> np.ndarray:
        return table[index] * (1 - frac) + table[following] * frac

    if decays is None:
        return look_up(_wavetable(amps, freq, sr))
    # a decaying spectrum, sampled at a few times and cross-faded between them
    out = np.zeros(n)
    snapshots = [look_up(_wavetable(amps * np.exp(-decays * ts), freq, sr)) for ts in _SNAPSHOTS_S]
    for k, ts in enumerate(_SNAPSHOTS_S):
        left = _SNAPSHOTS_S[k - 1] if k > 0 else None
        right = _SNAPSHOTS_S[k + 1] if k + 1 < len(_SNAPSHOTS_S) else None
        weight = np.zeros(n)
        if left is not None:
            rising = (t >= left) & (t < ts)
            weight[rising] = (t[rising] - left) / (ts - left)
        if right is not None:
            falling = (t >= ts) & (t < right)
            weight[falling] = (right - t[falling]) / (right - ts)
        else:
            tail = t >= ts
            weight[tail] = np.exp(-np.min(decays) * (t[tail] - ts))
        if k == 0:
            weight[t < ts] = 1.0
        out += weight * snapshots[k]
    return out


def _harmonic_amps(kind: str, n_harmonics: int) -> np.ndarray:
    h = np.arange(1, n_harmonics + 1, dtype=float)
    if kind == "saw":
        return 1.0 / h
    if kind == "square":
        return np.where(h % 2 == 1, 1.0 / h, 0.0)
    if kind == "tri":
        return np.where(h % 2 == 1, 1.0 / h**2, 0.0)
    if kind == "organ":  # drawbars 8', 4', 2 2/3', 2', 1'
        amps = np.zeros(n_harmonics)
        for harmonic, level in ((1, 1.0), (2, 0.8), (3, 0.6), (4, 0.5), (8, 0.35)):
            if harmonic <= n_harmonics:
                amps[harmonic - 1] = level
        return amps
    return np.where(h == 1, 1.0, 0.0)


def _lowpass_weights(freq: float, n_harmonics: int, cutoff: float, order: float = 4.0) -> np.ndarray:
    f = freq * np.arange(1, n_harmonics + 1)
    return 1.0 / (1.0 + (f / cutoff) ** order)


def _formant_gain(freqs: np.ndarray, vowel: str, shift: float = 1.0) -> np.ndarray:
    centers, widths = _VOWELS[vowel]
    gain = np.zeros_like(freqs, dtype=float)
    for level, (center, width) in zip((1.0, 0.6, 0.3), zip(centers, widths)):
        gain += level / (1.0 + ((freqs - center * shift) / (width * 1.5)) ** 2)
    return gain


def _fm(freq: float, n: int, sr: int, ratio: float, index: float, index_decay: float, amp_decay: float) -> np.ndarray:
    t = np.arange(n) / sr
    modulator = index * np.exp(-t / index_decay) * np.sin(2 * np.pi * ratio * freq * t)
    return np.sin(2 * np.pi * freq * t + modulator) * np.exp(-t / amp_decay)


@functools.lru_cache(maxsize=4096)
def _note(instrument: str, midi: int, n: int, sr: int, vowel: str = "a") -> np.ndarray:
    """One note of a tonal instrument, ``n`` samples long (cached: songs repeat their notes)."""
    f = _midi_hz(midi)
    dur = n / sr
    nh = max(1, min(60, int((min(sr / 2, 9000)) / f)))
    if instrument == "sub":
        wave = _additive(f, n, sr, np.array([1.0, 0.25, 0.08]))
        env = _adsr(n, sr, 0.01, 0.4, 0.7, 0.05)
    elif instrument in ("saw_bass", "square_bass"):
        kind = "saw" if instrument == "saw_bass" else "square"
        amps = _harmonic_amps(kind, nh) * _lowpass_weights(f, nh, 500.0 if kind == "saw" else 700.0)
        decays = 2.0 + 1.5 * np.arange(nh)  # the filter closes: upper harmonics fade first
        wave = _additive(f, n, sr, amps, decays)
        env = _adsr(n, sr, 0.005, 0.25, 0.5, 0.03)
    elif instrument == "pluck_bass":
        wave = _fm(f, n, sr, 1.0, 2.0, 0.08, 0.35)
        env = _adsr(n, sr, 0.003, 0.2, 0.0, 0.03)
    elif instrument == "dub":
        wave = _additive(f, n, sr, np.array([1.0, 0.1, 0.3, 0.05, 0.1]))
        env = _adsr(n, sr, 0.02, 0.8, 0.8, 0.1)
    elif instrument == "upright":
        amps = (1.0 / np.arange(1, nh + 1) ** 1.3) * _lowpass_weights(f, nh, 1200.0)
        wave = _additive(f, n, sr, amps, 3.0 + 2.5 * np.arange(nh))
        env = _adsr(n, sr, 0.004, 0.5, 0.0, 0.04)
    elif instrument == "ep":
        wave = _fm(f, n, sr, 1.0, 1.6, 0.5, 1.4) + 0.25 * _fm(f, n, sr, 14.0, 0.6, 0.05, 0.15)
        env = _adsr(n, sr, 0.004, 1.0, 0.3, 0.2)
    elif instrument == "organ":
        wave = _additive(f, n, sr, _harmonic_amps("organ", nh), vibrato=(6.5, 8.0))
        env = _adsr(n, sr, 0.01, 0.05, 0.95, 0.04)
    elif instrument == "pluck":
        amps = _harmonic_amps("saw", nh) * _lowpass_weights(f, nh, 3500.0)
        wave = _additive(f, n, sr, amps, 6.0 + 3.0 * np.arange(nh))
        env = _adsr(n, sr, 0.002, 0.25, 0.0, 0.03)
    elif instrument == "marimba":
        wave = _fm(f, n, sr, 4.0, 1.2, 0.03, 0.5) + 0.3 * _additive(f, n, sr, np.array([0, 0, 0, 1.0]), np.array([0, 0, 0, 12.0]))
        env = _adsr(n, sr, 0.002, 0.4, 0.0, 0.05)
    elif instrument in ("strings", "pad", "supersaw"):
        cutoff = {"strings": 2500.0, "pad": 1500.0, "supersaw": 5000.0}[instrument]
        amps = _harmonic_amps("saw", nh) * _lowpass_weights(f, nh, cutoff)
        detunes = (-12.0, 0.0, 12.0) if instrument != "supersaw" else (-22.0, -9.0, 0.0, 9.0, 22.0)
        wave = sum(_additive(f * 2 ** (c / 1200.0), n, sr, amps, vibrato=(5.0, 6.0) if instrument == "strings" else (0.0, 0.0)) for c in detunes)
        wave /= len(detunes) ** 0.5
        attack = {"strings": 0.35, "pad": 0.6, "supersaw": 0.02}[instrument]
        env = _adsr(n, sr, attack, 1.0, 0.8, min(0.3, dur / 3))
    elif instrument == "piano":
        amps = (1.0 / np.arange(1, nh + 1) ** 1.1) * _lowpass_weights(f, nh, 3000.0)
        wave = _additive(f, n, sr, amps, 1.5 + 1.2 * np.arange(nh))
        env = _adsr(n, sr, 0.003, 2.0, 0.0, 0.08)
    elif instrument == "square_lead":
        amps = _harmonic_amps("square", nh) * _lowpass_weights(f, nh, 3000.0)
        wave = _additive(f, n, sr, amps, vibrato=(5.5, 15.0))
        env = _adsr(n, sr, 0.01, 0.2, 0.7, 0.05)
    elif instrument == "saw_arp":
        amps = _harmonic_amps("saw", nh) * _lowpass_weights(f, nh, 2500.0)
        wave = _additive(f, n, sr, amps, 4.0 + 1.0 * np.arange(nh))
        env = _adsr(n, sr, 0.002, 0.12, 0.2, 0.02)
    elif instrument == "pluck_lead":
        wave = _fm(f, n, sr, 2.0, 2.5, 0.1, 0.3)
        env = _adsr(n, sr, 0.002, 0.2, 0.1, 0.03)
    elif instrument == "sitar":
        amps = (1.0 / np.arange(1, nh + 1) ** 0.7) * (1 + 0.5 * np.cos(np.arange(nh) * 1.3))  # buzzy bridge
        wave = _additive(f, n, sr, amps * _lowpass_weights(f, nh, 5000.0), 1.0 + 0.8 * np.arange(nh), vibrato=(4.0, 25.0))
        env = _adsr(n, sr, 0.003, 0.8, 0.2, 0.05)
    elif instrument == "flute":
        rng = np.random.default_rng(midi)
        wave = _additive(f, n, sr, np.array([1.0, 0.2, 0.08]), vibrato=(5.0, 12.0)) + 0.05 * rng.standard_normal(n)
        env = _adsr(n, sr, 0.06, 0.3, 0.8, 0.08)
    elif instrument == "whistle":
        wave = _additive(f, n, sr, np.array([1.0, 0.05]), vibrato=(6.0, 20.0))
        env = _adsr(n, sr, 0.03, 0.2, 0.8, 0.05)
    elif instrument == "bells":
        wave = _fm(f, n, sr, 3.5, 3.0, 0.6, 1.2)
        env = _adsr(n, sr, 0.001, 1.0, 0.0, 0.1)
    elif instrument in ("voice", "sax"):
        freqs = f * np.arange(1, nh + 1)
        shift = 1.0 if instrument == "voice" else 0.85
        vowels = vowel if len(vowel) > 1 else vowel * 2
        start = _formant_gain(freqs, vowels[0], shift) / np.arange(1, nh + 1) ** 0.5
        end = _formant_gain(freqs, vowels[1], shift) / np.arange(1, nh + 1) ** 0.5
        glide = np.linspace(0.0, 1.0, n)
        wave = (1 - glide) * _additive(f, n, sr, start, vibrato=(5.5, 30.0)) + glide * _additive(f, n, sr, end, vibrato=(5.5, 30.0))
        env = _adsr(n, sr, 0.05 if instrument == "voice" else 0.02, 0.3, 0.85, 0.08)
    else:
        raise ValueError(f"unknown instrument {instrument!r}")
    out = wave * env
    peak = np.max(np.abs(out)) or 1.0
    return (out / peak).astype(np.float32)


@functools.lru_cache(maxsize=256)
def _drum(name: str, kit: str, sr: int) -> np.ndarray:
    """One drum hit (cached)."""
    rng = np.random.default_rng(zlib.crc32(f"{name}/{kit}".encode()))
    tuning = {"soft": 0.9, "machine": 1.0, "crushed": 1.1, "hand": 1.0, "acoustic": 0.95, "bright": 1.15,
              "house": 1.0, "heavy": 0.8, "jazz": 1.05}.get(kit, 1.0)

    def t_of(seconds):
        return np.arange(int(seconds * sr)) / sr

    def highpass(x):
        return np.diff(x, prepend=0.0)

    if name == "kick":
        t = t_of(0.5 if kit != "heavy" else 0.7)
        f = 48 * tuning + 110 * tuning * np.exp(-t / 0.035)
        hit = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / (0.18 if kit != "heavy" else 0.3))
        hit[: int(0.003 * sr)] += 0.5 * rng.standard_normal(int(0.003 * sr))
    elif name == "snare":
        t = t_of(0.35)
        tone = np.sin(2 * np.pi * 185 * tuning * t) + 0.5 * np.sin(2 * np.pi * 330 * tuning * t)
        noise = highpass(rng.standard_normal(len(t)))
        decay = 0.12 if kit != "soft" else 0.2  # brushes ring longer and softer
        hit = 0.6 * tone * np.exp(-t / 0.06) + noise * np.exp(-t / decay) * (0.5 if kit == "soft" else 0.9)
    elif name in ("hat", "open_hat", "shaker", "ride"):
        length, decay = {"hat": (0.08, 0.02), "open_hat": (0.4, 0.12), "shaker": (0.1, 0.03), "ride": (0.8, 0.3)}[name]
        t = t_of(length)
        if name == "ride" or kit in ("machine", "house"):
            # 808-style metallic noise: six detuned square waves
            hit = sum(np.sign(np.sin(2 * np.pi * fr * t)) for fr in (205.3, 304.4, 369.6, 522.7, 540.0, 800.0))
            hit = highpass(highpass(hit))
        else:
            hit = highpass(highpass(rng.standard_normal(len(t))))
        hit = hit * np.exp(-t / decay)
        if name == "shaker":
            hit *= np.minimum(1.0, t / 0.015)
    elif name == "clap":
        t = t_of(0.3)
        noise = highpass(rng.standard_normal(len(t)))
        env = sum(np.where(t >= d, np.exp(-(t - d) / 0.008), 0.0) for d in (0.0, 0.011, 0.022)) + np.where(t >= 0.03, np.exp(-(t - 0.03) / 0.08), 0.0)
        hit = noise * env
    elif name == "rim":
        t = t_of(0.08)
        hit = (np.sin(2 * np.pi * 820 * tuning * t) + 0.6 * np.sin(2 * np.pi * 1650 * t)) * np.exp(-t / 0.015)
    elif name == "conga":
        t = t_of(0.4)
        f = 220 * tuning * (1 + 0.3 * np.exp(-t / 0.02))
        hit = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.12)
    else:
        raise ValueError(f"unknown drum {name!r}")
    if kit == "crushed":  # bit-crushed and sample-and-held, as glitch producers do
        hold = 6
        hit = np.repeat(hit[::hold], hold)[: len(hit)]
        hit = np.round(hit / np.max(np.abs(hit)) * 7) / 7
    hit = hit / (np.max(np.abs(hit)) or 1.0)
    return hit.astype(np.float32)


def _place(out: np.ndarray, sound: np.ndarray, start: int, gain: float) -> None:
    if start >= len(out) or gain == 0:
        return
    stop = min(len(out), start + len(sound))
    out[start:stop] += gain * sound[: stop - start]


def _chord_midis(recipe: SongRecipe, degree: int, octave: int, size: int = 3) -> list[int]:
    scale = recipe.scale
    notes = []
    for k in range(size):
        step = degree + 2 * k
        notes.append(recipe.root_midi + 12 * octave + scale[step % len(scale)] + 12 * (step // len(scale)))
    return notes


def _sections(recipe: SongRecipe, n_bars: int, bar_s: float) -> list[str]:
    """The section name of each bar: sections of ~8 s, following the recipe's arrangement."""
    per_section = max(1, int(round(8.0 / bar_s)))
    names = []
    for bar in range(n_bars):
        index = bar // per_section
        names.append(recipe.arrangement[index % len(recipe.arrangement)])
    return names


def _melody(rng: np.random.Generator, recipe: SongRecipe, density: float, bars: int = 2) -> list[tuple[int, int, int]]:
    """A motif: (step, length in steps, scale index) over ``bars`` bars of 16 steps."""
    notes = []
    degree = int(rng.integers(0, len(recipe.scale)))
    step = 0
    while step < 16 * bars:
        if rng.random() < density or step % 8 == 0:
            length = int(rng.choice([1, 2, 2, 3, 4, 4, 6, 8])) if density < 1 else 1
            degree += int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3]))
            degree = int(np.clip(degree, -3, 9))
            notes.append((step, length, degree))
            step += length
        else:
            step += 1
    return notes


_RENDER_SR = 22050


def synthesize_song(song_id: int, seconds: float, sr: int = 44100, seed: int = 0) -> np.ndarray:
    """Synthesize a simulated NMED-T song: float32 mono at ``sr``, peak 0.9.

    Parameters
    ----------
    song_id : int
        21–30. Tempo (the NMED-T BPM), key, harmony, instrumentation and arrangement are the song's
        (see :data:`RECIPES`), so the ten songs differ to a listener and in a spectrogram.
    seconds : float
        Length of the audio.
    sr : int
        Sampling rate (44 100 for the stimulus WAVs).
    seed : int
        Seeds the melodies, velocities and effects; the same seed gives the same audio.
    """
    if song_id not in RECIPES:
        raise ValueError(f"song_id {song_id}: expected one of {sorted(RECIPES)}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if sr > _RENDER_SR:
        # render at 22.05 kHz (content up to 11 kHz, beyond the 8 kHz the mel front end sees) and
        # resample: half the work of rendering at 44.1 kHz
        import soxr

        rendered = synthesize_song(song_id, seconds, _RENDER_SR, seed)
        out = soxr.resample(rendered, _RENDER_SR, sr, quality="HQ")
        n = int(round(seconds * sr))
        out = np.pad(out, (0, max(0, n - len(out))))[:n]
        return (0.9 * out / (np.max(np.abs(out)) or 1.0)).astype(np.float32)
    recipe = RECIPES[song_id]
    rng = np.random.default_rng([int(seed), int(song_id)])
    n = int(round(seconds * sr))
    step_s = 60.0 / recipe.bpm / 4.0
    bar_s = 16 * step_s
    n_bars = int(math.ceil(seconds / bar_s)) + 1
    sections = _sections(recipe, n_bars, bar_s)
    stems = {part: np.zeros(n + sr, dtype=np.float64) for part in ("drums", "bass", "chords", "lead", "voice", "fx")}

    def step_sample(bar: int, step: int) -> int:
        swing = recipe.swing * step_s if step % 2 == 1 else 0.0
        return int(round((bar * 16 + step) * step_s * sr + swing * sr))

    lead_motif = _melody(rng, recipe, recipe.lead_density)
    voice_motif = _melody(rng, recipe, 0.3, bars=4)
    kick_times: list[int] = []
    for bar in range(n_bars):
        parts = SECTION_PARTS[sections[bar]]
        degree = recipe.progression[bar % len(recipe.progression)]
        chord = _chord_midis(recipe, degree, 0)
        root = recipe.root_midi + recipe.scale[degree % len(recipe.scale)]
        if "drums" in parts:
            for drum, pattern in recipe.drums.items():
                level = {"kick": 1.0, "snare": 0.7, "clap": 0.6, "hat": 0.25, "open_hat": 0.3, "shaker": 0.25,
                         "ride": 0.25, "rim": 0.4, "conga": 0.6}[drum]
                for step, char in enumerate(pattern):
                    if char == "x":
                        start = step_sample(bar, step)
                        _place(stems["drums"], _drum(drum, recipe.kit, sr), start, level * (0.8 + 0.2 * rng.random()))
                        if drum == "kick":
                            kick_times.append(start)
        if "bass" in parts:
            hits = [i for i, c in enumerate(recipe.bass_pattern) if c != "."]
            for k, step in enumerate(hits):
                char = recipe.bass_pattern[step]
                midi = root - 12 + {"r": 0, "o": 12, "f": 7}[char]
                nxt = hits[k + 1] if k + 1 < len(hits) else 16
                length = int((nxt - step) * step_s * sr * 0.9)
                _place(stems["bass"], _note(recipe.bass, midi, max(length, int(0.05 * sr)), sr), step_sample(bar, step), 0.8)
        if "chords" in parts:
            hits = [i for i, c in enumerate(recipe.chord_pattern) if c == "x"]
            for k, step in enumerate(hits):
                nxt = hits[k + 1] if k + 1 < len(hits) else 16
                length = int((nxt - step) * step_s * sr * (1.0 if recipe.chords in ("pad", "strings") else 0.85))
                for midi in chord:
                    _place(stems["chords"], _note(recipe.chords, midi + 12, max(length, int(0.05 * sr)), sr), step_sample(bar, step), 0.3)
        if "lead" in parts:
            motif_bar = bar % 2
            for step, length, degree_offset in lead_motif:
                if step // 16 != motif_bar:
                    continue
                idx = degree + degree_offset
                midi = recipe.root_midi + 24 + recipe.scale[idx % len(recipe.scale)] + 12 * (idx // len(recipe.scale))
                if recipe.lead == "saw_arp":  # arpeggiate the chord in sixteenths
                    midi = chord[(step % 16) % 3] + 12 * (1 + (step % 8 >= 4))
                n_note = int(length * step_s * sr * 0.95)
                _place(stems["lead"], _note(recipe.lead, midi, max(n_note, int(0.05 * sr)), sr), step_sample(bar, step % 16), 0.35)
        if "voice" in parts and recipe.voice:
            motif_bar = bar % 4
            for k, (step, length, degree_offset) in enumerate(voice_motif):
                if step // 16 != motif_bar:
                    continue
                idx = degree + degree_offset
                midi = recipe.root_midi + 12 * (recipe.voice_octave - 3) + recipe.scale[idx % len(recipe.scale)] + 12 * (idx // len(recipe.scale))
                vowel = recipe.voice[k % len(recipe.voice)] + recipe.voice[(k + 1) % len(recipe.voice)]
                n_note = int(max(2, length) * step_s * sr)
                _place(stems["voice"], _note("voice", midi, n_note, sr, vowel), step_sample(bar, step % 16), 0.45)
        if "fx" in parts:
            _effects(stems["fx"], recipe, rng, sr, step_sample(bar, 0), int(bar_s * sr), sections, bar)
    if "delay" in recipe.effects:  # tape echo on the lead: dotted-eighth repeats
        lead = stems["lead"]
        delay = int(3 * step_s * sr)
        for k in range(1, 4):
            lead[delay * k :] += (0.45**k) * lead[: len(lead) - delay * k]
    if "pump" in recipe.effects and kick_times:  # side-chain compression keyed to the kick
        duck = np.ones(len(stems["chords"]))
        shape = 1.0 - 0.7 * np.exp(-np.arange(int(0.25 * sr)) / (0.08 * sr))
        for start in kick_times:
            stop = min(len(duck), start + len(shape))
            duck[start:stop] = np.minimum(duck[start:stop], shape[: stop - start])
        stems["chords"] *= duck
        stems["bass"] *= duck
    levels = {"drums": 1.0, "bass": 0.8, "chords": 0.6, "lead": 0.55, "voice": 0.7, "fx": 0.35}
    mix = sum(levels[name] * stem for name, stem in stems.items())
    mix = _reverb(mix, sr, recipe.reverb_s, rng)[:n]
    fade = min(int(0.05 * sr), n // 4)
    mix[:fade] *= np.linspace(0, 1, fade)
    mix[n - fade :] *= np.linspace(1, 0, fade)
    return (0.9 * mix / (np.max(np.abs(mix)) or 1.0)).astype(np.float32)


def _effects(out: np.ndarray, recipe: SongRecipe, rng, sr: int, start: int, length: int, sections, bar: int) -> None:
    """Per-bar effects (crackle, risers into the next section, sweeps, chimes, glitch bursts)."""
    next_differs = bar + 1 < len(sections) and sections[bar + 1] != sections[bar]
    for effect in recipe.effects:
        if effect == "crackle":
            clicks = np.zeros(length)
            positions = rng.integers(0, length, size=int(length / sr * 30))
            clicks[positions] = rng.standard_normal(len(positions))
            hiss = 0.03 * np.diff(rng.standard_normal(length + 1))
            _place(out, (clicks + hiss).astype(np.float32), start, 0.5)
        elif effect in ("riser", "sweep") and (next_differs or effect == "sweep" and bar % 4 == 3):
            # noise through a band-pass whose centre climbs (riser) or falls (sweep) across the bar,
            # filtered block by block
            blocks = 16
            block_len = length // blocks
            freqs = np.fft.rfftfreq(block_len, 1 / sr)
            shaped = np.zeros(block_len * blocks)
            for b in range(blocks):
                frac = b / (blocks - 1)
                center = 300 * (30**frac) if effect == "riser" else 6000 * (0.05**frac)
                mask = np.exp(-0.5 * (np.log(np.maximum(freqs, 1) / center) / 0.35) ** 2)
                shaped[b * block_len : (b + 1) * block_len] = np.fft.irfft(np.fft.rfft(rng.standard_normal(block_len)) * mask, block_len)
            t = np.linspace(0.0, 1.0, len(shaped))
            env = t**2 if effect == "riser" else np.sin(np.pi * t)
            _place(out, (shaped * env / (np.max(np.abs(shaped)) or 1)).astype(np.float32), start, 0.8)
        elif effect == "chimes":
            for _ in range(int(rng.integers(1, 4))):
                midi = recipe.root_midi + 36 + recipe.scale[int(rng.integers(0, len(recipe.scale)))]
                _place(out, _note("bells", midi, int(0.8 * sr), sr), start + int(rng.integers(0, length)), 0.4)
        elif effect == "noise_bursts":
            for _ in range(int(rng.integers(1, 5))):
                burst_len = int(rng.uniform(0.02, 0.12) * sr)
                burst = np.diff(rng.standard_normal(burst_len + 1)) * np.hanning(burst_len)
                _place(out, burst.astype(np.float32), start + int(rng.integers(0, length)), 0.6)


def _reverb(signal: np.ndarray, sr: int, seconds: float, rng) -> np.ndarray:
    """Convolution with exponentially decaying noise (a plain room); 25 % wet."""
    from scipy.signal import oaconvolve

    n_ir = int(seconds * sr)
    t = np.arange(n_ir) / sr
    ir = rng.standard_normal(n_ir) * np.exp(-6.9 * t / seconds)  # −60 dB at `seconds`
    ir[0] = 0.0
    wet = oaconvolve(signal, ir / np.sqrt(np.sum(ir**2)), mode="full")[: len(signal)]
    return signal + 0.25 * wet


# --------------------------------------------------------------------------------------------------
# The EEG forward model
# --------------------------------------------------------------------------------------------------

#: Music-driven cortical sources: name → (position in head coordinates (m), moment direction).
MUSIC_SOURCES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # superior temporal plane, moments pointing up and slightly inwards: fronto-central N1/P2
    "left auditory cortex": ((-0.050, -0.005, 0.020), (0.6, 0.35, 1.0)),
    "right auditory cortex": ((0.050, -0.005, 0.020), (-0.6, 0.35, 1.0)),
    # supplementary motor area: beat and onset tracking
    "central (SMA)": ((0.0, 0.010, 0.060), (0.0, 0.3, 1.0)),
    # frontal cortex: slower, broadband responses
    "frontal": ((0.0, 0.050, 0.040), (0.0, 0.8, 0.6)),
}
ALPHA_SOURCES = {
    "occipital alpha": ((0.0, -0.065, 0.020), (0.0, -0.7, 0.7)),
    "left parietal alpha": ((-0.030, -0.050, 0.045), (-0.3, -0.5, 0.8)),
    "right parietal alpha": ((0.030, -0.050, 0.045), (0.3, -0.5, 0.8)),
}
#: The eyes: a blink rotates the corneo-retinal dipoles (pointing forward).
EYE_SOURCES = {"left eye": ((-0.032, 0.075, -0.035), (0.0, 1.0, 0.2)), "right eye": ((0.032, 0.075, -0.035), (0.0, 1.0, 0.2))}

#: TRF components (latency s, width s, amplitude) of the P1–N1–P2 complex.
_TRF_COMPONENTS = ((0.050, 0.012, 0.5), (0.100, 0.020, -1.0), (0.180, 0.035, 0.7))
_BACKGROUND_RMS_UV = 10.0  # ongoing EEG in the 0.3–50 Hz band, typical of scalp recordings


#: The skull's low conductivity spreads scalp potentials; an infinite-medium dipole placed this much
#: closer to the head's centre than its anatomical position gives topographies of realistic width.
_SKULL_SPREAD_DEPTH = 0.6


def _dipole_pattern(positions: np.ndarray, source: np.ndarray, moment: np.ndarray, inside_skull: bool = True) -> np.ndarray:
    """Scalp potential of a current dipole (infinite homogeneous conductor; a source inside the
    skull is spread as if deeper)."""
    moment = moment / np.linalg.norm(moment)
    diff = positions - (_SKULL_SPREAD_DEPTH if inside_skull else 1.0) * np.asarray(source)
    return diff @ moment / np.linalg.norm(diff, axis=1) ** 3


@dataclass
class ForwardModel:
    """The EEG forward model of a simulated dataset (all parameters drawn from ``seed``).

    Attributes
    ----------
    channel_names : list of str
        ``E1`` … ``E128`` and ``Cz`` (potentials are computed at all 129 and re-referenced per layout).
    positions : ndarray (129, 3)
        Electrode positions (m), MNE's GSN-HydroCel-129 montage.
    source_names : list of str
        The music-driven sources.
    patterns : ndarray (n_subjects, n_sources, 129)
        Each source's scalp pattern per subject (unit RMS; subjects differ slightly in orientation).
    mixing : ndarray (n_sources, n_features)
        How strongly each auditory feature drives each source.
    feature_scales : ndarray (n_features,)
        Mean and std used to standardize the features (set from the dataset's songs).
    subjects : list of int
        Participant numbers.
    latency_s, gain : ndarray (n_subjects,)
        Subject-specific latency shift of the responses and their gain.
    alpha_hz, alpha_uv, blink_rate_hz : ndarray (n_subjects,)
        Alpha peak frequency and amplitude, blinks per second.
    signal_scale_uv : float
        Scale of the music-driven EEG that gives the requested SNR (set by calibration).
    """

    seed: int
    subjects: list[int]
    channel_names: list[str]
    positions: np.ndarray
    source_names: list[str]
    patterns: np.ndarray
    mixing: np.ndarray
    kernel_components: np.ndarray  # (n_features, 3 components, 3: latency, width, amplitude)
    latency_s: np.ndarray
    gain: np.ndarray
    alpha_hz: np.ndarray
    alpha_uv: np.ndarray
    blink_rate_hz: np.ndarray
    alpha_patterns: np.ndarray  # (n_alpha, 129)
    eye_pattern: np.ndarray  # (129,)
    background_patterns: np.ndarray  # (n_background, 129)
    feature_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    feature_std: np.ndarray = field(default_factory=lambda: np.ones(0))
    signal_scale_uv: float = 1.0
    feature_names: list[str] = field(default_factory=list)

    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    def kernels(self, subject_index: int, fs: float, seconds: float = 0.5) -> np.ndarray:
        """Response kernels (TRFs) of one subject, ``(n_features, round(seconds * fs))``."""
        tau = np.arange(int(round(seconds * fs))) / fs
        out = np.zeros((self.kernel_components.shape[0], len(tau)))
        for k, components in enumerate(self.kernel_components):
            for latency, width, amplitude in components:
                out[k] += amplitude * np.exp(-0.5 * ((tau - latency - self.latency_s[subject_index]) / width) ** 2)
        return out

    def source_activity(self, features: np.ndarray, subject_index: int, fs: float) -> np.ndarray:
        """Music-driven source time courses ``(n_sources, n_times)`` (unscaled) for standardized features."""
        from scipy.signal import fftconvolve

        kernels = self.kernels(subject_index, fs)
        standardized = (features - self.feature_mean[:, None]) / self.feature_std[:, None]
        # a convolution integral (× 1/fs), so responses have the same size at every sampling rate
        responses = fftconvolve(standardized, kernels, axes=1, mode="full")[:, : features.shape[1]] / fs
        return self.mixing @ responses

    def music_eeg(self, features: np.ndarray, subject_index: int, fs: float) -> np.ndarray:
        """Music-driven scalp potentials ``(129, n_times)`` in µV (before referencing)."""
        sources = self.source_activity(features, subject_index, fs)
        return self.signal_scale_uv * self.gain[subject_index] * (self.patterns[subject_index].T @ sources)

    def to_json(self) -> dict[str, Any]:
        """The ground truth worth recording (per-subject parameters, sources, mixing)."""
        return {
            "subjects": {
                str(s): {
                    "latency_ms": round(float(self.latency_s[i] * 1000), 3),
                    "gain": round(float(self.gain[i]), 4),
                    "alpha_hz": round(float(self.alpha_hz[i]), 3),
                    "alpha_uv": round(float(self.alpha_uv[i]), 3),
                    "blink_rate_hz": round(float(self.blink_rate_hz[i]), 4),
                }
                for i, s in enumerate(self.subjects)
            },
            "sources": {name: {"position_m": list(MUSIC_SOURCES[name][0]), "moment": list(MUSIC_SOURCES[name][1])} for name in self.source_names},
            "features": self.feature_names,
            "mixing": np.round(self.mixing, 4).tolist(),
            "trf_components": [{"latency_s": lat, "width_s": wid, "amplitude": amp} for lat, wid, amp in _TRF_COMPONENTS],
            "signal_scale_uv": float(self.signal_scale_uv),
            "background_rms_uv": _BACKGROUND_RMS_UV,
        }


def build_forward_model(seed: int, subjects: Sequence[int]) -> ForwardModel:
    """Draw a forward model: sources, subject-specific latencies, gains, orientations, alpha, blinks."""
    rng = np.random.default_rng([int(seed), 7])
    montage = nmedt.hydrocel_montage()
    positions_by_name = montage.get_positions()["ch_pos"]
    names = nmedt.raw_channel_names()
    positions = np.array([positions_by_name[name] for name in names])
    n_subjects = len(subjects)
    n_features = len(FEATURE_BAND_EDGES_HZ) - 1 + 2

    def unit_rms(pattern: np.ndarray) -> np.ndarray:
        referenced = pattern - pattern.mean()
        return pattern / np.sqrt(np.mean(referenced**2))

    source_names = list(MUSIC_SOURCES)
    patterns = np.zeros((n_subjects, len(source_names), len(names)))
    for s in range(n_subjects):
        for j, name in enumerate(source_names):
            position, moment = (np.array(v, dtype=float) for v in MUSIC_SOURCES[name])
            # anatomy differs: each subject's dipoles sit a few mm and degrees apart
            position = position + rng.normal(0, 0.004, 3)
            moment = moment / np.linalg.norm(moment) + rng.normal(0, 0.15, 3)
            patterns[s, j] = unit_rms(_dipole_pattern(positions, position, moment))
    n_bands = len(FEATURE_BAND_EDGES_HZ) - 1
    mixing = np.zeros((len(source_names), n_features))
    low_to_high = np.linspace(0.0, 1.0, n_bands)
    mixing[0, :n_bands] = 0.4 + 0.8 * low_to_high  # left AC: higher bands (temporal detail)
    mixing[1, :n_bands] = 1.2 - 0.8 * low_to_high  # right AC: lower bands (pitch, harmony)
    mixing[0, n_bands] = mixing[1, n_bands] = 0.8  # both follow onsets
    mixing[2, n_bands] = 0.6
    mixing[2, n_bands + 1] = 1.2  # SMA: the beat
    mixing[3, :n_bands] = 0.5 * np.sin(np.pi * (low_to_high + 0.2)) + 0.1  # frontal: mid bands
    mixing[3, n_bands + 1] = 0.3
    mixing *= 1.0 + 0.1 * rng.standard_normal(mixing.shape)
    # TRF shape per feature: the P1-N1-P2 complex with feature-specific latencies and weights, so the
    # features leave distinguishable temporal signatures (low bands respond later than high bands).
    kernel_components = np.zeros((n_features, 3, 3))
    for k in range(n_features):
        later = 0.015 * (1 - k / max(1, n_bands - 1)) if k < n_bands else (0.0 if k == n_bands else 0.04)
        for c, (latency, width, amplitude) in enumerate(_TRF_COMPONENTS):
            scale = 1.0 + 0.15 * rng.standard_normal()
            kernel_components[k, c] = (latency + later, width * (1.5 if k == n_bands + 1 else 1.0), amplitude * scale)
    alpha_patterns = np.stack([unit_rms(_dipole_pattern(positions, np.array(p), np.array(m))) for p, m in ALPHA_SOURCES.values()])
    eye = sum(_dipole_pattern(positions, np.array(p), np.array(m), inside_skull=False) for p, m in EYE_SOURCES.values())
    eye = eye - eye[names.index("Cz")]
    eye_pattern = eye / np.max(np.abs(eye))
    # ongoing background: many randomly placed and oriented dipoles inside the brain
    n_background = 48
    directions = rng.normal(size=(n_background, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = 0.07 * rng.uniform(0.3, 1.0, n_background) ** (1 / 3)
    centers = directions * radii[:, None] + np.array([0.0, -0.005, 0.015])
    background = np.stack([_dipole_pattern(positions, c, rng.normal(size=3)) for c in centers])
    background /= np.sqrt(np.mean((background - background.mean(axis=1, keepdims=True)) ** 2, axis=1, keepdims=True))
    return ForwardModel(
        seed=int(seed),
        subjects=[int(s) for s in subjects],
        channel_names=names,
        positions=positions,
        source_names=source_names,
        patterns=patterns,
        mixing=mixing,
        kernel_components=kernel_components,
        latency_s=rng.normal(0.0, 0.012, n_subjects),
        gain=np.exp(rng.normal(0.0, 0.2, n_subjects)),
        alpha_hz=rng.uniform(8.5, 11.5, n_subjects),
        alpha_uv=rng.uniform(2.0, 6.0, n_subjects),
        blink_rate_hz=rng.uniform(0.1, 0.33, n_subjects),
        alpha_patterns=alpha_patterns,
        eye_pattern=eye_pattern,
        background_patterns=background,
        feature_names=[f"band {lo:g}–{hi:g} Hz" for lo, hi in zip(FEATURE_BAND_EDGES_HZ[:-1], FEATURE_BAND_EDGES_HZ[1:])] + ["onsets", "beat"],
    )


def _colored_noise(rng, shape: tuple[int, int], fs: float, exponent: float, rms_band: tuple[float, float],
                   rms: float, fmin: float = 0.3, fmax: float | None = None) -> np.ndarray:
    """Noise with PSD ∝ 1/f**exponent between ``fmin`` and ``fmax``, whose RMS within ``rms_band`` is
    ``rms`` whatever the sampling rate (so both layouts share one spectral density)."""
    from scipy import fft as sfft

    n = shape[-1]
    n_fft = sfft.next_fast_len(n, real=True)  # awkward lengths make FFTs slow
    freqs = np.fft.rfftfreq(n_fft, 1.0 / fs)
    lo, hi = rms_band
    # PSD P(f) = c / f**exponent; its integral over rms_band is rms**2
    if exponent == 1.0:
        integral = math.log(hi / lo)
    else:
        integral = (hi ** (1 - exponent) - lo ** (1 - exponent)) / (1 - exponent)
    c = rms**2 / integral
    psd = np.where(freqs >= fmin, c / np.maximum(freqs, fmin) ** exponent, 0.0)
    if fmax is not None:
        psd = np.where(freqs <= fmax, psd, 0.0)
    # white noise of unit variance has a one-sided PSD of 2/fs: shape it to P(f)
    white = rng.standard_normal((*shape[:-1], n_fft), dtype=np.float32)
    spectrum = sfft.rfft(white, axis=-1) * np.sqrt(psd * fs / 2.0).astype(np.float32)
    return sfft.irfft(spectrum, n=n_fft, axis=-1)[..., :n].astype(np.float64)


def _alpha(rng, n: int, fs: float, freq: float, amplitude_uv: float) -> np.ndarray:
    """Alpha: narrow-band noise around ``freq`` with slow waxing and waning, RMS ``amplitude_uv``."""
    freqs = np.fft.rfftfreq(n, 1.0 / fs)
    shape = np.exp(-0.5 * ((freqs - freq) / 0.6) ** 2)
    signal = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * shape, n=n)
    waxing = _colored_noise(rng, (1, n), fs, 2.0, (0.05, 0.5), 1.0, fmin=0.05, fmax=0.5)[0]
    signal *= np.exp(0.8 * waxing / (np.std(waxing) or 1))
    return amplitude_uv * signal / (np.std(signal) or 1.0)


def _blinks(rng, n: int, fs: float, rate_hz: float, amplitude_uv: float = 120.0) -> np.ndarray:
    """Blink time course: 250–400 ms bumps at Poisson times."""
    out = np.zeros(n)
    count = rng.poisson(rate_hz * n / fs)
    for start in rng.integers(0, n, size=count):
        width = rng.uniform(0.25, 0.4) * fs
        t = np.arange(int(width))
        bump = np.sin(np.pi * t / width) ** 2 * amplitude_uv * rng.uniform(0.6, 1.2)
        stop = min(n, start + len(bump))
        out[start:stop] += bump[: stop - start]
    return out


def _background_eeg(model: ForwardModel, subject_index: int, rng, n: int, fs: float, raw: bool) -> np.ndarray:
    """Ongoing EEG at the 129 electrodes (µV, unreferenced): 1/f sources, alpha, sensor noise."""
    n_background = model.background_patterns.shape[0]
    fmax = None if raw else min(50.0, fs / 2)  # the cleaned release was low-passed at 50 Hz
    # the background dipoles' patterns have unit RMS; dividing by sqrt(count) keeps the sum at `rms`
    sources = _colored_noise(rng, (n_background, n), fs, 1.0, (0.3, 50.0), _BACKGROUND_RMS_UV / math.sqrt(n_background), fmax=fmax)
    eeg = model.background_patterns.T @ sources
    alpha = np.stack([
        _alpha(rng, n, fs, model.alpha_hz[subject_index] + rng.normal(0, 0.2), model.alpha_uv[subject_index] * w)
        for w in (1.0, 0.6, 0.6)
    ])
    eeg += model.alpha_patterns.T @ alpha
    eeg += _colored_noise(rng, (eeg.shape[0], n), fs, 0.0, (0.3, 50.0), 1.0, fmax=fmax)  # electrode noise
    return eeg


def _reference(eeg: np.ndarray, layout: str) -> np.ndarray:
    """Raw: vertex reference (Cz row all zero), 129 rows. Cleaned: E1–E124 + Cz, average reference."""
    if layout == "raw":
        return eeg - eeg[-1:]
    kept = np.concatenate([eeg[:124], eeg[-1:]])
    return kept - kept.mean(axis=0, keepdims=True)


def _calibrate(model: ForwardModel, features: dict[int, AuditoryFeatures], snr: float, fs: float, seed: int) -> None:
    """Standardize the features over the dataset and set the signal scale that gives ``snr``."""
    stacked = np.concatenate([f.matrix() for f in features.values()], axis=1)
    model.feature_mean = stacked.mean(axis=1)
    model.feature_std = stacked.std(axis=1) + 1e-8
    model.signal_scale_uv = 1.0
    rng = np.random.default_rng([int(seed), 11])
    music_power, background_power = [], []
    for song_id, feats in features.items():
        unit = np.ones_like(model.gain)
        saved_gain, model.gain = model.gain, unit  # SNR is defined at gain 1; subjects scatter around it
        music = _reference(model.music_eeg(feats.matrix(), 0, fs), "cleaned")
        model.gain = saved_gain
        background = _reference(_background_eeg(model, 0, rng, feats.n_times, fs, raw=False), "cleaned")
        music_power.append(np.mean(music**2))
        background_power.append(np.mean(background**2))
    music_rms = math.sqrt(np.mean(music_power))
    background_rms = math.sqrt(np.mean(background_power))
    model.signal_scale_uv = snr * background_rms / music_rms if music_rms > 0 else 0.0


def _recording_eeg(model: ForwardModel, subject_index: int, rng, fs: float, layout: str,
                   segments: list[tuple[int, np.ndarray]], n_times: int) -> np.ndarray:
    """One continuous recording: background + music responses at their onsets + artifacts (µV)."""
    raw = layout == "raw"
    eeg = _background_eeg(model, subject_index, rng, n_times, fs, raw=raw)
    for onset, feature_matrix in segments:
        music = model.music_eeg(feature_matrix, subject_index, fs)
        eeg[:, onset : onset + music.shape[1]] += music
    blinks = _blinks(rng, n_times, fs, model.blink_rate_hz[subject_index])
    # the authors' cleaning removed most of the ocular activity; a residue stays in the cleaned layout
    eeg += np.outer(model.eye_pattern, blinks * (1.0 if raw else 0.25))
    if raw:
        t = np.arange(n_times) / fs
        # 60 Hz mains (US recordings) and its third harmonic; electrodes differ in impedance, hence
        # in amplitude and phase, so the pick-up survives re-referencing
        line_gain = rng.uniform(2.0, 15.0, (eeg.shape[0], 1))
        phase = rng.normal(0.0, 0.3, (eeg.shape[0], 1))
        wobble = 1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.01, 0.05) * t)
        eeg += line_gain * wobble * (np.sin(2 * np.pi * 60.0 * t + phase) + 0.3 * np.sin(2 * np.pi * 180.0 * t + 1.0 + 3 * phase))
        # slow drift: a random walk drawn at 2 Hz and interpolated (electrode potentials wander)
        knots = np.arange(0.0, n_times / fs + 1.0, 0.5)
        walk = np.cumsum(rng.standard_normal((eeg.shape[0], len(knots))), axis=1) * (30.0 / math.sqrt(len(knots)))
        times = np.arange(n_times) / fs
        eeg += np.stack([np.interp(times, knots, row) for row in walk])
        eeg += rng.normal(0.0, 300.0, (eeg.shape[0], 1))  # electrode offsets
    return _reference(eeg, layout)


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------


def simulate_nmedt(out_dir: str | Path, *, seed: int = 0, preset: str = "default", layouts: Sequence[str] | None = None,
                   progress: bool = True, **overrides: Any) -> Path:
    """Simulate an NMED-T dataset and write it in the real formats.

    Parameters
    ----------
    out_dir : path-like
        The folder to create (replaced atomically: written under a temporary name, then renamed).
    seed : int
        Seeds everything: the music's details, the forward model, the noise.
    preset : {"default", "smoke", "full"}
        Named sizes (see :data:`PRESETS`).
    layouts : sequence of {"cleaned", "raw"}, optional
        Overrides the preset's layouts.
    progress : bool
        Show a progress bar and print a one-line summary.
    **overrides
        Any preset entry: ``n_subjects``, ``songs``, ``song_seconds`` (0 = NMED-T lengths), ``snr``
        (linear amplitude ratio) or ``snr_db``, ``cleaned_fs``, ``raw_fs``, ``n_recordings``,
        ``gap_seconds``, ``write_stimuli``, ``stimulus_sr``.

    Returns
    -------
    Path
        ``out_dir``, holding ``songNN_Imputed.mat`` (cleaned), ``PP_R_raw.mat`` (raw),
        ``stimuli/<wav_name>`` and ``simulation.json`` (written last).
    """
    from tqdm.auto import tqdm

    from .utils import atomic_directory, write_json

    started = time.perf_counter()
    params = resolve_simulation_parameters(preset, layouts=list(layouts) if layouts is not None else None, **overrides)
    songs = params["songs"]
    subjects = list(SUBJECT_IDS[: params["n_subjects"]])
    seconds = {song: _song_seconds(song, params["song_seconds"]) for song in songs}
    out_dir = Path(out_dir).expanduser().resolve()
    model = build_forward_model(seed, subjects)
    layouts = params["layouts"]
    fs_of = {"cleaned": params["cleaned_fs"], "raw": params["raw_fs"]}

    audio = {song: synthesize_song(song, seconds[song], params["stimulus_sr"], seed) for song in songs}
    features = {
        layout: {song: auditory_features(audio[song], params["stimulus_sr"], fs_of[layout], int(round(seconds[song] * fs_of[layout]))) for song in songs}
        for layout in layouts
    }
    calibration_fs = params["cleaned_fs"]
    calibration = features.get("cleaned") or {
        song: auditory_features(audio[song], params["stimulus_sr"], calibration_fs, int(round(seconds[song] * calibration_fs))) for song in songs
    }
    _calibrate(model, calibration, params["snr"], calibration_fs, seed)

    truth: dict[str, Any] = {"raw_recordings": {}}
    total = len(subjects) * (len(songs) * ("cleaned" in layouts) + min(params["n_recordings"], len(songs)) * ("raw" in layouts))
    bar = tqdm(total=total, desc="simulating EEG", unit="recording", disable=not progress)
    with atomic_directory(out_dir) as tmp:
        tmp.chmod(0o755)  # a dataset folder others may read (mkdtemp makes it private)
        if "cleaned" in layouts:
            _write_cleaned(tmp, model, features["cleaned"], subjects, songs, fs_of["cleaned"], seed, bar)
        if "raw" in layouts:
            truth["raw_recordings"] = _write_raw(tmp, model, features["raw"], subjects, songs, params, seed, bar)
        bar.close()
        if params["write_stimuli"]:
            import soundfile as sf

            (tmp / "stimuli").mkdir()
            for song in songs:
                sf.write(tmp / "stimuli" / SONGS[song].wav_name, audio[song], params["stimulus_sr"], subtype="PCM_16")
        record = {
            "format": "eeg2music simulated NMED-T",
            "preset": params["preset"],
            "seed": int(seed),
            "parameters": {k: v for k, v in params.items() if k != "preset"},
            "snr": params["snr"],
            "snr_db": 20 * math.log10(params["snr"]) if params["snr"] > 0 else None,
            "snr_definition": "RMS of the music-driven EEG / RMS of the ongoing background EEG (1/f + alpha + sensor "
                              "noise, 0.3–50 Hz), cleaned layout, average over songs at subject gain 1; 0 = no music",
            "layouts": layouts,
            "subjects": subjects,
            "songs": {str(s): {"title": SONGS[s].title, "bpm": SONGS[s].bpm, "duration_s": seconds[s], "wav_name": SONGS[s].wav_name} for s in songs},
            "forward_model": model.to_json(),
            **truth,
            "elapsed_s": round(time.perf_counter() - started, 2),
        }
        write_json(tmp / nmedt.SIMULATION_FILE, record)  # last: marks the dataset complete
        (tmp / nmedt.SIMULATION_FILE).chmod(0o644)
    if progress:
        print(f"[simulate] {len(subjects)} subjects × {len(songs)} songs ({', '.join(layouts)}), snr={params['snr']:g}, "
              f"{sum(seconds.values()):.0f} s of music → {out_dir} in {time.perf_counter() - started:.1f} s")
    return out_dir


def _write_cleaned(folder: Path, model: ForwardModel, features: dict[int, AuditoryFeatures], subjects: list[int],
                   songs: list[int], fs: float, seed: int, bar) -> None:
    import scipy.io

    for song in songs:
        feats = features[song]
        data = np.zeros((125, feats.n_times, len(subjects)), dtype=np.float32)
        for s_index, subject in enumerate(subjects):
            rng = np.random.default_rng([int(seed), 101, subject, song])
            data[:, :, s_index] = _recording_eeg(model, s_index, rng, fs, "cleaned", [(0, feats.matrix())], feats.n_times)
            bar.update(1)
        subs = np.empty((1, len(subjects)), dtype=object)
        subs[0, :] = [nmedt.subject_label(s) for s in subjects]
        # uncompressed MATLAB v5, like the public songNN_Imputed.mat files (single precision to halve the size)
        scipy.io.savemat(folder / nmedt.cleaned_filename(song), {f"data{song}": data, f"subs{song}": subs, "fs": np.array([[fs]])},
                         do_compression=False)


def _write_raw(folder: Path, model: ForwardModel, features: dict[int, AuditoryFeatures], subjects: list[int],
               songs: list[int], params: dict[str, Any], seed: int, bar) -> dict[str, Any]:
    fs = params["raw_fs"]
    gap = int(round(params["gap_seconds"] * fs))
    truth: dict[str, Any] = {}
    for s_index, subject in enumerate(subjects):
        rng = np.random.default_rng([int(seed), 202, subject])
        order = [songs[i] for i in rng.permutation(len(songs))]
        n_recordings = min(params["n_recordings"], len(order))
        groups = [order[i::n_recordings] for i in range(n_recordings)]
        for recording, group in enumerate(groups, start=1):
            onsets, segments, cursor = {}, [], gap
            events: list[tuple[str, float]] = []
            for song in group:
                feats = features[song]
                onsets[song] = cursor
                segments.append((cursor, feats.matrix()))
                jitter = int(rng.integers(0, int(0.05 * fs)))
                events.append((f"D{song}", float(cursor - jitter)))
                events.append((f"D{nmedt.ONSET_TRIGGER}", float(cursor + int(round(nmedt.ONSET_OFFSET_S * fs)))))
                cursor += feats.n_times + gap
            n_times = cursor
            eeg = _recording_eeg(model, s_index, rng, fs, "raw", segments, n_times)
            din = np.empty((4, len(events)), dtype=object)
            for i, (label, sample) in enumerate(events):
                din[:, i] = [label, sample, 1.0, float(i + 1)]
            name = nmedt.raw_filename(subject, recording)
            nmedt.write_mat_v73(folder / name, {"X": eeg.astype(np.float32), "fs": float(fs), "DIN_1": din})
            truth[name] = {"subject": subject, "recording": recording, "songs": group, "onset_samples": {str(k): v for k, v in onsets.items()}}
            bar.update(1)
    return truth


# --------------------------------------------------------------------------------------------------
# Reading a simulation back
# --------------------------------------------------------------------------------------------------


def load_simulation(root: str | Path) -> tuple[dict[str, Any], ForwardModel]:
    """The ``simulation.json`` of a simulated folder and its forward model, rebuilt from the seed.

    Raises
    ------
    FileNotFoundError
        If ``root`` holds no ``simulation.json`` (not simulated, or not complete).
    """
    path = Path(root) / nmedt.SIMULATION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no simulation record; {root} was not written (completely) by simulate_nmedt")
    record = json.loads(path.read_text(encoding="utf-8"))
    model = build_forward_model(record["seed"], record["subjects"])
    model.signal_scale_uv = record["forward_model"]["signal_scale_uv"]
    return record, model


def plot_forward_model(model: ForwardModel, fs: float = 125.0, subjects: Iterable[int] = (0, 1)):
    """A figure of the forward model: source topographies, TRF kernels of two subjects, the mixing.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    import mne

    info = mne.create_info(model.channel_names, 125.0, "eeg")
    info.set_montage(nmedt.hydrocel_montage())
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


# --------------------------------------------------------------------------------------------------
# Does the EEG carry the music? A backward model
# --------------------------------------------------------------------------------------------------


def _lagged(data: np.ndarray, lags: Sequence[int]) -> np.ndarray:
    """``(n_times, n_channels * n_lags)``: column block ``k`` holds ``data`` advanced by ``lags[k]``
    samples (the EEG that follows the stimulus sample), zero-padded at the end."""
    n_channels, n_times = data.shape
    out = np.zeros((n_times, n_channels * len(lags)), dtype=np.float32)
    for k, lag in enumerate(lags):
        out[: n_times - lag, k * n_channels : (k + 1) * n_channels] = data[:, lag:].T
    return out


def envelope_decoding(folder, layout: str = "cleaned", songs: Sequence[int] | None = None,
                      subjects: Sequence[int] | None = None, max_lag_s: float = 0.25, rate: float = 62.5,
                      n_components: int = 40, max_seconds: float = 60.0) -> dict[str, Any]:
    """Reconstruct the audio envelope from the EEG with a ridge backward model; compare to a control.

    The classic stimulus-reconstruction analysis (e.g. O'Sullivan et al., 2015): the EEG of every
    channel at lags 0–``max_lag_s`` after each moment is mapped linearly (scikit-learn ``RidgeCV`` on
    time-lagged, PCA-reduced EEG) to the broadband envelope of the music at that moment. Songs are held
    out in turn (leave-one-song-out): the model is trained on the other songs of all subjects and
    tested on the held-out song of each subject. The control correlates the same reconstruction with
    the envelope of *another* song (shuffled-song control): what chance looks like.

    Parameters
    ----------
    folder : NMEDTFolder or path-like
        An NMED-T folder with its stimulus WAVs (needs at least two songs).
    layout : str
        ``"cleaned"``, ``"raw"`` or ``"auto"``.
    songs, subjects : list of int, optional
        Restrict the analysis.
    max_lag_s : float
        Longest EEG lag after the stimulus.
    rate : float
        EEG and envelope are resampled to this rate (Hz) first.
    n_components : int
        EEG principal components kept (fitted on the training songs).
    max_seconds : float
        Only the first ``max_seconds`` of each song are used (keeps full-length songs fast); 0: all.

    Returns
    -------
    dict
        ``r_true`` and ``r_control`` (mean Pearson correlations over held-out recordings), their
        per-recording lists ``per_recording`` and the settings used.
    """
    from fractions import Fraction

    from scipy.signal import resample_poly
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV

    folder = nmedt.as_folder(folder)
    eeg: dict[tuple[int, int], np.ndarray] = {}
    for raw in nmedt.iter_recordings(folder, layout, songs=songs, subjects=subjects):
        info = nmedt.recording_info(raw)
        ratio = Fraction(rate / raw.info["sfreq"]).limit_denominator(100)
        stop = int(max_seconds * raw.info["sfreq"]) if max_seconds else None
        data = resample_poly(raw.get_data(picks="eeg", stop=stop), ratio.numerator, ratio.denominator, axis=1)
        data = data - data.mean(axis=1, keepdims=True)
        eeg[(info["subject"], info["song"])] = data / (data.std() or 1.0)
    song_ids = sorted({song for _, song in eeg})
    if len(song_ids) < 2:
        raise ValueError(f"{folder.root}: envelope decoding needs at least two songs, found {song_ids}")
    envelopes = {}
    for song in song_ids:
        n_times = next(data.shape[1] for (s, g), data in eeg.items() if g == song)
        envelope = auditory_features(nmedt.read_stimulus(folder, song, sr=16000), 16000, rate, n_times).envelope
        envelopes[song] = (envelope - envelope.mean()) / (envelope.std() or 1.0)
    lags = list(range(int(round(max_lag_s * rate)) + 1))
    per_recording = []
    for held_out in song_ids:
        train = [key for key in eeg if key[1] != held_out]
        pca = PCA(n_components=min(n_components, next(iter(eeg.values())).shape[0]), random_state=0)
        pca.fit(np.concatenate([eeg[key] for key in train], axis=1).T)
        X = np.concatenate([_lagged(pca.transform(eeg[key].T).T, lags) for key in train])
        y = np.concatenate([envelopes[key[1]] for key in train])
        model = RidgeCV(alphas=np.logspace(0, 5, 6), gcv_mode="svd").fit(X, y)
        others = [song for song in song_ids if song != held_out]
        for key in (k for k in eeg if k[1] == held_out):
            prediction = model.predict(_lagged(pca.transform(eeg[key].T).T, lags))
            r_true = float(np.corrcoef(prediction, envelopes[held_out])[0, 1])
            controls = []
            for other in others:
                n = min(len(prediction), len(envelopes[other]))
                controls.append(float(np.corrcoef(prediction[:n], envelopes[other][:n])[0, 1]))
            per_recording.append({"subject": key[0], "song": held_out, "r_true": r_true, "r_control": float(np.mean(controls))})
    return {
        "r_true": float(np.mean([r["r_true"] for r in per_recording])),
        "r_control": float(np.mean([r["r_control"] for r in per_recording])),
        "per_recording": per_recording,
        "layout": folder.resolve_layout(layout),
        "max_lag_s": max_lag_s,
        "rate_hz": rate,
        "n_components": n_components,
        "max_seconds": max_seconds,
    }
