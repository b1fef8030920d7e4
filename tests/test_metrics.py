"""Each metric against a hand-computed example, including sign ties, short DE lists and undefined cases."""

import math

import numpy as np
import pytest

from scfate.eval import metrics as M


def test_direction_agreement_three_valued_sign():
    delta = np.array([1.0, -1.0, 0.5, -2.0, 0.0])
    delta_hat = np.array([2.0, 0.0, 0.1, 3.0, 0.0])
    # +/+ right, -/0 wrong (a zero where the truth moves), +/+ right, -/+ wrong, 0/0 right (a tie on no change)
    assert M.direction_agreement(delta_hat, delta, [0, 1, 2, 3]) == 0.5
    assert M.direction_agreement(delta_hat, delta, [0, 1, 2, 3, 4]) == 0.6
    assert M.direction_agreement(delta_hat, delta, [2]) == 1.0  # fewer than 20 DE genes: computed on those
    with pytest.raises(M.UndefinedMetric, match="no DE genes"):
        M.direction_agreement(delta_hat, delta, [])


def test_cosine_and_pearson_by_hand():
    assert M.cosine(np.array([1.0, 0]), np.array([0, 1.0])) == 0
    assert M.cosine(np.array([1.0, 1]), np.array([2.0, 2])) == pytest.approx(1)
    assert M.cosine(np.array([3.0, 4]), np.array([4.0, 3])) == pytest.approx(24 / 25)
    with pytest.raises(M.UndefinedMetric, match="zero vector"):
        M.cosine(np.zeros(3), np.ones(3))
    assert M.pearson(np.array([1.0, 2, 3]), np.array([2.0, 4, 7])) == pytest.approx(15 / math.sqrt(228))
    with pytest.raises(M.UndefinedMetric, match="constant"):
        M.pearson(np.ones(4), np.arange(4.0))
    with pytest.raises(M.UndefinedMetric, match="at least 2"):
        M.pearson(np.ones(1), np.ones(1))


def test_mse_and_normalised_mse():
    delta = np.array([1.0, 2.0, 0.0])
    assert M.mse(np.array([0.0, 0, 5]), delta, [0, 1]) == pytest.approx(2.5)
    assert M.normalized_mse(np.zeros(3), delta, [0, 1]) == 1.0  # the no-change baseline itself
    assert M.normalized_mse(delta, delta, [0, 1]) == 0.0
    assert M.normalized_mse(np.array([0.5, 1.0, 0]), delta, [0, 1]) == pytest.approx(0.25)
    with pytest.raises(M.UndefinedMetric, match="zero error"):
        M.normalized_mse(delta, delta, [2])


def test_energy_distance_by_hand():
    assert M.energy_distance(np.array([[0.0]]), np.array([[1.0]])) == pytest.approx(2.0)
    # x symmetric around y: 2 * 1 - mean{0, 4, 4, 0} - 0 = 0
    assert M.energy_distance(np.array([[0.0], [2.0]]), np.array([[1.0]])) == pytest.approx(0.0)
    x = np.random.default_rng(0).normal(size=(20, 3))
    assert M.energy_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert M.energy_distance(x, x + 1) == pytest.approx(2 * 3, rel=1e-9)  # shift by 1 in 3 dims: 2|mu|^2


def test_mmd_by_hand():
    x, y = np.array([[0.0]]), np.array([[1.0]])
    assert M.mmd(x, y, gammas=[1.0]) == pytest.approx(2 - 2 * math.exp(-1))
    expected = np.mean([2 - 2 * math.exp(-g) for g in M.MMD_GAMMAS])
    assert M.mmd(x, y) == pytest.approx(expected)
    with pytest.raises(M.UndefinedMetric):
        M.mmd(np.zeros((0, 1)), y)


def test_discrimination_ranks():
    true = np.array([[0.0, 0], [10, 0], [0, 10]])
    pred = np.array([[1.0, 0], [9, 0], [10, 0]])
    np.testing.assert_array_equal(M.discrimination_ranks(pred, true), [1, 1, 3])


def test_mean_metrics_reports_undefined_with_reasons():
    ctrl = np.ones(5)
    true = ctrl + np.array([1.0, -1, 0, 0, 2])
    vals, undef = M.mean_metrics(ctrl, true, ctrl.copy(), [0, 1, 4], [])  # no-change prediction
    assert vals["da"] == 0.0 and vals["mse_top20_de_normalized"] == 1.0
    assert set(undef) == {"cos", "pde", "pearson_delta", "da_non_dropout", "mse_top20_de_non_dropout",
                          "mse_top20_de_non_dropout_normalized"}
    assert "zero vector" in undef["cos"] and "no DE genes" in undef["da_non_dropout"]


def test_aggregate_never_averages_undefined_values():
    entries = [{"metrics": {"da": 1.0, "cos": 0.5}, "undefined": {}},
               {"metrics": {"da": 0.5}, "undefined": {"cos": "zero vector"}}]
    agg = M.aggregate(entries)
    assert agg["da"] == {"mean": 0.75, "sd": pytest.approx(math.sqrt(0.125)), "n": 2, "n_undefined": 0}
    assert agg["cos"] == {"mean": 0.5, "sd": None, "n": 1, "n_undefined": 1}
    assert agg["pde"] == {"mean": None, "sd": None, "n": 0, "n_undefined": 0}


def test_distribution_metrics_share_distances_and_equal_the_separate_metrics():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)), rng.normal(1.0, size=(30, 5))
    vals, undef = M.distribution_metrics(x, y)
    shared, _ = M.distribution_metrics(x, y, M.true_sq_dists(y))
    assert not undef and vals == shared  # bit for bit: the same distances, computed once
    assert vals["energy_distance"] == M.energy_distance(x, y) and vals["mmd"] == M.mmd(x, y)
    # against the plain definitions (pairwise differences, no |x|^2 + |y|^2 - 2xy expansion)
    d = {k: ((a[:, None] - b[None]) ** 2).sum(-1) for k, (a, b) in {"xx": (x, x), "yy": (y, y), "xy": (x, y)}.items()}
    assert vals["energy_distance"] == pytest.approx(2 * d["xy"].mean() - d["xx"].mean() - d["yy"].mean(), rel=1e-12)
    expected = np.mean([np.exp(-g * d["xx"]).mean() + np.exp(-g * d["yy"]).mean() - 2 * np.exp(-g * d["xy"]).mean()
                        for g in M.MMD_GAMMAS])
    assert vals["mmd"] == pytest.approx(expected, rel=1e-10)
    assert M.distribution_metrics(x[:0], y) == ({}, {"energy_distance": "no cells", "mmd": "no cells"})
