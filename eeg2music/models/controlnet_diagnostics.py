"""What notebook 03 shows of a ControlNet: the shapes through it, its parameter counts, and the
check that zero-initialised outputs leave the frozen UNet's prediction unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from diffusers.pipelines.audioldm2.modeling_audioldm2 import (
    AudioLDM2UNet2DConditionModel,
)
from torch import nn

from .controlnet import EEGControlNet, controlled_noise_prediction, expand_conditioning


def _shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return tuple(value[0].shape)
    return None


def trace_shapes(
    controlnet: EEGControlNet,
    latents: torch.Tensor,
    timestep: torch.Tensor | float | int,
    eeg: torch.Tensor,
    subject: Any = None,
    conditioning: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run the ControlNet once and record the output shape of each stage (works on ``meta``).

    Returns
    -------
    list of dict
        Rows ``{"stage", "module", "output_shape", "parameters"}`` in execution order: the inputs,
        the subject layer, each projector layer, conv_in, each down block, the mid block, and the
        residuals of each zero convolution.
    """
    rows: list[dict[str, Any]] = [
        {"stage": "input: eeg", "module": "", "output_shape": tuple(eeg.shape), "parameters": 0},
        {"stage": "input: latents z_t", "module": "", "output_shape": tuple(latents.shape), "parameters": 0},
    ]
    watched: list[tuple[str, nn.Module]] = []
    if controlnet.subject_layer is not None:
        watched.append(("S: subject layer", controlnet.subject_layer))
    conv_index = 0
    for layer in controlnet.projector.layers:
        if isinstance(layer, nn.Conv1d):
            conv_index += 1
            watched.append((f"P: conv{conv_index}", layer))
    watched.append(("P: output (aligned, reshaped)", controlnet.projector))
    watched.append(("conv_in(z_t)", controlnet.conv_in))
    for i, block in enumerate(controlnet.down_blocks):
        watched.append((f"down block {i}", block))
    watched.append(("mid block", controlnet.mid_block))
    for i, conv in enumerate(controlnet.controlnet_down_blocks):
        watched.append((f"zero conv → skip {i}", conv))
    watched.append(("zero conv → mid", controlnet.controlnet_mid_block))

    def make_hook(stage: str):
        def hook(module, args, output):
            rows.append(
                {
                    "stage": stage,
                    "module": type(module).__name__,
                    "output_shape": _shape(output),
                    "parameters": sum(p.numel() for p in module.parameters()),
                }
            )

        return hook

    handles = [module.register_forward_hook(make_hook(stage)) for stage, module in watched]
    try:
        with torch.no_grad():
            controlnet(latents, timestep, eeg, subject, **expand_conditioning(conditioning, latents.shape[0]))
    finally:
        for handle in handles:
            handle.remove()
    return rows


def parameter_counts(unet: nn.Module, controlnet: EEGControlNet) -> dict[str, int]:
    """Parameter counts of the parts, and trainable (ControlNet) versus frozen (UNet) totals."""

    def count(module: nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    zero_convs = count(controlnet.controlnet_down_blocks) + count(controlnet.controlnet_mid_block)
    counts = {
        "subject_layer": count(controlnet.subject_layer),
        "projector": count(controlnet.projector),
        "encoder_copy": sum(p.numel() for p in controlnet.encoder_parameters()),
        "zero_convs": zero_convs,
        "controlnet_total": count(controlnet),
        "controlnet_trainable": sum(p.numel() for p in controlnet.parameters() if p.requires_grad),
        "unet_total": count(unet),
        "unet_trainable": sum(p.numel() for p in unet.parameters() if p.requires_grad),
    }
    counts["unet_frozen"] = counts["unet_total"] - counts["unet_trainable"]
    return counts


def perturb_zero_convs(controlnet: EEGControlNet, std: float = 0.02, seed: int = 0) -> EEGControlNet:
    """A copy of ``controlnet`` whose zero convolutions hold small random weights (for contrast)."""
    perturbed = copy.deepcopy(controlnet)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [*perturbed.controlnet_down_blocks, perturbed.controlnet_mid_block]:
            noise = torch.randn(conv.weight.shape, generator=generator) * std
            conv.weight.copy_(noise.to(conv.weight))
    return perturbed


def zero_init_check(
    unet: AudioLDM2UNet2DConditionModel,
    controlnet: EEGControlNet,
    latents: torch.Tensor,
    timestep: torch.Tensor | float | int,
    eeg: torch.Tensor,
    subject: Any = None,
    conditioning: Mapping[str, Any] | None = None,
    perturb_std: float = 0.02,
    seed: int = 0,
) -> dict[str, Any]:
    """ε of the base UNet, of the controlled UNet, and of one with randomly initialised output convs.

    Returns
    -------
    dict
        ``eps_base``, ``eps_controlled``, ``eps_perturbed`` (tensors on CPU) and the maximum absolute
        differences ``max_abs_diff_zero_init`` (0 by construction) and ``max_abs_diff_perturbed``.
    """
    kwargs = expand_conditioning(conditioning, latents.shape[0])
    with torch.no_grad():
        base = unet(latents, timestep, **kwargs, return_dict=False)[0]
        controlled = controlled_noise_prediction(unet, controlnet, latents, timestep, eeg, subject, conditioning)
        perturbed_net = perturb_zero_convs(controlnet, std=perturb_std, seed=seed)
        perturbed = controlled_noise_prediction(unet, perturbed_net, latents, timestep, eeg, subject, conditioning)
    return {
        "eps_base": base.float().cpu(),
        "eps_controlled": controlled.float().cpu(),
        "eps_perturbed": perturbed.float().cpu(),
        "max_abs_diff_zero_init": float((controlled - base).abs().max()),
        "max_abs_diff_perturbed": float((perturbed - base).abs().max()),
        "perturb_std": perturb_std,
    }


def controlnet_summary(
    unet: nn.Module, controlnet: EEGControlNet, shapes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A JSON-ready description: config, projector plan, residual shapes and parameter counts."""
    config = {k: v for k, v in dict(controlnet.config).items() if not k.startswith("_")}
    summary = {
        "config": config,
        "projector_plan": controlnet.plan.to_dict(),
        "projector_layers": controlnet.plan.layer_table(),
        "n_down_residuals": controlnet.n_residuals,
        "parameters": parameter_counts(unet, controlnet),
    }
    if shapes is not None:
        summary["shapes"] = [{**row, "output_shape": list(row["output_shape"] or [])} for row in shapes]
    return summary
