"""The evaluation runner end to end: exact answers on a constructed additive dataset, the eval JSON (round trip,
provenance), prediction files, and `evaluate.py` on the real development file."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from test_entrypoints import run
from test_prepare import user_embedding

from scfate.data import DataError, DataSpec
from scfate.data.prepare import prepare
from scfate.eval import metrics as M
from scfate.eval.predictions import AnnDataPredictions
from scfate.eval.results import build_eval_json, read_eval_json, write_eval_json
from scfate.eval.runner import evaluate
from scfate.models.predictor import Prediction, Predictor
from scfate.prior.baselines import make_baseline

GENES = [f"G{i}" for i in range(30)]
PERTS = ["A", "B", "C", "D", "E", "F", "A+B", "C+D", "A+C", "B+D", "E+F"]
SPLIT = {"train": ["A", "B", "C", "D", "A+B"], "val": ["E", "C+D"], "test": ["A+C", "B+D", "F", "E+F"],
         "subgroups": {"test": {"combo_seen2": ["A+C", "B+D"], "unseen_single": ["F"], "combo_seen1": ["E+F"]}}}


def additive_dataset(tmp_path) -> DataSpec:
    """Every perturbed cell is a control cell shifted by the perturbation's effect, and pairs are exactly
    additive: group means are exact, so additive must score perfectly on pairs of seen singles."""
    rng = np.random.default_rng(0)
    ctrl = 5 + rng.uniform(0, 1, size=(40, len(GENES)))
    single = {g: rng.uniform(-1, 1, size=len(GENES)) for g in "ABCDEF"}
    blocks, labels = [ctrl], ["ctrl"] * 40
    for p in PERTS:
        blocks.append(ctrl + sum(single[g] for g in p.split("+")))
        labels += [p] * 40
    a = ad.AnnData(sp.csr_matrix(np.vstack(blocks).astype(np.float32)),
                   obs=pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(len(labels))]),
                   var=pd.DataFrame(index=GENES))
    a.write_h5ad(tmp_path / "additive.h5ad")
    (tmp_path / "split.json").write_text(json.dumps(SPLIT))
    return DataSpec(name="additive", path=str(tmp_path / "additive.h5ad"), context_key=None, control_values=["ctrl"],
                    features={"user": [user_embedding(tmp_path / "emb.csv", genes=tuple("ABCDEF"))]},
                    split={"mode": "file", "file": str(tmp_path / "split.json")})


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("additive")
    data = prepare(additive_dataset(tmp), tmp / "data")
    return data, evaluate(data, make_baseline("additive"), n_cells=40)


def test_additive_is_exact_on_purely_additive_data(scored):
    _, res = scored
    per = res["model"]["per_perturbation"]
    for key in ("all/A+C", "all/B+D"):
        m = per[key]["metrics"]
        assert m["cos"] == pytest.approx(1) and m["pde"] == pytest.approx(1) and m["da"] == 1.0
        assert m["mse_top20_de"] == pytest.approx(0, abs=1e-10) and m["pds"] == 1
        assert m["energy_distance"] == pytest.approx(0, abs=1e-6)  # the same cells, shifted by the same delta
    assert per["all/F"]["notes"] == ["members ['F'] never seen alone in training: used train_mean for them"]
    assert res["model"]["by_subgroup"]["combo_seen2"]["cos"]["mean"] == pytest.approx(1)
    assert set(res["model"]["by_subgroup"]) == {"combo_seen1", "combo_seen2", "unseen_single"}


def test_no_change_is_the_normalisation_reference(scored):
    _, res = scored
    nc = res["baselines"]["no_change"]
    assert nc["overall"]["mse_top20_de_normalized"]["mean"] == pytest.approx(1.0)
    assert nc["overall"]["da"]["mean"] == 0.0
    assert nc["overall"]["cos"] == {"mean": None, "sd": None, "n": 0, "n_undefined": 4}
    assert "zero vector" in nc["per_perturbation"]["all/F"]["undefined"]["cos"]
    assert set(res["baselines"]) == {"no_change", "train_mean", "linear", "feature_ridge", "knn"}


def test_eval_json_round_trip_and_provenance(scored, tmp_path):
    data, res = scored
    ev = build_eval_json("baseline:additive", data, res, {"baseline": "additive"}, seed=3)
    path = write_eval_json(ev, tmp_path / "eval.json")
    assert read_eval_json(path) == json.loads(json.dumps(ev))
    assert set(ev) == {"schema_version", "model", "dataset", "split", "seed", "split_seed", "metrics", "baselines",
                       "provenance"}
    assert ev["seed"] == 3 and ev["split_seed"] == ev["split"]["seed"] == data.split.seed
    assert set(ev["metrics"]) == {"overall", "by_subgroup", "per_perturbation"}
    assert set(ev["metrics"]["overall"]) == set(M.ALL_METRICS)
    prov = ev["provenance"]
    assert prov["data_sha256"] == data.meta["data_sha256"] and prov["scfate_version"] and prov["time"]
    assert prov["checkpoint_sha256"] is None and "git_commit" in prov


def test_prediction_files(scored, tmp_path):
    data, _ = scored
    genes = list(data.adata.var_names)
    X = data.adata.X[: 10].toarray()
    pred = ad.AnnData(X, obs=pd.DataFrame({"condition": ["A+C"] * 10}), var=pd.DataFrame(index=genes))
    pred.write_h5ad(tmp_path / "pred.h5ad")
    res = evaluate(data, AnnDataPredictions(tmp_path / "pred.h5ad", genes), baselines=[], n_cells=40)
    per = res["model"]["per_perturbation"]
    assert "cos" in per["all/A+C"]["metrics"]
    assert per["all/F"]["undefined"]["da"].startswith("not defined: no predicted cells for 'F'")
    pred[:, genes[2:]].copy().write_h5ad(tmp_path / "short.h5ad")
    with pytest.raises(DataError, match=r"missing \['G0', 'G1'\] \(2\), extra \[\] \(0\)"):
        AnnDataPredictions(tmp_path / "short.h5ad", genes)


def test_evaluate_py_on_norman_devel(shared_data, tmp_path):
    proc = run(["evaluate.py", "baseline=additive", "dataset=norman_devel", "seed=1",
                f"paths.shared_data_dir={shared_data}"], tmp_path)
    ev = read_eval_json(tmp_path / "run" / "eval_baseline_additive_norman_devel_split1_seed1.json")
    assert ev["model"] == "baseline:additive" and ev["split"]["mode"] == "simulation" and ev["seed"] == 1
    assert set(ev["baselines"]) == {"no_change", "train_mean", "linear", "feature_ridge", "knn"}
    assert set(ev["metrics"]["by_subgroup"]) == {"unseen_single", "combo_seen1", "combo_seen2"}
    assert len(ev["metrics"]["per_perturbation"]) == len(ev["split"]["test"]) == 9
    assert ev["metrics"]["overall"]["da"]["n"] == 9 and ev["provenance"]["data_sha256"]
    for line in ("baseline:additive on norman_devel", "best baseline", "eval JSON written to"):
        assert line in proc.stdout  # the 5-line summary; the wide table is in a file beside the eval JSON
    table = (tmp_path / "run" / "eval_baseline_additive_norman_devel_split1_seed1.table.txt").read_text()
    assert "baseline:feature_ridge" in table and "combo_seen1" in table


def test_evaluate_py_refuses_what_it_cannot_do(tmp_path):
    proc = run(["evaluate.py"], tmp_path, expect=2)
    assert "needs exactly one of ckpt=PATH, baseline=NAME" in proc.stderr
    proc = run(["evaluate.py", "ckpt=model.pt"], tmp_path, expect=2)
    assert "No flow-head checkpoint at 'model.pt'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(["evaluate.py", "baseline=gears"], tmp_path, expect=2)
    assert "baseline='gears' is not a baseline" in proc.stderr


class NoisyAdditive(Predictor):
    """The additive baseline plus noise from torch's global RNG, predicted in batches: what the runner's windows
    must handle for the flow (a batched predictor drawing global random numbers) without changing a score."""

    name = "noisy_additive"

    def __init__(self):
        self.inner, self.batches = make_baseline("additive"), []

    def fit(self, pb):
        super().fit(pb)
        self.inner.fit(pb)

    def predict(self, cond, ctrl_cells):
        p = self.inner.predict(cond, ctrl_cells)
        return Prediction(p.mean, p.cells + torch.randn(p.cells.shape, dtype=torch.float64).numpy())

    def predict_each(self, conds, ctrl_cells):
        self.batches.append(len(conds))
        return super().predict_each(conds, ctrl_cells)


def test_batched_predictors_score_a_window_at_once_as_one_at_a_time(scored, monkeypatch):
    from scfate.eval import runner

    data, _ = scored

    def run(seed):
        ed = runner.EvalData(data, n_cells=40, seed=0)
        predictors = {"noisy": NoisyAdditive(), "additive": make_baseline("additive")}
        for p in predictors.values():
            p.fit(ed.pseudobulk())
        torch.manual_seed(seed)
        return runner.score_many(ed, predictors), predictors["noisy"].batches

    windowed, sizes = run(0)
    assert sizes == [4]  # every test condition in one window
    monkeypatch.setattr(runner, "WINDOW_VALUES", 1)
    single, sizes = run(0)
    assert sizes == [1, 1, 1, 1]
    for name in ("noisy", "additive"):
        assert windowed[name]["per_perturbation"] == single[name]["per_perturbation"]
    other, _ = run(1)  # the noise does reach the scores: another torch seed changes them
    assert other["noisy"]["overall"]["mmd"] != single["noisy"]["overall"]["mmd"]
