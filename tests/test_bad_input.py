"""Bad input a user gives: partial or broken prediction files, a missing data.path, mistyped config keys, outputs
that cannot be written (found before training, not after) or are private, odd cells. Each ends as one clear line
(exit code 2 from the command line) or a warning, never a library traceback or a silently misleading score."""

import logging
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import PROJECT, make_adata
from test_prepare import tiny_spec
from test_run_identity import SMALL, compose_config, compose_train

from scfate.errors import DataError, UsageError


def cli(*args, tmp_path):
    """An entry point as a user runs it; returns the finished process."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, *args, f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}"]
    return subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)


def compose_evaluate(tmp_path, *overrides):
    return compose_config("evaluate", [*SMALL, f"paths.data_dir={tmp_path / 'data'}", "eval_n_cells=20",
                                       "eval_baselines=[no_change,train_mean]", *overrides], tmp_path / "out")


def test_partial_predictions_are_compared_with_the_baselines_on_the_same_conditions(tmp_path, caplog):
    from scfate.cli import run_evaluate
    from scfate.data import schema
    from scfate.data.prepare import prepare
    from scfate.pipelines.config import instantiate_spec, split_seed_of

    pred_file = tmp_path / "pred.h5ad"
    cfg = compose_evaluate(tmp_path, f"predictions={pred_file}")
    data = prepare(instantiate_spec(cfg, split_seed_of(cfg)), cfg.paths.data_dir)
    obs = data.adata.obs
    chosen = sorted(data.split.test)[:2]
    rows = np.flatnonzero(obs[schema.CONDITION].astype(str).isin(chosen).to_numpy())
    labels = obs[schema.CONDITION].astype(str).to_numpy()[rows]
    pred = ad.AnnData(data.adata.X[rows], obs=pd.DataFrame({"condition": labels}, index=[f"p{i}" for i in rows]),
                      var=data.adata.var[[]])
    pred.write_h5ad(pred_file)
    with caplog.at_level(logging.WARNING, logger="scfate"):
        ev = run_evaluate(cfg)
    cov = ev["coverage"]
    assert cov["n_covered_perturbations"] == 2 and cov["n_test_perturbations"] == len(data.split.test) > 2
    assert cov["n_scored_conditions"] < cov["n_test_conditions"] and len(cov["not_covered_perturbations"]) > 0
    model = ev["metrics"]["per_perturbation"]
    assert {e["perturbation"] for e in model.values()} == set(chosen)
    for base in ev["baselines"].values():  # like for like: the same conditions, the same n
        assert set(base["per_perturbation"]) == set(model)
        assert base["overall"]["da"]["n"] + base["overall"]["da"]["n_undefined"] == len(model)
    assert f"covers 2 of {len(data.split.test)} test perturbations" in caplog.text
    assert list((tmp_path / "out").glob("eval_predictions_*.json"))
    pred.obs["condition"] = "not_a_test_condition"
    pred.write_h5ad(pred_file)
    with pytest.raises(DataError, match=r"pred\.h5ad covers none of the \d+ test perturbations"):
        run_evaluate(cfg)


def test_predictions_with_nan_or_inf_name_the_file_and_the_perturbation(tmp_path):
    from scfate.eval.predictions import AnnDataPredictions

    genes = [f"G{i}" for i in range(5)]
    X = np.ones((6, 5), dtype=np.float32)
    X[4, 2] = np.nan
    obs = pd.DataFrame({"condition": ["A", "A", "B", "B", "A+B", "A+B"]}, index=[f"p{i}" for i in range(6)])
    ad.AnnData(X, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / "dense.h5ad")
    with pytest.raises(DataError, match=r"dense\.h5ad has NaN/Inf values in 1 predicted cell\(s\) of 1 "
                                        r"perturbation\(s\): \['A\+B'\]"):
        AnnDataPredictions(tmp_path / "dense.h5ad", genes)
    X[4, 2], X[1, 0] = 1.0, np.inf
    ad.AnnData(sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / "sparse.h5ad")
    with pytest.raises(DataError, match=r"sparse\.h5ad has NaN/Inf .*\['A'\]"):
        AnnDataPredictions(tmp_path / "sparse.h5ad", genes)


def test_custom_dataset_without_a_path_says_data_path(tmp_path, capsys):
    from scfate.cli import run_evaluate
    from scfate.errors import friendly_errors

    cfg = compose_evaluate(tmp_path, "dataset=custom", "baseline=no_change")
    with pytest.raises(SystemExit) as exit_:  # as train.py / evaluate.py run it (inside hydra.main)
        friendly_errors(run_evaluate)(cfg)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "data.path is required" in err and "add data.path=FILE" in err


@pytest.mark.parametrize("script,typo,node,valid", [
    ("train.py", "model.thetadim=4", "'model' has", "theta_dim"),
    ("train.py", "flow.epoch=3", "'flow' has ['head']", "epochs.flow"),
    ("reflow.py", "epoch=3", "the top level has", "epochs"),
])
def test_config_key_typos_list_the_valid_keys(tmp_path, script, typo, node, valid):
    proc = cli(script, typo, tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    key = typo.split("=")[0]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"scfate error: {key} is not a config key: {node}") and valid in line, line
    assert "To append to your config use" not in proc.stderr and "Traceback" not in proc.stderr


def test_outputs_take_the_umask_not_0600(tmp_path):
    from scfate.utils.io import atomic_write_json

    old = os.umask(0o027)
    try:
        path = atomic_write_json(tmp_path / "a.json", {"x": 1})
        assert path.stat().st_mode & 0o777 == 0o640
        os.umask(0o002)
        assert atomic_write_json(tmp_path / "b.json", {}).stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


def test_an_unwritable_run_folder_is_refused_before_anything_runs(tmp_path):
    from scfate.cli import run_train

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is expected")
    with pytest.raises(UsageError, match=rf"{blocker}/run: {blocker} is a file, not a folder.*run_dir=PATH"):
        run_train(compose_train(tmp_path, f"run_dir={blocker / 'run'}"))
    with pytest.raises(UsageError, match=r"paths\.artifacts_dir=PATH"):
        run_train(compose_train(tmp_path, "stage=backbone", f"paths.artifacts_dir={blocker / 'art'}"))
    assert not (tmp_path / "data").exists()  # refused before the data were even prepared


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_output_folder_is_refused(tmp_path):
    from scfate.cli import run_evaluate

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UsageError, match=r"ro is not writable.*out=PATH"):
            run_evaluate(compose_evaluate(tmp_path, "baseline=no_change", f"out={ro / 'eval.json'}"))
    finally:
        ro.chmod(0o700)


def test_duplicate_cell_names_and_single_cell_perturbations_warn(tmp_path, caplog):
    from scfate.data.prepare import prepare

    a = make_adata()
    keep = ~((a.obs["condition"] == "B+C") & (a.obs["cell_type"] == "c1")).to_numpy()
    keep[np.flatnonzero(~keep)[0]] = True  # one B+C cell left in c1
    a = a[keep].copy()
    names = a.obs_names.to_numpy().copy()
    names[1:4] = names[0]  # 4 cells named cell0
    a.obs_names = names
    a.write_h5ad(tmp_path / "tiny.h5ad")  # tiny_spec reads this file
    with caplog.at_level(logging.WARNING, logger="scfate"):
        prepare(tiny_spec(tmp_path), tmp_path / "data")
    assert "1 cell names (obs_names) occur more than once (4 cells), e.g. ['cell0']" in caplog.text
    assert "1 perturbation(s) have a single cell in their context, e.g. ['B+C (c1)']" in caplog.text


def test_a_file_with_no_cells_is_named_before_anything_else(tmp_path):
    import anndata as ad
    import numpy as np
    import pandas as pd

    from scfate.data.prepare import prepare
    from scfate.data.spec import DataSpec
    from scfate.errors import DataError

    path = tmp_path / "empty.h5ad"
    ad.AnnData(np.zeros((0, 3), np.float32), obs=pd.DataFrame({"condition": pd.Series([], dtype=str)}),
               var=pd.DataFrame(index=["A", "B", "C"])).write_h5ad(path)
    with pytest.raises(DataError, match="0 cells x 3 genes: nothing to prepare"):
        prepare(DataSpec(name="empty", path=str(path)), tmp_path / "data")
