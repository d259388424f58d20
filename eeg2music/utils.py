"""Small shared helpers: seeding, device choice, atomic writes, JSON.

Outputs are written atomically — to a temporary sibling, then renamed — so an interrupted run never
leaves a half-written file or folder that a later stage would read as complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for a reproducible run."""

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def busy_cores(interval: float = 0.2) -> float | None:
    """How many cores other processes keep busy now: the machine's non-idle CPU time over ``interval`` s.

    Read from ``/proc/stat`` twice (Linux); while it waits, the calling process is idle, so what is
    counted is everyone else. None where ``/proc/stat`` cannot be read.
    """
    def read() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)  # total, idle + iowait

    try:
        total_0, idle_0 = read()
        time.sleep(interval)
        total_1, idle_1 = read()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total_1 - total_0
    if elapsed <= 0:
        return None
    return (os.cpu_count() or 1) * (1.0 - (idle_1 - idle_0) / elapsed)


def cpu_thread_count(requested: int, device: "torch.device | str") -> int:  # noqa: F821
    """torch CPU threads for a run: ``requested`` if positive, torch's default if 0, automatic if negative.

    Automatic (CPU devices only): as many threads as cores other processes leave free (rounded, at least
    one, at most torch's default). On shared cores OpenMP threads that wait for each other make a small
    model up to ten times slower than one thread does (measured here: a tiny-UNet forward 0.14 s on one
    thread, 1.1 s on two, at a load of 8 on 2 cores). The free cores are measured now
    (:func:`busy_cores`); the 1-minute load average, used where ``/proc/stat`` is missing, also counts
    work that has just finished, such as the previous notebook of a chain.
    """
    default = torch.get_num_threads()
    if requested > 0:
        return int(requested)
    if requested == 0 or torch.device(device).type != "cpu":
        return default
    others = busy_cores()
    if others is None:
        if not hasattr(os, "getloadavg"):
            return default
        others = os.getloadavg()[0]
    free = (os.cpu_count() or 1) - others
    return max(1, min(default, int(free + 0.5)))


@contextlib.contextmanager
def cpu_threads_for(device: "torch.device | str", threads: int = -1):  # noqa: F821
    """Within the block, torch uses :func:`cpu_thread_count` threads on a CPU ``device`` (restored on exit).

    Other devices keep torch's current setting. Yields the thread count in use.
    """

    previous = torch.get_num_threads()
    wanted = cpu_thread_count(threads, device) if torch.device(device).type == "cpu" else previous
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(previous)


def resolve_device(device: str = "auto") -> "torch.device":  # noqa: F821
    """``"auto"`` → CUDA when available, else MPS, else CPU; anything else is passed to ``torch.device``.

    Raises
    ------
    ValueError
        If a CUDA device is asked for on a machine without one.
    """

    if device in ("", "auto", None):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"parameter 'device': cannot read {device!r}; accepted: auto, cpu, cuda, cuda:N, mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"parameter 'device': {device!r} asked for, but torch sees no CUDA device; use 'auto' or 'cpu'")
    return resolved


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):

        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(data: Any, indent: int = 2) -> str:
    """JSON text for ``data``; NumPy scalars/arrays, paths and dataclasses are converted."""
    return json.dumps(data, indent=indent, default=_jsonable, allow_nan=True)


class DiskFullError(OSError):
    """A write that failed because its disk is full; the message names the path being written."""


class WeightsFileError(ValueError):
    """A weights file that cannot be read (empty, truncated, not safetensors); the message names it."""


class ModelFolderError(ValueError):
    """A model folder whose files do not make the model asked for; the message names the folder."""


#: How a full disk shows in messages that carry no errno (Rust's safetensors writer, libsndfile via the OS).
_DISK_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|os error (28|122)\b|StorageFull", re.I)


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the disk holding ``path`` (its nearest existing parent), or None if unknown."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return int(shutil.disk_usage(candidate).free)
            except OSError:
                return None
    return None


def is_disk_full(error: BaseException) -> bool:
    """True when ``error`` (or an exception it was raised from) says the disk is full."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if _DISK_FULL_TEXT.search(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(path: str | os.PathLike, error: BaseException | None = None) -> DiskFullError:
    """A :class:`DiskFullError` naming ``path``, the disk's free space and what to do."""
    path = Path(path)
    free = free_bytes(path)
    shown = "unknown" if free is None else (f"{free / 2**20:.1f} MiB" if free >= 2**20 else f"{free} bytes")
    detail = f" ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})" if error is not None else ""
    return DiskFullError(
        errno.ENOSPC,
        f"{path}: not written, the disk is full ({shown} free there){detail}. Nothing half-written was left; "
        f"free some space, or write to another disk (out_dir)",
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file next to ``path`` to write into, renamed onto ``path`` only if the block succeeds.

    Yields the temporary file's path (the file exists, empty, with the permissions a plain ``open`` would
    give it; ``mkstemp`` would leave it 0600). On an exception it is removed and ``path`` is untouched; an
    exception that says the disk is full is raised as :class:`DiskFullError` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())
        finally:
            os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise disk_full_error(path, err) from err
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename (:func:`atomic_file`)."""
    path = Path(path)
    with atomic_file(path) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY), "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write_text(path, to_json(data) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file when it is missing or not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Build a folder under a temporary name and move it into place only if the block succeeds.

    Yields the temporary folder to write into. On success an existing ``path`` is replaced (when
    ``overwrite``); on an exception the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; the finished folder should be like any other
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(err):  # named by the folder being made (the temporary one is gone)
            raise disk_full_error(path, err) from err
        raise
    if path.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def count_parameters(module: "torch.nn.Module", trainable_only: bool = False) -> int:  # noqa: F821
    """Number of parameters of a module (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def check_safetensors(path: str | os.PathLike) -> Path:
    """Refuse an empty, truncated or non-safetensors weights file before a loader reads it.

    A safetensors file is an 8-byte header length, a JSON header giving every tensor's byte range, then
    the data: the file must hold all the bytes its header describes. Nothing is unpickled.

    Raises
    ------
    WeightsFileError
        Naming the file and what is wrong with it (first line of the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    size = path.stat().st_size
    advice = "copy it again, or re-create it (an interrupted copy or write leaves such files)"
    if size == 0:
        raise WeightsFileError(f"{path}: the weights file is empty (0 bytes); {advice}")
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise WeightsFileError(f"{path}: truncated safetensors file ({size} bytes, shorter than its 8-byte header); {advice}")
        header_length = int.from_bytes(head, "little")
        if 8 + header_length > size:
            raise WeightsFileError(
                f"{path}: truncated safetensors file, or not one: {size} bytes, but its header alone would take "
                f"{8 + header_length}; {advice}"
            )
        try:
            header = json.loads(handle.read(header_length))
            ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise WeightsFileError(f"{path}: not a safetensors file (its header is not safetensors JSON); {advice}") from None
    expected = 8 + header_length + max(ends, default=0)
    if size < expected:
        raise WeightsFileError(
            f"{path}: truncated safetensors file: {size} bytes, its header describes {expected} "
            f"({expected - size} missing); {advice}"
        )
    return path


_SHAPE_MISMATCH = re.compile(r"(\S+) expected shape (torch\.Size\(\[[^\]]*\]\)), but got (torch\.Size\(\[[^\]]*\]\))")
_SHAPE_MISMATCH_SLICE = re.compile(r"Cannot load (\S+) because it has shape (\([^)]*\)) in the checkpoint but shape (\([^)]*\))")


def load_pretrained(cls, folder: str | os.PathLike, what: str, **kwargs):
    """``cls.from_pretrained(folder, **kwargs)``, with errors that name the folder and what did not fit.

    Before loading: a ``config.json`` written for another class (its ``_class_name``) and empty or
    truncated ``*.safetensors`` files are refused by name. A load that fails all the same (weights of
    another shape than the config's, missing files) is re-raised as :class:`ModelFolderError` whose
    first line says which folder, what was expected and what was found.

    Parameters
    ----------
    cls : type
        A diffusers ``ModelMixin`` (or transformers ``PreTrainedModel``) class.
    folder : path-like
        The folder holding ``config.json`` and the weights.
    what : str
        How to name the model in messages (e.g. ``"controlnet weights"``, ``"backbone's vae"``).
    **kwargs
        Passed to ``from_pretrained``.
    """
    folder = Path(folder)
    config = folder / "config.json"
    if config.is_file():
        found = read_json(config).get("_class_name")
        if found is not None and found != cls.__name__:
            raise ModelFolderError(
                f"{folder}: its config.json describes a {found}, but the {what} must be a {cls.__name__}; "
                f"this folder holds another model's files (copied into the wrong place?)"
            )
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights)
    try:
        return cls.from_pretrained(folder, **kwargs)
    except (ValueError, TypeError, RuntimeError, OSError, KeyError) as err:
        text = str(err)
        mismatch = _SHAPE_MISMATCH.search(text)
        other = _SHAPE_MISMATCH_SLICE.search(text)
        if mismatch or other:
            name, expected, got = mismatch.groups() if mismatch else (other[1], other[3], other[2])
            detail = (f"weight {name!r}: its config.json expects shape {list(_size(expected))}, its safetensors "
                      f"file holds {list(_size(got))}; the config and the weights come from different models")
        elif isinstance(err, TypeError):
            detail = f"its config.json does not fit {cls.__name__} ({text})"
        else:
            pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
            detail = text.splitlines()[0] if text else type(err).__name__
            if pickles and not any(folder.glob("*.safetensors")):
                detail = (f"no safetensors weights; {pickles} are pickle files (they can run code when read), "
                          f"which are never unpickled here. Convert them to safetensors where you trust them")
        raise ModelFolderError(f"{folder}: cannot load the {what} ({cls.__name__}): {detail}") from err


def _size(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text))
