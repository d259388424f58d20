"""Sampling: the pipeline for every model kind, seeds, batch invariance, WAVs and samples.json.

Everything runs on the project's tiny backbone built here at random initialisation (smoke widths; the
same diffusers classes as AudioLDM2: ``AutoencoderKL`` on mel, ``AudioLDM2UNet2DConditionModel``,
``DDIMScheduler``, Griffin-Lim as the vocoder), a ControlNet built from its UNet, and a ConvNet.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch

from eeg2music.audio import CLIP_SAMPLES, SAMPLE_RATE
from eeg2music.data.windows import WindowRef
from eeg2music.models.controlnet import EEGControlNet
from eeg2music.models.controlnet_diagnostics import perturb_zero_convs
from eeg2music.models.convnet import EEGConvNet
from eeg2music.models.model_folder import TrainedModel
from eeg2music.models.tiny_backbone import build_tiny_backbone
from eeg2music.sampling.clips import (
    DEFAULT_RUNS,
    SAMPLES_NAME,
    choose_examples,
    load_samples,
    read_wav,
    sample_models,
    select_clips,
    write_wav,
)
from eeg2music.models.backbone import clean_latent_estimate, diffusion_target
from eeg2music.sampling.pipeline import (
    EEGMusicPipeline,
    clip_generators,
    clip_seed,
    make_scheduler,
    model_setting,
    restart_index,
)

LATENT = (8, 88, 16)
CHANNELS, SFREQ, SECONDS = 6, 40.0, 3.5
EEG_SAMPLES = 140  # 3.5 s at 40 Hz
SUBJECTS = (2, 3, 4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run faster on one thread (and much faster when other processes load the CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone():
    """The project's tiny backbone (smoke widths, random weights) with a short Griffin-Lim."""
    model = build_tiny_backbone(seed=0, size="smoke").eval().requires_grad_(False)
    model.griffin_lim_iters = 2
    return model


def _controlnet(backbone, subject_cond: bool, perturb: bool = True) -> TrainedModel:
    torch.manual_seed(0)  # P and the subject layer are initialised from the global generator
    net = EEGControlNet.from_unet(backbone.unet, eeg_channels=CHANNELS, eeg_sfreq=SFREQ, clip_seconds=SECONDS,
                                  latent_frames=LATENT[1], latent_bins=LATENT[2], n_subjects=len(SUBJECTS),
                                  subject_cond=subject_cond).eval().requires_grad_(False)
    if perturb:
        net = perturb_zero_convs(net, std=0.05, seed=3)  # a "trained" ControlNet: the EEG changes the output
    return TrainedModel("controlnet", net, {"subject_cond": subject_cond}, Path("controlnet"))


def _convnet(subject_cond: bool = False) -> TrainedModel:
    torch.manual_seed(0)
    net = EEGConvNet(eeg_channels=CHANNELS, eeg_sfreq=SFREQ, clip_seconds=SECONDS, n_subjects=len(SUBJECTS),
                     subject_cond=subject_cond, hidden_channels=16).eval().requires_grad_(False)
    return TrainedModel("convnet", net, {"subject_cond": subject_cond}, Path("convnet"))


def _unconditional() -> TrainedModel:
    return TrainedModel("unconditional", None, {"subject_cond": False}, Path("unconditional"))


def _eeg(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, CHANNELS, EEG_SAMPLES, generator=torch.Generator().manual_seed(seed))


def _generators(n: int, seed: int = 0):
    return clip_generators([clip_seed(seed, 22, chunk, 2) for chunk in range(n)])


# --- seeds and schedulers -------------------------------------------------------------------------

def test_clip_seed_is_a_function_of_the_clip_only():
    base = clip_seed(0, 22, 5, 3)
    assert base == clip_seed(0, 22, 5, 3)
    assert len({base, clip_seed(1, 22, 5, 3), clip_seed(0, 23, 5, 3), clip_seed(0, 22, 6, 3), clip_seed(0, 22, 5, 4)}) == 5
    assert 0 <= base < 2**63


def test_make_scheduler_follows_the_training_schedule(backbone):
    ddim = make_scheduler("ddim", backbone.scheduler.config)
    dpm = make_scheduler("dpmsolver++", backbone.scheduler.config)
    assert type(ddim).__name__ == "DDIMScheduler" and type(dpm).__name__ == "DPMSolverMultistepScheduler"
    assert dpm.config.algorithm_type == "dpmsolver++"
    for scheduler in (ddim, dpm):
        # DPM-Solver keeps ᾱ_T at 2^-24 instead of a zero-terminal-SNR schedule's 0 (its σ would be infinite)
        assert torch.allclose(scheduler.alphas_cumprod[:-1], backbone.scheduler.alphas_cumprod[:-1])
        assert abs(float(scheduler.alphas_cumprod[-1]) - float(backbone.scheduler.alphas_cumprod[-1])) <= 2.0**-24
        assert scheduler.config.prediction_type == backbone.scheduler.config.prediction_type
    assert ddim is not backbone.scheduler
    with pytest.raises(ValueError, match="scheduler.*euler"):
        make_scheduler("euler", backbone.scheduler.config)


# --- the pipeline for each model kind --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["controlnet_subject", "controlnet", "convnet", "unconditional"])
def test_pipeline_reproducible_and_batch_invariant(backbone, kind):
    model = {"controlnet_subject": lambda: _controlnet(backbone, True), "controlnet": lambda: _controlnet(backbone, False),
             "convnet": _convnet, "unconditional": _unconditional}[kind]()
    pipe = EEGMusicPipeline(backbone, model)
    eeg, subjects = _eeg(3), [0, 2, 1]
    kwargs = dict(num_inference_steps=4, scheduler="dpmsolver++", output_type="latent", show_progress=False)
    batched = pipe(eeg, subjects, generator=_generators(3), **kwargs).audios
    again = pipe(eeg, subjects, generator=_generators(3), **kwargs).audios
    assert batched.shape == (3, *LATENT) and torch.isfinite(batched).all()
    assert torch.equal(batched, again), "same seeds, same latents"
    singles = torch.cat([pipe(eeg[i : i + 1], subjects[i : i + 1], generator=_generators(3)[i : i + 1], **kwargs).audios
                         for i in range(3)])
    torch.testing.assert_close(singles, batched, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batched[0], batched[1]), "different clips, different outputs"


def test_pipeline_waveforms(backbone):
    pipe = EEGMusicPipeline(backbone, _controlnet(backbone, True))
    eeg = _eeg(2)
    out = pipe(eeg, [0, 1], num_inference_steps=3, generator=_generators(2), show_progress=False)
    assert isinstance(out.audios, np.ndarray) and out.audios.shape == (2, CLIP_SAMPLES)
    assert out.audios.dtype == np.float32 and np.isfinite(out.audios).all() and np.abs(out.audios).max() > 0
    (first,) = pipe(eeg[:1], [0], num_inference_steps=3, generator=_generators(2)[:1], output_type="pt",
                    return_dict=False, show_progress=False)
    assert isinstance(first, torch.Tensor) and first.shape == (1, CLIP_SAMPLES)
    np.testing.assert_allclose(first[0].numpy(), out.audios[0], atol=1e-4)


def test_zero_init_controlnet_samples_exactly_the_backbone(backbone):
    """A ControlNet at initialisation (zero convs) must reproduce the unconditional model's latents."""
    eeg = _eeg(2)
    kwargs = dict(num_inference_steps=3, scheduler="ddim", output_type="latent", show_progress=False)
    controlled = EEGMusicPipeline(backbone, _controlnet(backbone, True, perturb=False))(
        eeg, [0, 1], generator=_generators(2), **kwargs).audios
    alone = EEGMusicPipeline(backbone, _unconditional())(None, batch_size=2, generator=_generators(2), **kwargs).audios
    assert torch.equal(controlled, alone)


def test_controlnet_reads_the_eeg_and_the_subject(backbone):
    pipe = EEGMusicPipeline(backbone, _controlnet(backbone, True))
    kwargs = dict(num_inference_steps=3, output_type="latent", show_progress=False)
    a = pipe(_eeg(1, seed=0), [0], generator=_generators(1), **kwargs).audios
    b = pipe(_eeg(1, seed=1), [0], generator=_generators(1), **kwargs).audios
    assert not torch.allclose(a, b), "other EEG, other music"
    scale0 = pipe(_eeg(1, seed=0), [0], generator=_generators(1), conditioning_scale=0.0, **kwargs).audios
    scale0_other = pipe(_eeg(1, seed=1), [0], generator=_generators(1), conditioning_scale=0.0, **kwargs).audios
    torch.testing.assert_close(scale0, scale0_other)
    with pytest.raises(ValueError, match="subject_cond=True"):
        pipe(_eeg(1), None, generator=_generators(1), **kwargs)


def test_convnet_decodes_its_prediction_without_diffusion(backbone):
    model = _convnet()
    pipe = EEGMusicPipeline(backbone, model)
    eeg = _eeg(2)
    latents = pipe(eeg, None, num_inference_steps=50, scheduler="ddim", output_type="latent").audios
    torch.testing.assert_close(latents, model.module(eeg))
    steps_ignored = pipe(eeg, None, num_inference_steps=1, output_type="latent").audios
    assert torch.equal(latents, steps_ignored)


def test_ddim_and_dpm_solver_reach_similar_latents(backbone):
    """On the same noise, 20-step DPM-Solver++ and 50-step DDIM solve the same ODE: close endpoints."""
    pipe = EEGMusicPipeline(backbone, _unconditional())
    kwargs = dict(batch_size=1, output_type="latent", show_progress=False)
    ddim = pipe(None, num_inference_steps=50, scheduler="ddim", generator=_generators(1), **kwargs).audios
    dpm = pipe(None, num_inference_steps=20, scheduler="dpmsolver++", generator=_generators(1), **kwargs).audios
    other_noise = pipe(None, num_inference_steps=20, scheduler="dpmsolver++", generator=_generators(1, seed=9), **kwargs).audios
    assert (ddim - dpm).norm() < 0.25 * (ddim - other_noise).norm()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_clean_latent_estimate_inverts_the_target(backbone, prediction_type):
    """Given the exact target at step t, the estimate is the clean latent (what a DDIM step calls x̂₀)."""
    scheduler = make_scheduler("ddim", {**backbone.scheduler.config, "prediction_type": prediction_type})
    generator = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(3, *LATENT, generator=generator), torch.randn(3, *LATENT, generator=generator)
    timesteps = torch.tensor([10, 500, 990])
    noisy = scheduler.add_noise(z0, noise, timesteps)
    estimate = clean_latent_estimate(scheduler, noisy, diffusion_target(scheduler, z0, noise, timesteps), timesteps)
    torch.testing.assert_close(estimate, z0, rtol=1e-4, atol=2e-4)


def test_model_setting_names_every_departure_from_the_paper():
    def run(**training):
        return TrainedModel("controlnet", None, {"training": {"steps": 200, **training}}, Path("c"))

    paper = model_setting(run(align_steps=0, control_min_timestep=0, timestep_sampling="uniform"))
    assert paper == "200 steps, P from scratch (paper), every t, uniform (paper), no guidance (paper)"
    demo = model_setting(run(align_steps=100, control_min_timestep=0, timestep_sampling="cubic"), 3.0, 0.6)
    assert demo == ("200 steps, S and P aligned first (100 contrastive steps), every t, cubic timesteps, "
                    "EEG guidance w = 3, from its own first estimate, last 0.6 of the steps")
    assert "t ≥ 500, uniform timesteps" in model_setting(run(control_min_timestep=500))
    assert model_setting(None) == "backbone alone"
    assert model_setting(None, 1.0, 0.5) == "backbone alone, from its own first estimate, last 0.5 of the steps"


def test_restart_index_runs_the_last_share_of_the_steps():
    assert [restart_index(20, s) for s in (1.0, 0.75, 0.5, 0.01)] == [0, 5, 10, 19]
    assert restart_index(1, 0.3) == 0, "at least one step runs"


@pytest.mark.parametrize("scheduler", ["dpmsolver++", "ddim"])
def test_strength_starts_from_the_models_first_estimate(backbone, scheduler):
    pipe = EEGMusicPipeline(backbone, _controlnet(backbone, True))
    eeg, subjects = _eeg(2), [0, 2]
    kwargs = dict(num_inference_steps=6, scheduler=scheduler, output_type="latent", show_progress=False)
    full = pipe(eeg, subjects, generator=_generators(2), **kwargs).audios
    assert torch.equal(full, pipe(eeg, subjects, generator=_generators(2), strength=1.0, **kwargs).audios)
    half = pipe(eeg, subjects, generator=_generators(2), strength=0.5, **kwargs).audios
    assert torch.isfinite(half).all() and not torch.allclose(half, full)
    assert torch.equal(half, pipe(eeg, subjects, generator=_generators(2), strength=0.5, **kwargs).audios)
    sampler = make_scheduler(scheduler, backbone.scheduler.config)
    sampler.set_timesteps(6)
    start = pipe.prepare_latents(2, _generators(2), sampler)
    estimate = pipe.first_estimate(start, sampler, eeg, torch.tensor(subjects), 1.0, 1.0)
    other_eeg = pipe.first_estimate(start, sampler, _eeg(2, seed=5), torch.tensor(subjects), 1.0, 1.0)
    assert estimate.shape == (2, *LATENT) and not torch.allclose(estimate, other_eeg), "the estimate reads the EEG"
    # strength 0 runs none of the steps: the estimate itself
    torch.testing.assert_close(pipe(eeg, subjects, generator=_generators(2), strength=0.0, **kwargs).audios, estimate)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="strength"):
            pipe(eeg, subjects, generator=_generators(2), strength=bad, **kwargs)


def test_pipeline_errors(backbone):
    pipe = EEGMusicPipeline(backbone, _controlnet(backbone, False))
    with pytest.raises(ValueError, match="eeg is required"):
        pipe(None, batch_size=2, show_progress=False)
    with pytest.raises(ValueError, match=r"received shape \(2, 6, 1, 1\)"):
        pipe(torch.zeros(2, 6, 1, 1), show_progress=False)
    with pytest.raises(ValueError, match="scheduler"):
        pipe(_eeg(1), scheduler="pndm", show_progress=False)
    with pytest.raises(ValueError, match="2 generators for a batch of 1"):
        pipe(_eeg(1), generator=_generators(2), show_progress=False)
    with pytest.raises(ValueError, match="no weights"):
        EEGMusicPipeline(backbone, TrainedModel("controlnet", None, {}, Path("x")))


# --- clip selection --------------------------------------------------------------------------------

class FakeWindows:
    """The parts of EEGMusicWindows that sampling reads: windows, index.subject_index, eeg(i), audio_clip."""

    def __init__(self, songs=(22, 23, 24), chunks=(5, 6), subjects=SUBJECTS, name="test"):
        self.name = name
        self.windows = [WindowRef(s, song, c, 0) for song in songs for c in chunks for s in subjects]
        self.index = SimpleNamespace(subject_index=lambda participant: SUBJECTS.index(participant))

    def eeg(self, i: int) -> np.ndarray:
        ref = self.windows[i]
        rng = np.random.default_rng([ref.subject, ref.song, ref.chunk])
        return rng.standard_normal((CHANNELS, EEG_SAMPLES)).astype(np.float32)

    def audio_clip(self, song: int, chunk: int) -> np.ndarray:
        t = np.arange(CLIP_SAMPLES) / SAMPLE_RATE
        return (0.3 * np.sin(2 * np.pi * (110 * (song - 20) + chunk) * t)).astype(np.float32)


def test_select_clips_balanced_and_reproducible():
    windows = FakeWindows(songs=(22, 23, 24), chunks=(5, 6, 7, 8))
    everything = select_clips(windows, "test")
    assert len(everything) == len(windows.windows)
    chosen = select_clips(windows, "test", max_clips=7, seed=1)
    assert len(chosen) == 7 and chosen == select_clips(windows, "test", max_clips=7, seed=1)
    per_song = np.bincount([c.song for c in chosen])[[22, 23, 24]]
    assert per_song.max() - per_song.min() <= 1, "every song gets a near-equal share"
    assert chosen != select_clips(windows, "test", max_clips=7, seed=2)
    for clip in chosen:
        ref = windows.windows[clip.index]
        assert (ref.subject, ref.song, ref.chunk) == (clip.subject, clip.song, clip.chunk)
        assert clip.subject_index == SUBJECTS.index(clip.subject)
    only = select_clips(windows, "test", subjects=[3])
    assert {c.subject for c in only} == {3}
    with pytest.raises(ValueError, match=r"participant\(s\) \[9\]"):
        select_clips(windows, "test", subjects=[9])


# --- the runner: WAVs and samples.json -----------------------------------------------------------------

def _models(backbone):
    return {"controlnet_subject": _controlnet(backbone, True), "convnet": _convnet(), "unconditional": _unconditional()}


@pytest.fixture(scope="module")
def sampled(backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    datasets = {"test": FakeWindows(), "ood": FakeWindows(songs=(21,), chunks=(0, 1), name="ood")}
    record = sample_models(_models(backbone), backbone, datasets, out, num_inference_steps=3, seed=0,
                           max_clips={"test": 3, "ood": 2}, batch_size=2, progress=False, info={"backbone": "tiny"},
                           estimates=["controlnet_subject"])
    return out, record, datasets


def test_samples_json_schema_and_wavs(sampled):
    out, record, datasets = sampled
    stored = json.loads((out / SAMPLES_NAME).read_text())
    assert stored["sample_rate"] == SAMPLE_RATE and stored["clip_samples"] == CLIP_SAMPLES
    assert stored["scheduler"] == "dpmsolver++" and stored["num_inference_steps"] == 3
    assert list(stored["models"]) == ["controlnet_subject", "convnet", "unconditional", "controlnet_subject_estimate"]
    assert stored["models"]["controlnet_subject"]["label"] == "ControlNet+subject"
    assert stored["models"]["convnet"]["steps"] == 0 and stored["models"]["convnet"]["scheduler"] == "none"
    estimate = stored["models"]["controlnet_subject_estimate"]
    assert (estimate["kind"], estimate["estimate_of"], estimate["steps"]) == ("estimate", "controlnet_subject", 1)
    assert estimate["label"] == "ControlNet+subject, mean" and "conditional mean" in estimate["setting"]
    assert stored["splits"]["test"]["clips"] == 3 and stored["splits"]["ood"]["clips"] == 2
    assert len(stored["clips"]) == 4 * (3 + 2)
    for row in stored["clips"]:
        assert {"model", "subject", "subject_index", "song", "chunk", "split", "true_wav", "generated_wav",
                "scheduler", "steps", "seconds_per_clip", "seed"} <= set(row)
        assert row["seconds_per_clip"] > 0 and not Path(row["generated_wav"]).is_absolute()
        for key in ("true_wav", "generated_wav"):
            info = soundfile.info(str(out / row[key]))
            assert (info.samplerate, info.frames, info.channels) == (SAMPLE_RATE, CLIP_SAMPLES, 1)
        assert (row["split"] == "ood") == (row["song"] == 21)
        true = read_wav(out / row["true_wav"])
        np.testing.assert_array_equal(true, datasets[row["split"]].audio_clip(row["song"], row["chunk"]))
    # The same clips for every model (paired comparisons).
    keys = {m: sorted((r["split"], r["song"], r["chunk"], r["subject"]) for r in stored["clips"] if r["model"] == m)
            for m in stored["models"]}
    assert keys["controlnet_subject"] == keys["convnet"] == keys["unconditional"] == keys["controlnet_subject_estimate"]
    # the mean is not the sample drawn from the same noise
    first = next(r for r in stored["clips"] if r["model"] == "controlnet_subject")
    mean = next(r for r in stored["clips"] if r["model"] == "controlnet_subject_estimate"
                and (r["song"], r["chunk"], r["subject"]) == (first["song"], first["chunk"], first["subject"]))
    assert not np.allclose(read_wav(out / first["generated_wav"]), read_wav(out / mean["generated_wav"]), atol=1e-2)
    assert not list(out.rglob(".*")), "no temporary file left behind"


def test_estimates_must_name_diffusion_runs(backbone, tmp_path):
    datasets = {"test": FakeWindows(), "ood": FakeWindows(songs=(21,), chunks=(0, 1), name="ood")}
    for bad in (["convnet"], ["controlnet"]):
        with pytest.raises(ValueError, match="estimates"):
            sample_models(_models(backbone), backbone, datasets, tmp_path, num_inference_steps=2,
                          max_clips={"test": 1, "ood": 1}, progress=False, estimates=bad)
    assert not (tmp_path / SAMPLES_NAME).exists()


def test_samples_do_not_depend_on_batch_size(sampled, backbone, tmp_path):
    out, record, datasets = sampled
    models = {"controlnet_subject": _models(backbone)["controlnet_subject"]}
    again = sample_models(models, backbone, datasets, tmp_path, num_inference_steps=3, seed=0,
                          max_clips={"test": 3, "ood": 2}, batch_size=1, progress=False)
    for row in again["clips"]:
        # float32 round-off of batched convolutions (≈ 1e-6 in the mel), which Griffin-Lim's momentum
        # carries to a few 1e-4 in the waveform (waves peak ≈ 1); a clip's own phase is batch-independent
        np.testing.assert_allclose(read_wav(tmp_path / row["generated_wav"]), read_wav(out / row["generated_wav"]),
                                   atol=1e-3)


def test_load_samples_resolves_and_checks(sampled, tmp_path):
    out, record, _ = sampled
    loaded = load_samples(out)
    assert loaded["folder"] == out.resolve()
    assert all(row["generated_path"].is_file() and row["true_path"].is_file() for row in loaded["clips"])
    examples = choose_examples(loaded, n_test=2, n_ood=1)
    assert [e["split"] for e in examples] == ["test", "test", "ood"]
    assert len({e["song"] for e in examples[:2]}) == 2 and set(examples[0]["generated"]) == set(loaded["models"])
    many = choose_examples(loaded, n_test=5, n_ood=0)
    assert len(many) == len({e["song"] for e in many}) == len(loaded["splits"]["test"]["songs"])
    with pytest.raises(FileNotFoundError, match="Run notebook 05"):
        load_samples(tmp_path)
    broken = json.loads((out / SAMPLES_NAME).read_text())
    del broken["clips"][0]["true_wav"]
    (tmp_path / SAMPLES_NAME).write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"clip row 0 lacks \['true_wav'\]"):
        load_samples(tmp_path)


def test_write_wav_is_atomic_and_refuses_nan(tmp_path):
    path = write_wav(tmp_path / "a" / "x.wav", np.linspace(-2, 2, 1600))
    assert read_wav(path, n_samples=1600).max() == pytest.approx(2.0), "float WAV: no clipping"
    with pytest.raises(ValueError, match="non-finite"):
        write_wav(tmp_path / "a" / "y.wav", np.array([0.0, np.nan]))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.wav"]
    with pytest.raises(ValueError, match="sample rate 16000 Hz, expected 8000"):
        read_wav(path, sample_rate=8000)


def test_default_runs_match_the_demo():
    assert DEFAULT_RUNS == ("controlnet_subject", "controlnet", "convnet", "unconditional")


# --- notebook 05's inputs ------------------------------------------------------------------------------

def test_ensure_models_reuses_registers_and_refuses(tmp_path, monkeypatch):
    from eeg2music.sampling.inputs import ensure_models

    monkeypatch.setenv("EEG2MUSIC_OUTPUTS", str(tmp_path / "outputs"))
    # The unconditional model has nothing to train: a missing default run is registered on the spot.
    models = ensure_models(["unconditional"], "", backbone=str(tmp_path / "bb"), progress=False)
    assert models["unconditional"].kind == "unconditional" and models["unconditional"].module is None
    assert (tmp_path / "outputs/04_train/unconditional/model/eeg2music_model.json").is_file()
    again = ensure_models(["unconditional"], "", progress=False)  # reused, not re-registered
    assert again["unconditional"].config["backbone"] == str((tmp_path / "bb").resolve())
    with pytest.raises(FileNotFoundError, match=r"no model folder .*elsewhere/controlnet/model"):
        ensure_models(["controlnet"], tmp_path / "elsewhere", progress=False)
    with pytest.raises(ValueError, match="not a default run name"):
        ensure_models(["my_experiment"], "", progress=False)
    with pytest.raises(ValueError, match="names a run twice"):
        ensure_models(["controlnet", "controlnet"], "", progress=False)


def test_models_must_share_backbone_and_data(tmp_path):
    from eeg2music.sampling.inputs import check_models_agree

    data = {"cache_key": "k1", "sfreq": 125.0, "channels": ["E1"], "subjects": [2, 3], "window_spec": {"lag_seconds": 0.0},
            "cache_dir": "/somewhere"}

    def model(kind, backbone, data_config):
        return TrainedModel(kind, None, {"backbone": str(backbone), "data": data_config}, tmp_path / kind)

    path, shared = check_models_agree({"controlnet": model("controlnet", tmp_path / "bb", data),
                                       "unconditional": model("unconditional", tmp_path / "bb", {})})
    assert path == str((tmp_path / "bb").resolve()) and shared == data
    with pytest.raises(ValueError, match="different backbones"):
        check_models_agree({"a": model("controlnet", tmp_path / "bb", data), "b": model("convnet", tmp_path / "other", data)})
    with pytest.raises(ValueError, match=r"different data \(subjects differ\)"):
        check_models_agree({"a": model("controlnet", tmp_path / "bb", data),
                            "b": model("convnet", tmp_path / "bb", {**data, "subjects": [2]})})
