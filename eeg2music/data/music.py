"""The simulator's music: ten songs at the NMED-T tempos, synthesised from recipes.

Each song has its own key, scale, chord progression and instrumentation (drums, bass, chords, a lead,
a voice-like formant line, effects), arranged in sections so that which instruments play changes over
the song (:func:`synthesize_song`). :mod:`eeg2music.data.simulate` writes them into an NMED-T folder.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import numpy as np
import soxr
from scipy.signal import oaconvolve

from .nmedt import SONGS


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

    n_ir = int(seconds * sr)
    t = np.arange(n_ir) / sr
    ir = rng.standard_normal(n_ir) * np.exp(-6.9 * t / seconds)  # −60 dB at `seconds`
    ir[0] = 0.0
    wet = oaconvolve(signal, ir / np.sqrt(np.sum(ir**2)), mode="full")[: len(signal)]
    return signal + 0.25 * wet
