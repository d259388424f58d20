"""The EEG ControlNet: projector plan, subject layer, zero-init, training step, hooks, shapes, I/O, errors.

Everything runs on a tiny ``AudioLDM2UNet2DConditionModel`` built here (the same diffusers class as the
real backbone) and on the real AudioLDM2-music UNet configuration built on the ``meta`` device.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import AudioLDM2UNet2DConditionModel

from eeg2music.models.backbone import build_audioldm2_music_on_meta
from eeg2music.models.controlnet import (
    EEGControlNet,
    apply_control,
    attach_controlnet,
    controlled_noise_prediction,
    expand_conditioning,
)
from eeg2music.models.controlnet_diagnostics import (
    controlnet_summary,
    parameter_counts,
    perturb_zero_convs,
    trace_shapes,
    zero_init_check,
)
from eeg2music.models.projector import (
    EEGProjector,
    _split_stride,
    align_frames,
    clip_samples,
    projector_plan,
)
from eeg2music.models.subject_layer import UNKNOWN_SUBJECT, SubjectLayer
from eeg2music.models.tiny_backbone import build_tiny_backbone
from eeg2music.utils import read_json, write_json

LATENT = (8, 88, 16)  # (channels, time frames, freq bins) of a 3.5 s clip, docs/ARCHITECTURE.md
BATCH = 2
# Behavioural tests use a short window to stay fast on two shared CPU cores: 0.96 s = 24 latent
# frames at AudioLDM2's 25 Hz latent rate, 8 frequency bins (what a 32-mel front end would give).
SHORT = dict(clip_seconds=0.96, latent_frames=24, latent_bins=8)
SHORT_LATENT = (8, 24, 8)

def tiny_unet(seed: int = 0) -> AudioLDM2UNet2DConditionModel:
    """A tiny AudioLDM2 UNet with both block kinds (plain and cross-attention), frozen."""
    torch.manual_seed(seed)
    unet = AudioLDM2UNet2DConditionModel(
        in_channels=8,
        out_channels=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=([None, 16, 32],) * 2,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    return unet.requires_grad_(False).eval()


def text_conditioning(batch: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "encoder_hidden_states": torch.randn(batch, 4, 16, generator=generator),
        "encoder_hidden_states_1": torch.randn(batch, 5, 32, generator=generator),
    }


def inputs(sfreq: float = 125.0, batch: int = BATCH, full: bool = False, seed: int = 2):
    """Random latents and 124-channel EEG for a short window (or the full 3.5 s one)."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, *(LATENT if full else SHORT_LATENT), generator=generator)
    seconds = 3.5 if full else SHORT["clip_seconds"]
    eeg = torch.randn(batch, 124, clip_samples(seconds, sfreq), generator=generator)
    return latents, eeg


def build(unet, sfreq=125.0, full=False, seed=0, **overrides) -> EEGControlNet:
    """A ControlNet for ``unet`` (3 subjects, 124 channels), short window unless ``full``."""
    options = dict(eeg_channels=124, eeg_sfreq=sfreq, n_subjects=3)
    options.update(dict(clip_seconds=3.5, latent_frames=88, latent_bins=16) if full else SHORT)
    options.update(overrides)
    torch.manual_seed(seed)  # the projector and the subject layer are freshly initialised
    return EEGControlNet.from_unet(unet, **options)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run this module's tiny models on one thread (restored afterwards).

    Intra-op threads only add synchronisation for models this small, and on a shared, oversubscribed
    two-core machine their spin-waiting made a tiny UNet forward 10-100 times slower than on one thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def controlnet(unet):
    return build(unet)


@pytest.fixture(scope="module")
def full_controlnet(unet):
    """For a 3.5 s window at 125 Hz (438 samples) and (8, 88, 16) latents."""
    return build(unet, full=True)


# --- projector plan --------------------------------------------------------------------------------


def test_plan_reproduces_the_paper_at_1khz():
    plan = projector_plan(124, 1000.0, 3.5, 88, 16, 128)
    assert plan.eeg_samples == 3500
    assert plan.widths == (124, 256, 512, 1024, 2048)
    assert plan.strides == (5, 2, 2, 2) and plan.total_stride == 40
    assert plan.kernel_sizes == (11, 5, 5, 5)
    assert plan.exact_frames == 87.5 and plan.conv_frames == 88 and plan.alignment == "none"
    assert [row["frames_out"] for row in plan.layer_table()] == [700, 350, 175, 88]


def test_plan_adapts_to_125hz():
    plan = projector_plan(124, 125.0, 3.5, 88, 16, 128)
    assert plan.eeg_samples == 438
    assert plan.strides == (5, 1, 1, 1) and plan.kernel_sizes == (11, 3, 3, 3)
    assert plan.conv_frames == 88 and plan.alignment == "none"
    assert plan.frame_rate == 25.0


@pytest.mark.parametrize(
    "total, layers, expected",
    [(40, 4, (5, 2, 2, 2)), (5, 4, (5, 1, 1, 1)), (32, 4, (4, 2, 2, 2)), (1, 3, (1, 1, 1)), (12, 2, (4, 3))],
)
def test_split_stride(total, layers, expected):
    assert _split_stride(total, layers) == expected


@pytest.mark.parametrize(
    "samples, sfreq, alignment, conv_frames",
    [
        (3550, 1000.0, "crop", 89),  # 88.75 frames at the latent rate: one surplus frame at the end
        (3480, 1000.0, "pad", 87),  # 87 frames: one missing frame at the end
        (560, 160.0, "interpolate", 94),  # 160 Hz / stride 6 = 26.7 Hz ≠ 25 Hz: resample
    ],
)
def test_projector_aligns_to_the_latent_frames(samples, sfreq, alignment, conv_frames):
    plan = projector_plan(4, sfreq, 3.5, 88, 16, 8, eeg_samples=samples)
    assert plan.alignment == alignment and plan.conv_frames == conv_frames
    projector = EEGProjector(plan)
    eeg = torch.randn(2, 4, samples)
    out = projector(eeg)
    assert out.shape == (2, 8, 88, 16)
    raw = projector.layers(eeg)
    assert raw.shape[-1] == conv_frames
    flat = out.transpose(2, 3).reshape(2, 8 * 16, 88)
    if alignment == "crop":
        torch.testing.assert_close(flat, raw[..., :88], rtol=0, atol=0)
    elif alignment == "pad":
        torch.testing.assert_close(flat[..., :87], raw, rtol=0, atol=0)
        torch.testing.assert_close(flat[..., 87], raw[..., 86], rtol=0, atol=0)
    else:
        torch.testing.assert_close(flat, torch.nn.functional.interpolate(raw, size=88, mode="linear"))


def test_projector_reshape_puts_channel_blocks_on_frequency_bins():
    plan = projector_plan(3, 125.0, 3.5, 88, 4, 2)
    projector = EEGProjector(plan)
    eeg = torch.randn(1, 3, plan.eeg_samples)
    raw = projector.layers(eeg)  # (1, 2 * 4, 88)
    out = projector(eeg)  # (1, 2, 88, 4)
    torch.testing.assert_close(out[0, 1, :, 2], raw[0, 1 * 4 + 2], rtol=0, atol=0)


def test_align_frames_rejects_unknown_modes():
    with pytest.raises(ValueError, match="unknown alignment"):
        align_frames(torch.zeros(1, 1, 5), 4, "stretch")


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="eeg_sfreq"):
        projector_plan(124, 0.0, 3.5, 88, 16, 128)
    with pytest.raises(ValueError, match="latent_frames"):
        projector_plan(124, 125.0, 3.5, 0, 16, 128)


# --- subject layer -----------------------------------------------------------------------------------


def test_subject_layer_starts_as_identity():
    layer = SubjectLayer(3, 5)
    eeg = torch.randn(4, 5, 7)
    torch.testing.assert_close(layer(eeg, [0, 1, 2, 1]), eeg, rtol=0, atol=0)


def test_subject_layer_mixes_per_subject_and_unknown_uses_the_mean():
    layer = SubjectLayer(2, 3, allow_unknown=True, unknown="mean")
    with torch.no_grad():
        layer.weight.copy_(torch.randn(2, 3, 3))
    eeg = torch.randn(3, 3, 6)
    out = layer(eeg, torch.tensor([1, UNKNOWN_SUBJECT, 0]))
    torch.testing.assert_close(out[0], layer.weight[1] @ eeg[0])
    torch.testing.assert_close(out[1], layer.weight.mean(0) @ eeg[1])
    torch.testing.assert_close(out[2], layer.weight[0] @ eeg[2])


def test_subject_layer_gradient_is_the_same_every_run():
    """A batch that repeats listeners (64 windows of 20) gets the same weight gradient, bit for bit, every time."""
    torch.manual_seed(0)
    layer = SubjectLayer(20, 124)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(20, 124, 124))
    eeg, grad_out = torch.randn(64, 124, 200), torch.randn(64, 124, 200)
    subjects = torch.randint(0, 20, (64,))
    gradients, previous = [], torch.get_num_threads()
    torch.set_num_threads(2)  # what training uses on two cores (this module otherwise runs on one)
    try:
        for _ in range(8):
            layer.zero_grad()
            out = layer(eeg, subjects)
            out.backward(grad_out)
            gradients.append(layer.weight.grad.clone())
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(out, torch.bmm(layer.weight[subjects], eeg))  # the forward is the per-subject product
    assert all(torch.equal(gradients[0], g) for g in gradients[1:])


def test_subject_layer_shared_unknown_path_is_its_own_parameter():
    layer = SubjectLayer(2, 3, allow_unknown=True, unknown="shared")
    assert layer.shared_weight is not None and layer.shared_weight.shape == (3, 3)
    eeg = torch.randn(1, 3, 4)
    layer(eeg, UNKNOWN_SUBJECT).sum().backward()
    assert layer.shared_weight.grad.abs().sum() > 0 and layer.weight.grad.abs().sum() == 0


def test_unknown_subject_without_a_path_is_a_clear_error():
    with pytest.raises(ValueError, match="allow_unknown_subject=True"):
        SubjectLayer(2, 3)(torch.randn(1, 3, 4), UNKNOWN_SUBJECT)


# --- the ControlNet -----------------------------------------------------------------------------------


def test_from_unet_copies_the_encoder_weights(unet, controlnet):
    for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
        ours, theirs = getattr(controlnet, name).state_dict(), getattr(unet, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(controlnet.parameters(), unet.parameters()))
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    assert all(not p.detach().any() for conv in zero_convs for p in conv.parameters())


def test_zero_init_leaves_the_base_model_exactly_unchanged_for_any_eeg(unet, controlnet):
    latents, eeg = inputs()
    conditioning = text_conditioning()
    with torch.no_grad():
        base = unet(latents, 500, **expand_conditioning(conditioning, BATCH), return_dict=False)[0]
        for scale, amplitude, offset in ((1.0, 1.0, 0.0), (100.0, 1e3, 5.0), (1.0, 1e-6, -1.0)):
            weird = eeg * amplitude + offset
            down, mid = controlnet(latents, 500, weird, [0, 2], scale, **conditioning)
            assert all(float(r.abs().max()) == 0 for r in (*down, mid))
            eps = controlled_noise_prediction(unet, controlnet, latents, 500, weird, [0, 2], conditioning, scale)
            assert torch.equal(eps, base)


def _residual_shapes_of(unet, latents, conditioning):
    """The skip and mid-block shapes the UNet's up path actually sees."""
    seen = {"skips": [], "mid": None}

    def up_hook(module, args, kwargs):
        seen["skips"][:0] = [tuple(t.shape) for t in kwargs["res_hidden_states_tuple"]]

    def mid_hook(module, args, output):
        seen["mid"] = tuple(output.shape)

    handles = [block.register_forward_pre_hook(up_hook, with_kwargs=True) for block in unet.up_blocks]
    handles.append(unet.mid_block.register_forward_hook(mid_hook))
    try:
        with torch.no_grad():
            unet(latents, 10, **expand_conditioning(conditioning, latents.shape[0]))
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("sfreq, samples", [(125.0, 438), (1000.0, 3500)])
def test_residual_shapes_match_the_unet_skips(unet, sfreq, samples):
    controlnet = build(unet, sfreq=sfreq, full=True)
    assert controlnet.plan.eeg_samples == samples
    latents, eeg = inputs(sfreq, batch=1, full=True)
    conditioning = text_conditioning()
    with torch.no_grad():
        down, mid = controlnet(latents, 10, eeg, [1], **conditioning)
    expected = _residual_shapes_of(unet, latents, conditioning)
    # The UNet consumes its skips from the end; the hook above re-assembles them in emission order.
    assert [tuple(r.shape) for r in down] == expected["skips"]
    assert expected["skips"][0] == (1, 32, 88, 16) and expected["skips"][-1] == (1, 64, 44, 8)
    assert tuple(mid.shape) == expected["mid"]
    assert controlnet.n_residuals == len(down) == 4


def _reference_controlled_unet(unet, latents, timestep, conditioning, down_residuals, mid_residual):
    """AudioLDM2's UNet forward with residuals added where diffusers' ControlNets add them."""
    batch = latents.shape[0]
    emb = unet.time_embedding(unet.time_proj(torch.tensor([timestep]).expand(batch)).to(latents.dtype))
    cond = expand_conditioning(conditioning, batch)
    hidden = unet.conv_in(latents)
    skips = (hidden,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            hidden, res = block(hidden_states=hidden, temb=emb, **cond)
        else:
            hidden, res = block(hidden_states=hidden, temb=emb)
        skips += res
    skips = tuple(s + r for s, r in zip(skips, down_residuals, strict=True))
    hidden = unet.mid_block(hidden, emb, **cond) + mid_residual
    for block in unet.up_blocks:
        res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
        if getattr(block, "has_cross_attention", False):
            hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res, **cond)
        else:
            hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))


def test_apply_control_adds_each_residual_to_its_own_skip(unet, controlnet):
    latents, eeg = inputs()
    conditioning = text_conditioning()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        down, mid = controlnet(latents, 10, eeg, [0, 1], **conditioning)
        down = tuple(torch.randn(r.shape, generator=generator) for r in down)
        mid = torch.randn(mid.shape, generator=generator)
        with apply_control(unet, down, mid):
            eps = unet(latents, 10, **expand_conditioning(conditioning, BATCH)).sample
        reference = _reference_controlled_unet(unet, latents, 10, conditioning, down, mid)
        base = unet(latents, 10, **expand_conditioning(conditioning, BATCH)).sample
    torch.testing.assert_close(eps, reference, rtol=1e-5, atol=1e-5)
    assert float((eps - base).abs().max()) > 1e-3


def test_apply_control_removes_its_hooks_even_on_error(unet, controlnet):
    latents, eeg = inputs()
    conditioning = expand_conditioning(text_conditioning(), BATCH)
    with torch.no_grad():
        base = unet(latents, 10, **conditioning).sample
        down, mid = perturb_zero_convs(controlnet)(latents, 10, eeg, [0, 1], **conditioning)
    with pytest.raises(RuntimeError, match="boom"):
        with apply_control(unet, down, mid):
            raise RuntimeError("boom")
    hooked = [m for m in unet.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert not hooked
    with torch.no_grad():
        assert torch.equal(unet(latents, 10, **conditioning).sample, base)


def test_apply_control_rejects_residuals_from_another_unet(unet, controlnet):
    latents, eeg = inputs()
    with torch.no_grad():
        down, mid = controlnet(latents, 10, eeg, [0, 1], **text_conditioning())
    with pytest.raises(ValueError, match="3 down-block residuals given.*4 skip"):
        with apply_control(unet, down[:3], mid):
            pass


def test_attach_controlnet_steers_every_unet_call_including_cfg_batches(unet, controlnet):
    steered = perturb_zero_convs(controlnet, seed=4)
    latents, eeg = inputs()
    conditioning = text_conditioning(BATCH)
    with torch.no_grad():
        expected = controlled_noise_prediction(unet, steered, latents, 7, eeg, [2, 0], conditioning)
        doubled = {k: torch.cat([v, v]) for k, v in conditioning.items()}
        expected_cfg = controlled_noise_prediction(
            unet, steered, torch.cat([latents, latents]), 7, torch.cat([eeg, eeg]), [2, 0, 2, 0], doubled
        )
        with attach_controlnet(unet, steered, eeg, subject=[2, 0]):
            # called the way AudioLDM2Pipeline calls it: positional sample and timestep, keywords, no dict
            eps = unet(latents, torch.tensor(7), return_dict=False, **conditioning)[0]
            eps_cfg = unet(torch.cat([latents, latents]), 7, **doubled).sample
        after = unet(latents, 7, **conditioning).sample
        base = unet(latents, 7, **conditioning).sample
    torch.testing.assert_close(eps, expected, rtol=0, atol=0)
    torch.testing.assert_close(eps_cfg, expected_cfg, rtol=0, atol=0)
    assert torch.equal(after, base) and not torch.equal(eps, base)


def tiny_pipeline(unet):
    """A stock AudioLDM2Pipeline around the tiny UNet (prompt embeddings are passed in directly)."""
    from diffusers import AudioLDM2Pipeline, AutoencoderKL, DDIMScheduler
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
        T5Config,
        T5EncoderModel,
    )

    torch.manual_seed(5)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 8, 8),
        latent_channels=8,
        norm_num_groups=8,
        layers_per_block=1,
    )
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=32,
            sampling_rate=16000,
            upsample_initial_channel=8,
            upsample_rates=[5, 4, 4, 2],
            upsample_kernel_sizes=[10, 8, 8, 4],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3, 5]],
            normalize_before=False,
        )
    )
    return AudioLDM2Pipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=T5EncoderModel(T5Config(vocab_size=8, d_model=32, d_kv=8, d_ff=16, num_layers=1, num_heads=2)),
        projection_model=None,
        language_model=GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=8, n_positions=8)),
        tokenizer=None,
        tokenizer_2=None,
        feature_extractor=None,
        unet=unet,
        scheduler=DDIMScheduler(),
        vocoder=vocoder,
    )


def test_stock_audioldm2_pipeline_samples_under_control(unet, controlnet):
    pipe = tiny_pipeline(unet)
    pipe.set_progress_bar_config(disable=True)
    steered = perturb_zero_convs(controlnet, seed=6)
    conditioning = text_conditioning(1)
    _, eeg = inputs(batch=1)
    start = torch.randn(1, *SHORT_LATENT, generator=torch.Generator().manual_seed(8))
    call = dict(
        prompt_embeds=conditioning["encoder_hidden_states_1"],
        generated_prompt_embeds=conditioning["encoder_hidden_states"],
        latents=start.clone(),
        num_inference_steps=3,
        audio_length_in_s=SHORT["clip_seconds"],
        guidance_scale=1.0,
        output_type="latent",
    )
    with torch.no_grad():
        with attach_controlnet(unet, steered, eeg, subject=1):
            sampled = pipe(**call).audios
        plain = pipe(**call).audios
        scheduler = copy.deepcopy(pipe.scheduler)
        scheduler.set_timesteps(3)
        latents = start.clone() * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = controlled_noise_prediction(unet, steered, latents, t, eeg, 1, conditioning)
            latents = scheduler.step(eps, t, latents).prev_sample
    assert sampled.shape == (1, *SHORT_LATENT)
    torch.testing.assert_close(sampled, latents, rtol=1e-5, atol=1e-5)
    assert float((sampled - plain).abs().max()) > 1e-4


# --- training -------------------------------------------------------------------------------------------


def test_one_optimiser_step_trains_the_controlnet_and_never_the_backbone():
    unet = tiny_unet(seed=9)
    controlnet = build(unet, n_subjects=4)
    frozen = {k: v.clone() for k, v in unet.state_dict().items()}
    optimiser = torch.optim.AdamW(controlnet.parameters(), lr=1e-3)
    latents, eeg = inputs(batch=3)
    subject = torch.tensor([0, 2, 2])
    conditioning = text_conditioning()
    target = torch.randn_like(latents)
    timesteps = torch.tensor([10, 400, 900])

    def backward():
        optimiser.zero_grad(set_to_none=False)
        eps = controlled_noise_prediction(unet, controlnet, latents, timesteps, eeg, subject, conditioning)
        torch.nn.functional.mse_loss(eps, target).backward()

    def grad_norm(parameters):
        return sum(float(p.grad.abs().sum()) for p in parameters if p.grad is not None)

    zero_convs = [*controlnet.controlnet_down_blocks.parameters(), *controlnet.controlnet_mid_block.parameters()]
    upstream = {
        "projector": list(controlnet.projector.parameters()),
        "subject layer": list(controlnet.subject_layer.parameters()),
        "encoder copy": list(controlnet.encoder_parameters()),
    }
    backward()
    # Step 0: only the zero convolutions get a gradient (everything upstream is multiplied by them).
    assert grad_norm(zero_convs) > 0
    assert all(grad_norm(params) == 0 for params in upstream.values())
    optimiser.step()
    backward()
    for name, params in upstream.items():
        assert grad_norm(params) > 0, f"no gradient reached the {name} after one optimiser step"
    weight_grad = controlnet.subject_layer.weight.grad
    assert float(weight_grad[[0, 2]].abs().sum()) > 0 and float(weight_grad[[1, 3]].abs().sum()) == 0
    optimiser.step()
    assert all(p.grad is None for p in unet.parameters())
    assert all(torch.equal(frozen[k], v) for k, v in unet.state_dict().items())
    with torch.no_grad():
        base = unet(latents, timesteps, **expand_conditioning(conditioning, 3)).sample
        eps = controlled_noise_prediction(unet, controlnet, latents, timesteps, eeg, subject, conditioning)
    assert float((eps - base).abs().max()) > 0


def test_gradient_checkpointing_gives_the_same_gradients(unet):
    latents, eeg = inputs()
    conditioning = text_conditioning()
    grads = []
    for checkpointing in (False, True):
        controlnet = perturb_zero_convs(build(unet, seed=10), seed=10)
        if checkpointing:
            controlnet.enable_gradient_checkpointing()
        controlnet.train()
        eps = controlled_noise_prediction(unet, controlnet, latents, 50, eeg, [0, 1], conditioning)
        eps.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in controlnet.down_blocks.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


# --- configurations ---------------------------------------------------------------------------------------


def test_the_project_tiny_backbone_is_controlled_exactly_at_init():
    """The backbone module's own tiny UNet (cross-attention only, three levels)."""
    backbone = build_tiny_backbone(seed=0, size="smoke")
    unet = backbone.unet.requires_grad_(False).eval()
    controlnet = build(unet)
    latents, eeg = inputs()
    with torch.no_grad():
        base = unet(latents, 300, **backbone.unet_conditioning(BATCH)).sample
        eps = controlled_noise_prediction(unet, controlnet, latents, 300, eeg, [1, 2], backbone.conditioning)
        steered = perturb_zero_convs(controlnet)
        moved = controlled_noise_prediction(unet, steered, latents, 300, eeg, [1, 2], backbone.conditioning)
    assert torch.equal(eps, base) and not torch.equal(moved, base)
    assert controlnet.n_residuals == sum(len(block.resnets) for block in unet.up_blocks)


def test_subject_cond_false_builds_no_subject_parameters(unet):
    with_subjects = build(unet, subject_cond=True, n_subjects=5)
    without = build(unet, subject_cond=False, n_subjects=5)
    assert without.subject_layer is None
    assert not any("subject" in name for name, _ in without.named_parameters())
    assert parameter_counts(unet, with_subjects)["controlnet_total"] - parameter_counts(unet, without)[
        "controlnet_total"
    ] == 5 * 124 * 124
    latents, eeg = inputs()
    with torch.no_grad():
        down, mid = without(latents, 10, eeg, None, **text_conditioning())
    assert len(down) == without.n_residuals


def test_real_audioldm2_music_configuration_on_meta():
    backbone = build_audioldm2_music_on_meta()
    unet = backbone.unet
    assert unet.device.type == "meta" and tuple(backbone.latent_shape) == LATENT
    controlnet = EEGControlNet.from_unet(
        unet, eeg_channels=124, eeg_sfreq=1000.0, clip_seconds=3.5, latent_frames=88, latent_bins=16, n_subjects=20
    )
    assert controlnet.device.type == "meta"
    plan = controlnet.plan
    assert plan.widths == (124, 256, 512, 1024, 2048) and plan.strides == (5, 2, 2, 2)
    with torch.device("meta"):
        latents = torch.zeros(BATCH, *LATENT)
        eeg = torch.zeros(BATCH, 124, 3500)
    conditioning = backbone.conditioning
    rows = trace_shapes(controlnet, latents, 10, eeg, torch.tensor([0, 19], device="meta"), conditioning)
    shapes = {row["stage"]: row["output_shape"] for row in rows}
    assert shapes["P: conv1"] == (BATCH, 256, 700) and shapes["P: conv4"] == (BATCH, 2048, 88)
    assert shapes["P: output (aligned, reshaped)"] == shapes["conv_in(z_t)"] == (BATCH, 128, 88, 16)
    assert controlnet.n_residuals == 12
    # conv_in, then per level: one skip per resnet (2) and one after the downsampler (not at the last level)
    expected = [(BATCH, 128, 88, 16)] * 3 + [(BATCH, 128, 44, 8)]
    expected += [(BATCH, 256, 44, 8)] * 2 + [(BATCH, 256, 22, 4)]
    expected += [(BATCH, 384, 22, 4)] * 2 + [(BATCH, 384, 11, 2)]
    expected += [(BATCH, 640, 11, 2)] * 2
    assert [shapes[f"zero conv → skip {i}"] for i in range(12)] == expected
    assert shapes["zero conv → mid"] == (BATCH, 640, 11, 2)


# --- persistence --------------------------------------------------------------------------------------------


def _public(config) -> dict:
    """A model config without diffusers' bookkeeping keys (``_name_or_path`` …)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


@pytest.mark.parametrize("subject_cond", [True, False])
def test_save_pretrained_round_trip_is_exact(tmp_path, unet, subject_cond):
    controlnet = perturb_zero_convs(build(unet, subject_cond=subject_cond, allow_unknown_subject=True), seed=11)
    if subject_cond:
        with torch.no_grad():
            controlnet.subject_layer.weight.add_(0.1 * torch.randn_like(controlnet.subject_layer.weight))
    controlnet.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = EEGControlNet.from_pretrained(tmp_path / "model")
    assert _public(loaded.config) == _public(controlnet.config) and loaded.plan == controlnet.plan
    latents, eeg = inputs()
    subject = [UNKNOWN_SUBJECT, 2]
    with torch.no_grad():
        ours = controlnet(latents, 10, eeg, subject, **text_conditioning())
        theirs = loaded(latents, 10, eeg, subject, **text_conditioning())
    assert all(torch.equal(a, b) for a, b in zip((*ours[0], ours[1]), (*theirs[0], theirs[1])))
    assert any(float(r.abs().max()) > 0 for r in ours[0])


# --- input errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(eeg_shape=(BATCH, 120, 438)),
            r"120 channels, expected 124.*\(batch, 124 channels, 438 samples\).*\(2, 120, 438\)",
        ),
        (dict(eeg_shape=(BATCH, 124, 3500)), r"3500 samples, expected 438.*125 Hz.*\(2, 124, 3500\)"),
        (dict(eeg_shape=(BATCH, 124)), r"expected shape|must have shape.*\(2, 124\)"),
        (dict(eeg_shape=(BATCH + 1, 124, 438)), r"batch size 3 but latents 2"),
        (dict(latent_shape=(BATCH, 8, 64, 16)), r"\(batch, 8 channels, 88 frames, 16 bins\).*\(2, 8, 64, 16\)"),
        (dict(subject=[0, 3]), r"subject index \[3\] out of range; expected 0 … 2.*n_subjects=3"),
        (dict(subject=[-2, 0]), r"subject index \[-2\] out of range"),
        (dict(subject=[UNKNOWN_SUBJECT, 0]), r"allow_unknown_subject=True"),
        (dict(subject=[0, 1, 2]), r"shape \(2,\).*received shape \(3,\)"),
        (dict(subject=None), r"subject is required"),
    ],
)
def test_bad_inputs_are_clear_errors(full_controlnet, change, message):
    latents = torch.zeros(change.get("latent_shape", (BATCH, *LATENT)))
    eeg = torch.zeros(change.get("eeg_shape", (BATCH, 124, 438)))
    subject = change.get("subject", [0, 1])
    with pytest.raises(ValueError, match=message):
        full_controlnet(latents, 10, eeg, subject, **text_conditioning())


def test_float_subjects_are_refused(controlnet):
    latents, eeg = inputs()
    with pytest.raises(TypeError, match="integer"):
        controlnet(latents, 10, eeg, torch.tensor([0.0, 1.0]), **text_conditioning())


def test_missing_text_conditioning_is_a_clear_error(controlnet):
    latents, eeg = inputs()
    with pytest.raises(ValueError, match="encoder_hidden_states is required"):
        controlnet(latents, 10, eeg, [0, 1])


# --- what notebook 03 reports -----------------------------------------------------------------------------


def test_notebook_helpers_report_shapes_counts_and_zero_init(tmp_path, unet, controlnet):
    latents, eeg = inputs()
    conditioning = text_conditioning()
    rows = trace_shapes(controlnet, latents, 10, eeg, [0, 1], conditioning)
    stages = [row["stage"] for row in rows]
    assert stages[:3] == ["input: eeg", "input: latents z_t", "S: subject layer"]
    assert stages.index("P: output (aligned, reshaped)") < stages.index("conv_in(z_t)") < stages.index("mid block")
    counts = parameter_counts(unet, controlnet)
    assert counts["unet_trainable"] == 0 and counts["unet_frozen"] == counts["unet_total"]
    parts = counts["subject_layer"] + counts["projector"] + counts["encoder_copy"] + counts["zero_convs"]
    assert parts == counts["controlnet_total"] == counts["controlnet_trainable"]
    check = zero_init_check(unet, controlnet, latents, 10, eeg, [0, 1], conditioning)
    assert check["max_abs_diff_zero_init"] == 0.0 and check["max_abs_diff_perturbed"] > 0
    assert torch.equal(check["eps_base"], check["eps_controlled"])
    summary = controlnet_summary(unet, controlnet, rows)
    write_json(tmp_path / "controlnet_summary.json", summary)
    again = read_json(tmp_path / "controlnet_summary.json")
    assert again["n_down_residuals"] == 4 and again["projector_plan"]["strides"] == [5, 1, 1, 1]
    assert again["shapes"][-1]["output_shape"] == [BATCH, 64, 12, 4]
    assert again["parameters"] == counts


def test_control_min_timestep_leaves_the_low_noise_steps_to_the_backbone(unet):
    controlnet = build(unet, control_min_timestep=400)
    assert controlnet.config.control_min_timestep == 400
    with torch.no_grad():  # non-zero zero-convs, as after training
        for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            conv.weight.normal_(std=0.1)
    latents, eeg = inputs()
    conditioning = text_conditioning()
    kwargs = expand_conditioning(conditioning, BATCH)
    with torch.no_grad():
        for t, active in ((399, False), (400, True), (900, True)):
            base = unet(latents, t, **kwargs, return_dict=False)[0]
            eps = controlled_noise_prediction(unet, controlnet, latents, t, eeg, [0, 2], conditioning)
            assert torch.equal(eps, base) != active, t
        # a batch mixing both sides: each window is steered only where the ControlNet acts
        mixed = torch.tensor([100, 700])
        down, mid = controlnet(latents, mixed, eeg, [0, 2], 1.0, **conditioning)
        assert all(float(r[0].abs().max()) == 0 and float(r[1].abs().max()) > 0 for r in (*down, mid))
    with pytest.raises(ValueError, match="control_min_timestep"):
        build(unet, control_min_timestep=-5)
