"""The paper's minimal EEG preprocessing, and the on-disk cache the later stages read.

Postolache et al. preprocess NMED-T as little as possible, and so do we by default:

1. **drop the face channels** — the HydroCel face/eye electrodes :data:`FACE_CHANNELS` (``E125`` …
   ``E128``, absent from the cleaned release anyway) — and the vertex reference ``Cz`` (all zero in the
   raw files, the reference itself), leaving 124 channels ``E1`` … ``E124`` in both layouts;
2. **centre** each channel on the mean of its first 1000 samples;
3. **robust scaling** per channel: subtract the median, divide by the inter-quartile range
   (scikit-learn's :class:`~sklearn.preprocessing.RobustScaler`);
4. **clamp** to ±20 (IQR units), which caps artefacts such as blinks without discarding windows.

Each step is a named function below (:func:`drop_face_channels`, :func:`center_on_first_samples`,
:func:`robust_scale`, :func:`clamp`), and :class:`Preprocessing` records exactly what ran. Two options
the paper leaves open, for ablations: ``filtering="cleaned_release"`` re-applies the filters the NMED-T
authors used for the cleaned release (zero-phase 8th-order Butterworth 0.3 Hz high-pass, 8th-order
Butterworth 59–61 Hz band-stop, 16th-order Chebyshev type I 50 Hz low-pass, with MNE's IIR filters), and
``resample_sfreq`` resamples (e.g. the 1 kHz raw files to the release's 125 Hz).

:func:`build_cache` streams an NMED-T folder one recording (participant × song) at a time through the
pipeline into ``cache_dir/<layout>_<key>_<data>/``: one float32 ``.npy`` file per recording, shaped
(channels, samples) and stored time-major (Fortran order, as the raw HDF5 files store ``X``), so that a
3.5 s window is one contiguous block of the memory-mapped file; and an ``index.json`` that says what is
there (:class:`CacheIndex`). Memory stays flat whatever the size of the dataset: one recording is held
at a time, and readers memory-map the files. The folder is built under a temporary name and renamed
when complete, so an interrupted build is never read; its name holds :meth:`Preprocessing.key` and a
fingerprint of the data read, so a changed configuration (or changed data) builds a new cache and an
unchanged one is reused; ``cache_dir/latest.json`` names the latest build (:func:`open_cache`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .nmedt import recording_info
from .utils import atomic_directory, read_json, write_json

__all__ = [
    "FACE_CHANNELS",
    "REFERENCE_CHANNEL",
    "FILTERINGS",
    "BAD_CHANNEL_MODES",
    "FLAT_THRESHOLD_V",
    "CACHE_FORMAT_VERSION",
    "BadChannelError",
    "Preprocessing",
    "PreprocessedRecording",
    "CachedRecording",
    "CacheIndex",
    "channels_to_drop",
    "drop_face_channels",
    "find_bad_channels",
    "handle_bad_channels",
    "filter_like_cleaned_release",
    "resample",
    "center_on_first_samples",
    "robust_scale",
    "clamp",
    "preprocess_array",
    "preprocess_raw",
    "TracedStep",
    "trace_steps",
    "plot_step_traces",
    "plot_montage_before_after",
    "plot_value_distributions",
    "plot_channel_topomaps",
    "hydrocel_info",
    "cache_folder_name",
    "build_cache",
    "open_cache",
]

#: The HydroCel-128 face/eye electrodes (below the eyes and on the cheeks). They carry mostly ocular and
#: muscle activity; the NMED-T authors removed them from the cleaned release, and the paper drops them.
FACE_CHANNELS: tuple[str, ...] = ("E125", "E126", "E127", "E128")
#: The vertex reference electrode: all zero in the raw files (it *is* the reference), and kept as the
#: 125th row of the cleaned release.
REFERENCE_CHANNEL = "Cz"
#: Filtering choices: none (the paper) or the cleaned release's filters (an ablation).
FILTERINGS = ("none", "cleaned_release")
#: What to do with a flat or non-finite channel: refuse the recording (naming the channel), exclude the
#: channel from every recording of the cache, or interpolate it from its neighbours (spherical splines).
BAD_CHANNEL_MODES = ("error", "exclude", "interpolate")
#: A channel whose peak-to-peak amplitude is at most this (volts) is flat: EEG amplifiers resolve tens
#: of nanovolts and scalp EEG spans tens of microvolts, so 1 nV means a dead or zeroed electrode.
FLAT_THRESHOLD_V = 1e-9
#: Bumped whenever the cache's files or the pipeline's arithmetic change, so old caches are rebuilt.
CACHE_FORMAT_VERSION = 2

#: Samples per block of the passes that run block by block over time (:func:`_working_input`,
#: :class:`_Scaling`): 124 channels × 4096 float32 samples are 2 MB, which stay in the CPU's
#: cache across the steps fused on a block, where whole-recording steps (140 MB for a raw song) would
#: each stream the recording through memory again.
BLOCK_SAMPLES = 4096

INDEX_FILE = "index.json"
LATEST_FILE = "latest.json"
_BUILDER_FILE = "builder.json"


class BadChannelError(ValueError):
    """A recording with flat or non-finite channels under ``bad_channels="error"``; names them."""


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """What the preprocessing does; saved with its outputs, and hashed into the cache's name.

    Parameters
    ----------
    drop_face : bool
        Drop :data:`FACE_CHANNELS` when present (the raw layout has them; the cleaned one does not).
    drop_reference : bool
        Drop the vertex reference :data:`REFERENCE_CHANNEL` (all zero in the raw files).
    filtering : {"none", "cleaned_release"}
        ``"cleaned_release"`` applies the NMED-T authors' filters (0.3 Hz high-pass, 59–61 Hz band-stop,
        50 Hz low-pass; zero-phase IIR, see :func:`filter_like_cleaned_release`) before any resampling.
    resample_sfreq : float or None
        Resample to this rate (Hz) after filtering; None keeps the recording's rate (125 Hz cleaned,
        1000 Hz raw).
    center_samples : int
        Centre each channel on the mean of its first ``center_samples`` samples (counted at the output
        rate); 0 skips the step.
    robust_scale : bool
        Scale each channel by its median and inter-quartile range (:func:`robust_scale`).
    scaler_fit_samples : int or None
        Fit the scaler's median and quartiles on at most this many evenly spaced samples per channel
        (None: on every sample). The default, 37 500, covers every sample of a cleaned-release song
        (≤ 298 s at 125 Hz = 37 250), so the paper's setting is exact; a raw song at 1 kHz is fitted on
        every 8th sample, the cleaned release's 125 Hz grid — the way scikit-learn's
        ``QuantileTransformer(subsample=…)`` bounds its cost. That makes the fit eight times cheaper and
        moves the median and quartiles by less than 1 % of the IQR (measured on 290 s of drifting, EEG-like
        noise with a 10 Hz rhythm at 1 kHz: 0.6 %, the same as with every 6th sample).
    clamp : float or None
        Clamp to ±``clamp`` after scaling (IQR units); None skips it. Requires ``robust_scale``.
    bad_channels : {"error", "exclude", "interpolate"}
        What to do with a flat or non-finite channel (see :data:`BAD_CHANNEL_MODES`).
    flat_threshold : float
        Peak-to-peak amplitude (V) at or below which a channel is flat.

    Notes
    -----
    With ``robust_scale`` on, centring is absorbed by the scaler (subtracting a constant moves the
    median by the same constant), so the paper's centring step changes nothing in the output; it
    matters in the ablation without robust scaling. Without robust scaling the output is in µV.
    """

    drop_face: bool = True
    drop_reference: bool = True
    filtering: str = "none"
    resample_sfreq: float | None = None
    center_samples: int = 1000
    robust_scale: bool = True
    scaler_fit_samples: int | None = 37_500
    clamp: float | None = 20.0
    bad_channels: str = "error"
    flat_threshold: float = FLAT_THRESHOLD_V

    def __post_init__(self) -> None:
        if self.filtering not in FILTERINGS:
            raise ValueError(f"Preprocessing.filtering: {self.filtering!r} is not one of {list(FILTERINGS)}")
        if self.bad_channels not in BAD_CHANNEL_MODES:
            raise ValueError(f"Preprocessing.bad_channels: {self.bad_channels!r} is not one of {list(BAD_CHANNEL_MODES)}")
        if self.resample_sfreq is not None:
            if not (np.isfinite(self.resample_sfreq) and self.resample_sfreq > 0):
                raise ValueError(f"Preprocessing.resample_sfreq: {self.resample_sfreq!r} is not a positive rate in Hz (or None)")
            object.__setattr__(self, "resample_sfreq", float(self.resample_sfreq))
        if isinstance(self.center_samples, bool) or int(self.center_samples) != self.center_samples or self.center_samples < 0:
            raise ValueError(f"Preprocessing.center_samples: {self.center_samples!r} is not a non-negative integer")
        object.__setattr__(self, "center_samples", int(self.center_samples))
        if self.scaler_fit_samples is not None:
            value = self.scaler_fit_samples
            if isinstance(value, bool) or int(value) != value or value < 100:
                raise ValueError(f"Preprocessing.scaler_fit_samples: {value!r} is not an integer ≥ 100 (or None for all samples)")
            object.__setattr__(self, "scaler_fit_samples", int(value))
        if self.clamp is not None:
            if not (np.isfinite(self.clamp) and self.clamp > 0):
                raise ValueError(f"Preprocessing.clamp: {self.clamp!r} is not a positive number (or None)")
            if not self.robust_scale:
                raise ValueError(
                    "Preprocessing.clamp is in IQR units and needs robust_scale=True; set clamp=None without scaling"
                )
            object.__setattr__(self, "clamp", float(self.clamp))
        if not (np.isfinite(self.flat_threshold) and self.flat_threshold >= 0):
            raise ValueError(f"Preprocessing.flat_threshold: {self.flat_threshold!r} is not a non-negative voltage")
        object.__setattr__(self, "flat_threshold", float(self.flat_threshold))

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON types, plus the cache format version they are hashed with."""
        return {**dataclasses.asdict(self), "format_version": CACHE_FORMAT_VERSION}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict` (``format_version`` is ignored; unknown keys are an error)."""
        values = {k: v for k, v in values.items() if k != "format_version"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Preprocessing: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def key(self) -> str:
        """A stable 12-hex-digit hash of the configuration and :data:`CACHE_FORMAT_VERSION`."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

    @property
    def units(self) -> str:
        """Units of the output: ``"IQR"`` (robust-scaled, dimensionless) or ``"uV"``."""
        return "IQR" if self.robust_scale else "uV"

    def steps(self) -> list[str]:
        """What runs, in order, in words (for summaries and figure titles)."""
        steps = []
        dropped = (list(FACE_CHANNELS) if self.drop_face else []) + ([REFERENCE_CHANNEL] if self.drop_reference else [])
        if dropped:
            steps.append(f"drop channels {', '.join(dropped)} (face/eye electrodes and vertex reference)")
        steps.append(f"flat (≤ {self.flat_threshold:g} V peak-to-peak) or non-finite channels: {self.bad_channels}")
        if self.filtering == "cleaned_release":
            steps.append("filter as the cleaned release: 0.3 Hz high-pass, 59–61 Hz band-stop, 50 Hz low-pass (zero-phase IIR)")
        if self.resample_sfreq is not None:
            steps.append(f"resample to {self.resample_sfreq:g} Hz")
        if self.center_samples:
            steps.append(f"centre each channel on the mean of its first {self.center_samples} samples")
        if self.robust_scale:
            fit = f", fitted on ≤ {self.scaler_fit_samples} samples per channel" if self.scaler_fit_samples else ""
            steps.append(f"robust scaling per channel (median, inter-quartile range{fit})")
        else:
            steps.append("convert to µV")
        if self.clamp is not None:
            steps.append(f"clamp to ±{self.clamp:g}")
        steps.append("store as float32")
        return steps


# --------------------------------------------------------------------------------------------------
# The steps (on (channels, samples) arrays, in place where the shape allows)
# --------------------------------------------------------------------------------------------------


def channels_to_drop(drop_face: bool = True, drop_reference: bool = True) -> tuple[str, ...]:
    """The channel names a configuration removes: :data:`FACE_CHANNELS` and/or :data:`REFERENCE_CHANNEL`."""
    return (FACE_CHANNELS if drop_face else ()) + ((REFERENCE_CHANNEL,) if drop_reference else ())


def drop_face_channels(
    data: np.ndarray, ch_names: Sequence[str], *, reference: bool = True
) -> tuple[np.ndarray, list[str]]:
    """Remove the face/eye electrodes :data:`FACE_CHANNELS` (and the reference ``Cz``).

    Channels absent from the recording are skipped, so the same call serves the cleaned layout
    (``E1`` … ``E124``, ``Cz``) and the raw one (``E1`` … ``E128``, ``Cz``): both end with ``E1`` … ``E124``.
    (On an MNE object the equivalent is ``raw.drop_channels([...], on_missing="ignore")``.)

    Parameters
    ----------
    data : array (n_channels, n_samples)
    ch_names : sequence of str
        The name of each row.
    reference : bool
        Remove :data:`REFERENCE_CHANNEL` as well.

    Returns
    -------
    data : array (n_kept, n_samples)
        A view of ``data`` when the kept rows are contiguous (as in both NMED-T layouts, where the
        dropped channels are the last rows), else a copy.
    ch_names : list of str
    """
    return _drop_named(data, ch_names, channels_to_drop(True, reference))


def _drop_named(data: np.ndarray, ch_names: Sequence[str], names: Iterable[str]) -> tuple[np.ndarray, list[str]]:
    rows, kept_names = _kept_rows(data.shape[0], ch_names, names)
    return data[rows], kept_names


def _kept_rows(n_rows: int, ch_names: Sequence[str], names: Iterable[str]) -> tuple[slice | list[int], list[str]]:
    """The rows left after dropping ``names``: a slice when contiguous (indexing then gives a view), and their names."""
    if n_rows != len(ch_names):
        raise ValueError(f"data has {n_rows} rows but {len(ch_names)} channel names were given")
    names = set(names)
    keep = [i for i, name in enumerate(ch_names) if name not in names]
    if not keep:
        raise ValueError(f"no channel left after dropping {sorted(names)} from {list(ch_names)}")
    kept_names = [ch_names[i] for i in keep]
    if keep[-1] - keep[0] + 1 == len(keep):
        return slice(keep[0], keep[-1] + 1), kept_names
    return keep, kept_names


def find_bad_channels(
    data: np.ndarray, ch_names: Sequence[str], flat_threshold: float = FLAT_THRESHOLD_V
) -> dict[str, str]:
    """Flat and non-finite channels of a (channels, samples) array, by name, with the reason.

    Parameters
    ----------
    data : array (n_channels, n_samples)
        EEG in volts.
    ch_names : sequence of str
        The name of each row.
    flat_threshold : float
        A channel whose peak-to-peak amplitude is at most this (V) is flat.

    Returns
    -------
    dict
        ``{name: reason}``, e.g. ``{"E17": "all samples NaN/inf", "E42": "flat (peak-to-peak 0 V)"}``,
        in channel order; empty when every channel is usable.
    """
    if data.ndim != 2 or data.shape[0] != len(ch_names):
        raise ValueError(f"find_bad_channels: data of shape {data.shape} does not match {len(ch_names)} channel names")
    # min/max propagate NaN, so one vectorised pass finds both kinds; rows with NaN are then counted.
    return _bad_channels_from_range(data, ch_names, data.min(axis=1), data.max(axis=1), flat_threshold)


def _bad_channels_from_range(data: np.ndarray, ch_names: Sequence[str], low: np.ndarray, high: np.ndarray,
                             flat_threshold: float) -> dict[str, str]:
    """:func:`find_bad_channels` given each row's minimum and maximum (NaN where the row has a NaN)."""
    n_samples = data.shape[1]
    bad: dict[str, str] = {}
    for row, name in enumerate(ch_names):
        peak_to_peak = high[row] - low[row]
        if not np.isfinite(peak_to_peak):
            n_bad = n_samples - int(np.count_nonzero(np.isfinite(data[row])))
            bad[name] = "all samples NaN/inf" if n_bad == n_samples else f"{n_bad} of {n_samples} samples NaN/inf"
        elif peak_to_peak <= flat_threshold:
            bad[name] = f"flat (peak-to-peak {peak_to_peak:.3g} V)"
    return bad


def handle_bad_channels(
    data: np.ndarray, ch_names: Sequence[str], sfreq: float, bad: dict[str, str], mode: str, where: str = "recording"
) -> np.ndarray:
    """Refuse, exclude or interpolate the channels ``bad`` names, in place.

    Parameters
    ----------
    data : array (n_channels, n_samples)
        EEG in volts.
    ch_names : sequence of str
        HydroCel names of the rows.
    sfreq : float
        Sampling rate (Hz).
    bad : dict
        ``{name: reason}`` from :func:`find_bad_channels`.
    mode : {"error", "exclude", "interpolate"}
        ``"error"`` raises :class:`BadChannelError`; ``"exclude"`` zeroes the channels (the cache then
        leaves them out of every recording, see :attr:`CacheIndex.channel_names`); ``"interpolate"``
        rebuilds them from the other channels with MNE's spherical splines, at the electrode positions
        of MNE's GSN-HydroCel-129 template (NMED-T has no individual digitisation).
    where : str
        How to name the recording in an error message.

    Returns
    -------
    array
        ``data`` itself.
    """
    if not bad:
        return data
    listing = "; ".join(f"{name}: {reason}" for name, reason in bad.items())
    if mode == "error":
        raise BadChannelError(
            f"{where}: {len(bad)} unusable channel(s): {listing}. To leave them out of every recording, run notebook "
            f"02 with -p bad_channels exclude (in Python: Preprocessing(bad_channels='exclude')); to rebuild them from "
            f"their neighbours, -p bad_channels interpolate."
        )
    if mode not in BAD_CHANNEL_MODES:
        raise ValueError(f"bad channel mode {mode!r} is not one of {list(BAD_CHANNEL_MODES)}")
    rows = [list(ch_names).index(name) for name in bad]
    data[rows] = 0.0
    if mode == "exclude":
        return data
    import mne

    if len(bad) > len(ch_names) - 4:
        raise BadChannelError(f"{where}: too few good channels left to interpolate from ({listing})")
    info = mne.create_info(list(ch_names), sfreq, ch_types="eeg", verbose="error")
    raw = mne.io.RawArray(data, info, copy="auto", verbose="error")  # float64: no copy
    raw.set_montage(mne.channels.make_standard_montage("GSN-HydroCel-129"), on_missing="raise", verbose="error")
    raw.info["bads"] = list(bad)
    raw.interpolate_bads(reset_bads=True, verbose="error")
    if not np.shares_memory(raw._data, data):
        data[...] = raw._data
    return data


def filter_like_cleaned_release(data: np.ndarray, sfreq: float) -> np.ndarray:
    """Filter ``data`` in place as the NMED-T authors filtered the cleaned release.

    Their description: zero-phase 8th-order Butterworth high-pass at 0.3 Hz and notch at 59–61 Hz,
    and a 16th-order Chebyshev type I low-pass at 50 Hz. We use MNE's IIR filters with those designs
    (second-order sections, applied forward and backward); the Chebyshev pass-band ripple is not
    published, we use 0.05 dB (MATLAB's ``decimate`` default). The filters run on one song's segment,
    so their start-up transients fall into the first seconds of the song instead of the break before it.

    Parameters
    ----------
    data : array (n_channels, n_samples), float64
    sfreq : float
        Sampling rate (Hz), above 122 Hz (the notch must lie below Nyquist).

    Returns
    -------
    array
        ``data`` itself.
    """
    import mne
    from scipy.signal import BadCoefficients

    if sfreq / 2 <= 61.0:
        raise ValueError(f"filter_like_cleaned_release: sfreq {sfreq:g} Hz is too low for a 59–61 Hz notch")
    mne.filter.filter_data(
        data, sfreq, 0.3, None, method="iir", iir_params=dict(order=8, ftype="butter", output="sos"),
        copy=False, verbose="error",
    )
    mne.filter.notch_filter(
        data, sfreq, 60.0, notch_widths=2.0, method="iir", iir_params=dict(order=8, ftype="butter", output="sos"),
        copy=False, verbose="error",
    )
    with warnings.catch_warnings():
        # MNE's stability check converts each section to zeros/poles through a transfer function, which
        # scipy flags for high-order Chebyshev designs; the SOS filter itself is well conditioned.
        warnings.simplefilter("ignore", BadCoefficients)
        mne.filter.filter_data(
            data, sfreq, None, 50.0, method="iir", iir_params=dict(order=16, ftype="cheby1", rp=0.05, output="sos"),
            copy=False, verbose="error",
        )
    return data


def resample(data: np.ndarray, sfreq: float, new_sfreq: float) -> np.ndarray:
    """Resample (channels, samples) from ``sfreq`` to ``new_sfreq`` Hz (MNE's polyphase resampler, with its
    anti-alias filter); returns a new array (or ``data`` itself when the rates agree)."""
    import mne

    if np.isclose(sfreq, new_sfreq):
        return data
    return mne.filter.resample(data, up=new_sfreq / sfreq, down=1.0, method="polyphase", verbose="error")


def center_on_first_samples(data: np.ndarray, n_samples: int = 1000) -> np.ndarray:
    """Subtract from each channel the mean of its first ``n_samples`` samples, in place.

    Parameters
    ----------
    data : array (n_channels, n_times), float
    n_samples : int
        How many leading samples define each channel's baseline.

    Returns
    -------
    array
        ``data`` itself.

    Raises
    ------
    ValueError
        If the recording is shorter than ``n_samples``.
    """
    data -= _first_samples_mean(data, n_samples)
    return data


def _first_samples_mean(data: np.ndarray, n_samples: int) -> np.ndarray:
    """Each channel's mean over its first ``n_samples`` samples, (n_channels, 1): what centring subtracts."""
    if n_samples <= 0:
        raise ValueError(f"center_on_first_samples: n_samples must be positive, got {n_samples}")
    if data.shape[-1] < n_samples:
        raise ValueError(f"center_on_first_samples: the recording has {data.shape[-1]} samples, fewer than {n_samples}")
    return data[:, :n_samples].mean(axis=1, keepdims=True)


def robust_scale(data: np.ndarray, fit_samples: int | None = None) -> np.ndarray:
    """Per channel, subtract the median and divide by the inter-quartile range, in place.

    Uses scikit-learn's :class:`~sklearn.preprocessing.RobustScaler` (quantiles 25–75 %) on the
    samples × channels view of ``data``. A channel with zero IQR is only centred (scikit-learn's rule);
    flat channels are caught earlier by :func:`find_bad_channels`.

    Parameters
    ----------
    data : array (n_channels, n_times), float
    fit_samples : int, optional
        Fit the median and quartiles on every k-th sample, k = ceil(n_times / fit_samples), i.e. on at
        most ``fit_samples`` evenly spaced samples; all samples when None or when there are fewer.
        The scaling is then applied to every sample.

    Returns
    -------
    array
        ``data`` itself, in IQR units.
    """
    _scale_in_place(fit_robust_scaler(data, fit_samples), data)
    return data


def fit_robust_scaler(data: np.ndarray, fit_samples: int | None = None, offsets: np.ndarray | None = None):
    """The :class:`~sklearn.preprocessing.RobustScaler` (25–75 %) that :func:`robust_scale` applies.

    Parameters
    ----------
    data : array (n_channels, n_times), float
    fit_samples : int, optional
        As in :func:`robust_scale`.
    offsets : array (n_channels, 1), optional
        Fit as if ``offsets`` had been subtracted from ``data`` (they are subtracted from the fitted
        samples only): how the pipeline fits the scaler to the centred data before it centres it.

    Returns
    -------
    sklearn.preprocessing.RobustScaler
        Fitted on the samples × channels view (``copy=False``: ``transform`` works in place). Its
        ``scale_`` has the data's dtype: NumPy returns float32 data's quartiles in float64, and dividing
        float32 data by a float64 IQR runs in float64, three times slower for a change within a float32
        rounding step.
    """
    from sklearn.preprocessing import RobustScaler

    step = max(1, math.ceil(data.shape[1] / fit_samples)) if fit_samples else 1
    scaler = RobustScaler(with_centering=True, with_scaling=True, quantile_range=(25.0, 75.0), copy=False)
    # The scaler computes its quantiles column by column (one channel at a time): fit it on a copy in
    # which each channel's (sub)samples are contiguous, whatever the memory layout of ``data``.
    fit_on = data[:, ::step]
    if offsets is not None:
        fit_on = np.subtract(fit_on, offsets, order="C")
    elif not fit_on.flags.c_contiguous:
        fit_on = np.ascontiguousarray(fit_on)
    scaler.fit(fit_on.T)
    scaler.scale_ = scaler.scale_.astype(data.dtype, copy=False)
    return scaler


def _scale_in_place(scaler, data: np.ndarray) -> None:
    """``scaler.transform`` on the samples × channels view of ``data``, written into ``data``."""
    out = scaler.transform(data.T)  # a view: with copy=False the scaler writes through it into ``data``
    if not np.shares_memory(out, data):
        data[...] = out.T


def clamp(data: np.ndarray, limit: float = 20.0) -> np.ndarray:
    """Clip every value to [-limit, limit], in place."""
    if not limit > 0:
        raise ValueError(f"clamp: limit must be positive, got {limit}")
    np.clip(data, -limit, limit, out=data)
    return data


# --------------------------------------------------------------------------------------------------
# One recording
# --------------------------------------------------------------------------------------------------


@dataclass
class PreprocessedRecording:
    """One participant × song after :func:`preprocess_array` / :func:`preprocess_raw`.

    Attributes
    ----------
    data : array (n_channels, n_samples), float32
    ch_names : list of str
    sfreq : float
    bad_channels : dict
        ``{name: reason}`` for channels found flat or non-finite (already excluded or interpolated).
    dropped_channels : list of str
        Channels removed by the configuration (face, reference).
    """

    data: np.ndarray
    ch_names: list[str]
    sfreq: float
    bad_channels: dict[str, str] = field(default_factory=dict)
    dropped_channels: list[str] = field(default_factory=list)


def _time_major(data: np.ndarray, dtype) -> np.ndarray:
    """``data`` (channels, samples) in ``dtype``, stored time-major: Fortran order, each sample's channels
    adjacent in memory — as the NMED-T files store it (HDF5 ``X`` is (T, 129); MATLAB arrays are
    column-major).

    Returns ``data`` itself when it already is so; a time-major input costs one cast, a channel-major
    (C-ordered) one is transposed in blocks of samples that fit in the CPU cache.
    """
    if data.flags.f_contiguous and data.dtype == dtype:
        return data
    if abs(data.strides[0]) <= abs(data.strides[1]):  # time-major already (e.g. rows of a Fortran array)
        return np.asfortranarray(data, dtype=dtype)
    out = np.empty(data.shape, dtype=dtype, order="F")
    for start in range(0, data.shape[1], 1024):
        out[:, start : start + 1024] = data[:, start : start + 1024]
    return out


def preprocess_array(
    data: np.ndarray,
    ch_names: Sequence[str],
    sfreq: float,
    cfg: Preprocessing | None = None,
    where: str = "recording",
    trace: Callable[[str, np.ndarray, list[str], float], None] | None = None,
) -> PreprocessedRecording:
    """Run the whole pipeline on one (channels, samples) recording in volts.

    Parameters
    ----------
    data : array (n_channels, n_samples), float
        EEG in volts. It is copied once into the float32 working array (float64 while MNE filters,
        resamples or interpolates; then ``data`` itself may be modified when it is already C-ordered
        float64: pass a copy to keep it).
    ch_names : sequence of str
        HydroCel names of the rows.
    sfreq : float
        Sampling rate (Hz).
    cfg : Preprocessing, optional
        The configuration (the paper's defaults when None).
    where : str
        How error messages name the recording (e.g. its file, participant and song).
    trace : callable, optional
        Called as ``trace(step, data, ch_names, sfreq)`` on the input and after every step that runs
        (``data`` is the live array: copy it to keep it); see :func:`trace_steps`.

    Returns
    -------
    PreprocessedRecording
    """
    cfg = cfg or Preprocessing()
    if trace is not None:
        trace("input", data, list(ch_names), sfreq)
    working = _working_input(data, ch_names, sfreq, cfg)
    if working.dropped and trace is not None:
        trace("drop face & reference", working.data, working.ch_names, sfreq)
    result, scaling = _preprocess_working(working, cfg, where, trace)
    if scaling is not None:
        scaling.apply(result.data)
    return result


@dataclass
class _WorkingInput:
    """A recording after the first pass of :func:`preprocess_array` (channels dropped, cast, time-major)."""

    data: np.ndarray
    ch_names: list[str]
    sfreq: float
    dropped: list[str]
    low: np.ndarray  # each channel's minimum (NaN where it holds a NaN), for find_bad_channels
    high: np.ndarray  # each channel's maximum


def _working_input(data: np.ndarray, ch_names: Sequence[str], sfreq: float, cfg: Preprocessing,
                   scale: float = 1.0) -> _WorkingInput:
    """Drop the configured channels and make the working array, in one pass over the input.

    The working array is ``data × scale`` (``scale=1e-6`` turns the files' µV into volts in the same
    pass), time-major as the NMED-T files lay it out (the cache keeps that layout, so that a window is
    one contiguous block of the memory-mapped file), and float32 — the output type, half the memory
    traffic, and ample precision for microvolt signals on millivolt offsets. MNE's filters, resampler
    and interpolation work in float64, so then it stays float64 until they are done. Each channel's
    minimum and maximum, which :func:`find_bad_channels` needs, are taken from the blocks while they are
    in the CPU's cache. :func:`build_cache` runs this pass in its reader thread.
    """
    blocks = ((start, data[:, start : start + BLOCK_SAMPLES]) for start in range(0, data.shape[1], BLOCK_SAMPLES))
    return _working_input_from_blocks(blocks, data.shape, ch_names, sfreq, cfg, scale)


def _working_input_from_blocks(blocks: Iterable[tuple[int, np.ndarray]], shape: tuple[int, int],
                               ch_names: Sequence[str], sfreq: float, cfg: Preprocessing,
                               scale: float = 1.0) -> _WorkingInput:
    """:func:`_working_input` on a recording of ``shape`` that arrives as ``(first sample, block)`` pairs
    (e.g. :meth:`eeg2music.nmedt._RawFile.blocks`, streamed from the file); the blocks are only read."""
    n_channels, n_times = shape
    dropped = [name for name in ch_names if name in channels_to_drop(cfg.drop_face, cfg.drop_reference)]
    rows, names = _kept_rows(n_channels, ch_names, dropped)
    if n_times == 0:
        raise ValueError("the recording has no samples")
    needs_float64 = cfg.filtering != "none" or cfg.resample_sfreq is not None or cfg.bad_channels == "interpolate"
    out = np.empty((len(names), n_times), dtype=np.float64 if needs_float64 else np.float32, order="F")
    low = np.full(len(names), np.inf, dtype=out.dtype)
    high = np.full(len(names), -np.inf, dtype=out.dtype)
    filled = 0
    for first, source in blocks:
        if first != filled or source.shape[0] != n_channels:
            raise ValueError(f"block at sample {first} of shape {source.shape} does not continue a ({n_channels}, "
                             f"{n_times}) recording at sample {filled}")
        for start in range(0, source.shape[1], BLOCK_SAMPLES):
            part = source[rows, start : start + BLOCK_SAMPLES]
            block = out[:, first + start : first + start + part.shape[1]]
            if scale == 1.0:
                block[...] = part
            else:  # in float64, then rounded once to the working type: as scaling first and casting after
                np.multiply(part, scale, out=block, casting="same_kind")
            np.minimum(low, block.min(axis=1), out=low)  # minimum/maximum propagate NaN, as min/max do
            np.maximum(high, block.max(axis=1), out=high)
        filled += source.shape[1]
    if filled != n_times:
        raise ValueError(f"the blocks hold {filled} samples, not {n_times}")
    return _WorkingInput(out, names, float(sfreq), dropped, low, high)


def _preprocess_working(working: _WorkingInput, cfg: Preprocessing, where: str,
                        trace: Callable[[str, np.ndarray, list[str], float], None] | None = None
                        ) -> tuple[PreprocessedRecording, _Scaling | None]:
    """The steps of :func:`preprocess_array` after :func:`_working_input`, and what is left to apply.

    With ``trace``, every step runs one after the other, so that each can be reported, and nothing is
    left. Without it, centring, robust scaling and clamping are fitted here and returned as a
    :class:`_Scaling` still to apply to the result's data (None when the configuration has no robust
    scaling): :func:`preprocess_array` applies it at once, :func:`build_cache` while it writes the
    file. The two give the same numbers to the bit (the blocks run the same float32 operations on the
    same values).
    """
    report = trace or (lambda *args: None)
    data, names, sfreq, dropped = working.data, working.ch_names, working.sfreq, working.dropped
    bad = _bad_channels_from_range(data, names, working.low, working.high, cfg.flat_threshold)
    if bad:
        handle_bad_channels(data, names, sfreq, bad, cfg.bad_channels, where)
        report(f"bad channels: {cfg.bad_channels}", data, names, sfreq)
    if cfg.filtering == "cleaned_release":
        filter_like_cleaned_release(data, sfreq)
        report("filter", data, names, sfreq)
    if cfg.resample_sfreq is not None:
        data, sfreq = resample(data, sfreq, cfg.resample_sfreq), cfg.resample_sfreq
        report("resample", data, names, sfreq)
    data = _time_major(data, np.float32)
    result = PreprocessedRecording(data=data, ch_names=names, sfreq=float(sfreq), bad_channels=bad,
                                   dropped_channels=dropped)
    if trace is None and cfg.robust_scale:
        return result, _Scaling.fit(data, cfg, where)
    if cfg.center_samples:
        try:
            center_on_first_samples(data, cfg.center_samples)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        report("centre", data, names, sfreq)
    if cfg.robust_scale:
        robust_scale(data, cfg.scaler_fit_samples)
        report("robust scale", data, names, sfreq)
    else:
        data *= np.float32(1e6)
        report("convert to µV", data, names, sfreq)
    if cfg.clamp is not None:
        clamp(data, cfg.clamp)
        report("clamp", data, names, sfreq)
    return result, None


@dataclass
class _Scaling:
    """Centring, robust scaling and clamping fitted to one recording, applied block by block.

    The same arithmetic as :func:`center_on_first_samples`, :func:`robust_scale` and :func:`clamp` run
    one after the other: the offsets come from the first samples, the scaler is fitted on the centred
    (sub)samples, and each block of :data:`BLOCK_SAMPLES` samples is then centred, transformed by the
    scaler and clipped while it is in the CPU's cache — and, in :func:`build_cache`, written to the
    file before the next block is touched, so the recording streams through memory once.
    """

    offsets: np.ndarray | None  # (channels, 1) float32
    scaler: Any  # sklearn.preprocessing.RobustScaler, fitted
    clamp: float | None

    @classmethod
    def fit(cls, data: np.ndarray, cfg: Preprocessing, where: str) -> _Scaling:
        offsets = None
        if cfg.center_samples:
            try:
                offsets = _first_samples_mean(data, cfg.center_samples)  # what center_on_first_samples subtracts
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        return cls(offsets, fit_robust_scaler(data, cfg.scaler_fit_samples, offsets), cfg.clamp)

    def blocks(self, data: np.ndarray) -> Iterator[np.ndarray]:
        """Apply to ``data`` (float32, time-major) in place, yielding each block as soon as it is done."""
        import sklearn

        # The bad-channel step has run: every value is finite, and the scaler need not check each block again.
        with sklearn.config_context(assume_finite=True):
            for start in range(0, data.shape[1], BLOCK_SAMPLES):
                block = data[:, start : start + BLOCK_SAMPLES]
                if self.offsets is not None:
                    block -= self.offsets
                _scale_in_place(self.scaler, block)
                if self.clamp is not None:
                    np.clip(block, -self.clamp, self.clamp, out=block)
                yield block

    def apply(self, data: np.ndarray) -> np.ndarray:
        """Apply to ``data`` in place; returns it."""
        for _ in self.blocks(data):
            pass
        return data


def preprocess_raw(raw, cfg: Preprocessing | None = None, where: str = "recording") -> PreprocessedRecording:
    """Run the whole pipeline (:func:`preprocess_array`) on an MNE recording (``raw``'s buffer may be reused).

    Parameters
    ----------
    raw : mne.io.BaseRaw
        One participant × song in volts (as :func:`eeg2music.nmedt.iter_recordings` yields it).
    cfg : Preprocessing, optional
    where : str
        How error messages name the recording.
    """
    return preprocess_array(*_raw_buffer(raw), cfg, where)


def _raw_buffer(raw) -> tuple[np.ndarray, list[str], float]:
    """MNE's own buffer, channel names and rate: get_data() would copy the recording (~300 MB for a song at 1 kHz)."""
    if not raw.preload:
        raw.load_data(verbose="error")
    return raw._data, raw.ch_names, raw.info["sfreq"]


# --------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedRecording:
    """One participant × song in a cache (see :class:`CacheIndex`)."""

    subject: int
    song: int
    file: str
    n_samples: int
    source: str = ""
    onset_sample: int | None = None
    bad_channels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CacheIndex:
    """What a preprocessed cache holds; read from its ``index.json`` by :func:`open_cache`.

    Attributes
    ----------
    path : Path
        The cache folder (``cache_dir/<name>``).
    key : str
        :meth:`Preprocessing.key` of the configuration.
    preprocessing : Preprocessing
        The configuration that built it.
    layout : str
        ``"cleaned"`` or ``"raw"``.
    data_root : str
        The NMED-T folder it was read from.
    sfreq : float
        Sampling rate of the cached EEG (Hz).
    units : str
        ``"IQR"`` (robust-scaled) or ``"uV"``.
    stored_channels : tuple of str
        The rows of every ``.npy`` file.
    excluded_channels : tuple of str
        Channels found unusable in some recording and left out of every recording
        (``bad_channels="exclude"``); their rows are zero in the files.
    subjects, songs : tuple of int
        Sorted participant numbers and song IDs present; a window's ``subject`` is an index into
        ``subjects``.
    recordings : tuple of CachedRecording
    """

    path: Path
    key: str
    preprocessing: Preprocessing
    layout: str
    data_root: str
    sfreq: float
    units: str
    stored_channels: tuple[str, ...]
    excluded_channels: tuple[str, ...]
    subjects: tuple[int, ...]
    songs: tuple[int, ...]
    recordings: tuple[CachedRecording, ...]
    dropped_channels: tuple[str, ...] = ()
    build_seconds: float = 0.0

    @property
    def channel_names(self) -> list[str]:
        """The channels windows carry: the stored ones minus the excluded ones."""
        return [name for name in self.stored_channels if name not in self.excluded_channels]

    @property
    def channel_rows(self) -> np.ndarray:
        """Row indices of :attr:`channel_names` in the stored arrays."""
        return np.array([i for i, name in enumerate(self.stored_channels) if name not in self.excluded_channels])

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    def recording(self, subject: int, song: int) -> CachedRecording:
        """The entry of one participant × song (a missing one is a KeyError saying what is there)."""
        for entry in self.recordings:
            if entry.subject == subject and entry.song == song:
                return entry
        raise KeyError(f"{self.path}: no recording of participant {subject}, song {song}; "
                       f"participants {list(self.subjects)}, songs {list(self.songs)}")

    def subject_index(self, subject: int) -> int:
        """Position of a participant number in :attr:`subjects` (the id models embed)."""
        try:
            return self.subjects.index(int(subject))
        except ValueError:
            raise KeyError(f"participant {subject} is not in the cache {self.path} (has {list(self.subjects)})") from None

    def load(self, subject: int, song: int, mmap: bool = True) -> np.ndarray:
        """The stored (channels, samples) float32 array of one recording, memory-mapped by default."""
        entry = self.recording(subject, song)
        return np.load(self.path / entry.file, mmap_mode="r" if mmap else None, allow_pickle=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of ``index.json``."""
        return {
            "complete": True,
            "format_version": CACHE_FORMAT_VERSION,
            "key": self.key,
            "preprocessing": self.preprocessing.to_dict(),
            "steps": self.preprocessing.steps(),
            "layout": self.layout,
            "data_root": self.data_root,
            "sfreq": self.sfreq,
            "units": self.units,
            "dtype": "float32",
            "stored_channels": list(self.stored_channels),
            "excluded_channels": list(self.excluded_channels),
            "dropped_channels": list(self.dropped_channels),
            "subjects": list(self.subjects),
            "songs": list(self.songs),
            "build_seconds": self.build_seconds,
            "recordings": [dataclasses.asdict(entry) for entry in self.recordings],
        }

    @classmethod
    def read(cls, path: str | os.PathLike) -> CacheIndex:
        """Read a cache folder's ``index.json``; a missing, incomplete or outdated one is an error."""
        path = Path(path)
        index_file = path / INDEX_FILE
        if not index_file.is_file():
            raise FileNotFoundError(f"{path}: not a complete preprocessed cache (no {INDEX_FILE})")
        meta = read_json(index_file)
        if not meta.get("complete"):
            raise FileNotFoundError(f"{index_file}: the cache is not marked complete")
        if meta.get("format_version") != CACHE_FORMAT_VERSION:
            raise FileNotFoundError(
                f"{index_file}: cache format {meta.get('format_version')} is not the current {CACHE_FORMAT_VERSION}; rebuild it"
            )
        recordings = tuple(CachedRecording(**entry) for entry in meta["recordings"])
        return cls(
            path=path.resolve(),
            key=meta["key"],
            preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
            layout=meta["layout"],
            data_root=meta["data_root"],
            sfreq=float(meta["sfreq"]),
            units=meta["units"],
            stored_channels=tuple(meta["stored_channels"]),
            excluded_channels=tuple(meta["excluded_channels"]),
            subjects=tuple(int(s) for s in meta["subjects"]),
            songs=tuple(int(s) for s in meta["songs"]),
            recordings=recordings,
            dropped_channels=tuple(meta.get("dropped_channels", ())),
            build_seconds=float(meta.get("build_seconds", 0.0)),
        )

    def missing_files(self) -> list[str]:
        """Recording files listed in the index but absent from the folder."""
        return [entry.file for entry in self.recordings if not (self.path / entry.file).is_file()]


def _selection(values: Iterable[int] | int | None) -> list[int] | None:
    if values is None:
        return None
    if isinstance(values, (int, np.integer)):
        return [int(values)]
    return sorted(int(v) for v in values)


def _data_fingerprint(folder, layout: str, songs, subjects) -> str:
    """A hash of the files a build reads (names, sizes, modification times) and the selection."""
    files = sorted(folder.cleaned.values()) if layout == "cleaned" else sorted(folder.raw.values())
    stats = [(str(p.relative_to(folder.root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    # Raw recordings are cut at each song's length, which a stimulus WAV sets where there is one.
    table = folder.length_table() if layout == "raw" and hasattr(folder, "length_table") else folder.songs
    songs_table = {str(k): v.duration_s for k, v in sorted(table.items())}
    text = json.dumps([str(folder.root), layout, _selection(songs), _selection(subjects), stats, songs_table])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def cache_folder_name(cfg: Preprocessing, folder, layout: str, songs=None, subjects=None) -> str:
    """``<layout>_<cfg.key()>_<data fingerprint>``: the folder :func:`build_cache` writes into."""
    return f"{layout}_{cfg.key()}_{_data_fingerprint(folder, layout, songs, subjects)}"


def _remove_abandoned_builds(cache_dir: Path, name: str) -> None:
    """Delete temporary folders of builds of ``name`` whose process is gone (killed mid-build)."""
    import psutil

    for partial in cache_dir.glob(f".{name}.*.partial"):
        builder = partial / _BUILDER_FILE
        try:
            pid = int(json.loads(builder.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            pid = None
        if pid is None:
            # No builder record yet: either just created (leave it) or killed before writing one.
            if time.time() - partial.stat().st_mtime < 3600:
                continue
        elif psutil.pid_exists(pid) and pid != os.getpid():
            continue
        shutil.rmtree(partial, ignore_errors=True)


def _recording_file(subject: int, song: int) -> str:
    return f"sub-{subject:02d}_song-{song}.npy"


def open_cache(path: str | os.PathLike) -> CacheIndex:
    """A complete cache: a cache folder itself, or a cache root (its latest build, see :func:`build_cache`).

    Raises
    ------
    FileNotFoundError
        If there is no complete cache there (an interrupted build is never read), naming what to run.
    """
    path = Path(path).expanduser()
    if (path / INDEX_FILE).is_file():
        index = CacheIndex.read(path)
    elif (path / LATEST_FILE).is_file():
        latest = read_json(path / LATEST_FILE)
        index = CacheIndex.read(path / latest["name"])
    else:
        raise FileNotFoundError(
            f"{path}: no complete preprocessed cache (no {INDEX_FILE} or {LATEST_FILE}); "
            f"build one with notebook 02_preprocess or eeg2music.preprocess.build_cache"
        )
    missing = index.missing_files()
    if missing:
        raise FileNotFoundError(f"{index.path}: {len(missing)} recording file(s) listed in {INDEX_FILE} are missing, e.g. {missing[0]}")
    return index


class _Prefetched:
    """Iterate ``iterable`` one item ahead in a background thread (h5py reads and numpy release the GIL).

    While the caller preprocesses recording k, the thread reads recording k + 1 from disk (and applies
    ``transform`` to it, when given); at most one item waits, so memory holds one extra recording
    whatever the dataset size. Errors raised by the iterable or the transform reach the caller at the
    item where they happened; :meth:`close` stops the thread and closes the iterable (its open files)
    from the thread that used it.
    """

    _DONE = object()

    def __init__(self, iterable: Iterable[Any], transform: Callable[[Any], Any] | None = None):
        import queue
        import threading

        self._queue: Any = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._transform = transform or (lambda item: item)
        self._thread = threading.Thread(target=self._run, args=(iter(iterable),), daemon=True,
                                        name="eeg2music-prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator) -> None:
        try:
            for item in iterator:
                value = self._transform(item)
                del item  # the raw input is not kept while its transform waits in the queue
                if not self._put((value, None)):
                    break
        except BaseException as err:  # handed to the consumer, raised there
            self._put((None, err))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            self._put((self._DONE, None))

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        item, err = self._queue.get()
        if err is not None:
            self._stop.set()
            raise err
        if item is self._DONE:
            self._stop.set()
            raise StopIteration
        return item

    def close(self) -> None:
        import queue

        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()


def _write_recording(path: Path, data: np.ndarray, scaling: _Scaling | None = None) -> None:
    """Write ``data`` (time-major) as a ``.npy`` file, applying ``scaling`` block by block on the way.

    The file is what :func:`numpy.save` writes for the finished array (a version 1.0 header, the values
    in Fortran order); each block goes to the file while it is still in the CPU's cache.
    """
    if not data.flags.f_contiguous:
        raise ValueError(f"{path.name}: the cache stores time-major (Fortran-ordered) arrays")
    from numpy.lib import format as npy

    blocks = scaling.blocks(data) if scaling is not None else (data,)
    with open(path, "wb") as handle:
        npy.write_array_header_1_0(handle, npy.header_data_from_array_1_0(data))
        for block in blocks:
            handle.write(memoryview(block.T))  # the transpose of a time-major block is C-contiguous: no copy


class _BackgroundWriter:
    """Run :func:`_write_recording` in one background thread, at most one write pending.

    Finishing and writing recording k overlaps preprocessing recording k + 1; waiting for the previous
    write before queueing the next keeps at most one array in memory. :meth:`wait` re-raises a failed
    write.
    """

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eeg2music-writer")
        self._pending = None

    def write(self, path: Path, array: np.ndarray, scaling: _Scaling | None) -> None:
        self.wait()
        self._pending = self._pool.submit(_write_recording, path, array, scaling)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def build_cache(
    folder,
    cfg: Preprocessing | None,
    cache_dir: str | os.PathLike,
    layout: str = "cleaned",
    songs: Iterable[int] | int | None = None,
    subjects: Iterable[int] | int | None = None,
    *,
    rebuild: bool = False,
    progress: bool = True,
    overlap_io: bool = True,
) -> CacheIndex:
    """Preprocess an NMED-T folder into ``cache_dir/<name>/``, or reuse the cache already there.

    Parameters
    ----------
    folder : NMEDTFolder or path-like
        An NMED-T folder (see :func:`eeg2music.nmedt.scan_nmedt`).
    cfg : Preprocessing or None
        The configuration (the paper's defaults when None).
    cache_dir : path-like
        The cache root; the cache goes into ``cache_dir/<layout>_<cfg.key()>_<data fingerprint>``
        (:func:`cache_folder_name`), and ``cache_dir/latest.json`` names the latest one built or reused.
    layout : {"cleaned", "raw", "auto"}
        Which NMED-T files to read.
    songs, subjects : list of int, optional
        Restrict to these songs and participants (all by default).
    rebuild : bool
        Build again even if a complete cache with the same name exists.
    progress : bool
        Show a progress bar (one step per recording) and print a one-line summary.
    overlap_io : bool
        Read the next recording and write the previous one in background threads while this one is
        preprocessed (same output; memory holds at most one recording more). False runs the three
        stages one after the other (``benchmarks/bench_preprocess.py`` compares both).

    Returns
    -------
    CacheIndex

    Raises
    ------
    BadChannelError
        A flat or non-finite channel under ``cfg.bad_channels="error"`` (named with its recording).
    ValueError
        Recordings that disagree on channels or sampling rate after preprocessing, or no recording.
    """
    from tqdm.auto import tqdm

    from .nmedt import as_folder, channel_names, check_finite, count_recordings, iter_segments

    cfg = cfg or Preprocessing()
    folder = as_folder(folder)
    layout = folder.resolve_layout(layout)
    cache_dir = Path(cache_dir).expanduser().resolve()
    name = cache_folder_name(cfg, folder, layout, songs, subjects)
    target = cache_dir / name
    if not rebuild and (target / INDEX_FILE).is_file():
        try:
            index = open_cache(target)
        except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
            print(f"[preprocess] rebuilding the unusable cache {target} ({err})")
        else:
            write_json(cache_dir / LATEST_FILE, {"name": name, "key": index.key})
            if progress:
                print(f"[preprocess] reusing the cache {target} ({len(index.recordings)} recordings, key {index.key})")
            return index
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(cache_dir, name)

    total = count_recordings(folder, layout, songs=songs, subjects=subjects)
    entries: list[CachedRecording] = []
    channels: list[str] | None = None
    sfreq: float | None = None
    dropped: list[str] = []
    started = time.perf_counter()
    with atomic_directory(target) as tmp:
        write_json(tmp / _BUILDER_FILE, {"pid": os.getpid(), "started": time.time()})

        def first_pass(segment):
            # The reader thread's share: the file is streamed block by block through one pass that drops
            # channels, converts µV to volts, casts to the working array and finds each channel's range,
            # which also tells whether every value kept is finite (iter_recordings checks every channel
            # separately; a NaN in a dropped face or reference channel does not reach the cache).
            working = _working_input_from_blocks(segment.blocks(), (segment.n_channels, segment.n_times),
                                                 channel_names(segment.n_channels), segment.fs, cfg, scale=1e-6)
            if not (np.isfinite(working.low).all() and np.isfinite(working.high).all()):
                check_finite(segment.read(), segment.path, segment.what)  # scattered NaN/inf: a broken file
            return segment.info, working

        recordings = iter_segments(folder, layout, songs=songs, subjects=subjects)
        if overlap_io:
            recordings = _Prefetched(recordings, transform=first_pass)
        else:
            recordings = map(first_pass, recordings)
        writer = _BackgroundWriter() if overlap_io else None
        bar = tqdm(recordings, total=total, desc=f"preprocess {layout}", unit="rec", disable=not progress)
        try:
            for info, working in bar:
                subject, song = int(info["subject"]), int(info["song"])
                where = f"{info['source']} (participant {subject}, song {song})"
                bar.set_postfix_str(f"P{subject:02d} song {song}", refresh=False)
                earlier = next((e for e in entries if (e.subject, e.song) == (subject, song)), None)
                if earlier is not None:
                    raise ValueError(f"{where}: participant {subject} heard song {song} in {earlier.source} already; "
                                     f"keep one of the two recordings (select subjects/songs, or move a file away)")
                # Centring, scaling and clamping are fitted here and applied by the writer while it writes.
                result, scaling = _preprocess_working(working, cfg, where)
                del working
                if channels is None:
                    channels, sfreq, dropped = result.ch_names, result.sfreq, result.dropped_channels
                elif result.ch_names != channels or not np.isclose(result.sfreq, sfreq):
                    raise ValueError(
                        f"{where}: {len(result.ch_names)} channels at {result.sfreq:g} Hz after preprocessing, but "
                        f"earlier recordings have {len(channels)} channels at {sfreq:g} Hz"
                    )
                file = _recording_file(subject, song)
                if writer is not None:
                    writer.write(tmp / file, result.data, scaling)
                else:
                    _write_recording(tmp / file, result.data, scaling)
                entries.append(CachedRecording(
                    subject=subject, song=song, file=file, n_samples=int(result.data.shape[1]),
                    source=str(info["source"]), onset_sample=info.get("onset_sample"),
                    bad_channels=result.bad_channels,
                ))
                del result
        finally:
            bar.close()
            # Nothing may still be writing into the folder when it is renamed into place or removed.
            if writer is not None:
                writer.close()
            if overlap_io:
                recordings.close()
        if not entries:
            raise ValueError(f"{folder.root}: no {layout} recording matched songs={songs!r}, subjects={subjects!r}")
        excluded: list[str] = []
        if cfg.bad_channels == "exclude":
            flagged = {name for entry in entries for name in entry.bad_channels}
            excluded = [name for name in channels if name in flagged]
        index = CacheIndex(
            path=target,
            key=cfg.key(),
            preprocessing=cfg,
            layout=layout,
            data_root=str(folder.root),
            sfreq=float(sfreq),
            units=cfg.units,
            stored_channels=tuple(channels),
            excluded_channels=tuple(excluded),
            subjects=tuple(sorted({e.subject for e in entries})),
            songs=tuple(sorted({e.song for e in entries})),
            recordings=tuple(sorted(entries, key=lambda e: (e.song, e.subject))),
            dropped_channels=tuple(dropped),
            build_seconds=round(time.perf_counter() - started, 3),
        )
        (tmp / _BUILDER_FILE).unlink()
        # The index is the completion marker: written last, into a folder renamed into place after.
        write_json(tmp / INDEX_FILE, index.to_dict())
    write_json(cache_dir / LATEST_FILE, {"name": name, "key": index.key})
    if progress:
        flagged = sum(bool(e.bad_channels) for e in entries)
        print(
            f"[preprocess] cached {len(entries)} recordings ({index.n_channels} channels at {index.sfreq:g} Hz, "
            f"{sum(e.n_samples for e in entries) / index.sfreq / 3600:.2f} h of EEG) in {index.build_seconds:.1f} s"
            + (f"; {flagged} with flagged channels" if flagged else "")
            + f" → {target}"
        )
    return index


# --------------------------------------------------------------------------------------------------
# Looking at the steps (notebook 02)
# --------------------------------------------------------------------------------------------------


@dataclass
class TracedStep:
    """A copy of a recording after one preprocessing step (see :func:`trace_steps`)."""

    name: str
    data: np.ndarray
    ch_names: list[str]
    sfreq: float
    units: str  # "V", "uV" or "IQR"

    def display(self) -> tuple[np.ndarray, str]:
        """The data in display units (µV for voltages) and the unit's label."""
        if self.units == "V":
            return self.data * 1e6, "µV"
        return self.data, ("µV" if self.units == "uV" else "IQR")


def trace_steps(raw, cfg: Preprocessing | None = None) -> list[TracedStep]:
    """Run the pipeline on a copy of ``raw`` and keep a float32 copy after every step (for figures)."""
    steps: list[TracedStep] = []
    scaled = {"robust scale", "clamp"}

    def keep(name: str, data: np.ndarray, names: list[str], sfreq: float) -> None:
        units = "IQR" if name in scaled else ("uV" if name == "convert to µV" else "V")
        steps.append(TracedStep(name, np.array(data, dtype=np.float32), list(names), float(sfreq), units))

    preprocess_array(raw.get_data(), raw.ch_names, raw.info["sfreq"], cfg, where=_recording_name(raw), trace=keep)
    return steps


def _recording_name(raw) -> str:
    """How messages name a recording: its file, participant and song when eeg2music read it."""
    try:
        info = recording_info(raw)
    except ValueError:
        return "traced recording"
    return f"{info['source']} (participant {info['subject']}, song {info['song']})"


def _before_after(steps: Sequence[TracedStep]) -> tuple[TracedStep, TracedStep]:
    """The recording once its channels are final (after dropping) and at the end of the pipeline."""
    final = steps[-1].ch_names
    before = next(step for step in steps if step.ch_names == final)
    return before, steps[-1]


def plot_step_traces(
    steps: Sequence[TracedStep], channel: str = "E11", seconds: float = 10.0, clamp_limit: float | None = 20.0
):
    """One channel's first ``seconds`` after each step, one panel per step."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(steps), 1, figsize=(10, 1.5 * len(steps) + 0.8), sharex=True, squeeze=False)
    for ax, step in zip(axes[:, 0], steps):
        values, unit = step.display()
        row = values[step.ch_names.index(channel)]
        n = min(int(seconds * step.sfreq), row.size)
        ax.plot(np.arange(n) / step.sfreq, row[:n], lw=0.7, color="k")
        title = step.name
        if step.name == "clamp" and clamp_limit:
            at_limit = np.abs(row) >= clamp_limit * (1 - 1e-6)
            title += f" at ±{clamp_limit:g}: {int(at_limit.sum())} of {row.size} samples of {channel} capped"
            if at_limit[:n].any():
                for sign in (-1, 1):
                    ax.axhline(sign * clamp_limit, color="tab:red", lw=0.8, ls="--")
        ax.set_title(title, loc="left", fontsize=9)
        ax.set_ylabel(unit)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(f"Channel {channel} after each step (first {seconds:g} s)")
    fig.tight_layout()
    return fig


def plot_montage_before_after(steps: Sequence[TracedStep], seconds: float = 10.0):
    """All channels × time as images, before scaling (µV) and at the end (IQR units)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, step, title in zip(axes, _before_after(steps), ("before (channels kept)", "after the pipeline")):
        values, unit = step.display()
        n = min(int(seconds * step.sfreq), values.shape[1])
        limit = float(np.percentile(np.abs(values[:, :n]), 99)) or 1.0
        image = ax.imshow(values[:, :n], aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                          extent=(0, n / step.sfreq, len(step.ch_names) - 0.5, -0.5), interpolation="nearest")
        fig.colorbar(image, ax=ax, label=unit)
        ax.set_title(title)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("channel (E1 … E124)")
    fig.tight_layout()
    return fig


def plot_value_distributions(steps: Sequence[TracedStep], clamp_limit: float | None = 20.0):
    """Pooled sample values before and after, and how unequal the channels' scales are before."""
    import matplotlib.pyplot as plt

    before, after = _before_after(steps)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    values, unit = before.display()
    axes[0].hist(values.ravel(), bins=200, color="tab:blue", log=True)
    axes[0].set(title="before: all samples", xlabel=unit, ylabel="count (log)")
    scaled, scaled_unit = after.display()
    axes[1].hist(scaled.ravel(), bins=200, color="tab:orange", log=True)
    axes[1].set(title="after: all samples", xlabel=scaled_unit)
    if clamp_limit:
        for sign in (-1, 1):
            axes[1].axvline(sign * clamp_limit, color="tab:red", ls="--", lw=0.8)
    q25, q75 = np.percentile(values, [25, 75], axis=1)
    order = np.argsort(q75 - q25)
    axes[2].bar(np.arange(len(order)), (q75 - q25)[order], color="tab:blue", width=1.0)
    axes[2].set(title="before: IQR per channel (sorted)", xlabel="channels", ylabel=f"IQR ({unit})")
    fig.tight_layout()
    return fig


def hydrocel_info(ch_names: Sequence[str], sfreq: float):
    """An MNE Info with the GSN-HydroCel-129 template positions, for topomaps."""
    import mne

    info = mne.create_info(list(ch_names), sfreq, ch_types="eeg", verbose="error")
    info.set_montage(mne.channels.make_standard_montage("GSN-HydroCel-129"), verbose="error")
    return info


def plot_channel_topomaps(steps: Sequence[TracedStep], clamp_limit: float | None = 20.0):
    """Scalp maps: each channel's IQR before scaling (µV), and its peak |value| once scaled (IQR units)."""
    import matplotlib.pyplot as plt
    import mne

    before, after = _before_after(steps)
    scaled = next((step for step in steps if step.name == "robust scale"), after)
    info = hydrocel_info(before.ch_names, before.sfreq)
    values, unit = before.display()
    q25, q75 = np.percentile(values, [25, 75], axis=1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    image, _ = mne.viz.plot_topomap(q75 - q25, info, axes=axes[0], show=False, cmap="viridis")
    fig.colorbar(image, ax=axes[0], label=f"IQR ({unit})", shrink=0.8)
    axes[0].set_title("spread before scaling")
    peaks, scaled_unit = np.abs(scaled.data).max(axis=1), scaled.display()[1]
    image, _ = mne.viz.plot_topomap(peaks, info, axes=axes[1], show=False, cmap="magma")
    fig.colorbar(image, ax=axes[1], label=f"max |value| ({scaled_unit})", shrink=0.8)
    title = "peak |value| once scaled"
    if clamp_limit:
        capped = 100.0 * np.mean(np.abs(after.data) >= clamp_limit * (1 - 1e-6))
        title += f"\n(clamp at ±{clamp_limit:g} caps {capped:.3f} % of all samples)"
    axes[1].set_title(title)
    fig.tight_layout()
    return fig
