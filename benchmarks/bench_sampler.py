"""Sampler check: DPM-Solver++ (20 steps) against the paper's DDIM (200 steps), same clips, same seeds.

Notebook 05 samples with DPM-Solver++ in 20 steps instead of the paper's 200 DDIM steps. This script
measures what that costs and saves, in one run:

1. The same models reconstruct the same test (and OOD) windows from the same per-clip initial noise,
   once with each sampler; wall time per clip is measured for both (same process, same machine).
2. Both sets are embedded and evaluated exactly as notebook 06 does (every metric with its 95 %
   bootstrap interval).
3. For every split × model × embedder × metric: is each sampler's value inside the other's 95 %
   interval, and do the two intervals overlap? Plus the paired per-clip cosine difference between
   the samplers' reconstructions.

Usage (after ``make demo`` or notebooks 00–04, which leave the models in ``outputs/04_train``)::

    python benchmarks/bench_sampler.py [--outputs outputs] [--models controlnet_subject unconditional]
        [--test-clips 24] [--ood-clips 8] [--fast-steps 20] [--slow-steps 200] [--guidance 1]
        [--out outputs/bench_sampler]

Writes ``<out>/bench_sampler.json`` and prints a table; the numbers go into the issue's note.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", default="outputs", help="the default run folder holding 04_train (default: outputs)")
    parser.add_argument("--models", nargs="+", default=["controlnet_subject", "unconditional"],
                        help="runs to sample (diffusion models; the ConvNet has no sampler)")
    parser.add_argument("--test-clips", type=int, default=24, help="test windows per model")
    parser.add_argument("--ood-clips", type=int, default=8, help="out-of-distribution windows per model")
    parser.add_argument("--fast-steps", type=int, default=20, help="DPM-Solver++ steps")
    parser.add_argument("--slow-steps", type=int, default=200, help="DDIM steps (the paper's)")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--n-perm", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance scale on the EEG (as notebook 05's guidance_scale)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="the smoke-size default backbone and cache")
    parser.add_argument("--out", default="", help="result folder (default: <outputs>/bench_sampler)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    os.environ["EEG2MUSIC_OUTPUTS"] = str(Path(args.outputs).resolve())
    import numpy as np
    import torch

    from eeg2music.evaluation.embedders import make_embedders
    from eeg2music.evaluation.report import embed_samples, evaluate_samples
    from eeg2music.run_inputs import ensure_backbone
    from eeg2music.sampling.clips import load_samples, sample_models
    from eeg2music.sampling.inputs import (
        check_models_agree,
        ensure_models,
        sampling_datasets,
    )
    from eeg2music.utils import resolve_device, write_json

    out = Path(args.out or Path(args.outputs) / "bench_sampler").resolve()
    device = resolve_device(args.device)
    models = ensure_models(args.models, "", smoke=args.smoke, seed=args.seed, device=str(device))
    kinds = {run: m.kind for run, m in models.items()}
    if "convnet" in kinds.values():
        print("[bench] note: the ConvNet does not diffuse; both 'samplers' give it the same output")
    backbone_dir, data = check_models_agree(models)
    backbone = ensure_backbone(backbone_dir, smoke=args.smoke, seed=args.seed, device=str(device))
    datasets = sampling_datasets(data, smoke=args.smoke, seed=args.seed)
    limits = {"test": args.test_clips, "ood": args.ood_clips}

    runs = {}
    for name, scheduler, steps in (("fast", "dpmsolver++", args.fast_steps), ("slow", "ddim", args.slow_steps)):
        print(f"[bench] {scheduler}, {steps} steps …", flush=True)
        tic = time.perf_counter()
        sample_models(models, backbone, datasets, out / name, scheduler=scheduler, num_inference_steps=steps,
                      seed=args.seed, max_clips=limits, batch_size=args.batch_size, progress=True,
                      guidance_scale=args.guidance, info={"backbone": backbone_dir})
        runs[name] = {"scheduler": scheduler, "steps": steps, "wall_seconds": time.perf_counter() - tic}

    record = {name: load_samples(out / name) for name in runs}
    embedders = make_embedders(backbone=backbone, device=str(device))
    standardize = {e.name: bool(e.standardize) for e in embedders}
    results = {}
    for name in runs:
        embeddings = embed_samples(record[name], embedders, progress=False)
        results[name] = evaluate_samples(record[name], embeddings, standardize=standardize, n_boot=args.n_boot,
                                         n_perm=args.n_perm, seed=args.seed, progress=False)

    # Speed: seconds per clip of the diffusion models, both samplers measured in this one run.
    speed = {}
    for run in models:
        fast = record["fast"]["models"][run]["seconds_per_clip"]
        slow = record["slow"]["models"][run]["seconds_per_clip"]
        speed[run] = {"dpmsolver++_s_per_clip": fast, "ddim_s_per_clip": slow, "ratio": slow / fast if fast else None}

    rows, agree_point, agree_overlap, total = [], 0, 0, 0
    for split, per_run in results["slow"].items():
        for run, per_embedder in per_run.items():
            for embedder, slow in per_embedder.items():
                fast = results["fast"][split][run][embedder]
                for metric, s in slow["metrics"].items():
                    f = fast["metrics"][metric]
                    point = bool(s["ci_low"] <= f["value"] <= s["ci_high"] and f["ci_low"] <= s["value"] <= f["ci_high"])
                    overlap = bool(max(s["ci_low"], f["ci_low"]) <= min(s["ci_high"], f["ci_high"]))
                    total += 1
                    agree_point += point
                    agree_overlap += overlap
                    rows.append({"split": split, "model": run, "embedder": embedder, "metric": metric,
                                 "ddim": s["value"], "ddim_ci": [s["ci_low"], s["ci_high"]],
                                 "dpm": f["value"], "dpm_ci": [f["ci_low"], f["ci_high"]],
                                 "each_inside_other_ci": point, "cis_overlap": overlap})

    # How close are the two samplers' reconstructions of the same clip, against clips of other windows?
    closeness = {}
    for split in results["slow"]:
        for run in models:
            for embedder in standardize:
                a = np.asarray(results["fast"][split][run][embedder]["per_clip"]["cosine"])
                b = np.asarray(results["slow"][split][run][embedder]["per_clip"]["cosine"])
                closeness[f"{split}/{run}/{embedder}"] = {"mean_abs_cosine_change": float(np.abs(a - b).mean())}

    summary = {
        "device": str(device), "threads": torch.get_num_threads(), "models": kinds, "clips": limits,
        "runs": runs, "speed": speed,
        "metrics_compared": total, "each_inside_other_ci": agree_point, "cis_overlap": agree_overlap,
        "rows": rows, "per_clip_cosine_change": closeness,
        "embedders": [e.name for e in embedders],
    }
    write_json(out / "bench_sampler.json", summary)

    print(f"\n[bench] {len(models)} models × ({limits['test']} test + {limits['ood']} OOD) windows, device {device}")
    for run, s in speed.items():
        print(f"  {run:20s} DPM-Solver++ {args.fast_steps:3d} steps {s['dpmsolver++_s_per_clip']:.3f} s/clip · "
              f"DDIM {args.slow_steps} steps {s['ddim_s_per_clip']:.3f} s/clip · ratio {s['ratio']:.1f}×")
    print(f"  metrics where each sampler's value lies inside the other's 95 % CI: {agree_point}/{total}; "
          f"intervals overlap: {agree_overlap}/{total}")
    for row in rows:
        if not row["each_inside_other_ci"]:
            print(f"  differs: {row['split']}/{row['model']}/{row['embedder']}/{row['metric']}: DDIM {row['ddim']:.4g} "
                  f"[{row['ddim_ci'][0]:.4g}, {row['ddim_ci'][1]:.4g}] vs DPM {row['dpm']:.4g} "
                  f"[{row['dpm_ci'][0]:.4g}, {row['dpm_ci'][1]:.4g}]" + ("" if row["cis_overlap"] else "  (no overlap)"))
    print(f"[bench] → {out / 'bench_sampler.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
