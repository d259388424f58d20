"""Shared fixtures: offline environment, a per-session default run folder, a notebook runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline Hugging Face libraries for the whole session, set before anything imports them (the package
# itself does not touch the environment; its loaders call eeg2music._compat.hub_offline).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


@pytest.fixture(scope="session")
def session_outputs(tmp_path_factory) -> Path:
    """A default run folder private to this test session (never the repo's ``outputs/``)."""
    path = tmp_path_factory.mktemp("outputs")
    os.environ["EEG2MUSIC_OUTPUTS"] = str(path)
    return path


def run_notebook(name: str, workdir: Path, **parameters) -> Path:
    """Execute ``notebooks/<name>.py`` with papermill (as a user would, from ``notebooks/``).

    The py:percent source is read with jupytext, written as .ipynb into ``workdir`` and executed with
    the ``python3`` kernel; the executed notebook is returned.
    """
    import jupytext
    import papermill as pm

    from eeg2music.demo import inline_figures

    notebook = jupytext.read(NOTEBOOKS_DIR / f"{name}.py")
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"{name}.ipynb"
    executed = workdir / f"{name}.out.ipynb"
    jupytext.write(notebook, source)
    # Figures land in the executed notebook as in `make demo` (this session's MPLBACKEND=Agg would drop them).
    with inline_figures():
        pm.execute_notebook(
            str(source),
            str(executed),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(NOTEBOOKS_DIR),
            progress_bar=False,
            request_save_on_cell_execute=False,
        )
    return executed
