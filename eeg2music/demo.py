"""``make demo``: the whole pipeline on the embedded default, notebooks 00 → 06 through papermill.

Each step is one papermill run of a numbered notebook with its default parameters (the stages find
each other's outputs in the default run folder), the executed notebooks land in
``<outputs>/notebooks/``, and a timing table is printed and saved as ``<outputs>/demo_summary.json``.
The executed notebooks 05 and 06 are the report: each is also exported to one self-contained HTML file
beside it (``05_sample.html``, ``06_evaluate.html``; figures and audio players embedded).

Usage::

    python -m eeg2music.demo [--outputs outputs] [--smoke] [--only 04_train ...] [-p name value ...]

``-p`` parameters are passed to every notebook that has them (as papermill's ``-p`` does), over the
chain's own settings: ``-p align_steps 0 -p timestep_sampling uniform -p guidance_scale 1`` runs the paper's
setting (on the tiny backbone, whose preset keeps its learning rate).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .evaluation.report import export_html
from .params import read_parameter_specs
from .paths import NOTEBOOKS_DIR
from .utils import write_json


@dataclass(frozen=True)
class DemoStep:
    """One papermill run: a notebook, the parameters it gets, the name of its executed copy."""

    notebook: str
    parameters: dict = field(default_factory=dict)
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.notebook


#: Steps of contrastive EEG ↔ audio alignment of S and P before each demo ControlNet trains (0 would be the
#: paper's P from scratch; ``benchmarks/ablation_decoding.py`` compares the two).
DEMO_ALIGN_STEPS = 100
#: Guidance on the EEG when the demo samples its ControlNets (1 would be the paper's sampling).
DEMO_GUIDANCE_SCALE = 3.0

#: The demo chain. Notebook 04 runs once per trained model; 05 and 06 then see all four models.
DEMO_STEPS: tuple[DemoStep, ...] = (
    DemoStep("00_backbone"),
    DemoStep("01_explore_data"),
    DemoStep("02_preprocess"),
    DemoStep("03_controlnet"),
    DemoStep("04_train", {"model": "controlnet", "subject_cond": True, "align_steps": DEMO_ALIGN_STEPS},
             "04_train_controlnet_subject"),
    DemoStep("04_train", {"model": "controlnet", "subject_cond": False, "align_steps": DEMO_ALIGN_STEPS},
             "04_train_controlnet"),
    DemoStep("04_train", {"model": "convnet", "subject_cond": False}, "04_train_convnet"),
    DemoStep("05_sample", {"guidance_scale": DEMO_GUIDANCE_SCALE}),
    DemoStep("06_evaluate"),
)

#: Steps whose executed notebook is exported to HTML: together they are the report (clips, figures, numbers).
REPORT_STEPS = ("05_sample", "06_evaluate")


#: The backend ipykernel picks when none is set: each figure becomes a PNG output of its cell.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


@contextmanager
def inline_figures() -> Iterator[None]:
    """Kernels started inside this block draw their figures into the notebook.

    ``make`` exports ``MPLBACKEND=Agg`` so that nothing opens a window; a kernel inherits it, and then
    ``plt.show()`` leaves no figure in the executed notebook, which is the report. The variable is set to
    the inline backend for the block and restored after it.
    """
    before = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = before


def run_step(step: DemoStep, executed_dir: Path, extra: dict, smoke: bool) -> float:
    """Execute one step with papermill; return its wall time in seconds."""
    import jupytext
    import papermill as pm

    source = NOTEBOOKS_DIR / f"{step.notebook}.py"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: notebook source missing")
    known = {spec.name for spec in read_parameter_specs(step.notebook)}
    # The user's -p values win over a step's own (e.g. -p align_steps 0 -p guidance_scale 1: the paper's setting).
    parameters = {k: v for k, v in {"smoke": smoke, **step.parameters, **extra}.items() if k in known}
    executed_dir.mkdir(parents=True, exist_ok=True)
    notebook_in = executed_dir / f".{step.name}.input.ipynb"
    notebook_out = executed_dir / f"{step.name}.ipynb"
    jupytext.write(jupytext.read(source), notebook_in)
    start = time.perf_counter()
    try:
        with inline_figures():
            pm.execute_notebook(
                str(notebook_in), str(notebook_out), parameters=parameters, kernel_name="python3",
                cwd=str(NOTEBOOKS_DIR), progress_bar=False, log_output=False,
            )
    finally:
        notebook_in.unlink(missing_ok=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eeg2music.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", default="outputs", help="the default run folder (default: outputs)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds per notebook)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these steps (names as in the table)")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter for every notebook that has it")
    args = parser.parse_args(argv)

    outputs = Path(args.outputs).resolve()
    os.environ["EEG2MUSIC_OUTPUTS"] = str(outputs)
    extra = dict(args.p)
    steps = [s for s in DEMO_STEPS if args.only is None or s.name in args.only or s.notebook in args.only]
    available = [s for s in steps if (NOTEBOOKS_DIR / f"{s.notebook}.py").is_file()]
    for missing in sorted({s.notebook for s in steps} - {s.notebook for s in available}):
        print(f"[demo] skipping {missing}: notebooks/{missing}.py does not exist yet")

    timings: dict[str, float] = {}
    reports: list[Path] = []
    total_start = time.perf_counter()
    for step in available:
        print(f"[demo] {step.name} …", flush=True)
        try:
            seconds = run_step(step, outputs / "notebooks", extra, args.smoke)
        except Exception as err:  # papermill raises PapermillExecutionError with the cell's traceback
            print(f"[demo] {step.name} FAILED — see {outputs / 'notebooks' / (step.name + '.ipynb')}\n{err}",
                  file=sys.stderr)
            write_json(outputs / "demo_summary.json", {"failed": step.name, "seconds": timings, "smoke": args.smoke})
            return 1
        timings[step.name] = round(seconds, 1)
        print(f"[demo] {step.name} done in {seconds:.1f} s", flush=True)
        if step.name in REPORT_STEPS:
            reports.append(export_html(outputs / "notebooks" / f"{step.name}.ipynb"))
    total = time.perf_counter() - total_start
    write_json(outputs / "demo_summary.json", {"seconds": timings, "total_seconds": round(total, 1), "smoke": args.smoke})
    print("[demo] " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    where = (f"the report is {' and '.join(str(path) for path in reports)}" if reports
             else f"the executed notebooks are in {outputs / 'notebooks'}")
    print(f"[demo] all done in {total / 60:.1f} min; {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
