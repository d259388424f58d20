"""Which lever buys how much decoding: the paper's ControlNet, then one change at a time, same seed and clips.

Runs notebooks 04 → 05 → 06 with papermill inside one run folder (``--outputs``, default
``outputs/ablation``; the simulated dataset, the cache and the backbone are reused from the default run
folder when they are there, otherwise built once). Rows:

* ``paper``: ControlNet + subject layer, P trained from scratch with it, uniform over every diffusion step, no guidance;
* ``t≥500``: the same, trained and acting only at the noisier half of the steps;
* ``t≥500 + aligned``: S and P first aligned to the audio with a contrastive loss (``--align-steps``);
* ``cubic + aligned`` (the demo's): aligned, trained at every step with timesteps drawn cubic (biased to high noise);
* each ControlNet again sampled with guidance on the EEG (``--guidance``), and its one-step estimate from
  the same noise (``<run>_estimate``: the conditional mean given the EEG, not a sample);
* each guided ControlNet once more, restarted from that estimate for the last ``--strength`` of the steps (SDEdit);
* the ConvNet baseline and the unconditional backbone as references.

Every model reconstructs the same test and out-of-distribution windows from the same per-clip noise
(notebook 05's seeding), and notebook 06 evaluates each sampling run; the script then collects song-
and segment-identification (test split) with 95 % intervals, per embedder, into one table.

Usage::

    python benchmarks/ablation_decoding.py [--outputs outputs/ablation] [--steps 200] [--align-steps 100]
        [--guidance 3] [--strength 0.3] [--max-clips 0]

Writes ``<outputs>/ablation.json`` and ``<outputs>/ablation.csv`` and prints the table; notebook 06 shows the
table when it finds ``ablation.json`` in ``outputs/ablation`` (or its ``ablation_dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from eeg2music.paths import outputs_dir, stage_dir

    parser.add_argument("--outputs", default=str(stage_dir("ablation")),
                        help="run folder of the ablation (default: outputs/ablation, where notebook 06 looks for it)")
    parser.add_argument("--reuse", default=str(outputs_dir()),
                        help="default run folder whose data, cache and backbone are reused (default: outputs)")
    parser.add_argument("--steps", type=int, default=200, help="ControlNet steps (as the demo)")
    parser.add_argument("--align-steps", type=int, default=100, help="contrastive steps of the aligned variant")
    parser.add_argument("--guidance", type=float, default=3.0, help="guidance scale w of the guided rows")
    parser.add_argument("--strength", type=float, default=0.3,
                        help="strength of the guided rows restarted from each model's conditional mean (SDEdit)")
    parser.add_argument("--max-clips", type=int, default=0, help="windows per split and model (0: notebook 05's default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


#: (run name, notebook 04 parameters)
def _variants(args) -> list[tuple[str, dict]]:
    return [
        ("paper", {"model": "controlnet", "subject_cond": True, "control_min_timestep": 0, "timestep_sampling": "uniform"}),
        ("t500", {"model": "controlnet", "subject_cond": True, "control_min_timestep": 500, "timestep_sampling": "uniform"}),
        ("t500_aligned", {"model": "controlnet", "subject_cond": True, "control_min_timestep": 500,
                          "timestep_sampling": "uniform", "align_steps": args.align_steps}),
        ("cubic_aligned", {"model": "controlnet", "subject_cond": True, "control_min_timestep": 0,
                           "timestep_sampling": "cubic", "align_steps": args.align_steps}),
        ("convnet", {"model": "convnet", "subject_cond": False}),
    ]


def main(argv=None) -> int:
    args = _parse(argv)
    outputs, reuse = Path(args.outputs).resolve(), Path(args.reuse).resolve()
    os.environ["EEG2MUSIC_OUTPUTS"] = str(outputs)
    from eeg2music.demo import DemoStep, run_step
    from eeg2music.paths import ABLATION_NAME
    from eeg2music.utils import write_json

    # The dataset, its cache and the backbone of the default run folder, when present (read-only copies).
    for part in ("data", "00_backbone", "02_preprocess"):
        if (reuse / part).is_dir() and not (outputs / part).exists():
            shutil.copytree(reuse / part, outputs / part, symlinks=True)
    executed = outputs / "notebooks"
    timings: dict[str, float] = {}
    runs = []
    for run, parameters in _variants(args):
        step = DemoStep("04_train", {**parameters, "steps": args.steps if parameters["model"] == "controlnet" else None,
                                     "run_name": run, "seed": args.seed}, f"04_{run}")
        print(f"[ablation] training {run} …", flush=True)
        timings[step.name] = run_step(step, executed, {}, smoke=False)
        runs.append(run)
    controlnets = [run for run, p in _variants(args) if p["model"] == "controlnet"]
    # (name, runs, guidance, runs whose one-step estimate is decoded too, strength): the guided sampling also
    # decodes every ControlNet's conditional mean; the last run restarts each sampler from that mean.
    sampling = [("w1", runs + ["unconditional"], 1.0, [], 1.0),
                (f"w{args.guidance:g}", controlnets, args.guidance, controlnets, 1.0),
                (f"w{args.guidance:g}_s{args.strength:g}", controlnets, args.guidance, [], args.strength)]
    for name, models, guidance, estimates, strength in sampling:
        sample_dir, eval_dir = outputs / f"05_{name}", outputs / f"06_{name}"
        for notebook, params, out in (("05_sample", {"models": models, "guidance_scale": guidance, "decode_means": bool(estimates),
                                                     "strength": strength, "max_clips": args.max_clips,
                                                     "out_dir": str(sample_dir)}, sample_dir),
                                      ("06_evaluate", {"sample_dir": str(sample_dir), "out_dir": str(eval_dir)}, eval_dir)):
            step = DemoStep(notebook, {**params, "seed": args.seed}, f"{notebook[:2]}_{name}")
            print(f"[ablation] {step.name} …", flush=True)
            timings[step.name] = run_step(step, executed, {}, smoke=False)

    rows = []
    for name, models, guidance, estimates, strength in sampling:
        metrics = json.loads((outputs / f"06_{name}" / "metrics.json").read_text())
        encoder = json.loads((outputs / f"05_{name}" / "encoder_only.json").read_text()) \
            if (outputs / f"05_{name}" / "encoder_only.json").is_file() else {}
        for run in models + [f"{run}_estimate" for run in estimates]:
            row = {"model": run, "guidance": guidance, "strength": 0.0 if run.endswith("_estimate") else strength,
                   "setting": metrics["models"][run].get("setting", "")}
            for embedder, result in metrics["results"]["test"][run].items():
                for metric in ("song_id_top1", "segment_id_top1"):
                    entry = result["metrics"].get(metric)
                    if entry:
                        row[f"{embedder} {metric}"] = entry["value"]
                        row[f"{embedder} {metric} CI"] = [entry.get("ci_low"), entry.get("ci_high")]
                ood = metrics["results"].get("ood", {}).get(run, {}).get(embedder, {}).get("metrics", {})
                if ood.get("segment_id_top1"):
                    row[f"{embedder} OOD segment_id_top1"] = ood["segment_id_top1"]["value"]
            if run in encoder:
                row["encoder-only song_top1"] = encoder[run]["song_top1"]
                row["encoder-only segment_top1"] = encoder[run]["segment_top1"]
            rows.append(row)
    import pandas as pd

    table = pd.DataFrame(rows)
    record = {"settings": vars(args), "seconds": timings, "rows": rows}
    write_json(outputs / ABLATION_NAME, json.loads(json.dumps(record, default=float)))
    table.drop(columns=[c for c in table.columns if c.endswith(" CI")]).to_csv(outputs / "ablation.csv", index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.precision", 2):
        print(table.drop(columns=[c for c in table.columns if c.endswith(" CI")]))
    print(f"[ablation] {sum(timings.values()) / 60:.1f} min; wrote {outputs / ABLATION_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
