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

:func:`~eeg2music.data.cache.build_cache` runs these steps over a whole folder into the on-disk cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import mne
import numpy as np
import sklearn
from scipy.signal import BadCoefficients
from sklearn.preprocessing import RobustScaler

from .recordings import recording_info

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
#: :class:`Scaling`): 124 channels × 4096 float32 samples are 2 MB, which stay in the CPU's
#: cache across the steps fused on a block, where whole-recording steps (140 MB for a raw song) would
#: each stream the recording through memory again.
BLOCK_SAMPLES = 4096


INDEX_FILE = "index.json"


LATEST_FILE = "latest.json"


BUILDER_FILE = "builder.json"


class BadChannelError(ValueError):
    """A recording with flat or non-finite channels under ``bad_channels="error"``; names them."""


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
        leaves them out of every recording, see :attr:`~eeg2music.data.cache.CacheIndex.channel_names`); ``"interpolate"``
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
    result, scaling = preprocess_working(working, cfg, where, trace)
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
    in the CPU's cache. :func:`~eeg2music.data.cache.build_cache` runs this pass in its reader thread.
    """
    blocks = ((start, data[:, start : start + BLOCK_SAMPLES]) for start in range(0, data.shape[1], BLOCK_SAMPLES))
    return working_input_from_blocks(blocks, data.shape, ch_names, sfreq, cfg, scale)


def working_input_from_blocks(blocks: Iterable[tuple[int, np.ndarray]], shape: tuple[int, int],
                               ch_names: Sequence[str], sfreq: float, cfg: Preprocessing,
                               scale: float = 1.0) -> _WorkingInput:
    """:func:`_working_input` on a recording of ``shape`` that arrives as ``(first sample, block)`` pairs
    (e.g. :meth:`eeg2music.data.recordings._RawFile.blocks`, streamed from the file); the blocks are only read."""
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


def preprocess_working(working: _WorkingInput, cfg: Preprocessing, where: str,
                        trace: Callable[[str, np.ndarray, list[str], float], None] | None = None
                        ) -> tuple[PreprocessedRecording, Scaling | None]:
    """The steps of :func:`preprocess_array` after :func:`_working_input`, and what is left to apply.

    With ``trace``, every step runs one after the other, so that each can be reported, and nothing is
    left. Without it, centring, robust scaling and clamping are fitted here and returned as a
    :class:`Scaling` still to apply to the result's data (None when the configuration has no robust
    scaling): :func:`preprocess_array` applies it at once, :func:`~eeg2music.data.cache.build_cache` while it writes the
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
        return result, Scaling.fit(data, cfg, where)
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
class Scaling:
    """Centring, robust scaling and clamping fitted to one recording, applied block by block.

    The same arithmetic as :func:`center_on_first_samples`, :func:`robust_scale` and :func:`clamp` run
    one after the other: the offsets come from the first samples, the scaler is fitted on the centred
    (sub)samples, and each block of :data:`BLOCK_SAMPLES` samples is then centred, transformed by the
    scaler and clipped while it is in the CPU's cache — and, in :func:`~eeg2music.data.cache.build_cache`, written to the
    file before the next block is touched, so the recording streams through memory once.
    """

    offsets: np.ndarray | None  # (channels, 1) float32
    scaler: Any  # sklearn.preprocessing.RobustScaler, fitted
    clamp: float | None

    @classmethod
    def fit(cls, data: np.ndarray, cfg: Preprocessing, where: str) -> Scaling:
        offsets = None
        if cfg.center_samples:
            try:
                offsets = _first_samples_mean(data, cfg.center_samples)  # what center_on_first_samples subtracts
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        return cls(offsets, fit_robust_scaler(data, cfg.scaler_fit_samples, offsets), cfg.clamp)

    def blocks(self, data: np.ndarray) -> Iterator[np.ndarray]:
        """Apply to ``data`` (float32, time-major) in place, yielding each block as soon as it is done."""

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
        One participant × song in volts (as :func:`eeg2music.data.recordings.iter_recordings` yields it).
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


def hydrocel_info(ch_names: Sequence[str], sfreq: float):
    """An MNE Info with the GSN-HydroCel-129 template positions, for topomaps."""

    info = mne.create_info(list(ch_names), sfreq, ch_types="eeg", verbose="error")
    info.set_montage(mne.channels.make_standard_montage("GSN-HydroCel-129"), verbose="error")
    return info
