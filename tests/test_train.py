"""Training: smoke runs of both models with both subject_cond values, bit-exact kill-and-resume, atomic
checkpoints, a frozen backbone, clip latents encoded once, and the model-folder contract.

The data is a tiny NMED-T folder in the real formats (``fixtures_nmedt``: 2 participants, 3 songs, EEG at
25 Hz so a 3.5 s window has 88 samples, 30 s of audio per song), preprocessed by ``build_cache``; the
backbone is a randomly initialised tiny one of the real classes, saved and loaded as notebook 00 does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from fixtures_nmedt import make_nmedt_folder

from eeg2music.models.model_folder import (
    MODEL_CONFIG_NAME,
    load_trained_model,
    register_unconditional,
)
from eeg2music.params import ParameterError
from eeg2music.train import main
from eeg2music.training.checkpoints import (
    CHECKPOINT_MARKER,
    list_checkpoints,
    optimizer_state_from_safetensors,
    optimizer_state_to_safetensors,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from eeg2music.training.config import PAPER_LEARNING_RATE, PRESETS, TrainConfig
from eeg2music.training.data import (
    StepBatches,
    clip_latents,
    load_training_data,
    step_generator,
)
from eeg2music.training.loop import LOG_COLUMNS, train
from eeg2music.training.objectives import DiffusionObjective, mismatched_offset

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# Fixtures: a tiny cache, a tiny backbone folder, shared latents
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    from eeg2music.data.cache import build_cache

    root = tmp_path_factory.mktemp("nmedt_train")
    make_nmedt_folder(root, layouts=("cleaned",), songs=(21, 22, 23), subjects=(2, 3), cleaned_fs=25.0,
                      stimuli=True, stimuli_seconds=30.0, stimuli_sr=16000)
    return build_cache(root, None, tmp_path_factory.mktemp("cache"), progress=False).path


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory) -> Path:
    from eeg2music.models.tiny_backbone import build_tiny_backbone

    path = tmp_path_factory.mktemp("backbone") / "tiny"
    build_tiny_backbone(seed=0, size="smoke").save(path)
    return path


@pytest.fixture()
def backbone(backbone_dir):
    from eeg2music.models.backbone import load_backbone

    return load_backbone(backbone_dir, device=torch.device("cpu"))


@pytest.fixture(scope="session")
def latent_cache(tmp_path_factory, cache_dir, backbone_dir) -> Path:
    """Clip latents encoded once for the whole session (the runs below share them)."""
    from eeg2music.models.backbone import load_backbone

    folder = tmp_path_factory.mktemp("latents")
    cfg = TrainConfig(run_dir=str(cache_dir), backbone=str(backbone_dir), latent_cache_dir=str(folder), smoke=True)
    load_training_data(cfg.resolved(), load_backbone(backbone_dir, device=torch.device("cpu")), progress=False)
    return folder


def config(out_dir, cache_dir, backbone_dir, latent_cache, **overrides) -> TrainConfig:
    """A smoke-size config on the tiny fixtures (a few steps of batch 2)."""
    values = dict(run_dir=str(cache_dir), backbone=str(backbone_dir), out_dir=str(out_dir),
                  latent_cache_dir=str(latent_cache), smoke=True, device="cpu", steps=2, batch_size=2,
                  val_samples=4, val_every=2, checkpoint_every=2)
    values.update(overrides)
    return TrainConfig(**values)


def summary_lr(result) -> float:
    return json.loads((result.run_dir / "train_summary.json").read_text())["config"]["lr"]


def state_dict_copy(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Smoke training: both models, both subject_cond values
# --------------------------------------------------------------------------------------------------

RUNS = [("controlnet", True), ("controlnet", False), ("convnet", True), ("convnet", False)]


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, cache_dir, backbone_dir, latent_cache):
    """Each kind trained for a few steps; with the backbone's weights before and after."""
    from eeg2music.models.backbone import load_backbone

    out_dir = tmp_path_factory.mktemp("runs")
    runs = {}
    for kind, subject_cond in RUNS:
        backbone = load_backbone(backbone_dir, device=torch.device("cpu"))
        before = {"unet": state_dict_copy(backbone.unet), "vae": state_dict_copy(backbone.vae)}
        cfg = config(out_dir / f"{kind}_{subject_cond}", cache_dir, backbone_dir, latent_cache, model=kind,
                     subject_cond=subject_cond, steps=3 if kind == "convnet" else 2)
        result = train(cfg, backbone=backbone, progress=False)
        runs[(kind, subject_cond)] = (result, backbone, before)
    return runs


@pytest.mark.parametrize("kind, subject_cond", RUNS)
def test_smoke_run_writes_the_model_folder_contract(smoke_runs, kind, subject_cond, backbone_dir, cache_dir):
    result, _, _ = smoke_runs[(kind, subject_cond)]
    assert result.run_dir.name == {("controlnet", True): "controlnet_subject"}.get((kind, subject_cond), kind)
    meta = json.loads((result.model_dir / MODEL_CONFIG_NAME).read_text())
    assert meta["model"] == kind and meta["subject_cond"] is subject_cond
    assert Path(meta["backbone"]) == backbone_dir.resolve()
    assert meta["data"]["cache_dir"] == str(cache_dir) and meta["data"]["sfreq"] == 25.0
    assert len(meta["data"]["channels"]) == 124 and meta["data"]["subjects"] == [2, 3]
    assert meta["data"]["window_spec"]["clip_seconds"] == 3.5
    assert meta["training"]["subject_cond"] is subject_cond
    assert meta["training"]["lr"] == PRESETS["demo"]["common"]["lr"], "lr None resolves to the tiny backbone's rate"
    demo = PRESETS["demo"]["common"]
    assert meta["training"]["control_min_timestep"] == demo["control_min_timestep"], "None resolves to the tiny backbone's preset"
    assert meta["training"]["timestep_sampling"] == demo["timestep_sampling"] == "cubic"
    assert (result.model_dir / kind / "diffusion_pytorch_model.safetensors").is_file()

    loaded = load_trained_model(result.run_dir, device="cpu")  # a run folder resolves to its model/
    assert loaded.kind == kind and loaded.subject_cond is subject_cond
    if kind == "controlnet":  # the sampler applies the timestep range the ControlNet was trained on
        assert loaded.module.config.control_min_timestep == demo["control_min_timestep"]
    assert (loaded.module.subject_layer is not None) is subject_cond
    assert not any(p.requires_grad for p in loaded.module.parameters()) and not loaded.module.training
    last_step, last_checkpoint = list_checkpoints(result.run_dir)[-1]
    assert last_step == result.summary["steps"]  # a checkpoint at the end, and the model holds its weights
    final = safetensors.torch.load_file(last_checkpoint / kind / "diffusion_pytorch_model.safetensors")
    assert final.keys() == loaded.module.state_dict().keys()
    assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in final.items())


@pytest.mark.parametrize("kind, subject_cond", RUNS)
def test_smoke_run_logs_and_summarises(smoke_runs, kind, subject_cond):
    result, _, _ = smoke_runs[(kind, subject_cond)]
    steps = result.summary["steps"]
    lines = (result.run_dir / "train_log.csv").read_text().splitlines()
    assert lines[0].split(",") == list(LOG_COLUMNS) and len(lines) == 1 + steps
    last = dict(zip(LOG_COLUMNS, lines[-1].split(",")))
    assert int(last["step"]) == steps and float(last["val_loss"]) > 0
    assert float(last["lr"]) == summary_lr(result)
    summary = json.loads((result.run_dir / "train_summary.json").read_text())
    evidence = summary["eeg_evidence"]
    assert {"val_loss", "val_loss_eeg_zeroed", "val_loss_eeg_shuffled", "gain_vs_eeg_zeroed"} <= set(evidence)
    assert ("val_loss_backbone_only" in evidence) is (kind == "controlnet")
    assert evidence["val_loss"] == pytest.approx(summary["final_val_loss"])
    assert np.isfinite([evidence[k] for k in evidence if k.startswith("val_loss")]).all()
    assert summary["samples_per_second"] > 0 and summary["parameters"]["trainable"] > 0
    assert summary["subject_cond"] is subject_cond and summary["device"].startswith("cpu")
    table = (result.run_dir / "val_per_window.csv").read_text().splitlines()
    assert len(table) == 1 + evidence["n_windows"]


@pytest.mark.parametrize("kind, subject_cond", [("controlnet", True), ("convnet", False)])
def test_only_the_trained_network_changes(smoke_runs, kind, subject_cond):
    result, backbone, before = smoke_runs[(kind, subject_cond)]
    for name in ("unet", "vae"):
        module = getattr(backbone, name)
        assert not any(p.requires_grad for p in module.parameters()) and not module.training
        after = module.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before[name].items()), f"the frozen {name} changed"
    trained = load_trained_model(result.model_dir).module
    if kind == "controlnet":
        # The zero convolutions start at exactly 0 and the subject layer at the identity: both moved.
        assert trained.controlnet_mid_block.weight.abs().sum() > 0
        assert trained.subject_layer.weight.sub(torch.eye(124)).abs().max() > 0


# --------------------------------------------------------------------------------------------------
# Latents: once per (song, chunk), never per window or step
# --------------------------------------------------------------------------------------------------

def test_clip_latents_are_encoded_once_and_reused(tmp_path, cache_dir, backbone_dir, backbone, monkeypatch):
    encoded = []
    original = backbone.encode
    monkeypatch.setattr(backbone, "encode", lambda mel: encoded.append(mel.shape[0]) or original(mel))
    cfg = config(tmp_path, cache_dir, backbone_dir, tmp_path / "latents", model="convnet", subject_cond=False, steps=1)
    first = train(cfg, backbone=backbone, progress=False)
    windows, clips = first.summary["data"]["windows"], first.summary["data"]["clips"]
    assert sum(encoded) == clips["train"] + clips["val"] == first.summary["latents"]["clips"]
    assert sum(encoded) < windows["train"] + windows["val"], "one latent per clip, shared by the participants"
    assert first.summary["latents"]["encoded_this_run"] == sum(encoded)
    encoded.clear()
    second = train(cfg, backbone=backbone, progress=False, run_name="again")
    assert encoded == [] and second.summary["latents"]["encoded_this_run"] == 0
    assert len(list((tmp_path / "latents").glob("latents_*.safetensors"))) == 1


def test_latent_cache_is_keyed_by_the_vae_and_checked(tmp_path, backbone):
    clips = [(22, 0), (22, 1)]
    audio = {22: np.random.default_rng(0).normal(0, 0.1, 2 * 56000).astype(np.float32)}
    audio_of = lambda song, chunk: audio[song][chunk * 56000:(chunk + 1) * 56000]  # noqa: E731
    first = clip_latents(backbone, clips, audio_of, tmp_path, {"data": "x"}, progress=False)
    again = clip_latents(backbone, clips, audio_of, tmp_path, {"data": "x"}, progress=False)
    assert again.encoded == 0 and torch.equal(again.latents, first.latents)
    first.path.write_bytes(b"not a safetensors file")  # damaged: ignored and encoded again, never trusted
    repaired = clip_latents(backbone, clips, audio_of, tmp_path, {"data": "x"}, progress=False)
    assert repaired.encoded == 2 and torch.equal(repaired.latents, first.latents)
    with torch.no_grad():
        next(backbone.vae.parameters()).add_(1e-3)
    second = clip_latents(backbone, clips, audio_of, tmp_path, {"data": "x"}, progress=False)
    assert first.encoded == second.encoded == 2 and first.path != second.path


# --------------------------------------------------------------------------------------------------
# Checkpoints: atomic, partial ones ignored, resume checks its settings
# --------------------------------------------------------------------------------------------------

def test_partial_checkpoints_are_ignored_on_resume(tmp_path, cache_dir, backbone_dir, latent_cache, backbone):
    cfg = config(tmp_path, cache_dir, backbone_dir, latent_cache, model="convnet", subject_cond=False)
    first = train(cfg, backbone=backbone, progress=False)
    checkpoints = first.run_dir / "checkpoints"
    complete = checkpoints / "checkpoint-000002"
    # a run killed while saving leaves its temporary folder; a folder copied half-way lacks the marker
    (checkpoints / ".checkpoint-000004.x1y2.partial").mkdir()
    for name in ("trainer_state.json", "optimizer.json"):
        (checkpoints / ".checkpoint-000004.x1y2.partial" / name).write_text("{}")
    (checkpoints / "checkpoint-000006" / "convnet").mkdir(parents=True)
    assert [step for step, _ in list_checkpoints(first.run_dir)] == [2]
    assert resolve_resume("latest", first.run_dir) == complete
    resumed = train(cfg, backbone=backbone, progress=False, steps=3, resume="true")
    assert resumed.summary["resumed_from_step"] == 2 and resumed.summary["steps"] == 3
    assert [row["step"] for row in resumed.log] == [1, 2, 3]


def test_a_failed_save_leaves_no_checkpoint(tmp_path, cache_dir, backbone_dir, latent_cache, backbone, monkeypatch):
    def broken_rng_state():
        raise OSError("disk full")

    monkeypatch.setattr("eeg2music.training.checkpoints.rng_state", broken_rng_state)
    cfg = config(tmp_path, cache_dir, backbone_dir, latent_cache, model="convnet", subject_cond=False)
    with pytest.raises(OSError, match="disk full"):
        train(cfg, backbone=backbone, progress=False)
    leftovers = list((tmp_path / "convnet" / "checkpoints").iterdir())
    assert leftovers == [], f"a failed save left {leftovers}"
    assert not (tmp_path / "convnet" / "model").exists()


def test_starting_afresh_removes_the_earlier_checkpoints_only_once_it_has_its_own(
        tmp_path, cache_dir, backbone_dir, latent_cache, backbone, monkeypatch):
    """Issue 17, item 1: an earlier run's checkpoints stay until the new run has written a complete one."""
    cfg = config(tmp_path, cache_dir, backbone_dir, latent_cache, model="convnet", subject_cond=False, steps=6)
    earlier = train(cfg, backbone=backbone, progress=False)
    assert [step for step, _ in list_checkpoints(earlier.run_dir)] == [4, 6]
    seen = []
    real_save = save_checkpoint

    def spy(folder, **kwargs):
        seen.append((folder.name, [step for step, _ in list_checkpoints(earlier.run_dir)]))
        return real_save(folder, **kwargs)

    monkeypatch.setattr("eeg2music.training.loop.save_checkpoint", spy)
    again = train(dataclasses.replace(cfg, steps=4), backbone=backbone, progress=False)
    # the first save of the new run still sees the earlier checkpoints; afterwards only the new ones remain
    assert seen[0] == ("checkpoint-000002", [4, 6])
    assert [step for step, _ in list_checkpoints(again.run_dir)] == [2, 4]
    assert again.summary["resumed_from_step"] is None


def test_explicit_learning_rate_is_used(tmp_path, cache_dir, backbone_dir, latent_cache, backbone):
    cfg = config(tmp_path, cache_dir, backbone_dir, latent_cache, model="convnet", subject_cond=False, steps=1, lr=3e-4)
    result = train(cfg, backbone=backbone, progress=False)
    assert result.summary["config"]["lr"] == 3e-4 and result.log[0]["lr"] == 3e-4
    assert TrainConfig().resolved("audioldm2").lr == PAPER_LEARNING_RATE == 1e-4  # the paper's, for the real backbone


def test_resume_refuses_other_settings(tmp_path, cache_dir, backbone_dir, latent_cache, backbone):
    cfg = config(tmp_path, cache_dir, backbone_dir, latent_cache, model="convnet", subject_cond=False)
    train(cfg, backbone=backbone, progress=False)
    with pytest.raises(ParameterError, match="batch_size"):
        train(cfg, backbone=backbone, progress=False, steps=4, batch_size=4, resume=True)


def test_resume_from_an_explicit_path_and_bad_path(tmp_path, cache_dir, backbone_dir, latent_cache):
    with pytest.raises(FileNotFoundError, match="resume"):
        resolve_resume(str(tmp_path / "nowhere"), tmp_path)
    assert resolve_resume("", tmp_path) is None
    assert resolve_resume("latest", tmp_path) is None  # nothing yet: start afresh


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights_bit_for_bit(tmp_path, cache_dir, backbone_dir, latent_cache):
    """SIGKILL a CLI run after its first checkpoint, resume it: the weights equal an uninterrupted run's."""
    steps = 10
    command = [sys.executable, "-m", "eeg2music.train", "--model", "controlnet", "--subject_cond", "true",
               "--steps", str(steps), "--batch_size", "2", "--checkpoint_every", "2", "--val_every", "5",
               "--val_samples", "4", "--run_dir", str(cache_dir), "--backbone", str(backbone_dir),
               "--out_dir", str(tmp_path), "--latent_cache_dir", str(latent_cache), "--device", "cpu",
               "--smoke", "true"]
    # One thread in every run: the floating-point reduction order, hence every bit, is then the same.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.Popen(command + ["--run_name", "straight"], env=env, cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = subprocess.Popen(command + ["--run_name", "killed"], env=env, cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_checkpoint = tmp_path / "killed" / "checkpoints" / "checkpoint-000002" / CHECKPOINT_MARKER
    deadline = time.monotonic() + 300
    while not first_checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished or failed before it could be killed"
    assert not (tmp_path / "killed" / "model").exists()

    subprocess.run(command + ["--run_name", "killed", "--resume", "true"], env=env, cwd=REPO_ROOT, check=True,
                   capture_output=True)
    _, errors = straight.communicate(timeout=600)
    assert straight.returncode == 0, errors[-2000:]

    summary = json.loads((tmp_path / "killed" / "train_summary.json").read_text())
    assert 2 <= summary["resumed_from_step"] < steps
    weights = "model/controlnet/diffusion_pytorch_model.safetensors"
    resumed_bytes, straight_bytes = (tmp_path / "killed" / weights).read_bytes(), (tmp_path / "straight" / weights).read_bytes()
    assert resumed_bytes == straight_bytes
    logs = [(tmp_path / run / "train_log.csv").read_text().splitlines() for run in ("killed", "straight")]
    losses = [[line.split(",")[1] for line in log[1:]] for log in logs]
    assert losses[0] == losses[1] and len(losses[0]) == steps


# --------------------------------------------------------------------------------------------------
# Deterministic data order, state serialisation, config and CLI
# --------------------------------------------------------------------------------------------------

def test_step_batches_depend_only_on_seed_and_step():
    full = list(StepBatches(10, 4, seed=3, start_step=0, stop_step=6))
    assert list(StepBatches(10, 4, seed=3, start_step=3, stop_step=6)) == full[3:]
    stream = [i for batch in full for i in batch]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10)), "each epoch once"
    assert full != list(StepBatches(10, 4, seed=4, start_step=0, stop_step=6))
    ranks = [StepBatches(10, 2, seed=3, start_step=0, stop_step=1, rank=r, num_processes=2).batch(0) for r in (0, 1)]
    assert ranks[0] + ranks[1] == full[0] and len(StepBatches(10, 4, 0, 2, 5)) == 3


def test_step_noise_depends_only_on_seed_step_and_rank():
    draw = lambda *a: torch.randn(5, generator=step_generator(*a))  # noqa: E731
    assert torch.equal(draw(0, 7), draw(0, 7))
    assert not torch.equal(draw(0, 7), draw(0, 8)) and not torch.equal(draw(0, 7), draw(1, 7))
    assert not torch.equal(draw(0, 7, 0), draw(0, 7, 1))


def test_optimizer_and_rng_state_round_trip_without_pickle():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.95, 0.999))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tensors, meta = optimizer_state_to_safetensors(optimizer.state_dict())
    meta = json.loads(json.dumps(meta))
    restored = optimizer_state_from_safetensors(tensors, meta)
    original = optimizer.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    for pid, entries in original["state"].items():
        assert all(torch.equal(restored["state"][pid][k], v) for k, v in entries.items())
    rng_tensors, rng_meta = rng_state()
    expected = (torch.rand(3), np.random.rand(), __import__("random").random())
    set_rng_state(rng_tensors, json.loads(json.dumps(rng_meta)))
    assert torch.equal(torch.rand(3), expected[0]) and np.random.rand() == expected[1]
    assert __import__("random").random() == expected[2]


def test_validation_controls_pair_windows_with_other_clips():
    keys = [(22, 0), (22, 0), (22, 1), (23, 0)]
    offset = mismatched_offset(keys)
    assert offset is not None and all(keys[i] != keys[(i + offset) % 4] for i in range(4))
    assert mismatched_offset([(22, 0), (22, 0)]) is None


def test_config_is_type_checked():
    cfg = TrainConfig.from_overrides({"subject_cond": "false", "steps": "1e2", "lr": "3e-4", "betas": "0.9,0.99",
                                      "resume": "true"})
    assert cfg.subject_cond is False and cfg.steps == 100 and cfg.lr == 3e-4 and cfg.betas == (0.9, 0.99)
    assert cfg.resume == "latest" and TrainConfig(resume=False).resume == ""
    with pytest.raises(ParameterError, match="subject_cond.*maybe"):
        TrainConfig.from_overrides({"subject_cond": "maybe"})
    with pytest.raises(ParameterError, match="model"):
        TrainConfig(model="gan")
    with pytest.raises(ParameterError, match="unknown parameter"):
        TrainConfig.from_overrides({"learning_rate": 1})
    assert TrainConfig(smoke=True).resolved().steps == PRESETS["smoke"]["controlnet"]["steps"]
    assert TrainConfig(model="convnet", steps=7).resolved().steps == 7
    assert TrainConfig(subject_cond=False).name == "controlnet" and TrainConfig(model="convnet", subject_cond=False).name == "convnet"


def test_cli_reports_a_bad_value_before_any_work(capsys):
    assert main(["--steps", "many"]) == 2
    assert "steps" in capsys.readouterr().err


def test_register_unconditional_and_load(tmp_path, backbone_dir):
    folder = register_unconditional(tmp_path, backbone_dir, data={"sfreq": 125.0})
    assert folder == tmp_path / "unconditional" / "model"
    loaded = load_trained_model(folder)
    assert loaded.kind == "unconditional" and loaded.module is None and not loaded.subject_cond
    assert Path(loaded.config["backbone"]) == backbone_dir.resolve() and loaded.config["data"]["sfreq"] == 125.0
    with pytest.raises(FileNotFoundError, match=MODEL_CONFIG_NAME):
        load_trained_model(tmp_path / "nothing")


def test_real_benchmark_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train", REPO_ROOT / "benchmarks" / "bench_train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    with pytest.raises(SystemExit, match="CUDA"):
        bench_train.main(["--real"])


# --------------------------------------------------------------------------------------------------
# The ConvNet baseline
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sfreq, samples", [(125.0, 438), (1000.0, 3500), (25.0, 88)])
def test_convnet_maps_a_window_to_a_latent(sfreq, samples, tmp_path):
    from eeg2music.models.convnet import EEGConvNet

    torch.manual_seed(0)
    net = EEGConvNet(eeg_channels=124, eeg_sfreq=sfreq, n_subjects=3, subject_cond=True, hidden_channels=16).eval()
    eeg = torch.randn(2, 124, samples)
    out = net(eeg, torch.tensor([0, 2]))
    assert out.shape == (2, 8, 88, 16)
    net.save_pretrained(tmp_path)
    again = EEGConvNet.from_pretrained(tmp_path).eval()
    assert torch.equal(again(eeg, torch.tensor([0, 2])), out)


def test_convnet_rejects_bad_input():
    from eeg2music.models.convnet import EEGConvNet

    net = EEGConvNet(eeg_channels=124, eeg_sfreq=125.0, n_subjects=2, subject_cond=True, hidden_channels=16)
    with pytest.raises(ValueError, match=r"124 channels, 438 samples.*\(2, 120, 438\)"):
        net(torch.randn(2, 120, 438), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="out of range"):
        net(torch.randn(2, 124, 438), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="subject is required"):
        net(torch.randn(2, 124, 438), None)
    assert EEGConvNet(subject_cond=False, hidden_channels=16).subject_layer is None


def test_controlnet_timesteps_are_drawn_from_control_min_timestep_up(backbone):
    objective = DiffusionObjective(backbone, min_timestep=700)
    _, timesteps = objective.draw((4000, 8, 4, 4), torch.Generator().manual_seed(0))
    assert int(timesteps.min()) == 700 and int(timesteps.max()) == objective.num_train_timesteps - 1
    _, everywhere = DiffusionObjective(backbone).draw((4000, 8, 4, 4), torch.Generator().manual_seed(0))
    assert int(everywhere.min()) == 0  # the paper's: the whole schedule
    with pytest.raises(ParameterError, match="control_min_timestep"):
        DiffusionObjective(backbone, min_timestep=objective.num_train_timesteps)
    with pytest.raises(ParameterError, match="control_min_timestep"):
        TrainConfig(control_min_timestep=-2)
    assert TrainConfig().resolved("audioldm2").control_min_timestep == 0
    assert TrainConfig().resolved("tiny").control_min_timestep == 0
    assert TrainConfig().resolved("tiny").timestep_sampling == "cubic"


def test_cubic_timesteps_lean_to_high_noise(backbone):
    """T2I-Adapter's cubic draw, t = (1 − u³)·T: P(t < T/2) = 1 − 2^(−1/3) ≈ 0.21, every step still reachable."""
    generator = torch.Generator().manual_seed(0)
    objective = DiffusionObjective(backbone, timestep_sampling="cubic")
    total = objective.num_train_timesteps
    _, timesteps = objective.draw((20000, 1, 1, 1), generator)
    assert int(timesteps.min()) >= 0 and int(timesteps.max()) == total - 1
    assert float((timesteps < total // 2).float().mean()) == pytest.approx(1 - 2 ** (-1 / 3), abs=0.01)
    _, again = DiffusionObjective(backbone, timestep_sampling="cubic").draw((20000, 1, 1, 1), torch.Generator().manual_seed(0))
    assert torch.equal(timesteps, again)
    _, above = DiffusionObjective(backbone, min_timestep=600, timestep_sampling="cubic").draw((4000, 1, 1, 1), generator)
    assert int(above.min()) >= 600
    with pytest.raises(ParameterError, match="timestep_sampling"):
        DiffusionObjective(backbone, timestep_sampling="logit-normal")
    with pytest.raises(ParameterError, match="timestep_sampling"):
        TrainConfig(timestep_sampling="cube")
    assert TrainConfig().resolved("audioldm2").timestep_sampling == "uniform"
