"""Importing the two metric libraries, ``laion_clap`` and ``encodec``, where torch has no torchvision/torchaudio.

The one place for import shims in this project. Why they exist:

* ``laion_clap`` 1.1.7 imports ``torchvision`` at module level (``clap_module/utils.py``:
  ``FrozenBatchNorm2d``; ``clap_module/transform.py``: image transforms; ``training/data.py``:
  ``torchvision.datasets``/``transforms``) although its *audio* embedding uses none of it (the one
  audio use, a ``Resize`` in ``get_audio_features``, runs only for fusion models on clips > 10 s).
* ``encodec`` 0.1.1 imports ``torchaudio`` at module level (``encodec/utils.py``) but uses it only to
  resample and to read/write files (``convert_audio``, ``save_audio``), which we do with soxr.
* The PyPI builds of torchvision/torchaudio link ``libtorch_cuda.so``, so they do not load beside the
  CPU torch wheel (``operator torchvision::nms does not exist``; ``OSError`` for torchaudio).

:func:`import_laion_clap` and :func:`import_encodec` first try the real dependency. Only when it cannot
be imported do they put a *stand-in* module into ``sys.modules`` for the duration of the library's
import, and remove it again afterwards. A stand-in holds no behaviour: every name looked up on it is
a placeholder that raises :class:`MissingDependencyError` (saying which name was used and why it is
missing) as soon as anything calls it. So nothing silently runs with a fake torchvision/torchaudio:
either a code path never touches them (the audio embeddings) or it fails loudly.

:func:`hub_offline` keeps the Hugging Face libraries (huggingface_hub, transformers, diffusers, and the
tokenizers laion_clap builds when imported) off the network; the functions that import or load them call
it first.

When the environment provides working torchvision and torchaudio (see ``benchmarks/measure_installs.sh``
and the note in the README), the real modules are used and the stand-ins are dead code;
``tests/test_embedders.py::test_stand_in_still_needed_*`` then fail on purpose, to say: delete
the stand-ins here and those tests.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.machinery
import os
import sys
import types
from collections.abc import Iterator

__all__ = ["MissingDependencyError", "hub_offline", "import_laion_clap", "import_encodec", "real_import_error"]

# The submodules each library imports by dotted name (``import torchvision.datasets as datasets``,
# ``from torchvision.ops.misc import FrozenBatchNorm2d``); names looked up *on* them are placeholders.
_STAND_IN_SUBMODULES = {
    "torchvision": ("ops", "ops.misc", "transforms", "datasets"),
    "torchaudio": ("functional", "transforms"),
}


def hub_offline() -> None:
    """Make the Hugging Face libraries offline, unless the environment already says otherwise.

    Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` where they are unset (and
    ``TOKENIZERS_PARALLELISM=false``, which keeps the tokenizers quiet after a fork). Called right before
    laion_clap, transformers or an AudioLDM2 folder is imported or loaded: a hub look-up otherwise
    retries for minutes on a machine without internet. huggingface_hub reads ``HF_HUB_OFFLINE`` once, when
    it is first imported (diffusers imports it, e.g. with :mod:`eeg2music.models.controlnet`); if that came
    first, its flag is switched on here when the environment now asks for offline mode.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    constants = sys.modules.get("huggingface_hub.constants")
    wanted = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    if constants is not None and wanted in {"1", "ON", "YES", "TRUE"}:
        constants.HF_HUB_OFFLINE = True


class MissingDependencyError(ImportError):
    """A placeholder of a stand-in module was used: the real dependency is needed for this code path."""


def real_import_error(name: str) -> BaseException | None:
    """The exception that importing ``name`` raises here, or None if it imports.

    A failed import can leave half-initialised submodules behind; they are removed so that a later
    import (or a stand-in) starts clean.
    """
    if name in sys.modules and not getattr(sys.modules[name], "__eeg2music_stand_in__", False):
        return None
    try:
        importlib.import_module(name)
    except Exception as err:  # ImportError, but also RuntimeError/OSError from a mismatched binary build
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        return err
    return None


class _Placeholder:
    """A name of a missing library: importable, but any call or use of it raises."""

    def __init__(self, qualified_name: str, reason: str):
        self._qualified_name = qualified_name
        self._reason = reason

    def _fail(self, *args, **kwargs):
        raise MissingDependencyError(
            f"{self._qualified_name} was used, but {self._qualified_name.split('.')[0]} cannot be imported here "
            f"({self._reason}); eeg2music imported its caller with a stand-in because the audio-embedding code "
            "path does not need it. Install a torchvision/torchaudio build that matches torch to use this feature."
        )

    __call__ = _fail
    __iter__ = _fail
    __bool__ = _fail

    def __getattr__(self, name: str) -> "_Placeholder":
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{self._qualified_name}.{name}", self._reason)

    def __repr__(self) -> str:
        return f"<placeholder for {self._qualified_name} (stand-in: {self._reason})>"


class _StandInModule(types.ModuleType):
    """A module whose every attribute is a :class:`_Placeholder`."""

    __eeg2music_stand_in__ = True

    def __init__(self, name: str, reason: str):
        super().__init__(name, f"eeg2music stand-in for {name} (the real module cannot be imported: {reason})")
        self.__dict__["_reason"] = reason
        self.__path__ = []  # a package, so that its submodules can be imported by dotted name
        # importlib.util.find_spec (transformers' availability checks) needs a spec on sys.modules entries
        self.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)

    def __getattr__(self, attribute: str) -> _Placeholder:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return _Placeholder(f"{self.__name__}.{attribute}", self.__dict__["_reason"])


@contextlib.contextmanager
def _stand_in_while_importing(name: str) -> Iterator[BaseException | None]:
    """Provide a stand-in for ``name`` during the block if the real module cannot be imported."""
    error = real_import_error(name)
    if error is None:
        yield None
        return
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".strip()
    modules = {name: _StandInModule(name, reason)}
    for sub in _STAND_IN_SUBMODULES[name]:
        modules[f"{name}.{sub}"] = _StandInModule(f"{name}.{sub}", reason)
    for full_name, module in modules.items():
        parent, _, child = full_name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    sys.modules.update(modules)
    try:
        yield error
    finally:
        for full_name, module in modules.items():
            if sys.modules.get(full_name) is module:
                del sys.modules[full_name]


@functools.cache
def import_laion_clap() -> types.SimpleNamespace:
    """Import laion_clap's audio modules — with a torchvision stand-in if torchvision cannot be imported here.

    Returns
    -------
    types.SimpleNamespace
        ``package`` (``laion_clap``), ``factory`` (model configs), ``model`` (``CLAPAudioCfp``),
        ``htsat`` and ``pann_model`` (the audio towers) and ``data`` (``get_audio_features``, the
        library's own audio preprocessing).

    Notes
    -----
    laion_clap appends its folder to ``sys.path`` and its ``hook`` imports the model code as the
    top-level package ``clap_module``; we use those same module objects rather than importing the code
    a second time as ``laion_clap.clap_module``. Importing laion_clap also builds three (empty, offline)
    Hugging Face tokenizers; :func:`hub_offline` runs first so this does not wait on the network.
    """
    hub_offline()
    # transformers probes for torchvision when it is first imported: let it see the real state.
    importlib.import_module("transformers")
    with _stand_in_while_importing("torchvision"):
        package = importlib.import_module("laion_clap")
        modules = {name: importlib.import_module(f"clap_module.{name}") for name in ("factory", "model", "htsat", "pann_model")}
        modules["data"] = importlib.import_module("laion_clap.training.data")
    return types.SimpleNamespace(package=package, **modules)


@functools.cache
def import_encodec() -> types.ModuleType:
    """``import encodec`` — with a torchaudio stand-in if torchaudio cannot be imported here."""
    with _stand_in_while_importing("torchaudio"):
        return importlib.import_module("encodec")
