"""Every numbered notebook: its shape as a lesson, its pairing, and a papermill smoke run.

The smoke runs chain through one private default run folder (``$EEG2MUSIC_OUTPUTS`` → a temp dir), as
``make demo`` chains through ``outputs/``: each notebook reuses what the earlier ones wrote.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
from conftest import NOTEBOOKS_DIR, run_notebook

from eeg2music.params import read_parameter_specs

NOTEBOOKS = [
    "00_backbone",
    "01_explore_data",
    "02_preprocess",
    "03_controlnet",
    "04_train",
    "05_sample",
    "06_evaluate",
]
REQUIRED_PARAMETERS = {"out_dir", "seed", "smoke"}
#: Notebooks that read the NMED-T folder take ``data_root``; those that compute with torch take ``device``.
READS_DATA = {"00_backbone", "01_explore_data", "02_preprocess", "04_train", "05_sample"}
COMPUTES = {"00_backbone", "03_controlnet", "04_train", "05_sample", "06_evaluate"}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_reads_as_a_lesson(name):
    source = NOTEBOOKS_DIR / f"{name}.py"
    assert source.is_file(), f"{source} is missing"
    notebook = jupytext.read(source)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    cells = notebook.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.lstrip().startswith("# "), "opens with a title"
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    specs = read_parameter_specs(name)
    names = {s.name for s in specs}
    assert REQUIRED_PARAMETERS <= names
    assert ("data_root" in names) == (name in READS_DATA), "data_root exactly where the notebook reads the dataset"
    assert ("device" in names) == (name in COMPUTES), "device exactly where the notebook computes with torch"
    assert all(s.comment for s in specs), "every parameter has a comment"
    validation = cells[tagged[0] + 1]
    assert validation.cell_type == "code" and "resolve_parameters" in validation.source
    assert any(c.cell_type == "markdown" and "In this notebook we" in c.source for c in cells[-3:]), "ends with a recap"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_paired_ipynb_never_drifts(name):
    """The generated .ipynb (if present) holds exactly the cells of its .py source."""
    paired = NOTEBOOKS_DIR / f"{name}.ipynb"
    if not paired.exists():
        pytest.skip(f"{paired.name} not generated (make setup generates it)")
    from_py = jupytext.read(NOTEBOOKS_DIR / f"{name}.py")
    from_ipynb = jupytext.read(paired)
    assert [(c.cell_type, c.source) for c in from_ipynb.cells] == [(c.cell_type, c.source) for c in from_py.cells], (
        f"{paired} differs from its source {name}.py: run `make notebooks` (or jupytext --sync)"
    )


def test_bad_parameter_stops_before_work(tmp_path, session_outputs):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as info:
        run_notebook("04_train", tmp_path, subject_cond="maybe", smoke=True)
    message = str(info.value)
    assert "subject_cond" in message and "maybe" in message and "true/false" in message
    assert not any(session_outputs.glob("04_train/*/model")), "no work was done"


# --- the smoke chain: 00 → 06 -------------------------------------------------------------------------

@pytest.mark.slow
def test_00_backbone(tmp_path, session_outputs):
    run_notebook("00_backbone", tmp_path, smoke=True)
    summary = json.loads((session_outputs / "00_backbone" / "backbone_summary.json").read_text())
    assert summary["kind"] == "tiny" and list(summary["latent_shape"]) == [8, 88, 16]


@pytest.mark.slow
def test_01_explore_data(tmp_path, session_outputs):
    run_notebook("01_explore_data", tmp_path, smoke=True)
    summary = json.loads((session_outputs / "01_explore_data" / "dataset_summary.json").read_text())
    assert summary["format"] in ("cleaned", "raw") and summary["fs"] > 0
    assert all(isinstance(s, int) for s in summary["subjects"]) and summary["songs"]


@pytest.mark.slow
def test_02_preprocess(tmp_path, session_outputs):
    run_notebook("02_preprocess", tmp_path, smoke=True)
    summary = json.loads((session_outputs / "02_preprocess" / "preprocess_summary.json").read_text())
    assert summary["counts"]["train"] > 0


@pytest.mark.slow
def test_03_controlnet(tmp_path, session_outputs):
    run_notebook("03_controlnet", tmp_path, smoke=True)
    summary = json.loads((session_outputs / "03_controlnet" / "controlnet_summary.json").read_text())
    assert summary


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["true", "false"])
def test_04_train_subject_cond_from_the_command_line(flag, tmp_path, session_outputs):
    """The user's exact command: papermill 04_train.ipynb out.ipynb -p subject_cond true, from notebooks/."""
    source = tmp_path / "04_train.ipynb"
    jupytext.write(jupytext.read(NOTEBOOKS_DIR / "04_train.py"), source)
    papermill = Path(sys.executable).with_name("papermill")
    subprocess.run(
        [str(papermill), str(source), str(tmp_path / "out.ipynb"), "-p", "subject_cond", flag, "-p", "smoke", "true",
         "--cwd", str(NOTEBOOKS_DIR)],
        check=True, cwd=NOTEBOOKS_DIR, capture_output=True, text=True,
    )
    run = "controlnet_subject" if flag == "true" else "controlnet"
    config = json.loads((session_outputs / "04_train" / run / "model" / "eeg2music_model.json").read_text())
    assert config["subject_cond"] is (flag == "true")


@pytest.mark.slow
def test_04_train_convnet(tmp_path, session_outputs):
    run_notebook("04_train", tmp_path, model="convnet", smoke=True)
    config = json.loads((session_outputs / "04_train" / "convnet" / "model" / "eeg2music_model.json").read_text())
    assert config["model"] == "convnet"


def _displayed(executed: Path) -> list[dict]:
    """The data of every displayed output (display_data, execute_result) of an executed notebook."""
    import nbformat

    cells = nbformat.read(executed, as_version=4).cells
    return [dict(o.get("data", {})) for c in cells if c.cell_type == "code" for o in c.outputs]


@pytest.mark.slow
def test_05_sample(tmp_path, session_outputs):
    executed = run_notebook("05_sample", tmp_path, smoke=True)
    samples = json.loads((session_outputs / "05_sample" / "samples.json").read_text())
    assert samples
    shown = _displayed(executed)
    assert sum("image/png" in d for d in shown) >= 1, "the mel spectrograms are in the executed notebook"
    assert any('src="data:audio/wav;base64,' in d.get("text/html", "") for d in shown), "the players are"


@pytest.mark.slow
def test_06_evaluate(tmp_path, session_outputs):
    """The metrics files, and the report's content among the notebook's outputs and in its HTML export."""
    from eeg2music.evaluation.report import export_html

    executed = run_notebook("06_evaluate", tmp_path, smoke=True)
    out = session_outputs / "06_evaluate"
    stored = json.loads((out / "metrics.json").read_text())
    assert {"settings", "embedders", "primary_embedder", "models", "paired_cosine_differences", "reading", "results"} <= set(stored)
    assert (out / "metrics.csv").read_text().startswith("split,model,model_label,embedder,metric,")
    assert {"identification.png", "distributions.png", "confusions.png"} <= {p.name for p in out.iterdir()}
    shown = _displayed(executed)
    html = "".join(d.get("text/html", "") for d in shown)
    markdown = "".join(d.get("text/markdown", "") for d in shown)
    assert sum("image/png" in d for d in shown) == 4, "identification, distributions, confusions, notebook 05's mels"
    assert html.count('src="data:audio/wav;base64,') == 3 * (1 + len(stored["models"])), "3 examples: true + each model"
    assert all(paragraph in markdown for paragraph in stored["reading"]), "the reading is shown"
    assert "song-ID top-1" in html and "shuffled mean" in html, "comparison and permutation tables"
    page = export_html(executed, tmp_path / "06_evaluate.html").read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 4
    assert page.count('src="data:audio/wav;base64,') == html.count('src="data:audio/wav;base64,')


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_sees_every_parameter_with_its_comment(name, tmp_path):
    """`papermill --help-notebook` lists every parameter; a line with a second '=' (even in its comment) hides it."""
    import papermill

    path = tmp_path / f"{name}.ipynb"
    jupytext.write(jupytext.read(NOTEBOOKS_DIR / f"{name}.py"), path)
    seen = papermill.inspect_notebook(str(path))
    specs = read_parameter_specs(name)
    assert set(seen) == {s.name for s in specs}
    assert all(seen[s.name]["help"] for s in specs)


@pytest.mark.slow
def test_04_train_first_on_a_fresh_run_folder_installs_the_shipped_backbone(tmp_path, monkeypatch):
    """The README's first command on a fresh clone: no stage has run, notebook 04 must not train a substitute."""
    from eeg2music.models.backbone import SHIPPED_BACKBONE_DIR
    from eeg2music.models.tiny_backbone import _weights_digest, backbone_provenance

    fresh = tmp_path / "outputs"
    monkeypatch.setenv("EEG2MUSIC_OUTPUTS", str(fresh))
    executed = run_notebook("04_train", tmp_path / "nb", model="convnet", steps=1, batch_size=2)
    installed = fresh / "00_backbone" / "backbone"
    assert backbone_provenance(installed)["shipped"], "the run folder holds a backbone other than the shipped one"
    assert _weights_digest(installed) == _weights_digest(SHIPPED_BACKBONE_DIR)
    assert "installing the shipped one" in executed.read_text()
    config = json.loads((fresh / "04_train" / "convnet" / "model" / "eeg2music_model.json").read_text())
    assert Path(config["backbone"]).resolve() == installed.resolve()
