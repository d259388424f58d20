"""Where things live: the repository, the notebooks and the default run folder (``outputs/``).

Runs compose through folders: every notebook writes into its own ``out_dir`` and reads what an
earlier stage wrote by a path parameter. When those parameters are left empty (``""``), the stages
fall back to the *default run folder* laid out below, so ``make demo`` is a plain chain of papermill
calls and any stage can be re-run alone.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"

#: Sub-folders of the default run folder, one per stage (the notebook of the same number writes it; the
#: ablation's is written by ``benchmarks/ablation_decoding.py`` and read by notebook 06).
STAGE_DIRS = {
    "backbone": "00_backbone",
    "data": "01_explore_data",
    "preprocess": "02_preprocess",
    "controlnet": "03_controlnet",
    "train": "04_train",
    "sample": "05_sample",
    "evaluate": "06_evaluate",
    "ablation": "ablation",
}

#: The file ``benchmarks/ablation_decoding.py`` writes into its folder and notebook 06 reads.
ABLATION_NAME = "ablation.json"


def outputs_dir() -> Path:
    """The default run folder: ``$EEG2MUSIC_OUTPUTS`` if set, else ``<repo>/outputs``."""
    return Path(os.environ.get("EEG2MUSIC_OUTPUTS", REPO_ROOT / "outputs")).resolve()


def stage_dir(stage: str, out_dir: str | os.PathLike | None = None) -> Path:
    """The folder a stage writes into: ``out_dir`` when given (non-empty), else its default.

    Parameters
    ----------
    stage : str
        One of the keys of :data:`STAGE_DIRS`.
    out_dir : path-like or None
        An explicit folder; ``""`` or ``None`` selects ``outputs/<NN_stage>``.
    """
    if stage not in STAGE_DIRS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGE_DIRS)}")
    if out_dir not in (None, ""):
        return Path(out_dir).expanduser().resolve()
    return outputs_dir() / STAGE_DIRS[stage]


def simulated_data_root() -> Path:
    """Where the embedded default writes its NMED-T-format simulated dataset."""
    return outputs_dir() / "data" / "nmedt_sim"
