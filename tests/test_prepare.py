"""Preparation: cache, gene selection, DE genes (checked against a direct Welch t computation), featurisation errors,
and the real development file."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_adata

from scfate.data import DataError, DataSpec
from scfate.data.prepare import prepare
from scfate.data.preprocess import differential_expression, select_genes
from scfate.data.schema import CONTEXT, PERT, normalise_expression, normalise_obs


def user_embedding(path, genes=("A", "B", "C", "D"), dim=5):
    rng = np.random.default_rng(1)
    pd.DataFrame(rng.normal(size=(len(genes), dim)), index=list(genes)).to_csv(path, header=False)
    return str(path)


def tiny_spec(tmp_path, **kw) -> DataSpec:
    path = tmp_path / "tiny.h5ad"
    if not path.exists():
        make_adata().write_h5ad(path)
    features = {"go": None, "progeny": None, "expression": {"n_components": 4},
                "user": [user_embedding(tmp_path / "emb.csv")]}
    split = {"mode": "unseen_perturbation", "seed": 1, "test_fraction": 0.3, "val_fraction": 0.2}
    return DataSpec(**{"name": "tiny", "path": str(path), "control_values": ["ctrl"], "n_hvg": 10,
                       "features": features, "split": split, **kw})


def test_prepare_builds_then_reuses_the_cache(tmp_path):
    spec = tiny_spec(tmp_path)
    data = prepare(spec, tmp_path / "data")
    meta_file = data.cache_dir / "meta.json"
    stamp = meta_file.stat().st_mtime_ns
    again = prepare(spec, tmp_path / "data")
    assert again.cache_dir == data.cache_dir and meta_file.stat().st_mtime_ns == stamp
    # a preparation setting changes the cache key: no stale reuse
    other = prepare(tiny_spec(tmp_path, n_hvg=12), tmp_path / "data")
    assert other.cache_dir != data.cache_dir
    assert data.meta["input_type"] == "counts" and "counts" in data.adata.layers
    assert data.perturbations == ["A", "A+B", "A+D", "B", "B+C", "C"]
    assert data.features.units == ["A", "B", "C", "D"]
    assert json.loads(data.split_path.read_text())["test"] == data.split.test


def test_hvg_selection_keeps_measured_perturbed_genes(tmp_path):
    data = prepare(tiny_spec(tmp_path), tmp_path / "data")
    genes = list(data.adata.var_names)
    assert {"A", "C"} <= set(genes) and 10 <= len(genes) <= 12
    a = make_adata()
    normalise_expression(a, "auto")
    assert len(select_genes(a, 5, keep=["G20"])) == 6 and "G20" in select_genes(a, 5, keep=["G20"])


def _welch_t(x, y):
    mx, my = x.mean(0), y.mean(0)
    vx, vy = x.var(0, ddof=1), y.var(0, ddof=1)
    return (mx - my) / np.sqrt(vx / len(x) + vy / len(y))


def test_de_genes_are_top_abs_welch_t_per_context():
    a = make_adata(n_per=30, n_genes=40)
    normalise_obs(a, DataSpec(name="t", path="x", control_values=["ctrl"]))
    normalise_expression(a, "auto")
    de = differential_expression(a, n_de=20)
    assert set(de) == {"c1", "c2"}
    X = a.X.toarray()
    for ctx in ("c1", "c2"):
        in_ctx = (a.obs[CONTEXT] == ctx).to_numpy()
        ctrl = X[in_ctx & (a.obs[PERT] == "control").to_numpy()]
        pert = X[in_ctx & (a.obs[PERT] == "A+B").to_numpy()]
        t = np.nan_to_num(_welch_t(pert, ctrl))
        expected = set(a.var_names[np.argsort(-np.abs(t), kind="stable")[:20]])
        got = de[ctx]["A+B"]["top_de"]
        assert len(got) == 20 and len(set(got) ^ expected) <= 2  # ties at the 20th rank may swap
        assert got[0] == a.var_names[np.argmax(np.abs(t))]


def test_non_dropout_de_skips_genes_zero_only_under_the_perturbation():
    a = make_adata(n_per=30, n_genes=40, contexts=("c1",))
    normalise_obs(a, DataSpec(name="t", path="x", control_values=["ctrl"]))
    normalise_expression(a, "auto")
    X = a.X.toarray()
    is_a = (a.obs[PERT] == "A").to_numpy()
    X[is_a, 5] = 0.0  # gene G3 silenced by A but expressed in control: the most DE gene, but a dropout
    a.X = type(a.X)(X)
    entry = differential_expression(a)["c1"]["A"]
    assert "G3" in entry["top_de"][:3]
    assert "G3" not in entry["top_non_dropout_de"] and len(entry["top_non_dropout_de"]) == 20


def test_perturbed_gene_without_features_is_named(tmp_path):
    spec = tiny_spec(tmp_path)
    spec.features["user"] = [user_embedding(tmp_path / "emb3.csv", genes=("A", "B", "C"))]
    spec.features["expression"] = None
    with pytest.raises(DataError, match=r"No features in any view .* for 1 gene\(s\): D\. Fix: add a user embedding"):
        prepare(spec, tmp_path / "data")


def test_context_without_controls_is_rejected(tmp_path):
    a = make_adata()
    a = a[~((a.obs.condition == "ctrl") & (a.obs.cell_type == "c2"))].copy()
    a.write_h5ad(tmp_path / "noctrl.h5ad")
    with pytest.raises(DataError, match=r"Context\(s\) \['c2'\] have perturbed cells but no control cells"):
        prepare(tiny_spec(tmp_path, path=str(tmp_path / "noctrl.h5ad")), tmp_path / "data")


def test_bad_inputs_leave_no_half_written_cache(tmp_path):
    a = make_adata()
    a.X = a.X.astype(np.float32)
    a.X.data[3] = np.nan
    a.write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(DataError, match="NaN/Inf"):
        prepare(tiny_spec(tmp_path, path=str(tmp_path / "nan.h5ad")), tmp_path / "data")
    assert not list((tmp_path / "data").glob("prepared/*/meta.json"))
    with pytest.raises(DataError, match=r"obs_filter names obs column 'batch'"):
        prepare(tiny_spec(tmp_path, obs_filter={"batch": ["b1"]}), tmp_path / "data")


def test_norman_devel_real_file(shared_data, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from scfate.pipelines.config import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("prepare", overrides=["dataset=norman_devel", "seed=1",
                                            f"paths.shared_data_dir={shared_data}"])
    data = prepare(instantiate(cfg.data), tmp_path / "data")
    assert data.meta["input_type"] == "log1p"
    assert (data.meta["n_cells"], data.meta["n_genes"], data.meta["n_control_cells"]) == (3375, 500, 100)
    assert len(data.perturbations) == 33 and sum("+" in p for p in data.perturbations) == 15
    assert data.meta["measured_perturbed_genes"] == {"TMSB4X": "TMSB4X"}
    assert "KLF1+MAP2K6" in data.perturbations and "SET+KLF1" not in data.perturbations  # canonical order
    assert data.features.matrix.shape == (31, 64 + 14 + 16)
    assert set(data.split.subgroups["test"]) == {"unseen_single", "combo_seen0", "combo_seen1", "combo_seen2"}
    de = data.de["k562"]
    assert all(len(de[p]["top_de"]) == 20 and len(de[p]["top_non_dropout_de"]) == 20 for p in data.perturbations)
