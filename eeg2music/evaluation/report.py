"""Evaluation of the reconstructions (notebook 06): embeddings, metrics, tables and a reading of them.

The stage reads what notebook 05 wrote (``samples.json`` and the WAVs), embeds every true and every
generated clip with each embedder (:func:`eeg2music.evaluation.embedders.make_embedders`: LAION-CLAP and EnCodec
when their weights are given, an offline set otherwise), and computes the paper's metrics plus
identification with :func:`eeg2music.evaluation.metrics.evaluate_embeddings`, separately for every
split × model × embedder:

``results[split][run][embedder] = evaluate_embeddings(generated, true, songs, chunks, ...)``

Notebook 06 shows what is derived from those numbers: the comparison tables (:func:`comparison_table`),
the permutation tests (:func:`permutation_table`), the paired model differences (:func:`paired_differences`),
a plain-words reading (:func:`plain_words_reading`) and the figures; :func:`write_metrics` stores every
number in ``metrics.json`` and ``metrics.csv``.

The report is the executed notebooks 05 and 06 themselves: :func:`export_html` turns an executed notebook
into one HTML file with its figures and audio players embedded (``make demo`` does it for both).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..audio import SAMPLE_RATE
from ..data.forward_model import listener_differences
from ..data.simulate import SIMULATION_FILE, load_simulation
from ..params import ParameterError
from ..sampling.clips import clip_order, read_wav
from ..utils import atomic_write_text, write_json
from .embedders import embed_audio
from .metrics import evaluate_embeddings, results_table

#: The comparison table's columns: metric key of :func:`eeg2music.evaluation.metrics.evaluate_embeddings` → header.
TABLE_METRICS = (
    ("fad", "FAD ↓"),
    ("cosine", "cosine (CLAP score) ↑"),
    ("pearson", "Pearson ↑"),
    ("mse", "MSE ↓"),
    ("song_id_top1", "song-ID top-1 ↑"),
    ("segment_id_top1", "segment-ID top-1 ↑"),
)


#: How the reading names the splits.
SPLIT_LABELS = {"test": "in-distribution (held-out test chunks)", "ood": "out-of-distribution (an unseen song)"}


_PERCENT_METRICS = {"song_id_top1", "song_id_top3", "segment_id_top1", "segment_id_top5"}


def load_waves(paths: Sequence[str | Path], n_samples: int | None = None) -> np.ndarray:
    """Read clips (16 kHz mono WAVs written by notebook 05) into one ``(n, samples)`` float32 array."""

    waves = [read_wav(p, SAMPLE_RATE, n_samples) for p in paths]
    return np.stack(waves) if waves else np.zeros((0, n_samples or 0), np.float32)


def embed_samples(
    record: Mapping[str, Any],
    embedders: Sequence[Any],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Embed every distinct WAV of a sampling record once per embedder.

    Parameters
    ----------
    record : dict
        From :func:`eeg2music.sampling.clips.load_samples` (rows carry ``true_path`` / ``generated_path``).
    embedders : sequence
        :class:`eeg2music.evaluation.embedders.Embedder` objects (``name``, ``embed(waves, sample_rate)``).
    batch_size : int
        Clips per ``embed`` call.
    progress : bool
        Progress bars (one per embedder).

    Returns
    -------
    dict
        Embedder name → {absolute WAV path (str) → embedding (dim,)}. A true clip heard by several
        listeners is embedded once.
    """

    paths = sorted({str(r["true_path"]) for r in record["clips"]} | {str(r["generated_path"]) for r in record["clips"]})
    waves = load_waves(paths, int(record["clip_samples"]))
    table: dict[str, dict[str, np.ndarray]] = {}
    for embedder in embedders:
        embeddings = np.asarray(embed_audio(embedder, waves, int(record["sample_rate"]), batch_size=batch_size,
                                            progress=progress), dtype=np.float64)
        if embeddings.shape[0] != len(paths) or embeddings.ndim != 2:
            raise ValueError(f"embedder {embedder.name!r} returned shape {embeddings.shape} for {len(paths)} clips")
        table[embedder.name] = dict(zip(paths, embeddings))
    return table


def evaluate_samples(
    record: Mapping[str, Any],
    embeddings: Mapping[str, Mapping[str, np.ndarray]],
    *,
    standardize: Mapping[str, bool] | None = None,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`eeg2music.evaluation.metrics.evaluate_embeddings` for every split × model × embedder.

    Parameters
    ----------
    record : dict
        The sampling record (:func:`eeg2music.sampling.clips.load_samples`).
    embeddings : dict
        From :func:`embed_samples`.
    standardize : dict, optional
        Embedder name → z-score dimensions first (for embeddings whose dimensions have different
        units, such as interpretable audio statistics).
    n_boot, n_perm, seed
        Bootstrap resamples, permutations and their seed (the same for every cell of the table, so
        models are resampled alike).
    progress : bool
        Print one line per split and model.

    Returns
    -------
    dict
        ``results[split][run][embedder]``; splits and runs in the record's order.

    Raises
    ------
    ParameterError
        ``n_boot`` or ``n_perm`` below 1: the report's intervals and p-values could not be computed.
    """

    for name, value in (("n_boot", n_boot), ("n_perm", n_perm)):
        if value < 1:
            raise ParameterError(f"parameter {name!r}: {value!r} is below 1; the report's 95 % intervals and "
                                 f"permutation p-values need at least one resample each (e.g. 1000)")
    standardize = dict(standardize or {})
    splits = [s for s in ("test", "ood") if any(r["split"] == s for r in record["clips"])]
    splits += sorted({r["split"] for r in record["clips"]} - set(splits))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for split in splits:
        results[split] = {}
        for run in record["models"]:
            rows = clip_order(record, split, run)
            if len(rows) < 2:
                continue
            songs = np.array([int(r["song"]) for r in rows])
            chunks = np.array([int(r["chunk"]) for r in rows])
            results[split][run] = {}
            for name, table in embeddings.items():
                generated = np.stack([table[str(r["generated_path"])] for r in rows])
                true = np.stack([table[str(r["true_path"])] for r in rows])
                result = evaluate_embeddings(generated, true, songs, chunks, n_boot=n_boot, n_perm=n_perm,
                                             seed=seed, standardize=bool(standardize.get(name, False)))
                result["per_clip"]["subject"] = [int(r["subject"]) for r in rows]
                results[split][run][name] = result
            if progress:
                first = next(iter(results[split][run].values()))["metrics"]
                song = first.get("song_id_top1")
                print(f"[evaluate] {split} · {run}: {len(rows)} clips, cosine {first['cosine']['value']:.3f}"
                      + (f", song-ID {song['value']:.0%} (chance {song['chance']:.0%})" if song else ""))
    return results


def _format_value(metric: str, value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    if metric in _PERCENT_METRICS or metric.endswith(("_top1", "_top3", "_top5")):
        return f"{100 * value:.0f} %"
    if metric in ("fad", "mse") or metric.endswith("mean_rank"):
        return f"{value:.3g}"
    return f"{value:.3f}"


def format_entry(metric: str, entry: Mapping[str, Any] | None, with_ci: bool = True) -> str:
    """``value [low, high]`` as the report prints a metric entry."""
    if entry is None:
        return "–"
    text = _format_value(metric, entry.get("value"))
    if with_ci and entry.get("ci_low") is not None and np.isfinite(entry.get("ci_low", np.nan)):
        text += f" [{_format_value(metric, entry['ci_low'])}, {_format_value(metric, entry['ci_high'])}]"
    return text


def comparison_table(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    split: str,
    embedder: str,
    labels: Mapping[str, str],
) -> "pandas.DataFrame":  # noqa: F821
    """One split and embedder: rows are models, columns :data:`TABLE_METRICS` as ``value [95 % CI]``.

    A metric that does not apply (song-ID on the single OOD song) is ``–``; the chance level of each
    identification metric is given in the header.
    """

    runs = [run for run in results.get(split, {}) if embedder in results[split][run]]
    headers = {}
    for metric, header in TABLE_METRICS:
        chance = next((results[split][r][embedder]["metrics"].get(metric, {}).get("chance") for r in runs
                       if results[split][r][embedder]["metrics"].get(metric)), None)
        headers[metric] = header + (f" (chance {_format_value(metric, chance)})" if chance is not None else "")
    table = {
        labels.get(run, run): {headers[m]: format_entry(m, results[split][run][embedder]["metrics"].get(m))
                               for m, _ in TABLE_METRICS}
        for run in runs
    }
    frame = pd.DataFrame.from_dict(table, orient="index")
    frame.index.name = "model"
    return frame


def verdict(entry: Mapping[str, Any] | None) -> str:
    """``"above chance"``, ``"below chance"`` or ``"at chance"`` from an entry's CI and chance level.

    "At chance" means the 95 % interval contains the chance level (not distinguishable from it).
    """
    if entry is None or entry.get("chance") is None:
        return "not applicable"
    chance, low, high = entry["chance"], entry["ci_low"], entry["ci_high"]
    better_high = entry.get("better", "higher") == "higher"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return "without a confidence interval"
    if low > chance:
        return "above chance" if better_high else "worse than chance"
    if high < chance:
        return "below chance" if better_high else "better than chance"
    return "at chance"


def paired_differences(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    split: str,
    embedder: str,
    pairs: Sequence[tuple[str, str]],
    *,
    metric: str = "cosine",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[tuple[str, str], dict[str, float]]:
    """Mean paired difference ``a − b`` of a per-clip metric between two models, with a bootstrap CI.

    Both models were sampled on the same clips (in :func:`clip_order`), so the difference is taken
    clip by clip, which is far more sensitive than comparing the two models' intervals.

    Returns
    -------
    dict
        ``(a, b)`` → ``{"mean", "ci_low", "ci_high", "n"}``; pairs whose clips do not match are left out.
    """
    out: dict[tuple[str, str], dict[str, float]] = {}
    rng = np.random.default_rng(seed)
    for a, b in pairs:
        try:
            clips_a = results[split][a][embedder]["per_clip"]
            clips_b = results[split][b][embedder]["per_clip"]
        except KeyError:
            continue
        keys_a = list(zip(clips_a["song"], clips_a["chunk"], clips_a.get("subject", clips_a["chunk"])))
        keys_b = list(zip(clips_b["song"], clips_b["chunk"], clips_b.get("subject", clips_b["chunk"])))
        if keys_a != keys_b or metric not in clips_a:
            continue
        diff = np.asarray(clips_a[metric], float) - np.asarray(clips_b[metric], float)
        boot = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
        low, high = np.percentile(boot, [2.5, 97.5])
        out[(a, b)] = {"mean": float(diff.mean()), "ci_low": float(low), "ci_high": float(high), "n": len(diff)}
    return out


def _pct(value: float, digits: int = 0) -> str:
    return f"{100 * value:.{digits}f} %"


def _p(entry: Mapping[str, Any]) -> str:
    p = entry.get("p_value")
    return "" if p is None else f"permutation p = {p:.3g}" if p >= 0.001 else "permutation p < 0.001"


def _versus_chance(label: str, metrics: Mapping[str, Any]) -> str:
    """One model's identification against chance and its cosine against shuffled pairings, in one sentence."""
    parts = []
    for key, what, digits in (("song_id_top1", "song", 0), ("segment_id_top1", "3.5 s segment", 1)):
        entry = metrics.get(key)
        if entry is not None:
            among = re.search(r"of (\d+)", entry["label"])
            parts.append(f"names the right {what}{f' among {among.group(1)}' if among else ''} for {_pct(entry['value'])} "
                         f"of the clips (95 % CI {_pct(entry['ci_low'])}–{_pct(entry['ci_high'])}; chance "
                         f"{_pct(entry['chance'], digits)}): {verdict(entry)}" + (f", {_p(entry)}" if _p(entry) else ""))
    cosine = metrics.get("cosine")
    if cosine is not None:
        shuffled = f"; {cosine['null_mean']:.3f} for shuffled pairings, {_p(cosine)}" if cosine.get("null_mean") is not None else ""
        parts.append(f"cosine to the true clip {cosine['value']:.3f} (CI {cosine['ci_low']:.3f}–{cosine['ci_high']:.3f}"
                     f"{shuffled})")
    return f"**{label}** " + "; ".join(parts) + "." if parts else ""


def _difference(diff: Mapping[str, float], label_a: str, label_b: str) -> str:
    """A paired cosine difference ``a − b`` read by whether its interval excludes 0."""
    word = "beats" if diff["ci_low"] > 0 else "falls behind" if diff["ci_high"] < 0 else "does not differ detectably from"
    return (f"{label_a} {word} {label_b} on the cosine to the true clip: {diff['mean']:+.3f} "
            f"(paired 95 % CI {diff['ci_low']:+.3f} to {diff['ci_high']:+.3f}, {diff['n']} clips).")


def plain_words_reading(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    models: Mapping[str, Mapping[str, Any]],
    embedder: str,
    *,
    seed: int = 0,
) -> list[str]:
    """One embedder's numbers in sentences, split by split (Markdown paragraphs).

    Per model: song- and segment-identification against chance (95 % CI, verdict, permutation p) and the
    cosine against shuffled pairings. Then paired cosine differences (:func:`paired_differences`) of each
    model against the unconditional one, of the subject layer (with − without), of a one-step estimate
    (kind ``"estimate"``) against its own model's samples, and of the first ControlNet against the ConvNet,
    whose FADs are also set side by side.

    Parameters
    ----------
    results : dict
        ``results[split][run][embedder]`` (:func:`evaluate_samples`).
    models : dict
        Run → ``{"label", "kind", "subject_cond"}`` (samples.json's ``models``).
    embedder : str
        The embedder whose numbers are read.
    seed : int
        Seed of the paired bootstraps.
    """
    labels = {run: m.get("label", run) for run, m in models.items()}
    kind = {run: m.get("kind") for run, m in models.items()}
    paragraphs: list[str] = []
    for split, per_run in results.items():
        runs = [run for run in per_run if embedder in per_run[run]]
        if not runs:
            continue
        first = per_run[runs[0]][embedder]
        songs = sorted(set(first["per_clip"]["song"]))
        heard = f"song {songs[0]}" if len(songs) == 1 else f"{len(songs)} songs"
        paragraphs.append(f"**{SPLIT_LABELS.get(split, split).capitalize()}**, `{embedder}`: {first['n_clips']} clips "
                          f"of {heard}, {first['n_segments']} distinct segments.")
        paragraphs += [_versus_chance(labels.get(run, run), per_run[run][embedder]["metrics"]) for run in runs]
        uncond = [run for run in runs if kind.get(run) == "unconditional"]
        controlnets = [run for run in runs if kind.get(run) == "controlnet"]
        subject = [run for run in controlnets if models[run].get("subject_cond")]
        convnets = [run for run in runs if kind.get(run) == "convnet"]
        estimates = [run for run in runs if kind.get(run) == "estimate" and models[run].get("estimate_of") in runs]
        pairs = [(run, u) for u in uncond for run in runs if run not in uncond]
        pairs += [(a, b) for a in subject for b in controlnets if b not in subject]
        # A model's conditional mean against its own samples: what sampling keeps of what the model knows.
        pairs += [(e, models[e]["estimate_of"]) for e in estimates]
        baseline = [(c, v) for c in controlnets[:1] for v in convnets]
        diffs = paired_differences(results, split, embedder, pairs + baseline, seed=seed)
        sentences = [_difference(diffs[(a, b)], labels.get(a, a), labels.get(b, b))
                     for a, b in pairs + baseline if (a, b) in diffs]
        for c, v in baseline:
            fad_c, fad_v = (per_run[run][embedder]["metrics"]["fad"] for run in (c, v))
            apart = fad_c["ci_low"] > fad_v["ci_high"] or fad_c["ci_high"] < fad_v["ci_low"]
            sentences.append(f"FAD, lower when the clips as a set sound like the real ones: {labels.get(c, c)} "
                             f"{fad_c['value']:.3g}, {labels.get(v, v)} {fad_v['value']:.3g} (95 % CIs "
                             f"{'apart' if apart else 'overlap'}).")
        paragraphs.append(" ".join(sentences))
    return [p for p in paragraphs if p]


#: What each embedder is, in words (the offline ones say plainly that they are stand-ins).
EMBEDDER_NOTES = {
    "laion-clap": "LAION-CLAP audio embeddings (48 kHz, 512-d), as in the paper",
    "encodec": "EnCodec 24 kHz encoder latents averaged over time (128-d), as in the paper",
    "audioldm2-clap": "the CLAP audio tower inside the local AudioLDM2 folder",
    "mel-stats": "an offline stand-in, not CLAP: interpretable librosa statistics of each clip (log-mel bands, "
                 "chroma, onset strength, tempo, brightness…), z-scored with the true clips' statistics",
    "mel-envelope": "not a stand-in for anything: the log-mel band envelopes over time (8 band groups × 100 ms "
                    "bins, each band's clip mean removed), z-scored — the only time-resolved embedding here: does a "
                    "reconstruction have its clip's time course (onsets, beats, bands entering), which auditory EEG follows?",
    "vae-latent": "an offline stand-in, not EnCodec: the backbone's own VAE latents averaged over time, "
                  "i.e. the space the diffusion model generates in; not a perceptual embedding",
}


OFFLINE_EMBEDDERS = ("mel-stats", "mel-envelope", "vae-latent")


def embedder_note(embedder: Any) -> str:
    """One line on what an embedder is (from :data:`EMBEDDER_NOTES`, else its ``repr``)."""
    name = getattr(embedder, "name", str(embedder))
    return EMBEDDER_NOTES.get(name, repr(embedder))


def permutation_table(results, split: str, embedder: str, labels: Mapping[str, str]) -> "pandas.DataFrame":  # noqa: F821
    """Observed value, mean under shuffled pairings and permutation p-value, per model and paired metric."""

    metrics = (("cosine", "cosine"), ("pearson", "Pearson"), ("song_id_top1", "song-ID top-1"),
               ("segment_id_top1", "segment-ID top-1"))
    rows = {}
    for run, per_embedder in results.get(split, {}).items():
        if embedder not in per_embedder:
            continue
        row = {}
        for key, name in metrics:
            entry = per_embedder[embedder]["metrics"].get(key)
            if entry is None or entry.get("p_value") is None:
                continue
            row[name] = (f"{_format_value(key, entry['value'])} vs {_format_value(key, entry['null_mean'])}, "
                         f"p = {entry['p_value']:.3g}")
        rows[labels.get(run, run)] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "model (observed vs shuffled mean, p)"
    return frame


def metrics_frame(results, labels: Mapping[str, str]) -> "pandas.DataFrame":  # noqa: F821
    """Every number in tidy form (``metrics.csv``): split, model, label, embedder, metric, value, CI, p…"""

    frame = results_table(results, names=("split", "model", "embedder"))
    frame.insert(2, "model_label", frame["model"].map(lambda run: labels.get(run, run)))
    return frame




def encoder_only_table(encoder_only: Mapping[str, Mapping[str, float]], results, labels: Mapping[str, str],
                       embedders: Sequence[str], models: Mapping[str, Mapping[str, Any]] | None = None,
                       ) -> "pandas.DataFrame | None":  # noqa: F821
    """Each aligned EEG encoder's own identification beside its generated audio's, and the share kept.

    Segment-ID (which 3.5 s clip of the test set, Défossez et al.'s sense) and song-ID, for the encoder
    ranking the true clips by its embedding and for the generated audio ranked in each embedder.

    Parameters
    ----------
    encoder_only : dict
        Run → :func:`eeg2music.training.alignment.retrieval_accuracy` (notebook 05's ``encoder_only.json``).
    results : dict
        ``results[split][run][embedder]``.
    labels : dict
        Run → label.
    embedders : sequence of str
        Embedder names whose generated identification is shown.
    models : dict, optional
        samples.json's ``models``: a run with ``estimate_of`` (the one-step estimate of a run with an
        encoder) gets rows beside its run's, against the same encoder.

    Returns
    -------
    pandas.DataFrame or None
        Rows ``(model, embedder)``; columns encoder / generated / kept for segment-ID and song-ID
        (rounded to 3 decimals). None when no run has an aligned encoder.
    """

    owners = {run: run for run in encoder_only}
    for run, entry in (models or {}).items():
        if entry.get("estimate_of") in encoder_only:
            owners[run] = entry["estimate_of"]
    rows = {}
    for run, owner in owners.items():
        if run not in results.get("test", {}):
            continue
        retrieval = encoder_only[owner]
        for name in embedders:
            metrics = results["test"][run].get(name, {}).get("metrics", {})
            row = {}
            for level, encoder_key, generated_key in (("segment-ID", "segment_top1", "segment_id_top1"),
                                                      ("song-ID", "song_top1", "song_id_top1")):
                encoder = retrieval[encoder_key]
                generated = metrics.get(generated_key, {}).get("value")
                row[f"{level}: encoder"] = encoder
                row[f"{level}: generated"] = generated
                row[f"{level}: kept"] = generated / encoder if generated is not None and encoder else None
            rows[(labels.get(run, run), name)] = row
    if not rows:
        return None
    table = pd.DataFrame(rows).T.astype(float).round(3)
    table.index.names = ["model", "embedder"]
    return table


def paired_identification_table(results, models: Mapping[str, Mapping[str, Any]], embedders: Sequence[str], *,
                                split: str = "test", seed: int = 0) -> "pandas.DataFrame | None":  # noqa: F821
    """Paired differences in segment-ID top-1 between the models that answer the report's questions.

    Every model reconstructed the same clips, so a difference in the share of clips identified can be
    taken clip by clip (:func:`paired_differences` on each clip's hit, 1 or 0), which resolves far smaller
    differences than two separate intervals do. The pairs: the first ControlNet (with the subject layer
    if there is one) against the ConvNet and against the unconditional model; its one-step estimate (the
    conditional mean, kind ``"estimate"``) against its own samples and against the ConvNet.

    Returns
    -------
    pandas.DataFrame or None
        Rows ``"A − B"``, one column per embedder: the difference in percentage points and its 95 % CI.
        None when no pair is present.
    """
    kinds = {run: m.get("kind") for run, m in models.items()}
    controlnets = [run for run, kind in kinds.items() if kind == "controlnet"]
    controlnets.sort(key=lambda run: not models[run].get("subject_cond"))
    convnets = [run for run, kind in kinds.items() if kind == "convnet"]
    unconditional = [run for run, kind in kinds.items() if kind == "unconditional"]
    pairs = [(c, b) for c in controlnets[:1] for b in convnets[:1] + unconditional[:1]]
    for run, entry in models.items():
        if kinds[run] == "estimate" and entry.get("estimate_of") in models:
            pairs += [(run, entry["estimate_of"])] + [(run, b) for b in convnets[:1]]
    rows = {}
    for a, b in pairs:
        row = {}
        for name in embedders:
            diff = paired_differences(results, split, name, [(a, b)], metric="segment_top1", seed=seed).get((a, b))
            if diff:
                row[name] = (f"{100 * diff['mean']:+.0f} pts [{100 * diff['ci_low']:+.0f}, {100 * diff['ci_high']:+.0f}]")
        if row:
            rows[f"{models[a].get('label', a)} − {models[b].get('label', b)}"] = row
    return pd.DataFrame(rows).T if rows else None


def ablation_table(ablation: Mapping[str, Any], embedders: Sequence[str] | None = None) -> "pandas.DataFrame | None":  # noqa: F821
    """The ablation benchmark's rows as one table: each training or sampling lever, same seed and clips.

    Parameters
    ----------
    ablation : dict
        The content of :data:`eeg2music.paths.ABLATION_NAME` (``rows``: one per model and sampling
        setting, with the test split's ``"<embedder> segment_id_top1"`` / ``song_id_top1`` values and
        intervals, the unseen song's segment-ID and the encoder's own).
    embedders : sequence of str, optional
        Which embedders' columns to show (default: every one in the rows).

    Returns
    -------
    pandas.DataFrame or None
        One row per setting (the report's "setting" words, with the guidance and strength it was sampled
        with); columns "segment-ID (<embedder>)" as "value [low, high]" in %, the unseen song's segment-ID
        and the encoder's. None without rows.
    """
    rows = {}
    for row in ablation.get("rows", []):
        names = [key[: -len(" segment_id_top1")] for key in row if key.endswith(" segment_id_top1") and " OOD " not in key]
        shown = {}
        for name in (n for n in names if embedders is None or n in embedders):
            value, interval = row[f"{name} segment_id_top1"], row.get(f"{name} segment_id_top1 CI") or [None, None]
            shown[f"segment-ID ({name})"] = (f"{100 * value:.0f} % [{100 * interval[0]:.0f}, {100 * interval[1]:.0f}]"
                                             if None not in interval else f"{100 * value:.0f} %")
            if f"{name} OOD segment_id_top1" in row:
                shown[f"unseen song ({name})"] = f"{100 * row[f'{name} OOD segment_id_top1']:.0f} %"
        if "encoder-only segment_top1" in row:
            shown["encoder alone, segment-ID"] = f"{100 * row['encoder-only segment_top1']:.0f} %"
        label = f"{row['model']} · {row.get('setting', '')}"
        rows[label] = shown
    return pd.DataFrame(rows).T.fillna("") if rows else None


def subject_layer_table(results, models: Mapping[str, Mapping[str, Any]], embedders: Sequence[str], *,
                        seed: int = 0) -> "pandas.DataFrame | None":  # noqa: F821
    """Paired differences (with subject layer − without) of the cosine and of the true song's rank.

    The first ControlNet with the subject layer against the first without, on the test split, for every
    embedder (:func:`paired_differences`).

    Returns
    -------
    pandas.DataFrame or None
        Rows ``"<embedder> · <metric>"``, columns ``mean``, ``ci_low``, ``ci_high``, ``n`` (rounded to 4
        decimals); None without a ControlNet on each side.
    """

    with_s = [run for run, m in models.items() if m["kind"] == "controlnet" and m["subject_cond"]]
    without_s = [run for run, m in models.items() if m["kind"] == "controlnet" and not m["subject_cond"]]
    rows = {}
    if with_s and without_s:
        pair = (with_s[0], without_s[0])
        for name in embedders:
            for metric in ("cosine", "song_rank"):
                difference = paired_differences(results, "test", name, [pair], metric=metric, seed=seed).get(pair)
                if difference:
                    rows[f"{name} · {metric}"] = difference
    return pd.DataFrame(rows).T.round(4) if rows else None


def listener_differences_table(data_root: str | Path | None, latent_frame_ms: float) -> "pd.DataFrame | None":
    """How much the simulated listeners differ (:func:`~eeg2music.data.forward_model.listener_differences`).

    Beside the subject layer's effect: a per-listener layer can only help as much as listeners differ in
    ways the rest of the model does not already absorb. Rows: the scalp patterns (mean correlation between
    two listeners, per source, and the mean shared variance), the latency spread against one latent frame,
    the gain spread (which per-recording robust scaling removes). None for data that is not simulated.
    """
    if not data_root or not (Path(data_root) / SIMULATION_FILE).is_file():
        return None
    _, model = load_simulation(data_root)
    found = listener_differences(model)
    rows = {f"scalp pattern r between listeners · {source}": f"{r['mean']:.3f} (lowest {r['min']:.3f})"
            for source, r in found["topography_r"].items()}
    rows["scalp patterns: variance two listeners share (mean r²)"] = f"{found['shared_variance']:.1%}"
    rows["response latency SD / range"] = (f"{found['latency_ms']['sd']:.1f} ms / {found['latency_ms']['range']:.1f} ms "
                                           f"(one latent frame: {latent_frame_ms:.1f} ms)")
    rows["response gain: SD of log gain / max ÷ min"] = (f"{found['gain']['log_sd']:.2f} / {found['gain']['max_over_min']:.2f} "
                                                         f"(removed by each recording's robust scaling)")
    return pd.DataFrame({"simulated listeners": rows})


def write_metrics(
    out_dir: str | Path,
    *,
    record: Mapping[str, Any],
    results,
    embedders: Sequence[Any],
    reading: Sequence[str],
    settings: Mapping[str, Any],
) -> dict[str, Path]:
    """Write ``metrics.json`` (every number, per-clip values, the reading) and ``metrics.csv`` into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Notebook 06's folder.
    record : dict
        The sampling record (models, splits, scheduler…).
    results : dict
        ``results[split][run][embedder]`` (:func:`evaluate_samples`).
    embedders : sequence
        The embedders used; the first is the primary one (paired differences are computed on it).
    reading : sequence of str
        :func:`plain_words_reading`'s paragraphs.
    settings : dict
        How the evaluation ran (n_boot, n_perm, seed, folders…).

    Returns
    -------
    dict
        ``metrics_json``, ``metrics_csv`` paths.
    """

    out_dir = Path(out_dir)
    labels = {run: m.get("label", run) for run, m in record["models"].items()}
    primary = embedders[0].name
    pairs = [(a, b) for a in record["models"] for b in record["models"] if a != b]
    differences = {split: {f"{a} - {b}": d for (a, b), d in paired_differences(
        results, split, primary, pairs, seed=int(settings.get("seed", 0))).items()} for split in results}
    payload = {
        "settings": dict(settings),
        "embedders": [{"name": e.name, "note": embedder_note(e), "offline": e.name in OFFLINE_EMBEDDERS,
                       "dim": getattr(e, "dim", None), "standardize": bool(getattr(e, "standardize", False))}
                      for e in embedders],
        "primary_embedder": primary,
        "models": dict(record["models"]),
        "splits": dict(record.get("splits", {})),
        "sampling": {k: record.get(k) for k in ("scheduler", "num_inference_steps", "conditioning_scale", "seed")},
        "paired_cosine_differences": differences,
        "reading": list(reading),
        "results": results,
    }
    paths = {"metrics_json": write_json(out_dir / "metrics.json", payload)}
    frame = metrics_frame(results, labels)
    paths["metrics_csv"] = atomic_write_text(out_dir / "metrics.csv", frame.to_csv(index=False))
    return paths


def export_html(executed_notebook: str | Path, html_path: str | Path | None = None) -> Path:
    """An executed notebook as one HTML file (nbconvert), with its figures and audio players inside.

    Figures reach the notebook as PNG outputs and ``IPython.display.Audio`` players as HTML with a
    base64 WAV source, so both are already data URIs in the page; ``embed_images`` also inlines images
    that Markdown cells link by path. The same as ``jupyter nbconvert --to html <executed.ipynb>``.

    Parameters
    ----------
    executed_notebook : str or Path
        An executed ``.ipynb`` (papermill's output).
    html_path : str or Path, optional
        Where the page goes; default: beside the notebook, ``.html`` for ``.ipynb``.

    Returns
    -------
    Path
        The HTML file, written atomically.
    """
    from nbconvert import HTMLExporter

    executed_notebook = Path(executed_notebook)
    html_path = Path(html_path) if html_path is not None else executed_notebook.with_suffix(".html")
    body, _ = HTMLExporter(embed_images=True).from_filename(str(executed_notebook))
    return atomic_write_text(html_path, body)
