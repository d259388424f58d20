"""Metrics against hand-computed values, closed forms and SciPy; resampling against plain loops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg

from eeg2music.evaluation.metrics import (
    bootstrap_frechet_distance,
    bootstrap_indices,
    clap_score,
    cosine_pairs,
    evaluate_embeddings,
    frechet_distance,
    frechet_distance_gaussians,
    gaussian_fit,
    identification,
    mse_pairs,
    mse_score,
    pearson_pairs,
    pearson_score,
    percentile_ci,
    permutation_p_value,
    results_table,
)
from eeg2music.utils import to_json


def scipy_frechet(x, y):
    """The textbook FAD computation (pytorch-fid style), as an independent reference."""
    mean_x, cov_x = x.mean(0), np.cov(x, rowvar=False)
    mean_y, cov_y = y.mean(0), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(cov_x @ cov_y).real
    return np.sum((mean_x - mean_y) ** 2) + np.trace(cov_x) + np.trace(cov_y) - 2 * np.trace(root)


# --- Fréchet distance ------------------------------------------------------------------------------
def test_frechet_gaussians_closed_form_by_hand():
    # 1-D: (μ1 − μ2)² + (σ1 − σ2)² = 9 + 1
    assert frechet_distance_gaussians([0.0], [[1.0]], [3.0], [[4.0]]) == pytest.approx(10.0)
    # commuting (diagonal) covariances: ‖Δμ‖² + Σ (√a − √b)² = (1 + 4) + (1 − 3)² + (2 − 1)² = 10
    value = frechet_distance_gaussians([0, 0], np.diag([1.0, 4.0]), [1, 2], np.diag([9.0, 1.0]))
    assert value == pytest.approx(10.0)
    # identical Gaussians are at distance 0, even with a singular covariance
    singular = np.array([[1.0, 1.0], [1.0, 1.0]])
    assert frechet_distance_gaussians([1, 2], singular, [1, 2], singular) == pytest.approx(0.0, abs=1e-12)


def test_frechet_gaussians_non_commuting_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 6, 6))
    cov_a, cov_b = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mean_a, mean_b = rng.normal(size=(2, 6))
    expected = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b).real))
    assert frechet_distance_gaussians(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_samples_converges_to_closed_form():
    rng = np.random.default_rng(2)
    cov_a = np.array([[1.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 0.5]])
    cov_b = np.diag([2.0, 1.0, 1.5])
    mean_a, mean_b = np.zeros(3), np.array([1.0, -1.0, 0.5])
    x = rng.multivariate_normal(mean_a, cov_a, size=40_000)
    y = rng.multivariate_normal(mean_b, cov_b, size=40_000)
    expected = frechet_distance_gaussians(mean_a, cov_a, mean_b, cov_b)
    assert frechet_distance(x, y) == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize("n, dim", [(200, 8), (40, 40), (30, 64), (12, 100)])
def test_frechet_distance_matches_scipy_and_gaussian_fit(n, dim):
    """Both internal routes (covariance for n > dim, nuclear norm for n ≤ dim) agree with the textbook one."""
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(n, dim))
    y = 1.5 * rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) / np.sqrt(dim) + 0.2
    value = frechet_distance(x, y)
    assert value == pytest.approx(frechet_distance_gaussians(*gaussian_fit(x), *gaussian_fit(y)), rel=1e-7)
    if n > dim:  # sqrtm of a singular product is what the textbook route gets wrong; compare where it is sound
        assert value == pytest.approx(scipy_frechet(x, y), rel=1e-8)


def test_frechet_distance_properties_and_ridge():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2, 20, 50))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)  # singular covariances (n < dim)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-10)
    assert frechet_distance(x + 3, y + 3) == pytest.approx(frechet_distance(x, y), rel=1e-10)
    # the regularised estimate uses the shrunk covariances, and tends to the plain one as ridge → 0
    ridge = 0.1
    mean_x, cov_x = gaussian_fit(x)
    mean_y, cov_y = gaussian_fit(y)
    shrunk_x = cov_x + ridge * np.trace(cov_x) / 50 * np.eye(50)
    shrunk_y = cov_y + ridge * np.trace(cov_y) / 50 * np.eye(50)
    assert frechet_distance(x, y, ridge=ridge) == pytest.approx(
        frechet_distance_gaussians(mean_x, shrunk_x, mean_y, shrunk_y), rel=1e-10)
    assert frechet_distance(x, y, ridge=1e-9) == pytest.approx(frechet_distance(x, y), rel=1e-5)


@pytest.mark.parametrize("n, dim, ridge", [(60, 6, 0.0), (25, 40, 0.0), (25, 40, 0.01)])
def test_bootstrap_frechet_equals_loop(n, dim, ridge):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n, dim))
    y = 1.3 * rng.normal(size=(n, dim)) + 0.4
    indices = bootstrap_indices(n, 37, rng)  # not a multiple of the internal chunk size
    expected = [frechet_distance(x[i], y[i], ridge=ridge) for i in indices]
    np.testing.assert_allclose(bootstrap_frechet_distance(x, y, indices, ridge=ridge), expected, rtol=1e-9)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.array([[0.0, np.nan], [1.0, 2.0]]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="same embedding dimension"):
        frechet_distance(np.ones((3, 2)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="paired row by row"):
        clap_score(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="constant across dimensions"):
        pearson_pairs(np.array([[1.0, 1.0, 1.0]]), np.array([[1.0, 2.0, 3.0]]))
    with pytest.raises(ValueError, match="all zeros"):
        cosine_pairs(np.zeros((1, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="songs"):
        evaluate_embeddings(np.eye(3), np.eye(3), [1, 2], [0, 0, 0])


# --- paired metrics --------------------------------------------------------------------------------
def test_paired_metrics_by_hand():
    generated = np.array([[1.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    true = np.array([[0.0, 2.0, 0.0], [2.0, 4.0, 6.0]])
    np.testing.assert_allclose(cosine_pairs(generated, true), [0.0, 1.0])
    assert clap_score(generated, true) == pytest.approx(0.5)
    # Pearson across dimensions, per pair: [1,0,0] vs [0,2,0] → −0.5; [1,2,3] vs [2,4,6] → 1
    np.testing.assert_allclose(pearson_pairs(generated, true), [-0.5, 1.0])
    assert pearson_score(generated, true) == pytest.approx(0.25)
    # MSE across dimensions, per pair: (1 + 4 + 0)/3 and (1 + 4 + 9)/3
    np.testing.assert_allclose(mse_pairs(generated, true), [5 / 3, 14 / 3])
    assert mse_score(generated, true) == pytest.approx(19 / 6)


# --- identification ------------------------------------------------------------------------------
def test_identification_by_hand_with_ties():
    true = np.eye(3)
    generated = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])  # clip 1 (song 1) looks like song 0
    songs, chunks = [0, 1, 2], [0, 0, 0]
    result = identification(generated, true, songs, chunks, top_k=(1, 2), song_top_k=(1, 2))
    segment = result["segment"]
    # clip 1: one candidate better (e1), its target tied with e3 → expected rank 1 + 1.5, top-1 0, top-2 ½
    np.testing.assert_allclose(segment["ranks"], [1.0, 2.5, 1.0])
    np.testing.assert_allclose(segment["hits"][1], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(segment["hits"][2], [1.0, 0.5, 1.0])
    assert segment["chance"] == {"top": {1: 1 / 3, 2: 2 / 3}, "mean_rank": 2.0}
    np.testing.assert_allclose(result["confusion"], [[1, 0, 0], [1, 0, 0], [0, 0, 1]])


def test_song_id_ranks_songs_by_mean_similarity():
    # two songs × two chunks; the generated clip is closest to one chunk of song 2 (0.9) but closer on
    # average to song 1 (0.6 and 0.6 vs 0.9 and −0.9): song-ID must say song 1, segment-ID chunk (2, 0).
    true = np.array([[0.6, 0.8], [0.6, -0.8], [0.9, np.sqrt(1 - 0.81)], [-0.9, np.sqrt(1 - 0.81)]])
    songs, chunks = [1, 1, 2, 2], [0, 1, 0, 1]
    generated = np.array([[1.0, 0.0]] * 4)
    result = identification(generated, true, songs, chunks, top_k=(1,), song_top_k=(1,))
    np.testing.assert_allclose(result["song"]["ranks"], [1, 1, 2, 2])
    np.testing.assert_allclose(result["segment"]["ranks"], [2.5, 2.5, 1, 4])
    np.testing.assert_allclose(result["confusion"], [[2, 0], [2, 0]])


def test_identification_dedupes_true_clips_and_constant_embeddings_score_chance():
    songs = np.repeat([21, 22, 23, 24], 6)  # 4 songs × 3 chunks × 2 subjects
    chunks = np.tile(np.repeat([0, 1, 2], 2), 4)
    constant = np.ones((24, 5))
    result = identification(constant, constant, songs, chunks, top_k=(1, 3), song_top_k=(1, 2))
    assert result["segment"]["n_candidates"] == 12 and result["song"]["n_candidates"] == 4
    np.testing.assert_allclose(result["segment"]["hits"][3], 3 / 12)
    np.testing.assert_allclose(result["segment"]["ranks"], 6.5)
    np.testing.assert_allclose(result["song"]["hits"][1], 1 / 4)
    np.testing.assert_allclose(result["confusion"], np.full((4, 4), 6 / 4))


# --- resampling ------------------------------------------------------------------------------------
def test_percentile_ci_and_permutation_p_value():
    assert percentile_ci(np.arange(1001.0)) == pytest.approx((25.0, 975.0))
    assert percentile_ci(np.arange(1001.0), level=0.5) == pytest.approx((250.0, 750.0))
    null = np.r_[np.zeros(98), 10.0, 5.0]
    assert permutation_p_value(5.0, null, "higher") == pytest.approx(3 / 101)  # ties count
    assert permutation_p_value(11.0, null, "higher") == pytest.approx(1 / 101)  # never 0
    assert permutation_p_value(-1.0, null, "lower") == pytest.approx(1 / 101)
    with pytest.raises(ValueError, match="better"):
        permutation_p_value(1.0, null, "bigger")


def simulated_embeddings(noise: float, seed: int = 0, n_subjects: int = 3):
    """Ten songs × four chunks × subjects; generated = true + noise (noise=inf → unrelated)."""
    rng = np.random.default_rng(seed)
    songs = np.repeat(np.arange(21, 31), 4 * n_subjects)
    chunks = np.tile(np.repeat(np.arange(4), n_subjects), 10)
    song_part = rng.normal(size=(10, 16))[songs - 21]
    clip_part = rng.normal(size=(10, 4, 16))[songs - 21, chunks]
    true = song_part + 0.5 * clip_part
    generated = rng.normal(size=true.shape) if np.isinf(noise) else true + noise * rng.normal(size=true.shape)
    return generated, true, songs, chunks


def test_evaluate_embeddings_related_vs_unrelated():
    related = evaluate_embeddings(*simulated_embeddings(0.8), n_boot=200, n_perm=200, seed=0)
    unrelated = evaluate_embeddings(*simulated_embeddings(np.inf), n_boot=200, n_perm=200, seed=0)
    expected = {"fad", "cosine", "pearson", "mse", "segment_id_top1", "segment_id_top5", "segment_id_mean_rank",
                "song_id_top1", "song_id_top3", "song_id_mean_rank"}
    assert set(related["metrics"]) == expected
    assert related["n_clips"] == 120 and related["n_segments"] == 40 and related["n_songs"] == 10
    for name, entry in related["metrics"].items():
        if name != "fad":  # the bootstrap distribution of a plug-in FAD is biased upwards (see docs)
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
    for name in expected - {"fad"}:
        assert related["metrics"][name]["p_value"] == pytest.approx(1 / 201), name
        assert unrelated["metrics"][name]["p_value"] > 0.01, name
    song = related["metrics"]["song_id_top1"]
    assert song["chance"] == pytest.approx(0.1) and song["ci_low"] > 0.5
    assert unrelated["metrics"]["song_id_top1"]["ci_low"] < 0.1 < unrelated["metrics"]["song_id_top1"]["ci_high"]
    # the permutation null of identification sits at the analytic chance level
    assert related["metrics"]["segment_id_mean_rank"]["null_mean"] == pytest.approx(20.5, abs=0.5)
    assert related["metrics"]["fad"]["value"] < unrelated["metrics"]["fad"]["value"]
    assert np.sum(related["song_confusion"]["counts"]) == pytest.approx(120)
    json.loads(to_json(related))  # JSON-ready


def test_evaluate_embeddings_bootstrap_is_the_plain_resampled_statistic():
    generated, true, songs, chunks = simulated_embeddings(1.0, n_subjects=1)
    result = evaluate_embeddings(generated, true, songs, chunks, n_boot=50, n_perm=0, seed=7)
    # reproduce the documented resampling: a SeedSequence spawned into (bootstrap, permutation) streams
    boot_rng = np.random.default_rng(np.random.SeedSequence(7).spawn(2)[0])
    indices = bootstrap_indices(len(true), 50, boot_rng)
    cosines = [clap_score(generated[i], true[i]) for i in indices]
    fads = [frechet_distance(generated[i], true[i]) for i in indices]
    assert (result["metrics"]["cosine"]["ci_low"], result["metrics"]["cosine"]["ci_high"]) == pytest.approx(
        percentile_ci(cosines))
    assert (result["metrics"]["fad"]["ci_low"], result["metrics"]["fad"]["ci_high"]) == pytest.approx(
        percentile_ci(fads))
    assert result["metrics"]["cosine"]["p_value"] is None
    again = evaluate_embeddings(generated, true, songs, chunks, n_boot=50, n_perm=0, seed=7)
    assert again["metrics"] == result["metrics"]


def test_standardize_makes_metrics_unit_free():
    generated, true, songs, chunks = simulated_embeddings(1.0, n_subjects=1)
    scale = np.geomspace(1e-3, 1e3, true.shape[1])
    plain = evaluate_embeddings(generated, true, songs, chunks, n_boot=20, n_perm=20, standardize=True)
    scaled = evaluate_embeddings(generated * scale + 5, true * scale + 5, songs, chunks,
                                         n_boot=20, n_perm=20, standardize=True)
    for name in plain["metrics"]:
        assert scaled["metrics"][name]["value"] == pytest.approx(plain["metrics"][name]["value"], rel=1e-8), name


def test_results_table_single_and_nested():
    a = evaluate_embeddings(*simulated_embeddings(0.5), n_boot=20, n_perm=20)
    b = evaluate_embeddings(*simulated_embeddings(np.inf), n_boot=20, n_perm=20)
    table = results_table(a)
    assert list(table["metric"]) == list(a["metrics"])
    assert table.loc[table.metric == "cosine", "value"].item() == pytest.approx(a["metrics"]["cosine"]["value"])
    assert np.isnan(table.loc[table.metric == "fad", "p_value"].item())
    nested = results_table({"ControlNet": {"mel-stats": a}, "unconditional": {"mel-stats": b}},
                                   names=("model", "embedder"))
    assert len(nested) == 2 * len(table)
    assert set(nested["model"]) == {"ControlNet", "unconditional"} and set(nested["embedder"]) == {"mel-stats"}
    with pytest.raises(ValueError, match="nesting levels"):
        results_table({"x": a}, names=("model", "embedder"))


def test_centred_identification_removes_a_generators_shared_offset():
    # The generated clips follow the true clips (0.2 × each) but all share one big offset towards the
    # third clip: uncentred, clip 2 is the nearest to every generated clip (a hub, accuracy 1/3);
    # centred on each set's mean, the differences between clips line up and all three are found.
    true = np.eye(3)
    generated = 0.2 * true + np.array([0.0, 0.0, 3.0])
    songs, chunks = [21, 22, 23], [0, 0, 0]
    plain = identification(generated, true, songs, chunks, top_k=(1,), song_top_k=(1,))
    np.testing.assert_allclose(plain["segment"]["hits"][1], [0.0, 0.0, 1.0])
    centred = identification(generated, true, songs, chunks, top_k=(1,), song_top_k=(1,), centre=True)
    np.testing.assert_allclose(centred["segment"]["hits"][1], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(centred["confusion"], np.eye(3))
    # a constant generated set has no direction once centred: every candidate ties (exactly chance)
    constant = identification(np.ones((3, 3)), true, songs, chunks, top_k=(1,), song_top_k=(1,), centre=True)
    np.testing.assert_allclose(constant["segment"]["hits"][1], 1 / 3)
    np.testing.assert_allclose(constant["segment"]["ranks"], 2.0)
    assert evaluate_embeddings(generated, true, songs, chunks, n_boot=0, n_perm=0)["centre_identification"] is True
