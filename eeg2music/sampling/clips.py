"""Which clips are sampled, the WAV files, and running the pipeline over clips and models.

:func:`select_clips` picks a balanced, reproducible set of test and out-of-distribution windows;
:func:`sample_models` samples every model on them into WAVs and ``samples.json`` (written last);
:func:`load_samples` reads it back for notebook 06.

Outputs of :func:`sample_models` (notebook 05)
----------------------------------------------
``<out_dir>/wav/true/song{S}_chunk{C:03d}.wav``
    The true clip (the same for every subject who heard it), 16 kHz mono, 56 000 samples.
``<out_dir>/wav/<run>/sub{P:02d}_song{S}_chunk{C:03d}.wav``
    A reconstruction, same rate and length (32-bit float WAV: the model's output, unclipped).
``<out_dir>/samples.json``
    Written last (its presence means the folder is complete): the settings, one entry per model
    (kind, label, model folder, seconds per clip) and one row per generated clip (``model``,
    ``subject``, ``subject_index``, ``song``, ``chunk``, ``split``, ``true_wav``, ``generated_wav``,
    ``scheduler``, ``steps``, ``seconds_per_clip``, ``seed``); paths are relative to ``out_dir``.
    :func:`load_samples` reads and checks it.
"""

from __future__ import annotations

import html as html_lib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from tqdm.auto import tqdm

from ..audio import CLIP_SAMPLES, SAMPLE_RATE, player
from ..utils import (
    atomic_directory,
    atomic_file,
    cpu_threads_for,
    disk_full_error,
    free_bytes,
    read_json,
    write_json,
)
from .pipeline import (
    CLIP_STREAM,
    EEGMusicPipeline,
    clip_generators,
    clip_seed,
    model_setting,
)

#: The runs notebook 05 samples by default, in the order of the comparison table.
DEFAULT_RUNS = ("controlnet_subject", "controlnet", "convnet", "unconditional")


#: How the report names each default run.
MODEL_LABELS = {
    "controlnet_subject": "ControlNet+subject",
    "controlnet": "ControlNet",
    "convnet": "ConvNet",
    "convnet_subject": "ConvNet+subject",
    "unconditional": "unconditional",
}


#: Windows reconstructed per split and model by notebook 05 at its default size (sized for the demo's
#: budget on two CPU cores: 12 windows of every test song, drawn over its two test segments; an
#: identification rate of 30 % is then measured with a 95 % interval of about ±9 points, 15 % with ±7 —
#: 36 windows gave ±14, too wide to tell 20 % from the 11 % chance level; 144 windows took the demo past
#: 15 minutes) and at smoke size (tests).
DEMO_MAX_CLIPS = {"test": 108, "ood": 24}


SMOKE_MAX_CLIPS = {"test": 4, "ood": 2}


#: The file that marks a complete sampling folder.
SAMPLES_NAME = "samples.json"


#: Sub-folder of the WAV files.
WAV_DIR = "wav"


#: Version of the samples.json layout.
SAMPLES_FORMAT = 1


#: Fields every clip row of samples.json carries.
CLIP_FIELDS = ("model", "subject", "subject_index", "song", "chunk", "split", "true_wav", "generated_wav",
               "scheduler", "steps", "seconds_per_clip", "seed")


def default_max_clips(smoke: bool = False) -> dict[str, int]:
    """Windows per split that notebook 05 reconstructs when ``max_clips=0``."""
    return dict(SMOKE_MAX_CLIPS if smoke else DEMO_MAX_CLIPS)


def model_label(run: str, kind: str | None = None, subject_cond: bool | None = None) -> str:
    """The display name of a run: ``MODEL_LABELS`` for the default runs, else derived from its kind."""
    if run in MODEL_LABELS:
        return MODEL_LABELS[run]
    if kind is None:
        return run
    base = {"controlnet": "ControlNet", "convnet": "ConvNet", "unconditional": "unconditional"}.get(kind, kind)
    return f"{base}+subject ({run})" if subject_cond else f"{base} ({run})"


@dataclass(frozen=True)
class Clip:
    """One EEG window to reconstruct: its split, position in that split's dataset and identity."""

    split: str
    index: int
    subject: int
    subject_index: int
    song: int
    chunk: int


def _clips_of(dataset, split: str) -> list[Clip]:
    """Every window of a split as a :class:`Clip`, read from the window list (no EEG is loaded)."""
    clips = []
    for i, ref in enumerate(dataset.windows):
        clips.append(Clip(split, i, int(ref.subject), int(dataset.index.subject_index(ref.subject)),
                          int(ref.song), int(ref.chunk)))
    return clips


def select_clips(
    dataset,
    split: str,
    *,
    max_clips: int = 0,
    subjects: Sequence[int] | None = None,
    seed: int = 0,
) -> list[Clip]:
    """The windows of a split to reconstruct: all of them, or ``max_clips`` spread evenly.

    With a limit, every song gets a near-equal share (song identification needs every song), and
    within a song the windows are drawn at random (seeded), so chunks and subjects are mixed. The
    selection depends only on the split and ``seed``, never on the model, so all models are
    compared on the same clips.

    Parameters
    ----------
    dataset : eeg2music.data.windows.EEGMusicWindows
        The split's windows.
    split : str
        Its name (recorded in each :class:`Clip`).
    max_clips : int
        At most this many windows (0 = all).
    subjects : sequence of int, optional
        Only these participant numbers.
    seed : int
        Seeds the draw.

    Returns
    -------
    list of Clip
        Sorted by song, chunk and subject.
    """
    if max_clips < 0:
        raise ValueError(f"parameter 'max_clips': must be ≥ 0, got {max_clips}")
    clips = _clips_of(dataset, split)
    if subjects:
        try:
            wanted = {int(s) for s in subjects}
        except (TypeError, ValueError):
            raise ValueError(f"parameter 'subjects': {list(subjects)} are not all participant numbers (e.g. [2, 3])") from None
        unknown = wanted - {c.subject for c in clips}
        if unknown:
            raise ValueError(
                f"parameter 'subjects': participant(s) {sorted(unknown)} have no window in split {split!r} "
                f"(participants there: {sorted({c.subject for c in clips})})"
            )
        clips = [c for c in clips if c.subject in wanted]
    if max_clips and len(clips) > max_clips:
        rng = np.random.default_rng(np.random.SeedSequence([CLIP_STREAM, int(seed), sum(map(ord, split))]))
        by_song: dict[int, list[Clip]] = {}
        for clip in clips:
            by_song.setdefault(clip.song, []).append(clip)
        queues = {song: [members[i] for i in rng.permutation(len(members))] for song, members in sorted(by_song.items())}
        chosen: list[Clip] = []
        # Round-robin over songs: a near-equal share each, songs with fewer windows simply run out.
        while len(chosen) < max_clips:
            for song in list(queues):
                if queues[song] and len(chosen) < max_clips:
                    chosen.append(queues[song].pop())
        clips = chosen
    return sorted(clips, key=lambda c: (c.song, c.chunk, c.subject))


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "FLOAT") -> Path:
    """Write a mono waveform atomically (:func:`eeg2music.utils.atomic_file`: a temporary file, then rename).

    32-bit float keeps the model's output as it is (no clipping, no quantisation): the metrics read
    exactly what was generated.
    """

    path = Path(path)
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(wave)):
        raise ValueError(f"{path}: the waveform holds {int(np.sum(~np.isfinite(wave)))} non-finite samples")
    try:
        with atomic_file(path, suffix=".wav") as tmp:
            soundfile.write(tmp, wave, int(sample_rate), subtype=subtype, format="WAV")
    except soundfile.LibsndfileError as err:
        # libsndfile reports a full disk as "System error."; the free space tells it apart.
        free = free_bytes(path.parent)
        if free is not None and free < wave.nbytes + 2**20:
            raise disk_full_error(path, err) from err
        raise
    return path


def read_wav(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, n_samples: int | None = CLIP_SAMPLES) -> np.ndarray:
    """Read a mono clip written by :func:`write_wav`, checking its rate (and length)."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such WAV file")
    wave, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    if rate != sample_rate:
        raise ValueError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz")
    if wave.ndim != 1:
        raise ValueError(f"{path}: {wave.shape[1]} channels, expected mono")
    if n_samples is not None and len(wave) != n_samples:
        raise ValueError(f"{path}: {len(wave)} samples, expected {n_samples}")
    return wave


def true_wav_name(song: int, chunk: int) -> str:
    return f"song{int(song)}_chunk{int(chunk):03d}.wav"


def generated_wav_name(subject: int, song: int, chunk: int) -> str:
    return f"sub{int(subject):02d}_song{int(song)}_chunk{int(chunk):03d}.wav"


def sample_clips(
    pipeline: EEGMusicPipeline,
    dataset,
    clips: Sequence[Clip],
    *,
    scheduler: str = "dpmsolver++",
    num_inference_steps: int = 20,
    conditioning_scale: float = 1.0,
    guidance_scale: float = 1.0,
    strength: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "",
    threads: int = -1,
) -> tuple[np.ndarray, float, int]:
    """Reconstruct ``clips`` of ``dataset`` in batches; return the waveforms, the wall time, the threads used.

    ``threads`` sets torch's CPU threads while sampling (:func:`cpu_threads_for`; negative = automatic).
    The other parameters are those of :class:`EEGMusicPipeline` and :func:`sample_models`.

    Returns
    -------
    waves : ndarray, shape (n_clips, 56000)
    seconds : float
        Wall time of the pipeline calls (loading the EEG excluded).
    threads : int
        torch's CPU threads while sampling.
    """

    if batch_size < 1:
        raise ValueError(f"parameter 'batch_size': must be ≥ 1, got {batch_size}")
    pipeline.set_progress_bar_config(disable=True)  # one bar over clips, not one per batch
    waves: list[np.ndarray] = []
    seconds = 0.0
    bar = tqdm(total=len(clips), desc=desc or f"sample {pipeline.kind}", unit="clip", disable=not progress)
    with cpu_threads_for(pipeline.device, threads) as used:
        for start in range(0, len(clips), batch_size):
            seconds += _sample_batch(pipeline, dataset, clips[start : start + batch_size], waves, scheduler,
                                     num_inference_steps, conditioning_scale, seed, guidance_scale, strength)
            bar.update(min(batch_size, len(clips) - start))
    bar.close()
    return (np.concatenate(waves) if waves else np.zeros((0, CLIP_SAMPLES), np.float32)), seconds, used


def _sample_batch(pipeline, dataset, batch, waves, scheduler, num_inference_steps, conditioning_scale, seed,
                  guidance_scale: float = 1.0, strength: float = 1.0) -> float:
    """Reconstruct one batch of clips into ``waves``; return the pipeline's wall time."""
    eeg = None
    if pipeline.kind != "unconditional":
        eeg = torch.from_numpy(np.stack([dataset.eeg(c.index) for c in batch]))
    generators = clip_generators([clip_seed(seed, c.song, c.chunk, c.subject) for c in batch])
    tic = time.perf_counter()
    out = pipeline(
        eeg,
        subject=[c.subject_index for c in batch],
        num_inference_steps=num_inference_steps,
        scheduler=scheduler,
        conditioning_scale=conditioning_scale,
        guidance_scale=guidance_scale,
        strength=strength,
        generator=generators,
        batch_size=len(batch),
        show_progress=False,
    )
    waves.append(np.asarray(out.audios, dtype=np.float32))
    return time.perf_counter() - tic


def sample_models(
    models: Mapping[str, Any],
    backbone,
    datasets: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    scheduler: str = "dpmsolver++",
    num_inference_steps: int = 20,
    conditioning_scale: float = 1.0,
    guidance_scale: float = 1.0,
    strength: float = 1.0,
    seed: int = 0,
    max_clips: int | Mapping[str, int] = 0,
    subjects: Sequence[int] | None = None,
    batch_size: int = 8,
    splits: Sequence[str] = ("test", "ood"),
    estimates: Sequence[str] = (),
    progress: bool = True,
    info: Mapping[str, Any] | None = None,
    threads: int = -1,
) -> dict[str, Any]:
    """Reconstruct the selected clips of ``splits`` with every model; write WAVs and ``samples.json``.

    Parameters
    ----------
    models : mapping run name → TrainedModel or None
        What to sample (``None`` = the unconditional backbone), in table order.
    backbone : eeg2music.models.backbone.Backbone
        The backbone all models were trained with.
    datasets : mapping split → EEGMusicWindows
        With audio attached (the true clips are written too).
    out_dir : path-like
        Notebook 05's folder.
    scheduler, num_inference_steps, conditioning_scale, guidance_scale, strength
        As for :class:`EEGMusicPipeline`.
    seed : int
        Sampling seed (:func:`clip_seed`) and clip-selection seed.
    max_clips : int or mapping split → int
        Windows per split (0 = all), see :func:`select_clips`.
    subjects : sequence of int, optional
        Only these participant numbers.
    batch_size : int
        Clips per pipeline call.
    splits : sequence of str
        Which splits to reconstruct (those missing from ``datasets`` are an error).
    estimates : sequence of str
        Diffusion runs of ``models`` whose one-step estimate from each clip's ``z_T`` (``strength=0``: the
        conditional mean given the EEG, not a sample) is decoded too, as the extra run ``<run>_estimate``
        (kind ``"estimate"``, ``estimate_of`` naming its run), after the others.
    progress : bool
        Progress bars and one line per model.
    info : mapping, optional
        Extra settings to record (backbone path, data config…).
    threads : int
        CPU threads while sampling (:func:`cpu_threads_for`: negative = one when the machine is busy).

    Returns
    -------
    dict
        The content of ``samples.json`` (paths relative to ``out_dir``).
    """
    out_dir = Path(out_dir)
    missing = [s for s in splits if s not in datasets]
    if missing:
        raise ValueError(f"no dataset for split(s) {missing}; available: {sorted(datasets)}")
    if not models:
        raise ValueError("no model to sample")
    for run in estimates:
        if run not in models or (models[run] is not None and models[run].kind == "convnet"):
            raise ValueError(f"estimates: {run!r} is not one of the diffusion runs sampled here "
                             f"{[r for r, m in models.items() if m is None or m.kind != 'convnet']}")
    # (run name, model, strength, the run it is the estimate of): every model as asked, then the estimates.
    jobs = [(run, trained, strength, None) for run, trained in models.items()]
    jobs += [(f"{run}_estimate", models[run], 0.0, run) for run in estimates]
    say = print if progress else (lambda *a, **k: None)
    limits = {s: (max_clips.get(s, 0) if isinstance(max_clips, Mapping) else int(max_clips)) for s in splits}
    selection = {s: select_clips(datasets[s], s, max_clips=limits[s], subjects=subjects, seed=seed) for s in splits}
    for split, clips in selection.items():
        if not clips:
            raise ValueError(f"split {split!r}: no window selected (max_clips={limits[split]}, subjects={subjects})")

    samples_path = out_dir / SAMPLES_NAME
    # A stale samples.json must never describe the WAVs being replaced: remove it first.
    samples_path.unlink(missing_ok=True)
    wav_root = out_dir / WAV_DIR
    model_entries: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    with atomic_directory(wav_root) as tmp_root:
        true_written: set[tuple[int, int]] = set()
        for split, clips in selection.items():
            for clip in clips:
                if (clip.song, clip.chunk) not in true_written:
                    wave = datasets[split].audio_clip(clip.song, clip.chunk)
                    write_wav(tmp_root / "true" / true_wav_name(clip.song, clip.chunk), wave)
                    true_written.add((clip.song, clip.chunk))
        for run, trained, run_strength, estimate_of in jobs:
            pipeline = EEGMusicPipeline(backbone, trained)
            kind = "estimate" if estimate_of else pipeline.kind
            steps = 0 if kind == "convnet" else 1 if estimate_of else int(num_inference_steps)
            sampler = "none" if kind == "convnet" else scheduler
            total_seconds, total_clips = 0.0, 0
            for split, clips in selection.items():
                waves, seconds, used_threads = sample_clips(
                    pipeline, datasets[split], clips, scheduler=scheduler, num_inference_steps=num_inference_steps,
                    conditioning_scale=conditioning_scale, guidance_scale=guidance_scale, strength=run_strength,
                    seed=seed, batch_size=batch_size, progress=progress, desc=f"{run} · {split}", threads=threads,
                )
                per_clip = seconds / len(clips)
                total_seconds += seconds
                total_clips += len(clips)
                for clip, wave in zip(clips, waves):
                    name = generated_wav_name(clip.subject, clip.song, clip.chunk)
                    write_wav(tmp_root / run / name, wave)
                    rows.append({
                        "model": run,
                        "subject": clip.subject,
                        "subject_index": clip.subject_index,
                        "song": clip.song,
                        "chunk": clip.chunk,
                        "split": split,
                        "true_wav": f"{WAV_DIR}/true/{true_wav_name(clip.song, clip.chunk)}",
                        "generated_wav": f"{WAV_DIR}/{run}/{name}",
                        "scheduler": sampler,
                        "steps": steps,
                        "seconds_per_clip": round(per_clip, 4),
                        "seed": clip_seed(seed, clip.song, clip.chunk, clip.subject),
                        "peak": round(float(np.max(np.abs(wave))), 4),
                    })
            label = model_label(run, pipeline.kind, pipeline.subject_cond)
            if estimate_of:
                label = f"{model_entries[estimate_of]['label']}, mean"
            model_entries[run] = {
                "kind": kind,
                "label": label,
                "subject_cond": pipeline.subject_cond,
                "model_dir": None if trained is None else str(trained.path),
                "scheduler": sampler,
                "steps": steps,
                "setting": model_setting(trained, guidance_scale, run_strength),
                **({"estimate_of": estimate_of} if estimate_of else {}),
                "clips": total_clips,
                "seconds": round(total_seconds, 3),
                "seconds_per_clip": round(total_seconds / max(total_clips, 1), 4),
                "cpu_threads": used_threads if pipeline.device.type == "cpu" else None,
            }
            say(f"[sample] {run}: {total_clips} clips in {total_seconds:.1f} s "
                f"({total_seconds / max(total_clips, 1):.2f} s/clip, {sampler}"
                + (f", {steps} steps" if steps else "")
                + (f", {used_threads} CPU thread{'s' if used_threads != 1 else ''})"
                   if pipeline.device.type == "cpu" else ")"))

    record = {
        "format_version": SAMPLES_FORMAT,
        "sample_rate": SAMPLE_RATE,
        "clip_samples": CLIP_SAMPLES,
        "scheduler": scheduler,
        "num_inference_steps": int(num_inference_steps),
        "conditioning_scale": float(conditioning_scale),
        "guidance_scale": float(guidance_scale),
        "strength": float(strength),
        "seed": int(seed),
        "max_clips": limits,
        "subjects": None if not subjects else [int(s) for s in subjects],
        "splits": {s: {"clips": len(c), "songs": sorted({x.song for x in c}),
                       "subjects": sorted({x.subject for x in c}), "segments": len({(x.song, x.chunk) for x in c})}
                   for s, c in selection.items()},
        "models": model_entries,
        **dict(info or {}),
        "clips": rows,
    }
    write_json(samples_path, record)
    return record


def load_samples(sample_dir: str | os.PathLike, check_files: bool = True) -> dict[str, Any]:
    """Read ``samples.json`` of a sampling folder and check it; WAV paths become absolute.

    Parameters
    ----------
    sample_dir : path-like
        Notebook 05's folder (or the ``samples.json`` file itself).
    check_files : bool
        Check that every referenced WAV exists.

    Returns
    -------
    dict
        The record, with ``true_path`` / ``generated_path`` (absolute ``Path``) added to each clip row
        and ``folder`` set to the sampling folder.

    Raises
    ------
    FileNotFoundError
        No samples.json (notebook 05 has not run, or did not finish) or a missing WAV.
    ValueError
        A record without the fields notebook 06 needs, naming the file and the field.
    """
    path = Path(sample_dir).expanduser().resolve()
    if path.is_dir():
        path = path / SAMPLES_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no {SAMPLES_NAME}. Run notebook 05 (05_sample) first, or point sample_dir to its out_dir."
        )
    record = read_json(path)
    for key in ("format_version", "sample_rate", "clip_samples", "models", "clips"):
        if key not in record:
            raise ValueError(f"{path}: field {key!r} is missing; is this a samples.json written by notebook 05?")
    if record["format_version"] != SAMPLES_FORMAT:
        raise ValueError(f"{path}: format_version {record['format_version']}, this code reads {SAMPLES_FORMAT}")
    folder = path.parent
    for i, row in enumerate(record["clips"]):
        absent = [f for f in CLIP_FIELDS if f not in row]
        if absent:
            raise ValueError(f"{path}: clip row {i} lacks {absent}")
        if row["model"] not in record["models"]:
            raise ValueError(f"{path}: clip row {i} names model {row['model']!r}, not among {sorted(record['models'])}")
        row["true_path"] = folder / row["true_wav"]
        row["generated_path"] = folder / row["generated_wav"]
        if check_files:
            for key in ("true_path", "generated_path"):
                if not row[key].is_file():
                    raise FileNotFoundError(f"{path}: clip row {i} refers to {row[key]}, which does not exist")
    record["folder"] = folder
    return record


def clip_order(record: Mapping[str, Any], split: str, run: str) -> list[Mapping[str, Any]]:
    """The clip rows of one model and split, in a fixed order (song, chunk, subject).

    Every model is sampled on the same clips, so this order pairs the models' rows with each other.
    """
    rows = [r for r in record["clips"] if r["model"] == run and r["split"] == split]
    return sorted(rows, key=lambda r: (int(r["song"]), int(r["chunk"]), int(r["subject"])))


def choose_examples(record: Mapping[str, Any], n_test: int = 2, n_ood: int = 1) -> list[dict[str, Any]]:
    """A few clips to look at and listen to: test clips of ``n_test`` songs, ``n_ood`` clips of the unseen song.

    Deterministic: for the i-th song the middle sampled chunk, preferring a different listener for each
    example, so the examples span songs and subjects.

    Parameters
    ----------
    record : dict
        A sampling record (:func:`load_samples`, or what :func:`sample_models` returns).

    Returns
    -------
    list of dict
        ``split``, ``song``, ``chunk``, ``subject``, ``true_path``, ``generated`` (run → path).
    """
    folder = Path(record.get("folder", "."))
    runs = list(record["models"])
    if not runs:
        return []
    picks: list[tuple[str, Mapping[str, Any]]] = []
    used_subjects: set[int] = set()
    for split, n in (("test", n_test), ("ood", n_ood)):
        rows = clip_order(record, split, runs[0])
        by_song: dict[int, list[Mapping[str, Any]]] = {}
        for row in rows:
            by_song.setdefault(int(row["song"]), []).append(row)
        songs = sorted(by_song)
        if split == "test":
            # Spread the examples over the songs (first, middle, last…), one clip each.
            count = min(n, len(songs))
            chosen_songs = [songs[round(i * (len(songs) - 1) / max(count - 1, 1))] for i in range(count)]
            groups = [by_song[s] for s in dict.fromkeys(chosen_songs)]
        else:
            groups = [by_song[s] for s in songs[:1]] * min(n, len(rows))
        for i, group in enumerate(groups):
            ordered = sorted(group, key=lambda r: (abs(int(r["chunk"]) - int(group[len(group) // 2]["chunk"])),
                                                   int(r["subject"]) in used_subjects))
            if split == "ood":
                # Several clips of one song: spread them over the song.
                ordered = [group[round(i * (len(group) - 1) / max(len(groups) - 1, 1))]]
            row = next((r for r in ordered if int(r["subject"]) not in used_subjects), ordered[0])
            used_subjects.add(int(row["subject"]))
            picks.append((split, row))
    examples = []
    for split, pick in picks:
        key = (split, int(pick["song"]), int(pick["chunk"]), int(pick["subject"]))
        generated = {}
        for row in record["clips"]:
            if (row["split"], int(row["song"]), int(row["chunk"]), int(row["subject"])) == key:
                generated[row["model"]] = Path(row.get("generated_path") or folder / row["generated_wav"])
        examples.append({"split": split, "song": key[1], "chunk": key[2], "subject": key[3],
                         "true_path": Path(pick.get("true_path") or folder / pick["true_wav"]),
                         "generated": {run: generated[run] for run in runs if run in generated}})
    return examples


def listening_table(examples: Sequence[Mapping[str, Any]], labels: Mapping[str, str]):
    """An HTML table of ``IPython.display.Audio`` players: one row per example, true clip then each model.

    Players use ``normalize=False`` so loudness differences are heard as they are; samples beyond ±1
    (possible for an unclipped reconstruction) are clipped for playback only.
    """

    from IPython.display import HTML


    if not examples:
        return HTML("<p>no example</p>")
    runs = list(examples[0]["generated"])
    header = "".join(f"<th>{html_lib.escape(h)}</th>" for h in ["clip", "true"] + [labels.get(r, r) for r in runs])
    body = []
    for example in examples:
        where = "OOD song" if example["split"] == "ood" else "test"
        cells = [f"<td>{where}: song {example['song']}, chunk {example['chunk']}, P{example['subject']:02d}</td>"]
        for path in [example["true_path"]] + [example["generated"][r] for r in runs]:
            cells.append(f"<td>{player(read_wav(path))._repr_html_()}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return HTML(f"<table><tr>{header}</tr>{''.join(body)}</table>")
