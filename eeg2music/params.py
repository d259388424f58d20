"""Notebook parameters as users type them.

Every notebook has one ``parameters`` cell of literals, each with a comment, and right after it a
validation cell::

    params = resolve_parameters("04_train", globals(), choices={"model": ("controlnet", "convnet")})

papermill injects ``-p`` values *after* the parameters cell, as strings unless they look like numbers
(``-p subject_cond true`` arrives as the string ``"true"``). :func:`resolve_parameters` reads the
defaults from the notebook's own source (``notebooks/NN_name.py``, the single source of truth), and
coerces every value to the type of its default, in the manner of nanoGPT's configurator:

=============  =====================================================================
default type   accepted values
=============  =====================================================================
bool           True/False, "true"/"false", "yes"/"no", "1"/"0", "on"/"off" (any case)
int            ints, integral floats, strings such as "200" or "1e3"
float          ints, floats, strings such as "1e-4"
str            anything, turned into ``str``
None           anything (the parameter is untyped)
=============  =====================================================================

A value that cannot be read stops the run *before any work* with a :class:`ParameterError` naming the
parameter, the value and what it accepts; so does a ``-p`` name the notebook does not have (read from
papermill's injected cell; the message lists the notebook's parameters, the closest first), and, through
``checks`` (:mod:`eeg2music.checks`), a value of the right type the notebook cannot use. The resolved parameters are written back into the
notebook's namespace and printed as one JSON object, so an executed notebook shows what it ran with.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import NOTEBOOKS_DIR

#: The first line of the cell papermill injects with the ``-p`` values (its Python translator's comment).
INJECTED_HEADER = "# Parameters"

_TRUE = {"true", "yes", "1", "on", "y", "t"}
_FALSE = {"false", "no", "0", "off", "n", "f"}


class ParameterError(ValueError):
    """A notebook or CLI parameter that cannot be read; the message names it and what it accepts."""


@dataclass(frozen=True)
class ParameterSpec:
    """One line of a ``parameters`` cell: its name, default literal and comment."""

    name: str
    default: Any
    comment: str


def coerce_bool(name: str, value: Any) -> bool:
    """Read ``value`` as a bool; ``"true"``/``"false"`` and friends are accepted, case-insensitively."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ParameterError(
        f"parameter {name!r}: cannot read {value!r} as a boolean; "
        f"accepted: true/false (also yes/no, 1/0, on/off, any case)"
    )


def coerce_int(name: str, value: Any) -> int:
    """Read ``value`` as an int (``"200"``, ``200.0`` and ``"1e3"`` are accepted; ``2.5`` is not)."""
    if isinstance(value, bool):
        raise ParameterError(f"parameter {name!r}: expected an integer, got the boolean {value!r}")
    if isinstance(value, int):
        return value
    number: float | None = None
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = None
    if number is not None and math.isfinite(number) and float(number).is_integer():
        return int(number)
    raise ParameterError(f"parameter {name!r}: cannot read {value!r} as an integer; accepted: e.g. 200 or 1e3")


def coerce_float(name: str, value: Any) -> float:
    """Read ``value`` as a finite float (``"1e-4"`` is accepted)."""
    if isinstance(value, bool):
        raise ParameterError(f"parameter {name!r}: expected a number, got the boolean {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ParameterError(
            f"parameter {name!r}: cannot read {value!r} as a number; accepted: e.g. 0.0001 or 1e-4"
        ) from None
    if not math.isfinite(number):
        raise ParameterError(f"parameter {name!r}: {value!r} is not a finite number")
    return number


def is_unset(value: Any) -> bool:
    """Whether a user left a setting to its preset: ``None``, ``"none"`` or an empty string."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("none", ""))


def coerce_like(name: str, value: Any, default: Any) -> Any:
    """Coerce ``value`` to the type of ``default`` (see the module docstring for the rules)."""
    if default is None:
        return value
    if isinstance(default, bool):
        return coerce_bool(name, value)
    if isinstance(default, int):
        return coerce_int(name, value)
    if isinstance(default, float):
        return coerce_float(name, value)
    if isinstance(default, str):
        if value is None:
            return ""
        return str(value)
    if isinstance(default, (list, tuple)):
        if isinstance(value, str):
            text = value.strip()
            try:
                parsed = ast.literal_eval(text) if text[:1] in "[(" else [p.strip() for p in text.split(",") if p.strip()]
            except (ValueError, SyntaxError):
                raise ParameterError(
                    f"parameter {name!r}: cannot read {value!r} as a list; accepted: e.g. '21,22' or '[21, 22]'"
                ) from None
            value = parsed
        if not isinstance(value, (list, tuple)):
            value = [value]
        if default:
            value = [coerce_like(f"{name}[{i}]", item, default[0]) for i, item in enumerate(value)]
        return type(default)(value)
    return value


def notebook_source(notebook: str) -> Path:
    """The py:percent source of a notebook, by name (``"04_train"``) or path."""
    path = Path(notebook)
    if path.suffix == ".py" and path.exists():
        return path
    candidate = NOTEBOOKS_DIR / f"{path.stem}.py"
    if candidate.exists():
        return candidate
    raise ParameterError(f"no notebook source {candidate} (looked for the py:percent file of {notebook!r})")


def _parameters_cell(source: str) -> str:
    cells = source.split("\n# %%")
    for cell in cells:
        header = cell.split("\n", 1)[0]
        if "parameters" in header and "tags" in header:
            return cell.split("\n", 1)[1] if "\n" in cell else ""
    raise ParameterError("the notebook has no cell tagged 'parameters'")


def read_parameter_specs(notebook: str) -> list[ParameterSpec]:
    """The defaults of a notebook's ``parameters`` cell, parsed from its source without running it.

    Every statement in that cell must be ``name = <literal>  # comment``.
    """
    path = notebook_source(notebook)
    cell = _parameters_cell(path.read_text(encoding="utf-8"))
    lines = cell.splitlines()
    specs = []
    for node in ast.parse(cell).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ParameterError(f"{path}: the parameters cell may only assign literals (line {node.lineno})")
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            raise ParameterError(f"{path}: parameter on line {node.lineno} is not a literal") from None
        line = lines[node.lineno - 1]
        comment = line.split("#", 1)[1].strip() if "#" in line else ""
        specs.append(ParameterSpec(node.targets[0].id, default, comment))
    return specs


def injected_parameter_names(namespace: Mapping[str, Any]) -> list[str]:
    """The names papermill assigned in its injected-parameters cell, from the kernel's input history.

    papermill runs the ``-p`` values as a cell of its own (``# Parameters`` then one assignment per
    value) right after the ``parameters`` cell, and IPython keeps every executed cell's source in
    ``In``. Names a user defines while working interactively are not in that cell, so they are never
    mistaken for parameters.
    """
    history = namespace.get("In", namespace.get("_ih", ()))
    if not isinstance(history, (list, tuple)):
        return []
    names: list[str] = []
    for source in history:
        if not (isinstance(source, str) and source.lstrip().startswith(INJECTED_HEADER)):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
    return names


def unknown_parameter_message(notebook: str, unknown: Sequence[str], known: Sequence[str]) -> str:
    """Names the unknown parameter(s) and lists the notebook's parameters, the closest names first."""
    first = unknown[0]
    close = difflib.get_close_matches(first, known, n=3, cutoff=0.5)
    listing = close + [name for name in known if name not in close]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    which = f"parameter {first!r}" if len(unknown) == 1 else f"parameters {list(unknown)}"
    return (
        f"unknown {which}{hint}: notebook {Path(notebook).stem} has no such parameter, so its value would be ignored. "
        f"Its parameters, closest first: {', '.join(listing)}"
    )


def resolve_parameters(
    notebook: str,
    namespace: MutableMapping[str, Any],
    choices: Mapping[str, Sequence[Any]] | None = None,
    quiet: bool = False,
    checks: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Validate and coerce a notebook's parameters in place; return them as a dict.

    Parameters
    ----------
    notebook : str
        The notebook's name (``"04_train"``); its ``parameters`` cell gives the defaults and types.
    namespace : dict
        The notebook's ``globals()``: values injected by papermill are read from it, and the
        coerced values are written back into it.
    choices : dict, optional
        Allowed values per parameter (after coercion), e.g. ``{"model": ("controlnet", "convnet")}``.
    quiet : bool
        If False, print the resolved parameters as one JSON object.
    checks : callable, optional
        ``checks(resolved)`` raises :class:`ParameterError` for values of the right type that the
        notebook cannot use (ranges, combinations, missing folders); see :mod:`eeg2music.checks`.

    Raises
    ------
    ParameterError
        Naming the first parameter that cannot be read and what it accepts; or a parameter passed
        with ``-p`` that the notebook does not have (listing its parameters, the closest first).
    """
    choices = dict(choices or {})
    resolved: dict[str, Any] = {}
    specs = read_parameter_specs(notebook)
    known = [spec.name for spec in specs]
    # (PAPERMILL_INPUT_PATH and friends are papermill's own, injected with --inject-paths)
    unknown = [name for name in injected_parameter_names(namespace)
               if name not in known and not name.startswith("PAPERMILL_")]
    if unknown:
        raise ParameterError(unknown_parameter_message(notebook, unknown, known))
    for spec in specs:
        value = namespace.get(spec.name, spec.default)
        value = coerce_like(spec.name, value, spec.default)
        if spec.name in choices:
            allowed = list(choices[spec.name])
            if value not in allowed:
                raise ParameterError(f"parameter {spec.name!r}: {value!r} is not one of {allowed}")
        resolved[spec.name] = value
    unknown = sorted(set(choices) - set(resolved))
    if unknown:
        raise ParameterError(f"choices given for parameters the notebook does not have: {unknown}")
    if checks is not None:
        checks(resolved)
    namespace.update(resolved)
    if not quiet:
        print(json.dumps(resolved, default=str))
    return resolved


def coerce_mapping(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``overrides`` to ``defaults`` with type checks (for CLIs and config dataclasses).

    An override whose key is not among the defaults is an error listing the known keys.
    """
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(defaults), n=1, cutoff=0.5)
        raise ParameterError(f"unknown parameter(s) {unknown}" + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; known: {sorted(defaults)}")
    merged = dict(defaults)
    for key, value in overrides.items():
        merged[key] = coerce_like(key, value, defaults[key])
    return merged
