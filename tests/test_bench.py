"""The cross-validated benchmark: folds, GEARS subgroups per fold, the bootstrap, a fold's training artefacts free
of its test perturbations, inner selection blind to test cells, and a tiny benchmark end to end."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from test_run_identity import compose_train

from scfate.data import schema
from scfate.errors import UsageError
from scfate.eval.cv import fold_split, fold_subgroups, paired_bootstrap, perturbation_folds

PERTS = ["A", "B", "C", "D", "A+B", "A+C", "C+D", "B+D", "A+D", "E+F"]


def test_every_perturbation_is_tested_exactly_once_per_repeat():
    folds = perturbation_folds(PERTS, n_folds=3, n_repeats=2, seed=4)
    assert len(folds) == 6
    for r in (0, 1):
        tested = [p for f in folds if f["repeat"] == r for p in f["test"]]
        assert sorted(tested) == sorted(PERTS)
        assert sorted(len(f["test"]) for f in folds if f["repeat"] == r) == [3, 3, 4]
    assert [f["test"] for f in folds if f["repeat"] == 0] != [f["test"] for f in folds if f["repeat"] == 1]
    with pytest.raises(UsageError, match="folds=1"):
        perturbation_folds(PERTS, 1, 1)


def test_subgroups_are_relative_to_the_folds_training_singles():
    train = ["A", "B", "A+C"]  # singles A and B trained; C only inside a training pair
    groups = fold_subgroups(["C", "A+B", "B+C", "C+D", "D+E"], train)
    assert groups == {"unseen_single": ["C"], "combo_seen2": ["A+B"], "combo_seen1": ["B+C"],
                      "combo_seen0": ["C+D", "D+E"]}
    assert fold_subgroups(["x", "y"], ["z"], "drug") == {"unseen_drug": ["x", "y"]}
    split = fold_split(PERTS, ["A", "A+B"], val_fraction=0.25, seed=1)
    assert not set(split["val"]) & {"A", "A+B"} and len(split["val"]) == 2
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(PERTS)
    assert split["subgroups"]["test"] == fold_subgroups(["A", "A+B"], split["train"])


def test_bootstrap_interval_on_cases_with_known_answers():
    mean, lo, hi = paired_bootstrap(np.full((3, 40), 0.2), n_boot=200)
    assert mean == lo == hi == pytest.approx(0.2)  # no spread: the interval is the point
    rng = np.random.default_rng(0)
    d = rng.normal(0.1, 1.0, size=(1, 2000))
    mean, lo, hi = paired_bootstrap(d, n_boot=1000, seed=1)
    half = 1.96 / np.sqrt(2000)  # the normal-theory half-width of the mean's 95% interval
    assert mean == pytest.approx(d.mean()) and (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    wide = np.repeat(d, 3, 0) + np.array([[-1.0], [0.0], [1.0]])  # repeats that disagree widen it
    _, lo3, hi3 = paired_bootstrap(wide, n_boot=300)
    assert hi3 - lo3 > 3 * (hi - lo)


TINY_BENCH = ["folds=2", "repeats=1", "n_boot=100", "eval_n_cells=20", "eval_baselines=[train_mean,additive,knn]"]


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    return run_tiny_bench(tmp_path_factory.mktemp("bench"))


def run_tiny_bench(tmp, *overrides):
    """The tiny benchmark on the synthetic data in ``tmp``: (tmp, its bench.json)."""
    from test_run_identity import QUICK, SMALL, compose_config

    from scfate.pipelines.bench import run_bench

    cfg = compose_config("bench", [*QUICK, *SMALL, *TINY_BENCH, *overrides, f"paths.data_dir={tmp / 'data'}",
                                   f"paths.artifacts_dir={tmp / 'artifacts'}"], tmp / "out")
    return tmp, run_bench(cfg)


def test_tiny_benchmark_end_to_end(tiny_bench):
    tmp, res = tiny_bench
    root = next((tmp / "artifacts" / "bench" / "synthetic").iterdir())
    assert {"bench.json", "bench.md"} <= {p.name for p in root.iterdir()}
    assert {p.name for p in (root / "plots").iterdir()} >= {"scatter_cos.png", "scatter_cos.pdf",
                                                            "paired_differences.png"}
    assert res["predictors"] == ["scfate", "flow_off", "train_mean", "additive", "knn", "rotation_sum"]
    # the non-additive part of combinations, beyond additive's: defined for the predictors that predict one
    inter = res["interaction"]["overall"]
    assert "additive" not in inter and inter["rotation_sum"]["n"] > 0
    assert -1 <= inter["rotation_sum"]["lo"] <= inter["rotation_sum"]["mean"] <= inter["rotation_sum"]["hi"] <= 1
    tested = sorted(p for f in res["folds_detail"] for p in f["test"])
    assert tested == sorted({r["perturbation"] for r in res["rows"] if r["predictor"] == "scfate"})
    overall = res["summary"]["overall"]
    assert overall["n_perturbations"] == res["n_perturbations"]
    cell = overall["vs_model"]["train_mean"]["cos"]
    assert cell["lo"] <= cell["diff"] <= cell["hi"] and cell["n"] > 0
    assert "scfate - baseline" in (root / "bench.md").read_text()


def test_no_test_perturbation_reaches_a_folds_training_artefacts(tiny_bench):
    tmp, res = tiny_bench
    root = next((tmp / "artifacts" / "bench" / "synthetic").iterdir())
    for f in res["folds_detail"]:
        out = root / "folds" / f"r{f['repeat']}_f{f['fold']}"
        head = torch.load(out / "flow_best.pt", weights_only=True)
        bb = torch.load((out / head["backbone_path"]).resolve(), weights_only=True)
        test = set(f["test"])
        assert sorted(head["split"]["test"]) == sorted(test)
        assert not set(bb["atlas_perturbations"]) & test  # the backbone's atlas: training perturbations only
        assert not set(bb["split"]["train"]) & test and not set(head["split"]["val"]) & test
        # the angle prior is a KRR on the atlas: one row per training perturbation
        assert head["prior_state"]["train_x"].shape[0] == len(bb["atlas_perturbations"])
        split = json.loads((out / "split.json").read_text())
        assert split["subgroups"]["test"] == f["subgroups"]["test"]


def test_inner_selection_never_reads_test_cells(tmp_path):
    """Poison every test cell after preparation: the backbone, the prior and the flow head come out the same."""
    import pytorch_lightning as pl
    import scipy.sparse as sp

    from scfate.data.prepare import prepare
    from scfate.pipelines.config import instantiate_spec
    from scfate.pipelines.flow import train_flow

    cfg = compose_train(tmp_path, "prior.space=expression", "prior.lift_steps=5")
    data = prepare(instantiate_spec(cfg), cfg.paths.data_dir)
    test_rows = np.flatnonzero(data.adata.obs[schema.PERT].astype(str).isin(data.split.test).to_numpy())
    X = data.adata.X.tocsr(copy=True).astype(np.float32)
    scale = np.ones(X.shape[0], np.float32)
    scale[test_rows] = 7.0
    poisoned = dataclasses.replace(data, adata=data.adata.copy())
    poisoned.adata.X = sp.csr_matrix(sp.diags(scale) @ X)
    heads = {}
    for name, d in (("clean", data), ("poisoned", poisoned)):
        run_cfg = compose_train(tmp_path / name, "prior.space=expression", "prior.lift_steps=5")
        pl.seed_everything(1)
        heads[name] = train_flow(run_cfg, d, tmp_path / name / "run")
    a, b = heads["clean"], heads["poisoned"]
    assert torch.equal(a.head.prior_mu, b.head.prior_mu) and torch.equal(a.head.prior_offset, b.head.prior_offset)
    assert a.prior_info["prior_selection"] == b.prior_info["prior_selection"]
    for (k, v), (_, w) in zip(a.head.state_dict().items(), b.head.state_dict().items()):
        assert torch.equal(v, w), k
