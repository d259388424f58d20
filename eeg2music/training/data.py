"""A training run's data: the preprocessed cache, its windows, and the clip latents encoded once.

The batch at step ``s`` is a function of ``(seed, s)`` only (:class:`StepBatches`,
:func:`step_generator`). Audio latents are the same for every subject: they are encoded once per
``(song, chunk)`` and kept in a safetensors file keyed by the backbone's VAE weights and the clips
(:func:`clip_latents`), never re-encoded per step.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.cache import CacheIndex, build_cache, open_cache
from ..data.pairing import (
    SUMMARY_FILE,
    load_stage_windows,
    load_windows,
    read_preprocess_summary,
)
from ..data.preprocessing import INDEX_FILE, LATEST_FILE
from ..data.windows import EEGMusicWindows, WindowSpec
from ..paths import stage_dir
from ..run_inputs import default_backbone_dir, default_cache_dir, ensure_dataset
from ..utils import atomic_file, read_json
from .config import TrainConfig


def derived_seed(*entropy: int) -> int:
    """A well-mixed 63-bit seed from integers (NumPy's SeedSequence), e.g. ``(seed, step, rank)``."""
    return int(np.random.SeedSequence([int(e) % 2**63 for e in entropy]).generate_state(1, np.uint64)[0]) >> 1


NOISE_STREAM, ORDER_STREAM, VALIDATION_STREAM, INIT_STREAM = 0x4E015E, 0x0D3E5, 0x7A11D, 0x1417


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator for step ``step`` on process ``rank``: noise and timesteps are drawn from it."""
    return torch.Generator().manual_seed(derived_seed(NOISE_STREAM, seed, step, rank))


class StepBatches(torch.utils.data.Sampler):
    """Batches of dataset indices where the batch of step ``s`` depends on ``(seed, s)`` only.

    The index stream is the concatenation of one random permutation of the dataset per epoch; step
    ``s`` takes positions ``[s·B, (s+1)·B)`` of it, where ``B = batch_size × num_processes``, and
    process ``rank`` takes its own slice of those. No window is dropped at an epoch boundary (a batch
    may span two epochs), and resuming at step ``s`` needs nothing but ``s``.

    Parameters
    ----------
    n_items : int
        Dataset length.
    batch_size : int
        Windows per step and process.
    seed : int
        Seed of the permutations.
    start_step, stop_step : int
        The steps to yield batches for: ``range(start_step, stop_step)``.
    rank, num_processes : int
        This process and how many share each step.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, start_step: int, stop_step: int,
                 rank: int = 0, num_processes: int = 1):
        if n_items <= 0:
            raise ValueError("the training split is empty: no windows to train on")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.start_step, self.stop_step = start_step, stop_step
        self.rank, self.num_processes = rank, num_processes
        self._permutations: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the dataset in ``epoch`` (a function of the seed and the epoch only)."""
        if epoch not in self._permutations:
            if len(self._permutations) > 2:  # a batch spans at most two epochs
                self._permutations.pop(min(self._permutations))
            generator = torch.Generator().manual_seed(derived_seed(ORDER_STREAM, self.seed, epoch))
            self._permutations[epoch] = torch.randperm(self.n_items, generator=generator).numpy()
        return self._permutations[epoch]

    def batch(self, step: int) -> list[int]:
        """The dataset indices of ``step`` for this process."""
        global_batch = self.batch_size * self.num_processes
        first = step * global_batch + self.rank * self.batch_size
        positions = range(first, first + self.batch_size)
        return [int(self.permutation(p // self.n_items)[p % self.n_items]) for p in positions]

    def epoch_of(self, step: int) -> float:
        """Epochs completed at the start of ``step``."""
        return step * self.batch_size * self.num_processes / self.n_items

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.stop_step):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step)


@dataclass
class TrainingData:
    """The windows a run trains and validates on, and what the models need to know about them."""

    train: EEGMusicWindows  # without audio: items hold eeg, subject, song, chunk
    val: EEGMusicWindows
    latents: ClipLatents
    info: dict[str, Any]  # the data config recorded in model folders and checkpoints
    eeg_channels: int
    eeg_sfreq: float
    eeg_samples: int
    clip_seconds: float
    n_subjects: int
    backbone_path: str


def window_meta(dataset, i: int) -> tuple[int, int, int]:
    """``(subject index, song, chunk)`` of window ``i`` without reading its EEG."""
    ref = dataset.windows[i]
    return dataset.index.subject_index(ref.subject), int(ref.song), int(ref.chunk)


def ensure_cache(run_dir: str | os.PathLike = "", *, data_root: str | os.PathLike = "", smoke: bool = False,
                 seed: int = 0, progress: bool = True) -> CacheIndex:
    """A preprocessed cache, as a :class:`~eeg2music.data.cache.CacheIndex`.

    Parameters
    ----------
    run_dir : path-like
        A cache folder or a cache root (its latest build). Empty: a cache under the default run
        folder's cache root (``outputs/02_preprocess/cache``, ``cache_smoke`` at smoke size).
    data_root : path-like
        With ``run_dir`` empty: the NMED-T folder to preprocess (a cache of exactly this folder and
        the paper's preprocessing is reused when there is one). Empty: the latest cache of the default
        root, or the simulated dataset (simulated if missing) preprocessed now.
    smoke, seed : bool, int
        Size and seed of the simulated dataset when it has to be made.
    progress : bool
        Print what is used or built.
    """

    if run_dir not in ("", None):
        return open_cache(Path(run_dir).expanduser().resolve())
    cache_root = default_cache_dir(smoke)
    if data_root in ("", None):
        try:
            index = open_cache(cache_root)
        except FileNotFoundError:
            pass
        else:
            if progress:
                print(f"[train] using the preprocessed cache {index.path}")
            return index
    folder = ensure_dataset(data_root, smoke=smoke, seed=seed)
    if progress:
        print(f"[train] preprocessing {folder} into {cache_root} (the paper's pipeline; reused if already there)")
    return build_cache(folder, None, cache_root, progress=progress)


def default_window_spec(smoke: bool = False) -> WindowSpec:
    """The window spec used when there is no notebook-02 summary: notebook 02's defaults.

    At smoke size the simulated songs last 15 s (4 clips), too short for a gap chunk on each side of
    the val and test chunks, so (as notebook 02 does) the gaps are dropped.
    """

    return WindowSpec(gap_chunks=0) if smoke else WindowSpec()


def training_windows(cfg: TrainConfig, *, progress: bool = True) -> tuple[dict[str, Any], str]:
    """The split datasets to train on (with their audio), and where they come from, in words.

    * ``run_dir`` holding notebook 02's ``preprocess_summary.json``: exactly notebook 02's splits
      (cache, window spec, held-out participant, song lengths);
    * ``run_dir`` a cache folder or root: its windows with the default window spec;
    * ``run_dir`` empty: the default run folder's notebook-02 output when it matches the size
      (``smoke``), else the default cache (built now if missing) with the default window spec.
    """

    stage = Path(cfg.run_dir).expanduser().resolve() if cfg.run_dir else stage_dir("preprocess")
    if (stage / SUMMARY_FILE).is_file():
        summary = read_preprocess_summary(stage)
        # The default 02 output serves smoke and full runs alike: use it only if it is this size's
        # (and of this data_root, when one is given).
        same_size = default_cache_dir(cfg.smoke) in Path(summary["cache"]).parents
        same_data = not cfg.data_root or Path(summary["data_root"]) == Path(cfg.data_root).expanduser().resolve()
        if cfg.run_dir or (same_size and same_data):
            splits = load_stage_windows(stage, stimuli=True, verbose=progress, stimuli_dir=cfg.stimuli_dir or None)
            return splits, f"notebook 02's splits ({stage / SUMMARY_FILE})"
    if cfg.run_dir and not any((stage / name).exists() for name in (INDEX_FILE, LATEST_FILE)):
        raise FileNotFoundError(
            f"parameter 'run_dir': {stage} holds neither notebook 02's {SUMMARY_FILE} nor a preprocessed cache "
            f"({INDEX_FILE} or {LATEST_FILE}). Give notebook 02's out_dir or its cache, or leave run_dir empty."
        )
    index = ensure_cache(cfg.run_dir, data_root=cfg.data_root, smoke=cfg.smoke, seed=cfg.seed, progress=progress)
    # The stimuli bound the chunks (make_splits cuts within the audio's length), so they are always read.
    splits = load_windows(index, default_window_spec(cfg.smoke), stimuli=True, verbose=progress,
                          stimuli_dir=cfg.stimuli_dir or None)
    return splits, f"the cache {index.path} with the default window spec"


def _stimuli_dir_of(cfg: TrainConfig) -> str:
    """The folder a run's audio comes from, to record: the parameter, else the one notebook 02 recorded."""

    if cfg.stimuli_dir:
        return str(Path(cfg.stimuli_dir).expanduser().resolve())
    summary = (Path(cfg.run_dir).expanduser().resolve() if cfg.run_dir else stage_dir("preprocess")) / SUMMARY_FILE
    return str(read_json(summary).get("stimuli_dir") or "") if summary.is_file() else ""


def _audio_digest(audio: Mapping[int, np.ndarray], clips: Sequence[tuple[int, int]], clip_samples: int) -> str:
    digest = hashlib.sha256()
    for song, chunk in clips:
        digest.update(np.ascontiguousarray(audio[song][chunk * clip_samples:(chunk + 1) * clip_samples],
                                           dtype=np.float32).tobytes())
    return digest.hexdigest()


def load_training_data(cfg: TrainConfig, backbone, *, progress: bool = True) -> TrainingData:
    """The train and val windows (see :func:`training_windows`) and the latents of their clips.

    The latents are encoded once per (song, chunk) and cached in ``cfg.latent_cache_dir``
    (default ``<out_dir>/latent_cache``, shared by the runs of notebook 04).
    """

    splits, source = training_windows(cfg, progress=progress)
    for name in ("train", "val"):
        if name not in splits:
            raise ValueError(f"{source}: no {name!r} split (check val_fraction / val_chunks in notebook 02)")
    train_set, val_set = splits["train"], splits["val"]
    index, spec = train_set.index, train_set.spec
    clips = sorted(set(train_set.clips()) | set(val_set.clips()))
    identity = {"backbone": type(backbone).__name__, "kind": getattr(backbone, "kind", None),
                "audio_sha256": _audio_digest(train_set.audio, clips, spec.clip_samples),
                "clip_samples": spec.clip_samples, "audio_sr": spec.audio_sr}
    cache_dir = Path(cfg.latent_cache_dir) if cfg.latent_cache_dir else stage_dir("train", cfg.out_dir) / "latent_cache"
    latents = clip_latents(backbone, clips, train_set.audio_clip, cache_dir, identity, progress=progress)
    if tuple(latents.latents.shape[1:]) != tuple(backbone.latent_shape):
        raise ValueError(f"latents of shape {tuple(latents.latents.shape[1:])} but the backbone says "
                         f"{tuple(backbone.latent_shape)}")
    backbone_path = (getattr(backbone, "metadata", {}).get("path") or cfg.backbone
                     or default_backbone_dir(cfg.smoke))
    info = {
        "source": source,
        "cache_dir": str(index.path),
        "cache_key": index.key,
        "data_root": index.data_root,
        "layout": index.layout,
        "stimuli_dir": _stimuli_dir_of(cfg),
        "sfreq": index.sfreq,
        "units": index.units,
        "channels": index.channel_names,
        "subjects": list(index.subjects),
        "train_subjects": sorted({ref.subject for ref in train_set.windows}),
        "songs": list(index.songs),
        "window_spec": spec.to_dict(),
        "eeg_samples": train_set.n_times,
        "preprocessing": index.preprocessing.to_dict(),
        "windows": {name: len(ds) for name, ds in splits.items()},
        "clips": {name: len(ds.clips()) for name, ds in splits.items()},
    }
    return TrainingData(
        train=train_set.eeg_only(), val=val_set.eeg_only(), latents=latents, info=info,
        eeg_channels=index.n_channels, eeg_sfreq=index.sfreq, eeg_samples=train_set.n_times,
        clip_seconds=spec.clip_seconds, n_subjects=len(index.subjects), backbone_path=str(Path(backbone_path).resolve()),
    )


@dataclass
class ClipLatents:
    """The VAE latents of the audio clips, one row per ``(song, chunk)``.

    Attributes
    ----------
    keys : list of (int, int)
        ``(song, chunk)`` per row.
    latents : torch.Tensor
        ``(n_clips, 8, frames, bins)`` float32 (× the VAE's scaling factor, as the UNet sees them).
    path : Path or None
        The cache file they were read from or written to.
    encoded : int
        How many clips this call encoded (0 when all came from the cache).
    """

    keys: list[tuple[int, int]]
    latents: torch.Tensor
    path: Path | None = None
    encoded: int = 0

    def __post_init__(self):
        self._rows = {key: row for row, key in enumerate(self.keys)}

    def rows(self, songs: Sequence[int] | torch.Tensor, chunks: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Row indices of the clips ``(songs[i], chunks[i])``."""
        songs = songs.tolist() if isinstance(songs, torch.Tensor) else list(songs)
        chunks = chunks.tolist() if isinstance(chunks, torch.Tensor) else list(chunks)
        try:
            return torch.tensor([self._rows[(int(s), int(c))] for s, c in zip(songs, chunks)], dtype=torch.long)
        except KeyError as err:
            raise KeyError(f"no cached latent for (song, chunk) {err.args[0]}; the latent cache {self.path} "
                           f"covers {len(self.keys)} clips") from None

    def lookup(self, songs, chunks) -> torch.Tensor:
        """The latents of the clips ``(songs[i], chunks[i])``, on the device :attr:`latents` is on."""
        return self.latents[self.rows(songs, chunks).to(self.latents.device)]

    def to(self, device: torch.device | str) -> "ClipLatents":
        return ClipLatents(self.keys, self.latents.to(device), self.path, self.encoded)


def module_fingerprint(module: nn.Module) -> str:
    """A SHA-256 of a module's state dict (names, dtypes, shapes, bytes): identifies its weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def clip_latents(
    backbone,
    clips: Sequence[tuple[int, int]],
    audio_of,
    cache_dir: str | os.PathLike | None,
    identity: Mapping[str, Any],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> ClipLatents:
    """The latents of ``clips``, read from the cache when it holds them, else encoded once and cached.

    Parameters
    ----------
    backbone : eeg2music.models.backbone.Backbone
        Its ``wave_to_mel`` and ``encode`` (the VAE's posterior, × scaling factor) are used.
    clips : sequence of (int, int)
        The ``(song, chunk)`` pairs to encode (each once, whatever the number of subjects).
    audio_of : callable
        ``audio_of(song, chunk) -> float32[56000]``: the clip's waveform at 16 kHz.
    cache_dir : path-like or None
        Folder of the cache files (None: encode without caching).
    identity : mapping
        What the clips' audio depends on (data folder, window spec…); hashed, with the VAE's weights,
        into the cache file's name, so a different backbone or different clips never reuse it.
    batch_size : int
        Clips per VAE call (the VAE runs where the backbone is).
    progress : bool
        Show a progress bar while encoding.
    """

    keys = sorted({(int(s), int(c)) for s, c in clips})
    if not keys:
        raise ValueError("clip_latents: no clips to encode")
    key_text = json.dumps({"vae": module_fingerprint(backbone.vae), "identity": identity, "clips": keys},
                          sort_keys=True, default=str)
    digest = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"latents_{digest}.safetensors" if cache_dir not in (None, "") else None
    if path is not None and path.is_file():
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                stored_keys = [tuple(k) for k in json.loads(handle.metadata()["clips"])]
                stored = handle.get_tensor("latents")
            if stored_keys == keys and stored.shape[0] == len(keys):
                return ClipLatents(keys, stored, path, encoded=0)
            problem = "it holds other clips"
        except Exception as err:  # a damaged or foreign file: say so and encode afresh
            problem = f"unreadable ({type(err).__name__}: {err})"
        print(f"[train] ignoring the latent cache {path}: {problem}; encoding again")

    rows = []
    bar = tqdm(range(0, len(keys), batch_size), desc="encode clip latents", unit="batch", disable=not progress)
    for start in bar:
        wave = np.stack([np.asarray(audio_of(s, c), dtype=np.float32) for s, c in keys[start:start + batch_size]])
        rows.append(backbone.encode(backbone.wave_to_mel(wave)).float().cpu())
    latents = torch.cat(rows).contiguous()
    if progress:
        print(f"[train] encoded {len(keys)} clip latents {tuple(latents.shape[1:])} once (shared by all subjects)")
    if path is not None:
        with atomic_file(path) as tmp:
            safetensors.torch.save_file({"latents": latents}, str(tmp), metadata={"clips": json.dumps(keys)})
    return ClipLatents(keys, latents, path, encoded=len(keys))
