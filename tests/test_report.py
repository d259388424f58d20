"""The evaluation: tables, verdicts, the plain-words reading, the metrics files and the HTML export.

Results are small and synthetic: embeddings built so that one "model" is identifiable (its embedding is
the true clip's plus a little noise) and another is not (random), evaluated with the real
:func:`eeg2music.evaluation.metrics.evaluate_embeddings`; plus a hand-written metrics dict for the edge cases.
The report is an executed notebook exported by :func:`export_html`: a tiny one with a figure and audio
players stands in for notebooks 05 and 06.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from eeg2music.demo import inline_figures
from eeg2music.evaluation.metrics import evaluate_embeddings
from eeg2music.evaluation.report import (
    ablation_table,
    comparison_table,
    embed_samples,
    encoder_only_table,
    evaluate_samples,
    export_html,
    paired_differences,
    paired_identification_table,
    permutation_table,
    plain_words_reading,
    subject_layer_table,
    verdict,
    write_metrics,
)
from eeg2music.sampling.clips import SAMPLES_NAME, load_samples, write_wav
from eeg2music.utils import write_json

MODELS = {
    "controlnet_subject": {"label": "ControlNet+subject", "kind": "controlnet", "subject_cond": True, "seconds_per_clip": 0.8},
    "controlnet": {"label": "ControlNet", "kind": "controlnet", "subject_cond": False, "seconds_per_clip": 0.7},
    "convnet": {"label": "ConvNet", "kind": "convnet", "subject_cond": False, "seconds_per_clip": 0.1},
    "unconditional": {"label": "unconditional", "kind": "unconditional", "subject_cond": False, "seconds_per_clip": 0.5},
}
NOISE = {"controlnet_subject": 0.3, "controlnet": 0.5, "convnet": 1.0, "unconditional": None}


def _labels(n_songs: int, n_chunks: int, n_subjects: int):
    songs, chunks, subjects = np.meshgrid(np.arange(22, 22 + n_songs), np.arange(n_chunks), np.arange(n_subjects),
                                          indexing="ij")
    return songs.ravel(), chunks.ravel(), subjects.ravel()


def _synthetic_results(n_perm: int = 199, n_boot: int = 199):
    """results[split][run][embedder]: song-structured true embeddings; models from identifiable to random."""
    rng = np.random.default_rng(0)
    out = {}
    for split, n_songs in (("test", 5), ("ood", 1)):
        songs, chunks, subjects = _labels(n_songs, 4, 3)
        song_centre = {s: rng.standard_normal(16) * 2 for s in np.unique(songs)}
        segment = {(s, c): song_centre[s] + rng.standard_normal(16) for s, c in set(zip(songs, chunks))}
        true = np.stack([segment[(s, c)] for s, c in zip(songs, chunks)])
        out[split] = {}
        for run, noise in NOISE.items():
            generated = rng.standard_normal(true.shape) * 2 if noise is None else true + noise * rng.standard_normal(true.shape)
            result = evaluate_embeddings(generated, true, songs, chunks, n_boot=n_boot, n_perm=n_perm, seed=0)
            result["per_clip"]["subject"] = subjects.tolist()
            out[split][run] = {"emb-a": result}
    return out


@pytest.fixture(scope="module")
def results():
    return _synthetic_results()


def test_verdicts_from_ci_and_chance():
    assert verdict({"value": 0.5, "ci_low": 0.3, "ci_high": 0.7, "chance": 0.1, "better": "higher"}) == "above chance"
    assert verdict({"value": 0.1, "ci_low": 0.02, "ci_high": 0.2, "chance": 0.1, "better": "higher"}) == "at chance"
    assert verdict({"value": 0.0, "ci_low": 0.0, "ci_high": 0.05, "chance": 0.1, "better": "higher"}) == "below chance"
    assert verdict({"value": 1.2, "ci_low": 1.1, "ci_high": 1.4, "chance": 3.0, "better": "lower"}) == "better than chance"
    assert verdict({"value": 0.2, "ci_low": 0.1, "ci_high": 0.3, "chance": None}) == "not applicable"
    assert verdict(None) == "not applicable"


def test_comparison_table_layout(results):
    labels = {run: m["label"] for run, m in MODELS.items()}
    table = comparison_table(results, "test", "emb-a", labels)
    assert list(table.index) == ["ControlNet+subject", "ControlNet", "ConvNet", "unconditional"]
    assert [c.split(" ")[0] for c in table.columns] == ["FAD", "cosine", "Pearson", "MSE", "song-ID", "segment-ID"]
    assert "chance 20 %" in [c for c in table.columns if c.startswith("song-ID")][0]
    cell = table.loc["ControlNet+subject"].iloc[4]
    value = results["test"]["controlnet_subject"]["emb-a"]["metrics"]["song_id_top1"]
    assert cell == f"{100 * value['value']:.0f} % [{100 * value['ci_low']:.0f} %, {100 * value['ci_high']:.0f} %]"
    ood = comparison_table(results, "ood", "emb-a", labels)
    assert (ood[[c for c in ood.columns if c.startswith("song-ID")][0]] == "–").all(), "one song: no song-ID"


def test_paired_differences_match_per_clip_values(results):
    diffs = paired_differences(results, "test", "emb-a", [("controlnet_subject", "unconditional")], n_boot=500)
    d = diffs[("controlnet_subject", "unconditional")]
    a = np.asarray(results["test"]["controlnet_subject"]["emb-a"]["per_clip"]["cosine"])
    b = np.asarray(results["test"]["unconditional"]["emb-a"]["per_clip"]["cosine"])
    assert d["mean"] == pytest.approx(float((a - b).mean()))
    assert d["ci_low"] < d["mean"] < d["ci_high"] and d["n"] == len(a)


def test_reading_is_generated_from_the_numbers(results):
    reading = plain_words_reading(results, MODELS, "emb-a")
    text = "\n".join(reading)
    song = results["test"]["controlnet_subject"]["emb-a"]["metrics"]["song_id_top1"]
    assert f"for {100 * song['value']:.0f} % of the clips" in text
    assert f"chance {100 * song['chance']:.0f} %" in text and f"permutation p = {song['p_value']:.3g}" in text
    assert re.search(r"\*\*ControlNet\+subject\*\* names the right song among 5 .*: above chance", text)
    assert re.search(r"\*\*unconditional\*\* names the right song among 5 .*: at chance", text)
    assert "ControlNet+subject beats unconditional" in text
    diff = paired_differences(results, "test", "emb-a", [("controlnet_subject", "convnet")])[("controlnet_subject", "convnet")]
    assert f"ControlNet+subject beats ConvNet on the cosine to the true clip: {diff['mean']:+.3f}" in text
    fad = results["test"]["convnet"]["emb-a"]["metrics"]["fad"]["value"]
    assert f"ConvNet {fad:.3g}" in text, "the ControlNet's FAD against the ConvNet's"
    ood = next(p for p in reading if p.startswith("**Out-of-distribution"))
    assert "12 clips of song 22" in ood, "the unseen song is read from the per-clip values"
    assert sum(p.startswith("**ControlNet+subject** names the right 3.5 s segment") for p in reading) == 1, "OOD: no song-ID"
    assert not re.search(r"target|accept|should|must", text, re.IGNORECASE), "the reading reads numbers, it sets no bar"


def test_permutation_table(results):
    table = permutation_table(results, "test", "emb-a", {run: m["label"] for run, m in MODELS.items()})
    p = results["test"]["controlnet_subject"]["emb-a"]["metrics"]["cosine"]["p_value"]
    assert table.loc["ControlNet+subject", "cosine"].endswith(f"p = {p:.3g}")


def _fake_sample_folder(folder: Path) -> dict:
    """A samples.json with two models and short WAVs: what notebook 05 writes, in miniature."""
    t = np.arange(1600) / 16000
    rows = []
    for song in (22, 23, 24):
        for chunk in (0, 1):
            true = f"wav/true/song{song}_chunk{chunk:03d}.wav"
            write_wav(folder / true, 0.4 * np.sin(2 * np.pi * (500 * (song - 21) + 250 * chunk + 125) * t))
            for run, noise in (("controlnet_subject", 0.05), ("unconditional", 0.4)):
                generated = f"wav/{run}/sub02_song{song}_chunk{chunk:03d}.wav"
                rng = np.random.default_rng([song, chunk, len(run)])
                wave = 0.4 * np.sin(2 * np.pi * (500 * (song - 21) + 250 * chunk + 125) * t) if noise < 0.1 else 0
                write_wav(folder / generated, wave + noise * rng.standard_normal(len(t)))
                rows.append({"model": run, "subject": 2, "subject_index": 0, "song": song, "chunk": chunk,
                             "split": "test", "true_wav": true, "generated_wav": generated, "scheduler": "dpmsolver++",
                             "steps": 20, "seconds_per_clip": 0.5, "seed": 1})
    record = {"format_version": 1, "sample_rate": 16000, "clip_samples": 1600, "scheduler": "dpmsolver++",
              "num_inference_steps": 20, "seed": 0,
              "models": {run: dict(MODELS[run]) for run in ("controlnet_subject", "unconditional")},
              "splits": {"test": {"clips": 6}}, "clips": rows}
    write_json(folder / SAMPLES_NAME, record)
    return record


class SpectrumEmbedder:
    """A transparent embedder for the test: the magnitude spectrum in 32 bands."""

    name = "spectrum"
    sample_rate = 16000
    standardize = False
    dim = 32

    def embed(self, waves, sample_rate=16000):
        spectrum = np.abs(np.fft.rfft(np.asarray(waves, np.float64), axis=1))
        return np.stack([band.sum(axis=1) for band in np.array_split(spectrum, 32, axis=1)], axis=1) + 1e-6


def test_embed_and_evaluate_a_sample_folder(tmp_path):
    _fake_sample_folder(tmp_path)
    record = load_samples(tmp_path)
    embeddings = embed_samples(record, [SpectrumEmbedder()], progress=False)
    assert len(embeddings["spectrum"]) == 6 + 12, "each true clip embedded once"
    results = evaluate_samples(record, embeddings, n_boot=50, n_perm=50, progress=False)
    assert list(results) == ["test"] and list(results["test"]) == ["controlnet_subject", "unconditional"]
    good = results["test"]["controlnet_subject"]["spectrum"]["metrics"]
    bad = results["test"]["unconditional"]["spectrum"]["metrics"]
    assert good["segment_id_top1"]["value"] == 1.0 and good["cosine"]["value"] > bad["cosine"]["value"]
    assert results["test"]["controlnet_subject"]["spectrum"]["per_clip"]["subject"] == [2] * 6


def test_write_metrics_files(results, tmp_path):
    record = _fake_sample_folder(tmp_path / "samples")
    record = load_samples(tmp_path / "samples")
    record["models"] = MODELS
    out = tmp_path / "evaluate"
    embedders = [SimpleNamespace(name="emb-a", dim=16, standardize=False)]
    reading = plain_words_reading(results, MODELS, "emb-a")
    settings = {"n_boot": 199, "n_perm": 199, "seed": 0}
    paths = write_metrics(out, record=record, results=results, embedders=embedders, reading=reading, settings=settings)
    assert set(paths) == {"metrics_json", "metrics_csv"} and sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]
    stored = json.loads(paths["metrics_json"].read_text())
    assert list(stored) == ["settings", "embedders", "primary_embedder", "models", "splits", "sampling",
                            "paired_cosine_differences", "reading", "results"]
    assert stored["settings"] == settings and stored["reading"] == reading
    assert stored["primary_embedder"] == "emb-a"
    assert stored["embedders"] == [{"name": "emb-a", "note": "namespace(name='emb-a', dim=16, standardize=False)",
                                    "offline": False, "dim": 16, "standardize": False}]
    assert stored["results"]["test"]["controlnet"]["emb-a"]["metrics"]["fad"]["value"] >= 0
    expected = paired_differences(results, "test", "emb-a", [("controlnet_subject", "unconditional")], seed=0)
    assert "controlnet_subject - unconditional" in stored["paired_cosine_differences"]["test"]
    assert len(stored["paired_cosine_differences"]["test"]) == 12, "every ordered pair of the four models"
    assert stored["paired_cosine_differences"]["test"]["controlnet_subject - unconditional"]["n"] == \
        expected[("controlnet_subject", "unconditional")]["n"]
    frame = pd.read_csv(paths["metrics_csv"])
    assert list(frame.columns) == ["split", "model", "model_label", "embedder", "metric", "label", "value", "ci_low",
                                   "ci_high", "p_value", "null_mean", "chance", "better", "n_clips"]
    assert len(frame) == sum(len(r["emb-a"]["metrics"]) for per_run in results.values() for r in per_run.values())
    cosine = frame[(frame.split == "test") & (frame.model == "controlnet_subject") & (frame.metric == "cosine")]
    assert cosine.model_label.item() == "ControlNet+subject"
    assert cosine.value.item() == pytest.approx(results["test"]["controlnet_subject"]["emb-a"]["metrics"]["cosine"]["value"])


def _with_estimate(results):
    """The results plus a "mean" row of ControlNet+subject (the ConvNet's per-clip numbers stand in for it)."""
    extended = {split: dict(per_run) for split, per_run in results.items()}
    for split in extended:
        extended[split]["controlnet_subject_estimate"] = results[split]["convnet"]
    models = {**MODELS, "controlnet_subject_estimate": {"label": "ControlNet+subject, mean", "kind": "estimate",
                                                        "subject_cond": True, "estimate_of": "controlnet_subject"}}
    return extended, models


def test_encoder_only_and_subject_layer_tables(results):
    labels = {run: m["label"] for run, m in MODELS.items()}
    song = results["test"]["controlnet_subject"]["emb-a"]["metrics"]["song_id_top1"]["value"]
    segment = results["test"]["controlnet_subject"]["emb-a"]["metrics"]["segment_id_top1"]["value"]
    encoder = {"controlnet_subject": {"song_top1": 0.8, "segment_top1": 0.5}}
    table = encoder_only_table(encoder, results, labels, ["emb-a"])
    assert list(table.index) == [("ControlNet+subject", "emb-a")]
    row = table.loc[("ControlNet+subject", "emb-a")]
    assert row["song-ID: generated"] == pytest.approx(round(song, 3))
    assert row["song-ID: kept"] == pytest.approx(round(song / 0.8, 3))
    assert row["segment-ID: encoder"] == 0.5 and row["segment-ID: kept"] == pytest.approx(round(segment / 0.5, 3))
    assert encoder_only_table({}, results, labels, ["emb-a"]) is None
    # a model's mean is set against the same encoder
    extended, models = _with_estimate(results)
    labels = {run: m["label"] for run, m in models.items()}
    table = encoder_only_table(encoder, extended, labels, ["emb-a"], models=models)
    assert list(table.index.get_level_values(0)) == ["ControlNet+subject", "ControlNet+subject, mean"]
    convnet_song = results["test"]["convnet"]["emb-a"]["metrics"]["song_id_top1"]["value"]
    assert table.loc[("ControlNet+subject, mean", "emb-a"), "song-ID: kept"] == pytest.approx(round(convnet_song / 0.8, 3))
    subject = subject_layer_table(results, MODELS, ["emb-a"], seed=0)
    cosine = paired_differences(results, "test", "emb-a", [("controlnet_subject", "controlnet")], seed=0)
    assert list(subject.index) == ["emb-a · cosine", "emb-a · song_rank"]
    assert subject.loc["emb-a · cosine", "mean"] == pytest.approx(round(cosine[("controlnet_subject", "controlnet")]["mean"], 4))
    assert subject_layer_table(results, {"convnet": MODELS["convnet"]}, ["emb-a"]) is None


def test_paired_identification_table_compares_clip_by_clip(results):
    extended, models = _with_estimate(results)
    table = paired_identification_table(extended, models, ["emb-a"], seed=0)
    assert list(table.index) == ["ControlNet+subject − ConvNet", "ControlNet+subject − unconditional",
                                 "ControlNet+subject, mean − ControlNet+subject", "ControlNet+subject, mean − ConvNet"]
    hits = {run: np.asarray(extended["test"][run]["emb-a"]["per_clip"]["segment_top1"])
            for run in ("controlnet_subject", "convnet", "unconditional")}
    assert all(((h >= 0) & (h <= 1)).all() for h in hits.values()), "a hit, or its share among tied candidates"
    expected = paired_differences(extended, "test", "emb-a", [("controlnet_subject", "unconditional")],
                                  metric="segment_top1", seed=0)[("controlnet_subject", "unconditional")]
    assert expected["mean"] == pytest.approx((hits["controlnet_subject"] - hits["unconditional"]).mean())
    assert table.loc["ControlNet+subject − unconditional", "emb-a"].startswith(f"{100 * expected['mean']:+.0f} pts [")
    assert table.loc["ControlNet+subject, mean − ConvNet", "emb-a"] == "+0 pts [+0, +0]", "identical clips"
    # the mean's own sentence in the reading: against its samples
    # the reading sets the mean against its own samples (here a noisier stand-in: it falls behind)
    reading = " ".join(plain_words_reading(extended, models, "emb-a"))
    assert "ControlNet+subject, mean falls behind ControlNet+subject on the cosine" in reading
    assert paired_identification_table(results, {"convnet": MODELS["convnet"]}, ["emb-a"]) is None


def test_ablation_table_reads_the_benchmarks_rows():
    ablation = {"rows": [
        {"model": "paper", "guidance": 1.0, "strength": 1.0, "setting": "200 steps, P from scratch (paper)",
         "emb-a segment_id_top1": 0.25, "emb-a segment_id_top1 CI": [0.2, 0.3], "emb-a song_id_top1": 0.4,
         "emb-a OOD segment_id_top1": 0.125, "emb-b segment_id_top1": 0.1, "emb-b segment_id_top1 CI": [0.05, 0.15]},
        {"model": "convnet", "guidance": 1.0, "strength": 1.0, "setting": "regression, 400 steps",
         "emb-a segment_id_top1": 0.6, "emb-a segment_id_top1 CI": [0.5, 0.7], "encoder-only segment_top1": 0.9},
    ]}
    table = ablation_table(ablation, ["emb-a"])
    assert list(table.index) == ["paper · 200 steps, P from scratch (paper)", "convnet · regression, 400 steps"]
    assert table.loc["paper · 200 steps, P from scratch (paper)", "segment-ID (emb-a)"] == "25 % [20, 30]"
    assert table.loc["paper · 200 steps, P from scratch (paper)", "unseen song (emb-a)"] == "12 %"
    assert table.loc["convnet · regression, 400 steps", "encoder alone, segment-ID"] == "90 %"
    assert "segment-ID (emb-b)" not in table and "segment-ID (emb-b)" in ablation_table(ablation)
    assert ablation_table({"rows": []}) is None


def test_export_html_embeds_figures_and_players(tmp_path):
    """An executed notebook with a figure and audio players becomes one HTML file holding both."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# A tiny report"),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()"),
        nbformat.v4.new_code_cell(
            "import numpy as np\nfrom IPython.display import display\nfrom eeg2music.audio import player\n"
            "wave = np.sin(2 * np.pi * 440 * np.arange(1600) / 16000)\n"
            "display(player(wave))\ndisplay(player(0.5 * wave))"),
    ])
    with inline_figures():
        NotebookClient(notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    executed = tmp_path / "tiny.ipynb"
    nbformat.write(notebook, executed)
    page = export_html(executed)
    assert page == tmp_path / "tiny.html" and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.html", "tiny.ipynb"]
    html = page.read_text()
    assert "A tiny report" in html
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 1, "the figure, inline"
    assert html.count("<audio") == 2 and html.count('src="data:audio/wav;base64,') == 2, "both players"
    assert not re.search(r"<(?:img|source|audio)[^>]* src=\"(?!data:)", html), "figures and audio are embedded"
    other = export_html(executed, tmp_path / "elsewhere" / "report.html")
    assert other.read_text() == html
