"""The default run folder: find what an earlier stage wrote, or build it, saying so.

Each notebook reads its inputs by a path parameter. An empty parameter (``""``) means "the default run
folder" (``outputs/``): these functions return what is there when it is complete, and otherwise build it
with the embedded default (the NMED-T-format simulator, the tiny backbone), printing what they do. So
``papermill 04_train.ipynb out.ipynb -p subject_cond true`` works right after set-up, and ``make demo``
is a plain chain of notebooks that reuse each other's outputs.

``smoke=True`` selects tiny sizes and separate folders (``*_smoke``), so a smoke run never overwrites
or reuses the full-size default run.
"""

from __future__ import annotations

import os
from pathlib import Path

from .data.nmedt import SIMULATION_FILE
from .data.simulate import simulate_nmedt
from .models.backbone import BACKBONE_MARKER, load_backbone
from .models.tiny_backbone import (
    backbone_provenance,
    describe_provenance,
    install_shipped_backbone,
    train_tiny_backbone,
)
from .paths import simulated_data_root, stage_dir
from .utils import resolve_device


def _smoke_suffix(smoke: bool) -> str:
    return "_smoke" if smoke else ""


def default_data_root(smoke: bool = False) -> Path:
    """Where the simulator's dataset lives in the default run folder."""
    root = simulated_data_root()
    return root.with_name(root.name + _smoke_suffix(smoke))


def ensure_dataset(data_root: str | os.PathLike = "", *, smoke: bool = False, seed: int = 0) -> Path:
    """An NMED-T folder: ``data_root`` as given, or the simulated default (simulated now if missing).

    Parameters
    ----------
    data_root : path-like
        A folder in the NMED-T layout; ``""`` selects the simulator's default dataset.
    smoke : bool
        Tiny simulated dataset (a few subjects, short songs) for tests.
    seed : int
        Seed of the simulation (only used when simulating).
    """
    if data_root not in ("", None):
        path = Path(data_root).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(
                f"data_root {str(path)!r} is not a folder. Point it to an NMED-T folder (cleaned "
                f"songNN_Imputed.mat files and/or raw PP_R_raw.mat files), or leave it empty for the simulator."
            )
        return path

    path = default_data_root(smoke)
    if (path / SIMULATION_FILE).is_file():
        print(f"[eeg2music] using the simulated NMED-T dataset in {path}")
        return path
    print(f"[eeg2music] no simulated dataset in {path} yet: simulating it now (smoke={smoke}, seed={seed})")
    return Path(simulate_nmedt(path, seed=seed, preset="smoke" if smoke else "default"))


def default_backbone_dir(smoke: bool = False) -> Path:
    """Where notebook 00 saves the tiny backbone in the default run folder."""
    return stage_dir("backbone") / f"backbone{_smoke_suffix(smoke)}"


def ensure_backbone_dir(
    backbone: str | os.PathLike = "", *, smoke: bool = False, seed: int = 0, device: str = "auto"
) -> Path:
    """A backbone folder: ``backbone`` as given (AudioLDM2-music or tiny), or the default tiny one.

    When the run folder has no tiny backbone yet, the one shipped with the package is installed there
    (whichever stage runs first), so every order of commands uses the same default. Only smoke runs,
    which need a backbone of the smoke size, train one (in seconds). Notebook 00 with
    ``-p retrain true`` is the way to train a substitute.
    """
    if backbone not in ("", None):
        path = Path(backbone).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(
                f"backbone {str(path)!r} is not a folder. Give a local AudioLDM2-music folder in the diffusers "
                f"layout (e.g. a snapshot of cvssp/audioldm2-music with model_index.json), a tiny-backbone "
                f"folder written by notebook 00, or leave it empty for the default tiny backbone."
            )
        print(f"[eeg2music] {describe_provenance(backbone_provenance(path))}")
        return path
    path = default_backbone_dir(smoke)
    if (path / BACKBONE_MARKER).is_file():
        print(f"[eeg2music] {describe_provenance(backbone_provenance(path))}")
        return path
    if not smoke:
        print(f"[eeg2music] no tiny backbone in {path} yet: installing the shipped one")
        return Path(install_shipped_backbone(path))
    data_root = ensure_dataset("", smoke=smoke, seed=seed)
    print(f"[eeg2music] no smoke-size tiny backbone in {path} yet: training one now on {data_root} (seconds)")
    return Path(train_tiny_backbone(data_root, path, smoke=smoke, seed=seed, device=device))


def ensure_backbone(backbone: str | os.PathLike = "", *, smoke: bool = False, seed: int = 0, device: str = "auto"):
    """Load the backbone named by ``backbone`` (see :func:`ensure_backbone_dir`)."""

    path = ensure_backbone_dir(backbone, smoke=smoke, seed=seed, device=device)
    return load_backbone(path, device=resolve_device(device))


def default_cache_dir(smoke: bool = False) -> Path:
    """Where notebook 02 writes the preprocessed cache in the default run folder."""
    return stage_dir("preprocess") / f"cache{_smoke_suffix(smoke)}"
