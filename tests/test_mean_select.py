"""The mean predictor that contains the baselines (scfate.prior.mean_select): the leave-one-out choice, the
stack of candidates, kNN on one feature view, and ties."""

import numpy as np
import pytest
import torch


def test_mean_predictor_falls_back_to_the_baseline_that_wins_leave_one_out():
    """Combinations that are exactly additive choose an additive candidate; singles whose features carry no signal
    choose a candidate no better than the mean shift; the choice never sees the rows it is scored on."""
    from scfate.models.predictor import Condition, Pseudobulk
    from scfate.prior.mean_select import select_mean, selected_shifts

    rng = np.random.default_rng(0)
    G, U = 30, 12
    unit_F = torch.as_tensor(rng.normal(size=(U, 4)), dtype=torch.float32)
    units = {f"g{i}": i for i in range(U)}
    common = rng.normal(size=G) * 2  # a shift shared by every single (Systema): features say nothing else
    single = {f"g{i}": common + 0.3 * rng.normal(size=G) for i in range(U)}

    def cond(p):
        ms = p.split("+")
        return Condition("c", p, p, ms, float("nan"), unit_F.numpy()[[units[m] for m in ms]].sum(0))

    pairs = [f"g{a}+g{b}" for a, b in [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (1, 2), (3, 4)]]
    rows = [(cond(p), single[p]) for p in list(single)[:10]] + [
        (cond(p), sum(single[m] for m in p.split("+"))) for p in pairs]
    pb = Pseudobulk("gene", ["c"], {"c": np.zeros(G)}, {"c": rows})
    choice = select_mean(pb, rows, unit_F, units, "rbf")
    assert choice["combination"]["chosen"] in ("additive", "prior") and choice["combination"]["n"] == 7
    assert choice["combination"]["loo_cos"]["additive"] > 0.99
    assert choice["single"]["chosen"] != "additive" or choice["single"]["loo_cos"]["additive"] == pytest.approx(
        choice["single"]["loo_cos"]["train_mean"])
    # the combination's choice decides its shift: additive's sum of the members, or the prior's own (the fallback)
    fallback = torch.randn(2, G)
    shifts = selected_shifts(pb, "c", [cond("g10+g11"), cond("g0+g1")], choice, unit_F, units, "rbf", fallback)
    want = (torch.as_tensor(single["g0"] + single["g1"], dtype=torch.float32)
            if choice["combination"]["chosen"] == "additive" else fallback[1])
    assert torch.allclose(shifts[1], want, atol=1e-4)


def test_stack_weights_recover_a_known_mixture_and_the_stack_is_chosen_only_when_it_wins():
    from scfate.prior.mean_select import STACK, _stack_entry, stack_weights

    rng = np.random.default_rng(1)
    P = rng.normal(size=(8, 3, 20))  # 8 rows, 3 candidates' out-of-sample predictions
    y = 0.3 * P[:, 0] + 0.7 * P[:, 2]
    np.testing.assert_allclose(stack_weights(P, y), [0.3, 0.0, 0.7], atol=1e-10)
    by_name = {n: list(P[:, k]) for k, n in enumerate("abc")}
    entry = _stack_entry(by_name, list(y))
    assert entry["loo_cos"] == pytest.approx(1.0) and entry["weights"]["b"] == pytest.approx(0.0, abs=1e-10)
    # a candidate undefined on some row stays out of the stack; fewer than 3 rows: no stack at all
    by_name["b"][0] = None
    assert set(_stack_entry(by_name, list(y))["weights"]) == {"a", "c"}
    assert _stack_entry({n: v[:2] for n, v in by_name.items()}, list(y[:2])) is None
    assert STACK == "stack"


def test_a_view_candidate_sees_only_its_views_columns():
    """Shifts that follow the second view's features exactly and ignore the first (noise): kNN on that view
    alone finds each perturbation's twin; on the first view, or on both, the noise picks wrong neighbours."""
    from scfate.models.predictor import Condition, Pseudobulk
    from scfate.prior.mean_select import select_mean, view_candidates

    views = view_candidates([{"name": "noise", "start": 0, "stop": 5}, {"name": "signal", "start": 5, "stop": 7}])
    assert views == {"knn@noise": slice(0, 5), "knn@signal": slice(5, 7)}
    assert view_candidates([{"name": "go", "start": 0, "stop": 5}]) == {}
    rng = np.random.default_rng(3)
    G, rows = 12, []
    for i in range(8):  # four twin pairs: same signal features, same shift; noise features unrelated
        sig = np.array([np.cos(i // 2), np.sin(i // 2)])
        f = np.concatenate([10 * rng.normal(size=5), sig])
        rows.append((Condition("c", f"g{i}", f"g{i}", [f"g{i}"], float("nan"), f), np.full(G, float(i // 2)) +
                     np.arange(G) * (i // 2 - 1.5)))
    units = {f"g{i}": i for i in range(8)}
    unit_F = torch.as_tensor(np.stack([f.features for f, _ in rows]), dtype=torch.float32)
    pb = Pseudobulk("gene", ["c"], {"c": np.zeros(G)}, {"c": rows})
    choice = select_mean(pb, rows, unit_F, units, "rbf", ("train_mean", "knn", *views), views=views)
    loo = choice["single"]["loo_cos"]
    assert loo["knn@signal"] == pytest.approx(1.0) and loo["knn@signal"] > max(loo["knn@noise"], loo["knn"])
    assert choice["single"]["chosen"] in ("knn@signal", "stack")


def test_a_stack_that_only_rescales_one_candidate_does_not_win_the_tie():
    from scfate.models.predictor import Condition, Pseudobulk
    from scfate.prior.mean_select import select_mean

    rng = np.random.default_rng(4)  # a seed where the stack's cosine comes out 2e-16 above train_mean's
    common = rng.normal(size=10)
    rows = [(Condition("c", f"g{i}", f"g{i}", [f"g{i}"], float("nan"), rng.normal(size=3)),
             0.5 * common + 0.05 * rng.normal(size=10)) for i in range(6)]
    units = {f"g{i}": i for i in range(6)}
    unit_F = torch.as_tensor(np.stack([c.features for c, _ in rows]), dtype=torch.float32)
    choice = select_mean(Pseudobulk("gene", ["c"], {"c": np.zeros(10)}, {"c": rows}), rows, unit_F, units, "rbf",
                         ("train_mean", "additive"))
    # additive = train_mean for singles; the stack is a rescaled train_mean: all three tie, the first wins
    loo = choice["single"]["loo_cos"]
    assert loo["stack"] == pytest.approx(loo["train_mean"], abs=1e-12) and choice["single"]["chosen"] == "train_mean"


def test_knn_selection_equals_its_plain_definition():
    """select_knn computes every left-out row at once; its errors are the plain loop's to float rounding, and its
    choice (k, shrink) the plain loop's exactly, ties included (no positive similarity: every shrink equal)."""
    from scfate.prior.knn import KS, SHRINKS, _cosine, knn_shift, select_knn

    def plain(F, Y):
        n, sim, errors = len(F), _cosine(F, F), {}
        for k in [k for k in KS if k <= n - 1]:
            for shrink in SHRINKS:
                err = 0.0
                for i in range(n):
                    others = np.arange(n) != i
                    mean = Y[others].mean(0)
                    err += float(np.mean((knn_shift(sim[i, others], Y[others], mean, k, shrink) - Y[i]) ** 2))
                errors[(k, shrink)] = err / n
        return errors

    rng = np.random.default_rng(0)
    cases = [(rng.normal(size=(n, 5)), rng.normal(size=(n, 40))) for n in (3, 6, 13, 48)]
    cases.append((np.eye(6), rng.normal(size=(6, 40))))  # orthogonal features: no neighbour has weight
    cases.append((np.repeat(rng.normal(size=(3, 5)), 3, axis=0), rng.normal(size=(9, 40))))  # tied similarities
    for F, Y in cases:
        errors = plain(F, Y)
        k, shrink = min(errors, key=lambda key: (float(f"{errors[key]:.12g}"), -key[1]))
        got = select_knn(F, Y)
        assert (got["k"], got["shrink"]) == (k, shrink)
        assert np.isclose(got["loo_mse"], errors[(k, shrink)], rtol=1e-12, atol=0)
        assert np.isclose(got["loo_mse_mean_only"], errors[(1, 1.0)], rtol=1e-12, atol=0)
