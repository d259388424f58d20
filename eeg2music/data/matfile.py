"""One MAT-file layer for NMED-T's two formats: MATLAB v5 (scipy.io) and v7.3 (HDF5, h5py).

The cleaned release ships v5 files, the raw recordings v7.3 ones. The readers in
:mod:`eeg2music.data.recordings` ask this layer for variables, strings and scalars without caring which
format holds them; :func:`write_mat_v73` writes the v7.3 layout the simulator and the fixtures use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io

from ..utils import atomic_file
from .nmedt import NMEDTError


def is_hdf5(path: Path) -> bool:

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def open_hdf5(path: Path):

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise NMEDTError(f"{path}: cannot open the MATLAB v7.3 (HDF5) file ({err}); it may be truncated") from None


def h5_variables(handle) -> list[str]:
    return sorted(key for key in handle.keys() if not key.startswith("#"))


def require_variables(path: Path, present, wanted: Sequence[str], layout: str, holds: Callable[[], list[str]],
                       checked: Sequence[str] | None = None) -> None:
    """Refuse a file of ``layout`` that lacks one of ``checked`` (default ``wanted``), naming what it holds.

    ``present`` answers ``name in present``; ``holds`` lists the file's variables (called only to say so).
    """
    missing = [name for name in (checked or wanted) if name not in present]
    if missing:
        raise NMEDTError(
            f"{path}: missing variable(s) {missing}; a {layout} NMED-T file holds {list(wanted)}, "
            f"this one holds {holds()}"
        )


def loadmat_v5(path: Path, variable_names: Sequence[str]) -> dict[str, Any]:
    """Load the named variables of a MATLAB v4–v7 file; every failure names the file."""

    try:
        with open(path, "rb") as handle:
            return scipy.io.loadmat(handle, variable_names=list(variable_names))
    except NotImplementedError:
        raise NMEDTError(f"{path}: MATLAB v7.3 file that is not valid HDF5; it may be truncated") from None
    except Exception as err:  # scipy raises ValueError, TypeError, zlib.error, MatReadError… on damage
        raise NMEDTError(f"{path}: cannot read the MATLAB file ({type(err).__name__}: {err}); it may be truncated or not a .mat file") from None


def v5_variables(path: Path) -> list[str]:

    try:
        return sorted(name for name, _, _ in scipy.io.whosmat(str(path)))
    except Exception as err:
        raise NMEDTError(f"{path}: cannot read the MATLAB file ({type(err).__name__}: {err}); it may be truncated or not a .mat file") from None


def h5_char(dataset) -> str:
    """A MATLAB char array stored in HDF5 (uint16 codes)."""
    codes = np.asarray(dataset[()]).ravel()
    return "".join(chr(int(c)) for c in codes if int(c) != 0)


def h5_cell_strings(handle, name: str, path: Path) -> list[str]:
    dataset = handle[name]
    if dataset.dtype != object:
        if dataset.attrs.get("MATLAB_class", b"") == b"char":
            return [h5_char(dataset)]
        raise NMEDTError(f"{path}: variable {name!r} should be a cell of strings, found a {dataset.dtype} array")
    return [h5_char(handle[ref]) for ref in np.asarray(dataset[()]).ravel()]


def h5_scalar(handle, name: str, path: Path) -> float:
    values = np.asarray(handle[name][()], dtype=float).ravel()
    if values.size != 1:
        raise NMEDTError(f"{path}: variable {name!r} should be one number, found {values.size} values")
    return float(values[0])


def v5_strings(value: Any) -> list[str]:
    """The strings of a scipy-loaded cell array (or char array)."""
    value = np.asarray(value)
    if value.dtype == object:
        return [str(np.asarray(item).squeeze()) if np.asarray(item).size else "" for item in value.ravel()]
    if value.dtype.kind in "US":
        return [str(item).strip() for item in value.ravel()]
    return [str(item) for item in value.ravel()]


def check_fs(fs: float, path: Path) -> float:
    if not np.isfinite(fs) or fs <= 0:
        raise NMEDTError(f"{path}: fs = {fs!r} is not a positive sampling rate")
    return float(fs)


def write_mat_v73(path: str | Path, variables: dict[str, Any]) -> Path:
    """Write a MATLAB v7.3 file (HDF5 with MATLAB's 512-byte header), as MATLAB's ``save -v7.3`` does.

    Supported values: numeric arrays (stored transposed, as MATLAB stores column-major arrays, with
    ``MATLAB_class`` ``double``/``single``/…), scalars, strings (``char``), and cell arrays given as
    NumPy object arrays of those (stored as HDF5 object references into ``#refs#``). The file is
    written to a temporary name and renamed, so a reader never sees half a file.
    """


    path = Path(path)
    classes = {
        np.dtype(np.float64): b"double", np.dtype(np.float32): b"single", np.dtype(np.int8): b"int8",
        np.dtype(np.int16): b"int16", np.dtype(np.int32): b"int32", np.dtype(np.int64): b"int64",
        np.dtype(np.uint8): b"uint8", np.dtype(np.uint16): b"uint16", np.dtype(np.uint32): b"uint32",
        np.dtype(np.uint64): b"uint64",
    }
    counter = iter(range(10**9))

    def write_value(group, name: str, value: Any):
        if isinstance(value, str):
            codes = np.array([ord(c) for c in value], dtype=np.uint16).reshape(1, -1)
            dataset = group.create_dataset(name, data=codes.T)
            dataset.attrs["MATLAB_class"] = np.bytes_(b"char")
            dataset.attrs["MATLAB_int_decode"] = np.int32(2)
            return dataset
        array = np.asarray(value)
        if array.dtype == object:
            refs_group = group.file.require_group("#refs#")
            matlab = np.atleast_2d(array)
            refs = np.empty(matlab.shape, dtype=h5py.ref_dtype)
            for index in np.ndindex(matlab.shape):
                refs[index] = write_value(refs_group, f"r{next(counter)}", matlab[index]).ref
            dataset = group.create_dataset(name, data=refs.T)
            dataset.attrs["MATLAB_class"] = np.bytes_(b"cell")
            return dataset
        if array.dtype == bool:
            array = array.astype(np.uint8)
        if array.dtype not in classes:
            raise TypeError(f"write_mat_v73: cannot store {name!r} of dtype {array.dtype}")
        matlab = array.reshape(1, 1) if array.ndim == 0 else (array.reshape(1, -1) if array.ndim == 1 else array)
        big = matlab.nbytes > (1 << 20)
        dataset = group.create_dataset(
            name, data=matlab.T, chunks=True if big else None,
        )
        dataset.attrs["MATLAB_class"] = np.bytes_(classes[array.dtype])
        return dataset

    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=512, libver="earliest") as handle:
            for name, value in variables.items():
                write_value(handle, name, value)
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: eeg2music HDF5 schema 1.00 ."
        with open(tmp, "r+b") as handle:
            handle.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")
    return path
