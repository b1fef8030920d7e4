"""Baselines on constructed pseudobulk where the right answer is known."""

import numpy as np
import pytest

from scfate.models.predictor import Condition, NotPredictable, Pseudobulk
from scfate.prior.baselines import BASELINES, make_baseline

G = 50
RNG = np.random.default_rng(0)


def cond(pert, features, ctx="c", dose=np.nan):
    return Condition(ctx, pert, pert, pert.split("+"), dose, np.asarray(features, float))


def additive_world():
    singles = {g: RNG.normal(size=G) for g in "ABCD"}
    train = [(cond(g, [i]), d) for i, (g, d) in enumerate(singles.items()) if g != "D"]
    train.append((cond("A+B", [9]), singles["A"] + singles["B"]))
    return singles, Pseudobulk("gene", ["c"], {"c": np.full(G, 2.0)}, {"c": train})


def test_no_change_train_mean_and_additive_are_exact():
    singles, pb = additive_world()
    preds = {name: make_baseline(name) for name in ("no_change", "train_mean", "additive")}
    for p in preds.values():
        p.fit(pb)
    target = cond("A+C", [0])
    assert np.array_equal(preds["no_change"].predict_delta(target)[0], np.zeros(G))
    expected_mean = np.mean([singles["A"], singles["B"], singles["C"], singles["A"] + singles["B"]], axis=0)
    np.testing.assert_allclose(preds["train_mean"].predict_delta(target)[0], expected_mean)
    delta, notes = preds["additive"].predict_delta(target)
    np.testing.assert_allclose(delta, singles["A"] + singles["C"])
    assert notes == []
    # predicted cells are control cells shifted by delta; the mean is the control mean plus delta, exactly
    ctrl = RNG.normal(size=(7, G))
    pred = preds["additive"].predict(target, ctrl)
    np.testing.assert_allclose(pred.cells, ctrl + delta)
    np.testing.assert_allclose(pred.mean, 2.0 + delta)


def test_additive_falls_back_to_train_mean_and_says_so():
    singles, pb = additive_world()
    add = make_baseline("additive")
    add.fit(pb)
    delta, notes = add.predict_delta(cond("A+D", [0]))
    np.testing.assert_allclose(delta, singles["A"] + pb.train_delta_mean("c"))
    assert notes == ["members ['D'] never seen alone in training: used train_mean for them"]
    drugs = Pseudobulk("drug", ["c"], pb.ctrl_mean, pb.train)
    add.fit(drugs)
    with pytest.raises(NotPredictable, match="not drugs"):
        add.predict_delta(cond("A", [0]))


def linear_world(n=40, d=5, noise=0.0):
    W = RNG.normal(size=(G, d))
    F = RNG.normal(size=(n + 5, d)) * 10
    Y = F @ W.T + 0.5 + noise * RNG.normal(size=(n + 5, G))
    rows = [(cond(f"P{i}", F[i]), Y[i]) for i in range(n + 5)]
    return rows[:n], rows[n:]


def test_linear_recovers_a_linear_low_rank_world():
    train, test = linear_world()
    lin = make_baseline("linear")
    lin.fit(Pseudobulk("gene", ["c"], {"c": np.zeros(G)}, {"c": train}))
    for c, y in test:
        pred = lin.predict_delta(c)[0]
        assert np.linalg.norm(pred - y) / np.linalg.norm(y) < 1e-2


def test_feature_ridge_selects_on_validation_and_beats_train_mean():
    train, test = linear_world(noise=0.1)
    pb = Pseudobulk("gene", ["c"], {"c": np.zeros(G)}, {"c": train[:30]}, {"c": train[30:]})
    ridge, mean = make_baseline("feature_ridge"), make_baseline("train_mean")
    ridge.fit(pb)
    mean.fit(pb)
    assert ridge.chosen["c"]["selected_on_val"] is True
    err = lambda p: np.mean([np.sum((p.predict_delta(c)[0] - y) ** 2) for c, y in test])  # noqa: E731
    assert err(ridge) < 0.5 * err(mean)


def test_too_few_training_perturbations_is_not_predictable():
    pb = Pseudobulk("gene", ["c"], {"c": np.zeros(G)}, {"c": [(cond("A", [1.0]), np.ones(G))]})
    for name in ("linear", "feature_ridge"):
        b = make_baseline(name)
        b.fit(pb)
        with pytest.raises(NotPredictable, match="fewer than 2 training perturbations"):
            b.predict_delta(cond("B", [2.0]))
    assert sorted(BASELINES) == ["additive", "feature_ridge", "knn", "linear", "no_change", "other_contexts",
                                 "other_contexts_centred", "train_mean"]
    with pytest.raises(ValueError, match="valid"):
        make_baseline("gears")


def test_knn_shift_closed_form():
    from scfate.prior.knn import knn_shift

    Y, mean = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]), np.array([2.0, 2.0])
    sim = np.array([0.9, 0.3, -0.5])
    # the 2 nearest, weighted 0.9 and 0.3; half-way to the mean
    near = (0.9 * Y[0] + 0.3 * Y[1]) / 1.2
    assert np.allclose(knn_shift(sim, Y, mean, 2, 0.5), 0.5 * near + 0.5 * mean)
    assert np.allclose(knn_shift(sim, Y, mean, 3, 0.0), near)  # a negative similarity gets no weight
    assert np.allclose(knn_shift(-np.abs(sim), Y, mean, 1, 0.0), mean)  # no positive similarity: the mean


def test_knn_chooses_its_neighbours_where_features_carry_the_shift_and_the_mean_where_not():
    rng = np.random.default_rng(0)
    centres, Yc = rng.normal(size=(4, 5)), rng.normal(size=(4, G)) * 3
    F = np.concatenate([c + 0.05 * rng.normal(size=(6, 5)) for c in centres])  # 4 clusters of 6 perturbations
    Y = np.concatenate([y + 0.05 * rng.normal(size=(6, G)) for y in Yc])  # ... sharing their cluster's shift
    knn = make_baseline("knn")
    knn.fit(Pseudobulk("gene", ["c"], {"c": np.zeros(G)}, {"c": [(cond(f"P{i}", F[i]), Y[i]) for i in range(24)]}))
    assert knn.chosen["c"]["shrink"] == 0.0 and knn.chosen["c"]["k"] <= 5
    pred, notes = knn.predict_delta(cond("new", centres[2]))
    assert np.linalg.norm(pred - Yc[2]) < 0.1 * np.linalg.norm(Yc[2]) and "leave-one-out" in notes[0]
    noise = [(cond(f"P{i}", rng.normal(size=5)), rng.normal(size=G)) for i in range(24)]  # features carry nothing
    knn.fit(Pseudobulk("gene", ["c"], {"c": np.zeros(G)}, {"c": noise}))
    assert knn.chosen["c"]["shrink"] >= 0.75
