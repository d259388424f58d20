"""Does a backbone generate the dataset's music? Unconditional samples against real crops, several backbones in one run.

For each backbone folder (default: the tiny backbone shipped in ``eeg2music/assets/tiny_backbone``) this
runs notebook 00's evaluation (:func:`eeg2music.evaluation.backbone_quality.evaluate_backbone`) on the same songs, the same
real crops and the same seeds:

1. Fréchet distances of ``--n-samples`` unconditional samples to real training crops, divided by the
   distance between two independent real sets of the same size, on two feature sets (mel statistics:
   per-band mean and spread over time; latent statistics: per-channel mean and spread), with decoded
   Gaussian latents (no UNet) as the baseline;
2. the sampled latents' per-channel mean and std against the real latents';
3. loudness (mel level, vocoded RMS) and spectral balance (level per mel band);
4. the held-out VAE round trip (spectral SNR) and the size of the weights.

Usage::

    python benchmarks/bench_backbone.py [--backbones eeg2music/assets/tiny_backbone OTHER ...]
        [--data-root ""] [--n-samples 128] [--steps 50] [--seed 0] [--out outputs/bench_backbone]

Writes ``<out>/bench_backbone.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from eeg2music.data.song_audio import SongSplit, load_song_audio
from eeg2music.evaluation.backbone_quality import evaluate_backbone
from eeg2music.models.backbone import (
    BACKBONE_MARKER,
    SHIPPED_BACKBONE_DIR,
    load_backbone,
)
from eeg2music.models.tiny_backbone import backbone_provenance


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=[], help="backbone folders (default: the shipped one)")
    parser.add_argument("--data-root", default="", help="NMED-T folder with stimuli; empty: the simulated default")
    parser.add_argument("--n-samples", type=int, default=128, help="samples, and the size of each real set")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps per sample")
    parser.add_argument("--holdout-seconds", type=float, default=7.0, help="tail of each song held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="result folder (default: <outputs>/bench_backbone)")
    return parser.parse_args(argv)


def _row(name: str, folder: Path, metrics: dict, seconds: float) -> dict:
    mel, latent = metrics["frechet"]["mel_statistics"], metrics["frechet"]["latent_statistics"]
    latents, loudness = metrics["latents"], metrics["loudness"]
    weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    return {
        "backbone": name,
        "prediction": metrics["scheduler"]["prediction_type"],
        "FD mel ÷ real": mel["samples_over_real"],
        "FD mel Gaussian ÷ real": mel["gaussian_over_real"],
        "FD latent ÷ real": latent["samples_over_real"],
        "FD latent Gaussian ÷ real": latent["gaussian_over_real"],
        "latent std error (max)": latents["max_std_error"],
        "latent mean error (max, in std)": latents["max_mean_error"],
        "mel level Δ dB": loudness["mel_level_difference_db"],
        "band Δ dB (max)": loudness["max_band_difference_db"],
        "RMS Δ dB": loudness["vocoded_rms_difference_db"],
        "VAE SNR dB": metrics["reconstruction"].get("snr_db", float("nan")),
        "weights MB": weights / 2**20,
        "eval s": seconds,
    }


def main(argv=None) -> int:
    args = _parse(argv)
    import pandas as pd

    from eeg2music.paths import outputs_dir
    from eeg2music.run_inputs import ensure_dataset
    from eeg2music.utils import write_json

    folders = [Path(p) for p in (args.backbones or [str(SHIPPED_BACKBONE_DIR)])]
    missing = [str(p) for p in folders if not (p / BACKBONE_MARKER).is_file()]
    if missing:
        print(f"not a backbone folder (no {BACKBONE_MARKER}): {missing}", file=sys.stderr)
        return 2
    data_root = ensure_dataset(args.data_root)
    split = SongSplit.from_audio(load_song_audio(data_root), holdout_seconds=args.holdout_seconds)
    rows, results = [], {}
    for folder in folders:
        model = load_backbone(folder)
        start = time.perf_counter()
        evaluation = evaluate_backbone(model, split, n_samples=args.n_samples, num_inference_steps=args.steps,
                                          seed=args.seed, progress=False)
        seconds = time.perf_counter() - start
        name = f"{folder.name} ({backbone_provenance(folder).get('weights_digest')})"
        results[str(folder.resolve())] = {"metrics": evaluation.metrics, "seconds": seconds}
        rows.append(_row(name, folder, evaluation.metrics, seconds))
        print(f"[bench_backbone] {name}: evaluated in {seconds:.0f} s", flush=True)
    table = pd.DataFrame(rows).set_index("backbone")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 2):
        print(table.T)
    out = Path(args.out) if args.out else outputs_dir() / "bench_backbone"
    record = {"settings": vars(args), "data_root": str(data_root), "table": rows, "results": results}
    write_json(out / "bench_backbone.json", json.loads(json.dumps(record, default=float)))
    print(f"wrote {out / 'bench_backbone.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
