"""The shared parameter helper: papermill strings → typed values, clear errors, JSON echo."""

import json

import pytest

from eeg2music.params import (
    ParameterError,
    coerce_bool,
    coerce_float,
    coerce_int,
    coerce_like,
    coerce_mapping,
    read_parameter_specs,
    resolve_parameters,
)


@pytest.mark.parametrize("text, expected", [("true", True), ("false", False), ("True", True), ("FALSE", False),
                                            ("yes", True), ("no", False), ("1", True), ("0", False), (True, True), (0, False)])
def test_bool_coercion(text, expected):
    assert coerce_bool("subject_cond", text) is expected


@pytest.mark.parametrize("bad", ["maybe", "", "2", 2, None, 0.5])
def test_bool_rejects_with_name_and_accepted_values(bad):
    with pytest.raises(ParameterError, match=r"subject_cond.*true/false"):
        coerce_bool("subject_cond", bad)


def test_numbers():
    assert coerce_int("steps", "200") == 200
    assert coerce_int("steps", "1e3") == 1000
    assert coerce_int("steps", 3.0) == 3
    assert coerce_float("lr", "1e-4") == pytest.approx(1e-4)
    assert coerce_float("lr", 1) == 1.0
    for bad in ("2.5", "ten", True):
        with pytest.raises(ParameterError, match="steps"):
            coerce_int("steps", bad)
    for bad in ("fast", "nan", False):
        with pytest.raises(ParameterError, match="lr"):
            coerce_float("lr", bad)


def test_lists_and_strings():
    assert coerce_like("songs", "21,22", [21]) == [21, 22]
    assert coerce_like("songs", "[23, 24]", [21]) == [23, 24]
    assert coerce_like("songs", 25, [21]) == [25]
    assert coerce_like("data_root", None, "") == ""
    assert coerce_like("data_root", 5, "") == "5"


def _write_notebook(tmp_path, body):
    path = tmp_path / "99_demo.py"
    path.write_text(
        "# %% [markdown]\n# # Demo\n\n"
        '# %% tags=["parameters"]\n' + body + "\n\n# %%\nprint('work')\n"
    )
    return path


def test_resolve_from_notebook_source(tmp_path, capsys):
    path = _write_notebook(tmp_path, 'subject_cond = True  # per-subject layer\nsteps = 10  # steps\nlr = 1e-4  # rate\nmodel = "controlnet"  # which model\n')
    specs = read_parameter_specs(str(path))
    assert [s.name for s in specs] == ["subject_cond", "steps", "lr", "model"]
    assert specs[0].comment == "per-subject layer"
    namespace = {"subject_cond": "false", "steps": "20", "lr": "3e-4", "model": "convnet"}
    resolved = resolve_parameters(str(path), namespace, choices={"model": ("controlnet", "convnet")})
    assert resolved == {"subject_cond": False, "steps": 20, "lr": 3e-4, "model": "convnet"}
    assert namespace["subject_cond"] is False
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["subject_cond"] is False and printed["steps"] == 20


def test_resolve_stops_on_bad_value_and_bad_choice(tmp_path):
    path = _write_notebook(tmp_path, 'subject_cond = True  # flag\nmodel = "controlnet"  # which model\n')
    with pytest.raises(ParameterError, match=r"'subject_cond'.*'maybe'.*true/false"):
        resolve_parameters(str(path), {"subject_cond": "maybe"})
    with pytest.raises(ParameterError, match=r"'model'.*'gan'.*controlnet"):
        resolve_parameters(str(path), {"model": "gan"}, choices={"model": ["controlnet", "convnet"]})


def test_parameters_cell_must_be_literals(tmp_path):
    path = _write_notebook(tmp_path, "steps = 2 * 5  # not a literal\n")
    with pytest.raises(ParameterError, match="literal"):
        read_parameter_specs(str(path))


def test_coerce_mapping_unknown_key():
    assert coerce_mapping({"steps": 1, "flag": False}, {"flag": "true"}) == {"steps": 1, "flag": True}
    with pytest.raises(ParameterError, match="unknown parameter"):
        coerce_mapping({"steps": 1}, {"step": 2})
