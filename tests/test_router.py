"""Router ensemble (DESIGN §2.6): similarity matrices against closed forms, routing on a constructed case, the
unparseable-SMILES fallback, bad teacher globs, and `evaluate.py router=default` end to end on tiny teachers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import PROJECT

from scfate.errors import DataError
from scfate.eval import metrics as M
from scfate.pipelines.router import load_teachers
from scfate.pipelines.teachers import expand_teachers
from scfate.prior import router as R


def test_tanimoto_and_cosine_against_closed_forms():
    a = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    b = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    ok_a, ok_b = np.array([True, False]), np.ones(3, bool)
    S = R.kernel_matrix("tanimoto", a, b, ok_a, ok_b)
    # |a & b| / |a | b|: {0,1} vs {0,2} -> 1/3; identical -> 1; vs empty -> 0
    np.testing.assert_allclose(S[0], [1 / 3, 1.0, 0.0], rtol=1e-6)
    assert np.isnan(S[1]).all()  # a drug without a representation has no similarity
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    y = np.array([[4.0, 3.0], [-3.0, -4.0], [0.0, 1.0]])
    C = R.cosine_matrix(x, y)
    np.testing.assert_allclose(C[0], [24 / 25, -1.0, 4 / 5])
    np.testing.assert_array_equal(C[1], [0.0, 0.0, 0.0])  # a zero vector has no direction


def test_neighbour_scores_closed_form():
    sim = np.array([[0.8, 0.2, -0.5, 0.4]])
    val = np.array([[1.0, 0.0, 9.0, 0.5],
                    [0.0, 1.0, 9.0, np.nan]])
    scores, neigh = R.neighbour_scores(sim, val, top_k=3)
    assert [j for j, _ in neigh[0]] == [0, 3, 1]  # the negative-similarity drug never enters the top 3
    np.testing.assert_allclose(scores[:, 0], [(0.8 * 1 + 0.4 * 0.5 + 0.2 * 0) / 1.4, (0.8 * 0 + 0.2 * 1) / 1.0])
    # top_k=1 -> the nearest drug's score
    np.testing.assert_allclose(R.neighbour_scores(sim, val, 1)[0][:, 0], [1.0, 0.0])
    # all similarities negative -> clipped to 0 -> the top 2 (drugs 1 and 3) count equally; B is NaN on drug 3
    np.testing.assert_allclose(R.neighbour_scores(-np.abs(sim), val, 2)[0][:, 0], [(0.0 + 0.5) / 2, 1.0])
    with pytest.raises(ValueError, match="top_k=0"):
        R.neighbour_scores(sim, val, 0)


SMILES = {  # two chemical families: linear alcohols and benzoic acids
    "X": "CCCCCCCCO", "V1": "CCCCCCCO", "V2": "CCCCCCCCCO",
    "Y": "OC(=O)c1ccccc1", "V3": "COC(=O)c1ccccc1", "V4": "Cc1ccccc1C(=O)O",
}


def _sims(names, test, val, smiles):
    out = {}
    for name in names:
        kind, kernel = R.SIMILARITIES[name]
        X, ok = R.representation(kind, [smiles[d] for d in test + val])
        n = len(test)
        out[name] = R.kernel_matrix(kernel, X[:n], X[n:], ok[:n], ok[n:])
    return out


def test_routing_weights_sum_to_one_and_pick_the_right_model():
    """Model A is good on the alcohols, B on the benzoic acids: alcohol X routes to A, acid Y to B, under every
    similarity metric and the multi-metric router."""
    test, val = ["X", "Y"], ["V1", "V2", "V3", "V4"]
    da = np.array([[0.9, 0.85, 0.4, 0.45],   # A
                   [0.4, 0.45, 0.9, 0.85]])  # B
    sims = _sims(["tanimoto_morgan2048", "cosine_rdkit_descriptors", "tanimoto_maccs"], test, val, SMILES)
    for S in sims.values():  # each test drug is closer to its own family
        assert S[0, :2].min() > S[0, 2:].max() and S[1, 2:].min() > S[1, :2].max()
    routings = [R.route(S, R.orient("da", da), top_k=2, temperature=0.05) for S in sims.values()]
    multi, n_used = R.route_multi(routings, temperature=0.05)
    for r in [*routings, multi]:
        np.testing.assert_allclose(r.weights.sum(0), 1.0)
        assert r.weights[0, 0] > 0.95 and r.weights[1, 1] > 0.95 and not r.fallback.any()
    assert n_used.tolist() == [3, 3]
    # lower-is-better metrics are flipped: a small MSE wins
    mse = 1.0 - da
    r = R.route(sims["tanimoto_morgan2048"], R.orient("mse_top20_de", mse), 2, 0.05)
    assert r.weights[0, 0] > 0.95 and r.weights[1, 1] > 0.95
    # a large temperature tends to the uniform ensemble
    hot = R.route(sims["tanimoto_morgan2048"], da, 2, 1e6)
    np.testing.assert_allclose(hot.weights, 0.5, atol=1e-5)


def test_unparseable_smiles_falls_back():
    X, ok = R.representation("morgan2048", ["CCO", "not_a_smiles", None])
    assert ok.tolist() == [True, False, False] and not X[1:].any()
    smiles = {**SMILES, "X": "C1CC(", "Y": SMILES["Y"]}  # X: an unclosed ring RDKit rejects
    test, val = ["X", "Y"], ["V1", "V2", "V3", "V4"]
    da = np.array([[0.9, 0.85, 0.4, 0.45], [0.4, 0.45, 0.9, 0.85]])
    sims = _sims(["tanimoto_morgan2048"], test, val, smiles)
    assert np.isnan(sims["tanimoto_morgan2048"][0]).all()
    tan = R.route(sims["tanimoto_morgan2048"], da, 2, 0.05)
    assert tan.fallback.tolist() == [True, False]
    np.testing.assert_allclose(tan.weights[:, 0], [0.5, 0.5])  # no evidence for X: uniform weights
    # a similarity that needs no SMILES (e.g. cosine on the dataset's features) still places X next to V1, V2
    feats = np.array([[1.0, 0.9, 0.1, 0.0], [0.0, 0.0, 1.0, 0.9]])  # [T, V] similarities
    multi, n_used = R.route_multi([tan, R.route(feats, da, 2, 0.05)], 0.05)
    assert n_used.tolist() == [1, 2] and not multi.fallback.any()
    only_feats = R.route(feats, da, 2, 0.05)
    # with one usable metric the multi-metric router is that metric's router (rescaled z-scores = centred scores)
    np.testing.assert_allclose(multi.weights[:, 0], only_feats.weights[:, 0], rtol=1e-9)
    assert multi.weights[0, 0] > 0.95


def test_apportion_and_mixture():
    assert R.apportion(np.array([0.5, 0.25, 0.25]), 10).tolist() == [5, 3, 2]
    assert R.apportion(np.array([1.0, 0.0]), 7).tolist() == [7, 0]
    assert R.apportion(np.array([1 / 3] * 3), 100).sum() == 100
    means = np.array([[0.0, 0.0], [1.0, 2.0]])
    cells = [np.zeros((10, 2)), np.ones((10, 2))]
    w = np.array([0.3, 0.7])
    mean, mix = R.mixture(means, cells, w, 10, np.random.default_rng(0))
    np.testing.assert_allclose(mean, [0.7, 1.4])
    assert mix.shape == (10, 2) and (mix[:, 0] == 1).sum() == 7  # 7 cells from the second model
    with pytest.raises(ValueError, match="non-negative"):
        R.apportion(np.array([0.0, 0.0]), 3)


def test_teacher_glob_matching_nothing_is_named(tmp_path):
    pattern = str(tmp_path / "teachers" / "*" / "s*")
    with pytest.raises(DataError, match=r"teachers=.*teachers/\*/s\*.* matches nothing"):
        expand_teachers(pattern)
    with pytest.raises(DataError, match="needs teachers="):
        expand_teachers(None)


# ---- end to end: two tiny teachers on the built-in drug dataset, then the router eval ----------------------------
SPLIT = ["dataset=synthetic_drugs", "split_seed=1", "data.split.stratify_by=null", "data.split.val_fraction=0.3"]
TINY = ["trainer.max_epochs=1", "datamodule.steps_per_epoch=3", "datamodule.val_steps=1", "eval_n_cells=20",
        "eval_baselines=[]", "flow.head.n_steps=2"]


def _run(args, cwd=PROJECT):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return proc


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two flow heads (seeds 1, 2; prior=none keeps the tiny run fast), same data and split (split_seed
    pinned, since the split otherwise follows the seed)."""
    root = tmp_path_factory.mktemp("router")
    proc = _run(["train.py", "-m", *SPLIT, "prior=none", "seed=1,2", *TINY,
                 "run_dir=${paths.artifacts_dir}/teachers/prior${prior.name}/s${seed}",
                 f"paths.data_dir={root / 'data'}", f"paths.artifacts_dir={root / 'artifacts'}",
                 f"hydra.sweep.dir={root / 'mr'}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def test_router_end_to_end(teachers):
    root = teachers
    ckpt = torch.load(root / "artifacts/teachers/priornone/s1/flow_best.pt", weights_only=True)
    bad_drug = ckpt["split"]["test"][0]
    out = root / "eval_router.json"
    proc = _run(["evaluate.py", "router=default", f"teachers={root}/artifacts/teachers/*/s*", *SPLIT,
                 "router.top_k=2", "router.similarities=[tanimoto_morgan2048,cosine_rdkit_descriptors,cosine_features]",
                 f"router.smiles={{{bad_drug}: not_a_smiles}}", "eval_n_cells=20", "n_steps=2", f"out={out}",
                 f"paths.data_dir={root / 'data'}", f"hydra.run.dir={root / 'ev'}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ev = json.loads(out.read_text())
    r = ev["router"]
    keys = {f"metric_{m}.{s}" for m in ("da", "cos", "pde")
            for s in ("tanimoto_morgan2048", "cosine_rdkit_descriptors", "cosine_features", "multi")}
    assert set(ev["variants"]) == keys | {"best_single", "uniform"}
    assert ev["model"] == "router:metric_da.multi" and ev["metrics"] == ev["variants"]["metric_da.multi"]
    assert set(ev["single_models"]) == {"s1", "s2"}
    assert {"no_change", "train_mean", "linear", "feature_ridge"} <= set(ev["baselines"])
    n_cond = len(ev["single_models"]["s1"]["per_perturbation"])
    for name, res in ev["variants"].items():  # every metric, aggregated and per test condition
        assert set(res["overall"]) == set(M.ALL_METRICS), name
        assert len(res["per_perturbation"]) == n_cond and res["overall"]["da"]["n"] > 0, name
    assert set(r["test_drugs"]) == set(ckpt["split"]["test"]) and set(r["val_drugs"]) == set(ckpt["split"]["val"])
    for key, per_drug in r["weights"].items():
        for drug, w in per_drug.items():
            assert sum(w.values()) == pytest.approx(1.0), (key, drug)
    # the bad SMILES is named; SMILES routers fall back to uniform, multi uses the remaining metric
    assert r["unparseable_smiles"] == {bad_drug: "not_a_smiles"}
    assert r["weights"]["metric_da.tanimoto_morgan2048"][bad_drug] == {"s1": 0.5, "s2": 0.5}
    acts = {(f["variant"], f["drug"]): f["action"] for f in r["fallbacks"]}
    assert "uniform weights" in acts[("metric_da.cosine_rdkit_descriptors", bad_drug)]
    assert "remaining similarity metrics ['cosine_features']" in acts[("metric_da.multi", bad_drug)]
    assert set(r["comparison"]) == {"da", "cos", "pde"} and r["best_single"]["da"] in ev["single_models"]
    assert len(ev["provenance"]["checkpoints"]) == 2 and ev["split"]["scored"] == "test"
    assert "metric_da.multi" in proc.stdout and "the uniform ensemble" in proc.stdout and bad_drug in proc.stdout


def test_teachers_of_another_split_are_named(teachers, tmp_path):
    ckpt = torch.load(teachers / "artifacts/teachers/priornone/s1/flow_best.pt", weights_only=True)
    moved = ckpt["split"]["val"][0]
    ckpt["split"]["val"].remove(moved)
    ckpt["split"]["train"].append(moved)
    (tmp_path / "other").mkdir()
    torch.save(ckpt, tmp_path / "other" / "flow_best.pt")
    with pytest.raises(DataError, match=rf"differ in split .*{moved}"):
        load_teachers([str(teachers / "artifacts/teachers/priornone/s2"), str(tmp_path / "other")])
