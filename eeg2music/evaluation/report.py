"""Evaluation of the reconstructions and the listening report (notebook 06).

The stage reads what notebook 05 wrote (``samples.json`` and the WAVs), embeds every true and every
generated clip with each embedder (:func:`eeg2music.evaluation.embedders.make_embedders`: LAION-CLAP and EnCodec
when their weights are given, an offline set otherwise), and computes the paper's metrics plus
identification with :func:`eeg2music.evaluation.metrics.evaluate_embeddings`, separately for every
split × model × embedder:

``results[split][run][embedder] = evaluate_embeddings(generated, true, songs, chunks, ...)``

Everything the report says is derived from those numbers: the comparison tables (:func:`comparison_table`),
the paired model differences (:func:`paired_differences`), the plain-words reading
(:func:`plain_words_reading`) and the figures.

:func:`write_report` writes ``report.md`` (figures and example clips as files beside it) and
``report.html``, a single self-contained file with the figures and audio embedded (base64).
"""

from __future__ import annotations

import base64
import html
import io
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile

from ..audio import SAMPLE_RATE
from ..models.tiny_backbone import describe_provenance
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


#: How the report names the splits.
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


def _runs_of_kind(models: Mapping[str, Mapping[str, Any]], kind: str, subject_cond: bool | None = None) -> list[str]:
    return [run for run, m in models.items() if m.get("kind") == kind
            and (subject_cond is None or bool(m.get("subject_cond")) == subject_cond)]


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def _p(entry: Mapping[str, Any]) -> str:
    p = entry.get("p_value")
    if p is None:
        return ""
    return f"permutation p = {p:.3g}" if p >= 0.001 else "permutation p < 0.001"


def _ident_sentence(label: str, metrics: Mapping[str, Any]) -> str:
    parts = []
    song = metrics.get("song_id_top1")
    if song is not None:
        n = re.search(r"of (\d+)", song["label"])
        parts.append(
            f"names the right song{f' among {n.group(1)}' if n else ''} for {_pct(song['value'])} of the clips "
            f"(95 % CI {_pct(song['ci_low'])}–{_pct(song['ci_high'])}; chance {_pct(song['chance'])}): "
            f"{verdict(song)}" + (f", {_p(song)}" if _p(song) else "")
        )
    segment = metrics.get("segment_id_top1")
    if segment is not None:
        n = re.search(r"of (\d+)", segment["label"])
        parts.append(
            f"the right 3.5 s segment{f' among {n.group(1)}' if n else ''} for {_pct(segment['value'])} "
            f"(CI {_pct(segment['ci_low'])}–{_pct(segment['ci_high'])}; chance {100 * segment['chance']:.1f} %): "
            f"{verdict(segment)}"
        )
    cosine = metrics.get("cosine")
    if cosine is not None:
        p = _p(cosine)
        parts.append(
            f"its clips' cosine similarity to the true clip is {cosine['value']:.3f} "
            f"(CI {cosine['ci_low']:.3f}–{cosine['ci_high']:.3f}"
            + (f"; {cosine['null_mean']:.3f} for shuffled pairings, {p}" if cosine.get("null_mean") is not None else "")
            + ")"
        )
    if not parts:
        return ""
    return f"**{label}** " + "; ".join(parts) + "."


def _compare_sentence(diff: Mapping[str, float] | None, label_a: str, label_b: str, what: str) -> str | None:
    if diff is None:
        return None
    span = f"{diff['mean']:+.3f} (paired 95 % CI {diff['ci_low']:+.3f} to {diff['ci_high']:+.3f}, {diff['n']} clips)"
    if diff["ci_low"] > 0:
        return f"{label_a} beats {label_b} on {what}: {span}."
    if diff["ci_high"] < 0:
        return f"{label_a} falls behind {label_b} on {what}: {span}."
    return f"{label_a} and {label_b} do not differ detectably on {what}: {span}."


def plain_words_reading(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    models: Mapping[str, Mapping[str, Any]],
    embedder: str,
    *,
    embedder_note: str = "",
    ood_song: int | None = None,
    seed: int = 0,
) -> list[str]:
    """What the numbers say, in paragraphs generated from them (Markdown with ``**bold**``).

    Parameters
    ----------
    results : dict
        ``results[split][run][embedder]`` (:func:`evaluate_samples`).
    models : dict
        Run → ``{"label", "kind", "subject_cond"}`` (samples.json's ``models``).
    embedder : str
        The embedder the reading is based on (the others are summarised for agreement).
    embedder_note : str
        What the embedder is (e.g. that it is an offline stand-in for CLAP).
    ood_song : int, optional
        The unseen song's ID (for the wording).
    seed : int
        Seed of the paired bootstraps.
    """
    labels = {run: m.get("label", run) for run, m in models.items()}
    paragraphs: list[str] = []
    test = results.get("test", {})
    ood = results.get("ood", {})
    first = next((test[r][embedder] for r in test if embedder in test[r]), None)
    if first is not None:
        ood_first = next((ood[r][embedder] for r in ood if embedder in ood[r]), None)
        text = (f"**What was measured.** Each generated clip is compared with the 3.5 s of music the listener "
                f"actually heard, in the embedding space of `{embedder}`"
                + (f" ({embedder_note})" if embedder_note else "")
                + f". The in-distribution test set has {first['n_clips']} clips ({first['n_songs']} songs, "
                  f"{first['n_segments']} distinct segments)")
        if ood_first is not None:
            text += (f"; the out-of-distribution set has {ood_first['n_clips']} clips of "
                     + (f"song {ood_song}" if ood_song is not None else "a song")
                     + f" that no model saw in training ({ood_first['n_segments']} segments)")
        text += (". Intervals are 95 % bootstrap intervals over clips; p-values come from shuffling which "
                 "generated clip is paired with which true clip.")
        if first["n_segments"] == first["n_songs"]:
            text += (" The test split holds one segment per song, so segment identification is song "
                     "identification there.")
        paragraphs.append(text)

    for run in test:
        if embedder in test[run]:
            sentence = _ident_sentence(labels.get(run, run), test[run][embedder]["metrics"])
            if sentence:
                paragraphs.append(sentence)

    controlnets = [r for r in _runs_of_kind(models, "controlnet") if r in test]
    uncond = [r for r in _runs_of_kind(models, "unconditional") if r in test]
    convnets = [r for r in _runs_of_kind(models, "convnet") if r in test]
    comparisons = []
    pairs = [(c, u) for c in controlnets for u in uncond]
    subj, plain = _runs_of_kind(models, "controlnet", True), _runs_of_kind(models, "controlnet", False)
    pairs += [(a, b) for a in subj for b in plain if a in test and b in test]
    pairs += [(c, v) for c in controlnets[:1] for v in convnets]
    diffs = paired_differences(results, "test", embedder, pairs, seed=seed)
    for a, u in [(c, u) for c in controlnets for u in uncond]:
        sentence = _compare_sentence(diffs.get((a, u)), labels[a], labels[u], "the cosine to the true clip")
        if sentence:
            comparisons.append(sentence + (" The EEG steers the generation toward what was heard." if
                                           diffs[(a, u)]["ci_low"] > 0 else
                                           " On this measure the EEG has not been shown to help."))
    for a in subj:
        for b in plain:
            sentence = _compare_sentence(diffs.get((a, b)), labels[a], labels[b], "the cosine to the true clip")
            if sentence:
                comparisons.append("Subject conditioning: " + sentence)
    if comparisons:
        paragraphs.append("**Does the EEG help?** " + " ".join(comparisons))

    if convnets and controlnets:
        c, v = controlnets[0], convnets[0]
        fad_c = test[c][embedder]["metrics"]["fad"]
        fad_v = test[v][embedder]["metrics"]["fad"]
        if fad_v["ci_low"] > fad_c["ci_high"]:
            fad_text = (f"its clips lie further from the distribution of real clips than {labels[c]}'s "
                        f"(FAD {fad_v['value']:.3g} vs {fad_c['value']:.3g}, intervals apart) — a regression to the "
                        f"mean sounds blurred")
        elif fad_v["ci_high"] < fad_c["ci_low"]:
            fad_text = (f"its clips lie closer to the distribution of real clips than {labels[c]}'s "
                        f"(FAD {fad_v['value']:.3g} vs {fad_c['value']:.3g}, intervals apart)")
        else:
            fad_text = (f"its FAD ({fad_v['value']:.3g}) is not distinguishable from {labels[c]}'s "
                        f"({fad_c['value']:.3g})")
        sentence = _compare_sentence(diffs.get((c, v)), labels[c], labels[v], "the cosine to the true clip")
        paragraphs.append(f"**The ConvNet baseline** (EEG → latent by regression, no diffusion): {fad_text}."
                          + (f" {sentence}" if sentence else ""))

    if ood:
        sentences = []
        for run in ood:
            if embedder not in ood[run]:
                continue
            metrics = ood[run][embedder]["metrics"]
            segment, cosine = metrics.get("segment_id_top1"), metrics.get("cosine")
            if segment is not None:
                sentences.append(
                    f"{labels.get(run, run)} finds the right segment for {_pct(segment['value'])} of the clips "
                    f"(CI {_pct(segment['ci_low'])}–{_pct(segment['ci_high'])}, chance {100 * segment['chance']:.1f} %: "
                    f"{verdict(segment)})"
                    + (f", cosine {cosine['value']:.3f} ({_p(cosine)})" if cosine and _p(cosine) else "")
                )
        if sentences:
            generalises = [r for r in ood if embedder in ood[r] and r not in uncond
                           and verdict(ood[r][embedder]["metrics"].get("segment_id_top1")) == "above chance"]
            tail = (f" So {', '.join(labels.get(r, r) for r in generalises)} carr"
                    f"{'ies' if len(generalises) == 1 else 'y'} timing information to music never seen in training."
                    if generalises else
                    " No EEG model identifies segments of the unseen song above chance: what they learned does not "
                    "transfer to new music here, as the paper found (OOD results mostly not significant).")
            paragraphs.append("**The unseen song.** Song identification does not apply (one song). "
                              + "; ".join(sentences) + "." + tail)

    agreement = _embedder_agreement(results, embedder, labels)
    if agreement:
        paragraphs.append(agreement)

    paragraphs.append(
        "**Caveats.** The bootstrap resamples clips as if independent, but windows of the same song segment heard "
        "by different listeners share their audio, so the intervals are if anything too narrow; the permutation "
        "test does not have this problem. FAD is biased upwards with few clips: compare it only between models "
        "evaluated on the same clips, as here; its bootstrap interval sits higher still (a resample repeats clips, "
        "which inflates the distance), so it may not contain the estimate itself."
    )
    return paragraphs


def _embedder_agreement(results: Mapping[str, Any], primary: str, labels: Mapping[str, str] | None = None) -> str | None:
    test = results.get("test", {})
    others = sorted({e for run in test.values() for e in run} - {primary})
    if not others:
        return None
    same, differ = [], []
    for other in others:
        disagreements = [run for run in test if primary in test[run] and other in test[run]
                         and verdict(test[run][primary]["metrics"].get("song_id_top1"))
                         != verdict(test[run][other]["metrics"].get("song_id_top1"))]
        (differ if disagreements else same).append((other, disagreements))
    parts = []
    if same:
        parts.append(f"`{'`, `'.join(o for o, _ in same)}` give{'s' if len(same) == 1 else ''} the same verdicts on "
                     f"song identification for every model")
    for other, runs in differ:
        parts.append(f"`{other}` changes the verdict for {', '.join((labels or {}).get(run, run) for run in runs)}")
    return "**Other embedders.** " + "; ".join(parts) + " (full tables below)."


def wav_bytes(path: str | Path) -> bytes:
    """A clip as 16-bit PCM WAV bytes (clipped to ±1), small enough to embed in a report."""


    wave = np.clip(read_wav(path, SAMPLE_RATE, None), -1.0, 1.0)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def _inline_html(text: str) -> str:
    """Escape, then render the two inline Markdown forms the report uses: **bold** and `code`."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


@dataclass
class Report:
    """An ordered list of blocks rendered both to Markdown and to one self-contained HTML file."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> "Report":
        self.blocks.append(("heading", (int(level), text)))
        return self

    def paragraph(self, text: str) -> "Report":
        self.blocks.append(("paragraph", text))
        return self

    def bullets(self, items: Sequence[str]) -> "Report":
        self.blocks.append(("bullets", list(items)))
        return self

    def table(self, frame, caption: str = "") -> "Report":
        self.blocks.append(("table", (frame, caption)))
        return self

    def figure(self, path: str | Path, caption: str = "") -> "Report":
        self.blocks.append(("figure", (Path(path), caption)))
        return self

    def audio(self, caption: str, clips: Sequence[tuple[str, str | Path]]) -> "Report":
        """A row of players: ``clips`` are (label, WAV path)."""
        self.blocks.append(("audio", (caption, [(label, Path(p)) for label, p in clips])))
        return self

    # -- Markdown: figures and audio as files in the report's folder --------------------------------

    def to_markdown(self, folder: Path, asset_dir: str = "report_assets") -> str:
        lines = [f"# {self.title}", ""]
        assets = folder / asset_dir
        for kind, content in self.blocks:
            if kind == "heading":
                level, text = content
                lines += [f"{'#' * level} {text}", ""]
            elif kind == "paragraph":
                lines += [content, ""]
            elif kind == "bullets":
                lines += [f"- {item}" for item in content] + [""]
            elif kind == "table":
                frame, caption = content
                if caption:
                    lines += [f"*{caption}*", ""]
                index_name = frame.index.name or ""
                header = [index_name] + [str(c) for c in frame.columns]
                lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                lines.append("|" + "|".join(["---"] * len(header)) + "|")
                for idx, row in frame.iterrows():
                    lines.append("| " + " | ".join(_md_cell(v) for v in [idx, *row.tolist()]) + " |")
                lines.append("")
            elif kind == "figure":
                path, caption = content
                target = _copy_asset(path, folder, assets)
                lines += [f"![{caption}]({target})", ""] + ([f"*{caption}*", ""] if caption else [])
            elif kind == "audio":
                caption, clips = content
                links = []
                for label, path in clips:
                    target = _copy_asset(path, folder, assets, convert_wav=True)
                    links.append(f"[{label}]({target})")
                lines += [f"{caption}: " + " · ".join(links), ""]
        return "\n".join(lines).rstrip() + "\n"

    # -- HTML: one file, figures and audio embedded ---------------------------------------------------

    def to_html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, content in self.blocks:
            if kind == "heading":
                level, text = content
                body.append(f"<h{level}>{_inline_html(text)}</h{level}>")
            elif kind == "paragraph":
                body.append(f"<p>{_inline_html(content)}</p>")
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in content) + "</ul>")
            elif kind == "table":
                frame, caption = content
                table = frame.to_html(escape=True, border=0, classes="metrics")
                body.append((f"<p class='caption'>{_inline_html(caption)}</p>" if caption else "") + table)
            elif kind == "figure":
                path, caption = content
                data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                body.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'/>"
                            f"<figcaption>{_inline_html(caption)}</figcaption></figure>")
            elif kind == "audio":
                caption, clips = content
                cells = []
                for label, path in clips:
                    data = base64.b64encode(wav_bytes(path)).decode("ascii")
                    cells.append(f"<div class='player'><div>{html.escape(label)}</div>"
                                 f"<audio controls preload='none' src='data:audio/wav;base64,{data}'></audio></div>")
                body.append(f"<div class='audio-row'><p>{_inline_html(caption)}</p>{''.join(cells)}</div>")
        style = (
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
            "table.metrics{border-collapse:collapse;font-size:0.9em;margin:0.5em 0 1.5em}"
            "table.metrics td,table.metrics th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right}"
            "table.metrics th:first-child,table.metrics td:first-child{text-align:left}"
            "figure{margin:1em 0}figure img{max-width:100%}figcaption,.caption{color:#555;font-size:0.9em}"
            ".audio-row{display:flex;flex-wrap:wrap;gap:0.8em;align-items:flex-end;margin:0.5em 0 1em}"
            ".audio-row p{flex-basis:100%;margin:0}.player audio{width:210px}code{background:#f3f3f3;padding:0 3px}"
        )
        return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                f"<title>{html.escape(self.title)}</title><style>{style}</style></head><body>\n"
                + "\n".join(body) + "\n</body></html>\n")


def _copy_asset(path: Path, folder: Path, assets: Path, convert_wav: bool = False) -> str:
    """Copy a figure or clip next to the Markdown report (unless already inside its folder); return the link."""
    path = Path(path).resolve()
    folder = folder.resolve()
    if not convert_wav and folder in path.parents:
        return path.relative_to(folder).as_posix()
    assets.mkdir(parents=True, exist_ok=True)
    if convert_wav:
        # Clips live in notebook 05's folder; the report keeps 16-bit copies so its folder stands alone.
        name = f"{path.parent.name}_{path.name}"
        (assets / name).write_bytes(wav_bytes(path))
    else:
        name = path.name
        shutil.copyfile(path, assets / name)
    return f"{assets.name}/{name}"


def write_report(report: Report, out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
    """Write ``<stem>.md`` (assets in ``report_assets/``) and the self-contained ``<stem>.html``, atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = report.to_markdown(out_dir)
    html_text = report.to_html()
    md_path = atomic_write_text(out_dir / f"{stem}.md", markdown)
    html_path = atomic_write_text(out_dir / f"{stem}.html", html_text)
    return {"markdown": md_path, "html": html_path}


def format_seconds(seconds: float) -> str:
    """``0.42 s`` / ``2.1 min`` for the report's timing lines."""
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.2f} s"


#: What each embedder is, in the report's words (the offline ones say plainly that they are stand-ins).
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


def build_report(
    *,
    record: Mapping[str, Any],
    results,
    embedders: Sequence[Any],
    reading: Sequence[str],
    figures: Mapping[str, str | Path],
    examples: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> Report:
    """The report document: summary, reading, tables, permutation tests, figures, example clips, settings.

    Parameters
    ----------
    record : dict
        The sampling record (models, splits, scheduler…).
    results : dict
        ``results[split][run][embedder]``.
    embedders : sequence
        The embedders used (their names and notes are stated).
    reading : sequence of str
        :func:`plain_words_reading`'s paragraphs.
    figures : dict
        Caption → PNG path.
    examples : sequence of dict
        :func:`eeg2music.sampling.clips.choose_examples`' clips to embed as players.
    settings : dict
        Anything to list under "Settings" (n_boot, n_perm, seed, folders…).
    """
    labels = {run: m.get("label", run) for run, m in record["models"].items()}
    names = [e.name for e in embedders]
    offline = [n for n in names if n in OFFLINE_EMBEDDERS]
    real = [n for n in names if n not in OFFLINE_EMBEDDERS]
    report = Report("eeg2music — what the EEG decoders reconstruct")
    splits = record.get("splits", {})
    summary = (f"Reconstructions of 3.5 s music clips from EEG by {len(labels)} models "
               f"({', '.join(labels.values())}), sampled with {record.get('scheduler')} "
               f"({record.get('num_inference_steps')} steps) on "
               + ", ".join(f"{v.get('clips')} {SPLIT_LABELS.get(k, k)} clips" for k, v in splits.items())
               + f", compared with the true clips in the embedding space of {', '.join(f'`{n}`' for n in names)}.")
    report.paragraph(summary)
    if record.get("backbone_provenance"):
        report.paragraph(f"**Backbone.** {describe_provenance(record['backbone_provenance'])}.")
    settings_of = {labels[run]: m["setting"] for run, m in record["models"].items() if m.get("setting")}
    if settings_of:
        report.paragraph("**How each model was trained and sampled.**")
        report.bullets([f"{label}: {setting}" for label, setting in settings_of.items()])
    if offline and not real:
        report.paragraph(
            f"**Embeddings.** No CLAP or EnCodec weights were given, so the metrics use the offline embedding set "
            f"({', '.join(f'`{n}`' for n in offline)}): stand-ins (and one time-resolved check) documented below, not the "
            f"paper's CLAP/EnCodec. "
            f"Numbers are comparable between the models of this report, not with the paper's."
        )
    report.bullets([f"`{e.name}`: {embedder_note(e)}" for e in embedders])

    report.heading("What the numbers say")
    for paragraph in reading:
        report.paragraph(paragraph)

    report.heading("Comparison tables")
    report.paragraph("Each cell: value [95 % bootstrap CI]. ↑ higher is better, ↓ lower is better; identification "
                     "columns give their chance level; identification ranks after centring the generated and the true "
                     "clips each on their own mean (the generator's shared offset would otherwise make one true clip "
                     "the nearest to nearly all reconstructions). Song-ID does not apply to the single unseen song.")
    for split in results:
        for name in names:
            table = comparison_table(results, split, name, labels)
            if len(table):
                report.table(table, f"{SPLIT_LABELS.get(split, split)} · `{name}`")

    report.heading("Permutation tests")
    n_perm = next((res[names[0]]["n_perm"] for per_run in results.values() for res in per_run.values()
                   if names[0] in res), 0)
    report.paragraph(f"Each paired metric recomputed with the generated↔true pairing shuffled {n_perm} times: the "
                     f"observed value, the mean over shuffles, and the one-sided p-value (`{names[0]}`).")
    for split in results:
        table = permutation_table(results, split, names[0], labels)
        if len(table):
            report.table(table, f"{SPLIT_LABELS.get(split, split)} · `{names[0]}`")

    if figures:
        report.heading("Figures")
        for caption, path in figures.items():
            if Path(path).is_file():
                report.figure(path, caption)

    if examples:
        report.heading("Listen")
        report.paragraph("The true clip, then each model's reconstruction from the EEG of the same window "
                         "(16-bit copies, clipped to ±1).")
        for example in examples:
            where = "unseen song" if example["split"] == "ood" else "test"
            caption = f"{where}: song {example['song']}, chunk {example['chunk']}, participant {example['subject']:02d}"
            clips = [("true", example["true_path"])] + [(labels.get(r, r), p) for r, p in example["generated"].items()]
            report.audio(caption, clips)

    report.heading("Settings")
    timing = [f"{labels.get(run, run)}: {format_seconds(m.get('seconds_per_clip', float('nan')))} per clip"
              for run, m in record["models"].items()]
    report.bullets([f"{key}: {value}" for key, value in settings.items()] + ["sampling time — " + "; ".join(timing)])
    return report


def write_evaluation(
    out_dir: str | Path,
    *,
    record: Mapping[str, Any],
    results,
    embedders: Sequence[Any],
    reading: Sequence[str],
    figures: Mapping[str, str | Path],
    examples: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.csv``, ``report.md`` (+ assets) and ``report.html`` into ``out_dir``.

    Returns
    -------
    dict
        ``metrics_json``, ``metrics_csv``, ``markdown``, ``html`` paths.
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
    report = build_report(record=record, results=results, embedders=embedders, reading=reading,
                          figures=figures, examples=examples, settings=settings)
    paths.update(write_report(report, out_dir))
    return paths
