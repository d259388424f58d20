"""What each notebook's parameters may be, checked in its validation cell before any work.

:func:`eeg2music.params.resolve_parameters` reads every parameter as the type of its default; the
functions here go one step further, for values of the right type that the notebook cannot use:
ranges (``n_boot`` ≥ 1, ``val_fraction`` in [0, 1)), combinations (``val_fraction + test_fraction``
< 1), folders and files that do not exist, song and participant numbers, and list items
(``subjects``). Each notebook's validation cell passes its function as ``checks``::

    params = resolve_parameters("06_evaluate", globals(), checks=checks.evaluate_parameters)

Every error is a :class:`~eeg2music.params.ParameterError` whose message names the parameter, the
value and what is accepted, raised before anything is read, trained or written. What depends on the
data (is ``ood_song`` one of *this folder's* songs? does every song have its WAV?) is checked as soon as
the folder has been scanned, still before any work (:func:`eeg2music.data.pairing.pair_eeg_and_audio`).

A check may normalise a value in place (``subjects="2,3"`` → ``[2, 3]``); the notebook then sees the
normalised value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from .data.nmedt import SONGS
from .models.backbone import SHIPPED_BACKBONE_DIR
from .paths import ABLATION_NAME
from .params import ParameterError, coerce_float, coerce_int, is_unset
from .run_inputs import default_backbone_dir
from .sampling.clips import SAMPLES_NAME
from .training.config import TIMESTEP_SAMPLINGS
from .utils import resolve_device

__all__ = [
    "explore_data_parameters",
    "preprocess_parameters",
    "controlnet_parameters",
    "train_parameters",
    "sample_parameters",
    "evaluate_parameters",
    "NOTEBOOK_CHECKS",
    "backbone_train_timesteps",
    "among",
]

#: The tiny backbone shipped in the package (the default backbone when none is given).


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def _path(params: Mapping[str, Any], name: str, *, kind: str, what: str) -> Path | None:
    """An optional folder (``kind="folder"``) or file parameter: ``""`` passes, anything else must exist."""
    value = params.get(name, "")
    if value in ("", None):
        return None
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise ParameterError(f"parameter {name!r}: {str(path)!r} does not exist; expected {what} (or \"\" for the default)")
    if kind == "folder" and not path.is_dir():
        raise ParameterError(f"parameter {name!r}: {str(path)!r} is a file; expected {what}")
    if kind == "file" and not path.is_file():
        raise ParameterError(f"parameter {name!r}: {str(path)!r} is a folder; expected {what}")
    return path


def _out_dir(params: Mapping[str, Any], name: str = "out_dir") -> None:
    """``out_dir`` may be new, but not an existing file."""
    value = params.get(name, "")
    if value not in ("", None) and Path(str(value)).expanduser().is_file():
        raise ParameterError(f"parameter {name!r}: {str(value)!r} is a file; expected a folder to write into (new or existing)")


def _data_folders(params: Mapping[str, Any], data_root: str) -> None:
    """The folders of a notebook that reads NMED-T: ``data_root`` (described as ``data_root``), ``stimuli_dir``,
    ``out_dir``."""
    _path(params, "data_root", kind="folder", what=data_root)
    _path(params, "stimuli_dir", kind="folder", what="a folder holding the stimulus WAVs")
    _out_dir(params)


def _at_least(params: Mapping[str, Any], name: str, low: float, why: str = "") -> None:
    value = params[name]
    if value < low:
        raise ParameterError(f"parameter {name!r}: {value!r} is below {low:g}; accepted: ≥ {low:g}" + (f" ({why})" if why else ""))


def _above(params: Mapping[str, Any], name: str, low: float, unit: str = "") -> None:
    value = params[name]
    if not value > low:
        raise ParameterError(f"parameter {name!r}: {value!r} is not above {low:g}; accepted: a number > {low:g}{unit}")


def _fraction(params: Mapping[str, Any], name: str) -> None:
    value = params[name]
    if not 0.0 <= value < 1.0:
        raise ParameterError(f"parameter {name!r}: {value!r} is not in [0, 1); accepted: a share such as 0.1 (0: none)")


def _song(params: Mapping[str, Any], name: str, zero: str) -> None:
    value = params[name]
    if value != 0 and value not in SONGS:
        raise ParameterError(
            f"parameter {name!r}: {value!r} is not an NMED-T song; accepted: a song ID {min(SONGS)}–{max(SONGS)}, or 0 {zero}"
        )


def _device(params: Mapping[str, Any]) -> None:
    try:
        resolve_device(params["device"])
    except ValueError as err:
        raise ParameterError(str(err)) from None


def _participants(params: MutableMapping[str, Any], name: str) -> None:
    """A list of participant numbers (``[2, 3]``, ``"2,3"``, ``2``), normalised to ints in place."""
    numbers = []
    for position, item in enumerate(params[name]):
        try:
            number = coerce_int(f"{name}[{position}]", item)
        except ParameterError:
            raise ParameterError(
                f"parameter {name!r}: cannot read {item!r} as a participant number; accepted: NMED-T numbers "
                f"such as [2, 3] or 2,3 (or [] for all)"
            ) from None
        if number < 1:
            raise ParameterError(f"parameter {name!r}: {number} is not a participant number (they start at 1)")
        numbers.append(number)
    if len(set(numbers)) != len(numbers):
        raise ParameterError(f"parameter {name!r}: {numbers} names a participant twice")
    params[name] = numbers


def _optional(params: MutableMapping[str, Any], name: str, coerce: Callable[[str, Any], Any], low: float | None) -> None:
    """A setting a preset fills: None (or "none"), else a value ``coerce`` reads, at least ``low``."""
    if name not in params:
        return
    if is_unset(params[name]):
        params[name] = None
        return
    params[name] = coerce(name, params[name])
    if low is not None and params[name] < low:
        raise ParameterError(f"parameter {name!r}: must be ≥ {low}, got {params[name]}; or None for the preset's")


def among(name: str, value: Any, allowed: Sequence[Any], where: Any) -> None:
    """Refuse a value the data does not have (e.g. ``example_subject`` 7 in a folder of participants 2 and 3)."""
    if value not in allowed:
        raise ParameterError(f"parameter {name!r}: {value!r} is not in {where}; accepted there: {list(allowed)}")


def backbone_train_timesteps(backbone: str, smoke: bool = False) -> int | None:
    """The length of a backbone folder's noise schedule, read from its scheduler config (None if unknown).

    ``""`` is the default tiny backbone: the run folder's copy if there is one, else the shipped one.
    """
    if backbone in ("", None):
        candidates = [default_backbone_dir(smoke), SHIPPED_BACKBONE_DIR]
    else:
        candidates = [Path(str(backbone)).expanduser()]
    for folder in candidates:
        config = folder / "scheduler" / "scheduler_config.json"
        if config.is_file():
            try:
                return int(json.loads(config.read_text(encoding="utf-8"))["num_train_timesteps"])
            except (ValueError, KeyError, TypeError, OSError):
                return None
    return None


# --------------------------------------------------------------------------------------------------
# One function per notebook
# --------------------------------------------------------------------------------------------------


def explore_data_parameters(params: MutableMapping[str, Any]) -> None:
    """Notebook 01: the folders, the example participant and song, the lengths."""
    _data_folders(params, "an NMED-T folder (songNN_Imputed.mat and/or PP_R_raw.mat files)")
    _at_least(params, "example_subject", 0, "a participant number, or 0 for the first one")
    _song(params, "example_song", "for the first song with a WAV")
    _above(params, "seconds_shown", 0.0, " seconds")
    _at_least(params, "max_erp_recordings", 0, "0 averages all recordings")


def preprocess_parameters(params: MutableMapping[str, Any]) -> None:
    """Notebook 02: rates, the held-out song and participant, the split sizes."""
    _data_folders(params, "an NMED-T folder (songNN_Imputed.mat and/or PP_R_raw.mat files)")
    _at_least(params, "resample_sfreq", 0.0, "a rate in Hz, or 0 to keep the EEG's")
    _song(params, "ood_song", "for no out-of-distribution song")
    _at_least(params, "loso_subject", 0, "a participant number, or 0 for none")
    _fraction(params, "val_fraction")
    _fraction(params, "test_fraction")
    if params["val_fraction"] + params["test_fraction"] >= 1.0:
        raise ParameterError(
            f"parameters 'val_fraction' + 'test_fraction': {params['val_fraction']!r} + {params['test_fraction']!r} "
            f"leaves no chunk of a song for training; accepted: a sum below 1 (e.g. 0.1 + 0.1)"
        )
    _at_least(params, "gap_chunks", 0, "unused chunks between splits")


def controlnet_parameters(params: MutableMapping[str, Any]) -> None:
    """Notebook 03: the EEG's shape and the backbone."""
    _path(params, "backbone", kind="folder", what="a backbone folder (AudioLDM2-music or tiny)")
    _out_dir(params)
    _above(params, "eeg_sfreq", 0.0, " Hz")
    _at_least(params, "eeg_channels", 1, "EEG channels after preprocessing")
    _at_least(params, "n_subjects", 1, "participants the subject layer keeps a matrix for")
    _device(params)


def train_parameters(params: MutableMapping[str, Any]) -> None:
    """Notebook 04: sizes, the learning rate, the control timesteps, the folders."""
    backbone = _path(params, "backbone", kind="folder", what="a backbone folder (AudioLDM2-music or tiny)")
    _path(params, "run_dir", kind="folder", what="notebook 02's out_dir or a preprocessed cache")
    _data_folders(params, "an NMED-T folder")
    for name in ("steps", "batch_size"):
        _optional(params, name, coerce_int, 1)
    _optional(params, "lr", coerce_float, None)
    _optional(params, "control_min_timestep", coerce_int, 0)
    if "timestep_sampling" in params:
        if is_unset(params["timestep_sampling"]):
            params["timestep_sampling"] = None
        elif params["timestep_sampling"] not in TIMESTEP_SAMPLINGS:
            raise ParameterError(f"parameter 'timestep_sampling': {params['timestep_sampling']!r} is not one of "
                                 f"{list(TIMESTEP_SAMPLINGS)}, or None for the preset's")
    if "align_steps" in params:
        _at_least(params, "align_steps", 0, "0 trains P from scratch with the ControlNet, as the paper")
        _at_least(params, "align_batch_size", 2, "InfoNCE needs other windows as negatives")
        if params["align_steps"] and params.get("model") != "controlnet":
            raise ParameterError(f"parameter 'align_steps': {params['align_steps']} pre-trains the ControlNet's subject "
                                 f"layer and P; model {params.get('model')!r} has none; accepted: 0")
    if params.get("lr") is not None and params["lr"] <= 0:
        raise ParameterError(f"parameter 'lr': {params['lr']} is not a learning rate; accepted: a number > 0, "
                             f"or None for the preset's")
    total = backbone_train_timesteps(str(backbone or ""), bool(params.get("smoke")))
    if total is not None and params.get("control_min_timestep") is not None and params["control_min_timestep"] >= total:
        raise ParameterError(
            f"parameter 'control_min_timestep': {params['control_min_timestep']} is beyond the backbone's "
            f"{total}-step noise schedule; accepted: 0 … {total - 1}, or None for the preset's"
        )
    name = params.get("run_name", "")
    if name and (name in (".", "..") or "/" in name or "\\" in name):
        raise ParameterError(f"parameter 'run_name': {name!r} is not a folder name; accepted: a name without '/', or \"\"")
    _device(params)


def sample_parameters(params: MutableMapping[str, Any]) -> None:
    """Notebook 05: the runs, the sampler's sizes, the participants, the folders."""
    models = params["models"]
    if not models:
        raise ParameterError("parameter 'models': empty; accepted: run names such as [\"controlnet_subject\", \"unconditional\"]")
    if len(set(models)) != len(models):
        raise ParameterError(f"parameter 'models': {list(models)} names a run twice")
    bad = [m for m in models if not m or "/" in m or m in (".", "..")]
    if bad:
        raise ParameterError(f"parameter 'models': {bad} are not run folder names (folders of train_dir)")
    _path(params, "train_dir", kind="folder", what="notebook 04's out_dir")
    _path(params, "backbone", kind="folder", what="a backbone folder (AudioLDM2-music or tiny)")
    _path(params, "run_dir", kind="folder", what="notebook 02's out_dir or a preprocessed cache")
    _data_folders(params, "the NMED-T folder holding the stimulus WAVs")
    _at_least(params, "num_inference_steps", 1, "denoising steps")
    _at_least(params, "max_clips", 0, "0 takes the default for the size")
    _at_least(params, "batch_size", 1, "clips per pipeline call")
    if not math.isfinite(params["conditioning_scale"]):
        raise ParameterError(f"parameter 'conditioning_scale': {params['conditioning_scale']!r} is not a finite number")
    if "guidance_scale" in params:
        if not math.isfinite(params["guidance_scale"]):
            raise ParameterError(f"parameter 'guidance_scale': {params['guidance_scale']!r} is not a finite number")
        _at_least(params, "guidance_scale", 0.0, "1 is no guidance, 0 the backbone alone")
    if "strength" in params and not 0.0 <= params["strength"] <= 1.0:
        raise ParameterError(f"parameter 'strength': {params['strength']!r} is not in [0, 1] "
                             f"(the share of the denoising steps run; 1 = from pure noise, 0 = the first estimate)")
    _participants(params, "subjects")
    _device(params)


def evaluate_parameters(params: MutableMapping[str, Any]) -> None:
    """Notebook 06: the sample folder, the embedders' weights, the resampling counts."""
    sample_dir = _path(params, "sample_dir", kind="folder", what=f"notebook 05's out_dir (holding {SAMPLES_NAME})")
    if sample_dir is not None and not (sample_dir / SAMPLES_NAME).is_file():
        raise ParameterError(f"parameter 'sample_dir': {str(sample_dir)!r} holds no {SAMPLES_NAME}; expected notebook 05's out_dir")
    _path(params, "clap_checkpoint", kind="file", what="a LAION-CLAP checkpoint file (.pt)")
    _path(params, "encodec_weights", kind="file", what="the EnCodec 24 kHz weights file")
    _path(params, "audioldm2_dir", kind="folder", what="a local AudioLDM2 folder")
    _path(params, "backbone", kind="folder", what="a backbone folder")
    ablation = _path(params, "ablation_dir", kind="folder", what="benchmarks/ablation_decoding.py's --outputs folder")
    if ablation is not None and not (ablation / ABLATION_NAME).is_file():
        raise ParameterError(f"parameter 'ablation_dir': {str(ablation)!r} holds no {ABLATION_NAME}; "
                             f"expected the --outputs folder of benchmarks/ablation_decoding.py, or \"\"")
    _out_dir(params)
    _at_least(params, "n_boot", 1, "the 95 % intervals are bootstrap percentiles: they need resamples")
    _at_least(params, "n_perm", 1, "the permutation tests need shuffled pairings")
    _device(params)


#: The check of each notebook's validation cell (notebook 00 validates types and names only).
NOTEBOOK_CHECKS: dict[str, Callable[[MutableMapping[str, Any]], None]] = {
    "01_explore_data": explore_data_parameters,
    "02_preprocess": preprocess_parameters,
    "03_controlnet": controlnet_parameters,
    "04_train": train_parameters,
    "05_sample": sample_parameters,
    "06_evaluate": evaluate_parameters,
}
