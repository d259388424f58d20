"""Training throughput: the tiny ControlNet at demo size on this CPU, or the real configuration on a GPU.

CPU (default)::

    python benchmarks/bench_train.py [--model controlnet] [--steps 30] [--batch_size 8]

runs :func:`eeg2music.training.loop.train` for ``--steps`` steps on the default run folder's data and backbone
(built if missing, as notebook 04 does; or ``--backbone`` / ``--run_dir``) into a temporary folder, sharing
the default latent cache, and reports samples/s, seconds per step,
time per epoch and the estimated time of the demo's run — step time only: validation and checkpoints
are timed separately.

GPU (``--real``)::

    python benchmarks/bench_train.py --real [--batch_size 8] [--steps 10] [--peak_tflops 989]

builds the real AudioLDM2-music UNet configuration at random initialisation (no weights needed), the
EEG ControlNet for 124-channel, 1 kHz, 3.5 s windows, and times the training step (frozen UNet in bf16,
ControlNet under bf16 autocast, AdamW) on synthetic batches: samples/s, peak GPU memory, and model FLOPs
utilisation (FLOPs of one step counted by ``torch.utils.flop_counter`` ÷ step time ÷ the GPU's dense
bf16 peak). It needs CUDA and says so otherwise.

Results are printed as one JSON object (and written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

#: Dense bf16 tensor-core peaks (FLOP/s) of common GPUs, by a substring of their name.
PEAK_BF16_FLOPS = {
    "H200": 989.4e12,
    "H100 SXM": 989.4e12,
    "H100 NVL": 835.5e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,
    "A100": 312.0e12,
    "L40S": 362.05e12,
    "L4": 121.0e12,
    "A10G": 70.0e12,
}

#: The published cvssp/audioldm2-music UNet configuration (used when eeg2music.models.backbone offers none).
AUDIOLDM2_MUSIC_UNET = dict(
    sample_size=256, in_channels=8, out_channels=8, block_out_channels=(128, 256, 384, 640), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 4, up_block_types=("CrossAttnUpBlock2D",) * 4,
    attention_head_dim=8, cross_attention_dim=([None, 768, 1024],) * 4, norm_num_groups=32,
)


def bench_cpu(args) -> dict:
    """Train ``args.steps`` steps at demo size (default data and backbone) and report the throughput."""
    from eeg2music.paths import stage_dir
    from eeg2music.training.config import PRESETS, TrainConfig
    from eeg2music.training.loop import train

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        cfg = TrainConfig(model=args.model, subject_cond=args.subject_cond, steps=args.steps,
                          batch_size=args.batch_size or None, val_every=args.steps, checkpoint_every=args.steps,
                          backbone=args.backbone, run_dir=args.run_dir, out_dir=tmp, device="cpu", seed=0,
                          latent_cache_dir=str(stage_dir("train") / "latent_cache"))
        result = train(cfg, progress=not args.quiet)
    summary = result.summary
    demo_steps = PRESETS["demo"][args.model]["steps"]
    train_windows = summary["data"]["windows"]["train"]
    return {
        "mode": "cpu",
        "model": args.model,
        "subject_cond": args.subject_cond,
        "device": summary["device"],
        "batch_size": summary["config"]["batch_size"],
        "steps_timed": args.steps,
        "samples_per_second": summary["samples_per_second"],
        "seconds_per_step": summary["seconds_per_step"],
        "cpu_seconds_per_step": summary["cpu_seconds_per_step"],
        "train_windows": train_windows,
        "seconds_per_epoch": round(train_windows / summary["samples_per_second"], 1),
        "demo_steps": demo_steps,
        "demo_step_seconds_estimate": round(demo_steps * summary["seconds_per_step"], 1),
        "validation_and_checkpoint_seconds": summary["validation_and_checkpoint_seconds"],
        "trainable_parameters": summary["parameters"]["trainable"],
    }


def peak_flops(device_name: str, override_tflops: float | None) -> float:
    if override_tflops:
        return override_tflops * 1e12
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    raise SystemExit(f"bench_train: unknown GPU {device_name!r}: pass its dense bf16 peak with --peak_tflops")


def real_unet(device: torch.device):
    """The AudioLDM2-music UNet at random initialisation (the backbone module's config when it has one)."""
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import (
        AudioLDM2UNet2DConditionModel,
    )

    try:
        from eeg2music.models.backbone import build_audioldm2_music_on_meta

        built = build_audioldm2_music_on_meta()
        config = {k: v for k, v in dict(getattr(built, "unet", built).config).items() if not k.startswith("_")}
    except ImportError:
        config = AUDIOLDM2_MUSIC_UNET
    with torch.device(device):
        return AudioLDM2UNet2DConditionModel(**config)


def bench_real(args) -> dict:
    """Time the ControlNet training step of the real configuration in bf16 on a CUDA GPU."""
    if not torch.cuda.is_available():
        raise SystemExit(
            "bench_train --real needs a CUDA GPU (the real AudioLDM2-music configuration in bf16); torch sees none "
            "on this machine. Run the CPU benchmark without --real, or run this on a GPU machine."
        )
    from diffusers import DDIMScheduler
    from torch.utils.flop_counter import FlopCounterMode

    from eeg2music.models.controlnet import EEGControlNet, controlled_noise_prediction

    device = torch.device("cuda")
    torch.manual_seed(0)
    unet = real_unet(device).to(torch.bfloat16).eval().requires_grad_(False)
    controlnet = EEGControlNet.from_unet(unet, eeg_channels=124, eeg_sfreq=1000.0, clip_seconds=3.5,
                                         latent_frames=88, latent_bins=16, n_subjects=20, subject_cond=True)
    controlnet = controlnet.to(torch.float32).train()
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-4, betas=(0.95, 0.999), eps=1e-6, weight_decay=1e-3)
    batch = args.batch_size
    cross = sorted({d for dims in unet.config.cross_attention_dim for d in (dims if isinstance(dims, (list, tuple)) else [dims]) if d})
    conditioning = {"encoder_hidden_states": torch.randn(batch, 8, cross[0], device=device, dtype=torch.bfloat16)}
    if len(cross) > 1:
        conditioning["encoder_hidden_states_1"] = torch.randn(batch, 32, cross[-1], device=device, dtype=torch.bfloat16)
    z0 = torch.randn(batch, 8, 88, 16, device=device)
    eeg = torch.randn(batch, 124, 3500, device=device)
    subject = torch.randint(0, 20, (batch,), device=device)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195)

    def step():
        t = torch.randint(0, 1000, (batch,), device=device)
        noise = torch.randn_like(z0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            zt = scheduler.add_noise(z0, noise, t)
            pred = controlled_noise_prediction(unet, controlnet, zt, t, eeg, subject, conditioning)
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops_per_step = counter.get_total_flops()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name, args.peak_tflops)
    return {
        "mode": "real",
        "device": name,
        "batch_size": batch,
        "eeg": "124 channels × 3500 samples (1 kHz, 3.5 s)",
        "latent": [8, 88, 16],
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "controlnet_parameters": sum(p.numel() for p in controlnet.parameters()),
        "seconds_per_step": round(seconds, 4),
        "samples_per_second": round(batch / seconds, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
        "flops_per_step": flops_per_step,
        "achieved_tflops": round(flops_per_step / seconds / 1e12, 1),
        "peak_bf16_tflops": peak / 1e12,
        "mfu": round(flops_per_step / seconds / peak, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="the real AudioLDM2-music configuration on a CUDA GPU")
    parser.add_argument("--model", default="controlnet", choices=("controlnet", "convnet"))
    parser.add_argument("--subject_cond", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    parser.add_argument("--steps", type=int, default=None, help="steps timed (CPU: 30, GPU: 10)")
    parser.add_argument("--batch_size", type=int, default=0, help="0 = the demo's (CPU) or 8 (GPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (GPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--backbone", default="", help="CPU: backbone folder (default: the default tiny backbone)")
    parser.add_argument("--run_dir", default="", help="CPU: notebook 02's output or a cache (default: the default run's)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not known")
    parser.add_argument("--out", default="", help="also write the JSON result here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.real:
        args.steps = args.steps or 10
        args.batch_size = args.batch_size or 8
        result = bench_real(args)
    else:
        args.steps = args.steps or 30
        result = bench_cpu(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
