"""The command line of training: ``python -m eeg2music.train --name value …``.

Also under ``accelerate launch -m eeg2music.train`` for several GPUs. Every ``--name`` is a field of
:class:`eeg2music.training.config.TrainConfig`; the loop is :func:`eeg2music.training.loop.train`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from .data.nmedt import NMEDTError
from .models.model_folder import register_unconditional
from .params import ParameterError
from .training.config import TrainConfig
from .training.loop import train
from .utils import DiskFullError, ModelFolderError, WeightsFileError


def build_parser() -> argparse.ArgumentParser:
    """One ``--field`` per :class:`TrainConfig` field; values are type-checked by ``coerce_mapping``."""
    parser = argparse.ArgumentParser(
        prog="python -m eeg2music.train",
        description="Train the EEG ControlNet or the ConvNet baseline (resumable; multi-GPU with "
                    "`accelerate launch -m eeg2music.train ...`).",
    )
    defaults = TrainConfig()
    for item in dataclasses.fields(TrainConfig):
        default = getattr(defaults, item.name)
        shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
        parser.add_argument(f"--{item.name}", default=None, metavar="VALUE",
                            help=f"(default: {shown!r})")
    parser.add_argument("--register_unconditional", action="store_true",
                        help="only register the unconditional baseline (the backbone alone) as a model folder")
    return parser


#: Errors about the inputs (parameters, files, folders, disk space), reported by the CLI as one line.
_USER_ERRORS = (ParameterError, NMEDTError, FileNotFoundError, NotADirectoryError, DiskFullError, ModelFolderError,
                WeightsFileError)


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    unconditional = args.pop("register_unconditional")
    overrides = {k: v for k, v in args.items() if v is not None}
    try:
        cfg = TrainConfig.from_overrides(overrides)
    except ParameterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if unconditional:
        folder = register_unconditional(cfg.out_dir, cfg.backbone, smoke=cfg.smoke)
        print(f"[train] registered the unconditional baseline → {folder}")
        return 0
    try:
        result = train(cfg)
    except _USER_ERRORS as err:  # what the user can fix: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.summary:
        print(json.dumps({k: result.summary[k] for k in ("run", "steps", "final_train_loss", "final_val_loss",
                                                          "train_seconds", "samples_per_second", "model_dir")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
