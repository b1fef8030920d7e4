"""Out-of-core preparation (scfate.data.chunked / stats): chunked statistics equal scanpy's HVG and t-test DE, the
in-memory and from-disk paths give the same prepared data as the scanpy pipeline they replace, and bad input and
limits (memory, interruption, a read-only raw file, CSC) fail safely."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from conftest import make_adata

from scfate.data import DataError, DataSpec, chunked, preprocess, schema, stats
from scfate.data.prepare import prepare
from scfate.data.pseudobulk import GroupSums
from scfate.data.rows import RowReader
from scfate.data.schema import CONDITION, CONTEXT, CONTROL
from scfate.data.synthetic import simulate
from scfate.utils.io import sha256_file

DEVEL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "norman19_mcfaline23_devel.h5ad"
SPLIT = {"mode": "unseen_perturbation", "seed": 1}


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few hundred rows, of uneven sizes, so that every pass really runs over many chunks."""
    monkeypatch.setattr(chunked, "CHUNK_VALUES", 173 * 300)


def log_adata(n_per=200, n_genes=200, seed=0):
    a = make_adata(n_per=n_per, n_genes=n_genes, seed=seed)  # 2,800 cells
    a.obs["batch"] = np.where(np.arange(a.n_obs) % 3 == 0, "b1", "b2")
    schema.normalise_obs(a, DataSpec(name="t", path="x", control_values=["ctrl"]))
    schema.normalise_expression(a, "counts")
    return a


@pytest.mark.parametrize("batch_key", [None, "batch"])
def test_hvg_statistics_and_genes_match_scanpy(small_chunks, batch_key):
    a = log_adata()
    ref = sc.pp.highly_variable_genes(a, n_top_genes=40, flavor="seurat", batch_key=batch_key, inplace=False)
    codes, n_batches = preprocess.batch_codes(a.obs, batch_key)
    moments = chunked.hvg_moments(chunked.RawMatrix.in_memory(a.X), np.arange(a.n_obs), "log1p", codes, n_batches)
    table = stats.hvg_table(moments, a.var_names, batched=batch_key is not None)
    for col in ("means", "dispersions", "dispersions_norm"):
        np.testing.assert_allclose(table[col], ref[col].astype(float), rtol=1e-9, atol=1e-12, equal_nan=True)
    score = np.nan_to_num(ref["dispersions_norm"].to_numpy(float), nan=-np.inf)
    expected = set(a.var_names[np.argsort(-score, kind="stable")[:40]])
    assert set(a.var_names[stats.top_hvg(table, 40)]) == expected
    if batch_key is None:  # no ties at the cut here, so scanpy's own flag picks the same genes
        assert expected == set(ref.index[ref["highly_variable"]])
    assert preprocess.select_genes(a, 40, ["G150"], batch_key) == [g for g in a.var_names if g in expected | {"G150"}]


def test_de_rankings_match_rank_genes_groups(small_chunks):
    a = log_adata()
    de = preprocess.differential_expression(a, n_de=20)
    keys, codes = preprocess.condition_codes(a.obs)
    moments = stats.GroupMoments(len(keys), a.n_vars)
    for start, X in chunked.RawMatrix.in_memory(a.X).chunks(np.arange(a.n_obs)):
        moments.add(X, codes[start:start + X.shape[0]])
    for ctx in ("c1", "c2"):
        sub = a[(a.obs[CONTEXT] == ctx).to_numpy()].copy()
        tested = sorted(set(sub.obs[CONDITION].astype(str)) - {CONTROL})
        sc.tl.rank_genes_groups(sub, groupby=CONDITION, groups=tested, reference=CONTROL, method="t-test",
                                rankby_abs=True, n_genes=sub.n_vars, use_raw=False)
        res = sub.uns["rank_genes_groups"]
        ctrl = keys.index((ctx, CONTROL))
        for cond in tested:
            names, scores = list(res["names"][cond]), np.asarray(res["scores"][cond], float)
            k = keys.index((ctx, cond))
            mine = stats.welch_scores(*moments.mean_var(k), int(moments.n[k]), *moments.mean_var(ctrl),
                                      int(moments.n[ctrl]))
            # scanpy stores the scores as float32; it ranks on its float64 scores, as rank_abs does
            np.testing.assert_allclose(mine[a.var_names.get_indexer(names)], scores, rtol=1e-6, atol=1e-6)
            assert list(a.var_names[stats.rank_abs(mine)]) == names  # the whole ranking, not only the top 20
            assert de[ctx][cond]["top_de"] == names[:20] and de[ctx][cond]["n_cells"] == 200


def test_group_sums_give_every_pseudobulk_mean(small_chunks, monkeypatch):
    a = log_adata(n_per=40)
    keys, codes = preprocess.condition_codes(a.obs)

    def moments_of(X):
        m = stats.GroupMoments(len(keys), a.n_vars)
        for start, part in chunked.RawMatrix.in_memory(X).chunks(np.arange(a.n_obs)):
            m.add(part, codes[start:start + part.shape[0]])
        return m

    moments = moments_of(a.X)
    monkeypatch.setattr(stats, "DENSE_BLOCK_VALUES", 0)  # the genome-wide branch (only touched cells) ...
    sparse_x = a.X.multiply(np.random.default_rng(0).random(a.shape) < 0.003).tocsr()
    sparse_x.eliminate_zeros()  # so few values that 4 x nnz < groups x genes in every chunk
    assert all(np.array_equal(x, y) for x, y in zip(moments_of(sparse_x).sums(), _dense(moments_of, sparse_x)))
    sums = GroupSums.from_moments(moments, keys)
    X = a.X.toarray().astype(np.float64)
    def rows(ctx, cond):
        return np.flatnonzero(((a.obs[CONTEXT] == ctx) & (a.obs[CONDITION] == cond)).to_numpy())

    reader = RowReader(matrix=a.X)
    for ctx, cond in [("c1", "A+B"), ("c2", "C"), ("c1", CONTROL)]:
        cells = rows(ctx, cond)
        np.testing.assert_allclose(sums.mean(ctx, cond, len(cells)), X[cells].mean(0), rtol=1e-12, atol=1e-14)
        out = cells[::3]  # a group less some of its cells: its sums less theirs
        np.testing.assert_allclose(sums.mean_without(ctx, cond, out, reader), X[np.setdiff1d(cells, out)].mean(0),
                                   rtol=1e-10, atol=1e-12)
    assert {cond for ctx, cond in sums.keys if ctx == "c1"} == {CONTROL, "A", "A+B", "A+D", "B", "B+C", "C"}
    with pytest.raises(DataError, match="rebuild_data=true"):
        sums.mean("c1", "A", n_cells=len(rows("c1", "A")) + 1)


def _dense(moments_of, X):
    """... gives the very same sums as the dense-block branch."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stats, "DENSE_BLOCK_VALUES", 1 << 40)
        return moments_of(X).sums()


def test_input_type_uses_the_in_memory_strided_sample(monkeypatch):
    # 2.5M stored values -> the sample takes every 2nd; the odd positions are non-integers that it must not see,
    # over chunks of an odd number of values (a per-chunk restart of the stride would pick them)
    n_rows, n_cols = 2500, 999
    data = np.ones(n_rows * n_cols, np.float32)
    data[1::2] = 0.5
    X = sp.csr_matrix((data, np.tile(np.arange(n_cols), n_rows), np.arange(0, n_rows * n_cols + 1, n_cols)),
                      shape=(n_rows, n_cols))
    assert schema.detect_input_type(X) == "counts"
    monkeypatch.setattr(chunked, "CHUNK_VALUES", 333 * n_cols)
    assert chunked.input_type(chunked.RawMatrix.in_memory(X), np.arange(n_rows), "auto") == "counts"
    assert chunked.input_type(chunked.RawMatrix.in_memory(X), np.arange(1, n_rows), "auto") == "log1p"


def user_features(h5ad: Path, tmp: Path, key: str = "condition") -> dict:
    labels = ad.read_h5ad(h5ad, backed="r").obs[key].astype(str).unique()
    genes = sorted({g for lab in labels for g in lab.split("+")} - {"ctrl", "control"})
    pd.DataFrame(np.random.default_rng(0).normal(size=(len(genes), 6)), index=genes).to_csv(tmp / "emb.csv",
                                                                                            header=False)
    return {"go": None, "progeny": None, "expression": {"n_components": 4}, "user": [str(tmp / "emb.csv")]}


def scanpy_reference(spec: DataSpec):
    """The preparation this module replaces: the whole file in memory, scanpy HVG and scanpy t-test DE."""
    a = ad.read_h5ad(spec.path)
    for col, values in spec.obs_filter.items():
        a = a[a.obs[col].astype(str).isin(values)].copy()
    schema.normalise_obs(a, spec)
    schema.normalise_expression(a, "auto")
    hvg = sc.pp.highly_variable_genes(a, n_top_genes=spec.n_hvg, flavor="seurat", batch_key=spec.batch_key,
                                      inplace=False)
    top = np.argsort(-np.nan_to_num(hvg["dispersions_norm"].to_numpy(float), nan=-np.inf), kind="stable")
    perts = {m for p in a.obs[schema.PERT].astype(str).unique() for m in schema.members(p, "gene")}
    chosen = set(a.var_names[top[:spec.n_hvg]]) | set(preprocess.match_measured(sorted(perts), a.var_names).values())
    a = a[:, [g for g in a.var_names if g in chosen]].copy()
    top_de = {}
    for ctx in sorted(a.obs[CONTEXT].astype(str).unique()):
        sub = a[(a.obs[CONTEXT] == ctx).to_numpy()].copy()
        sizes = sub.obs[CONDITION].value_counts()
        tested = sorted(c for c, n in sizes.items() if n >= 2 and c != CONTROL)
        sub = sub[sub.obs[CONDITION].isin(tested + [CONTROL]).to_numpy()].copy()
        sub.obs[CONDITION] = pd.Categorical(sub.obs[CONDITION].astype(str))
        sc.tl.rank_genes_groups(sub, groupby=CONDITION, groups=tested, reference=CONTROL, method="t-test",
                                rankby_abs=True, n_genes=sub.n_vars, use_raw=False)
        top_de.update({(ctx, c): [str(g) for g in sub.uns["rank_genes_groups"]["names"][c][:spec.n_de_genes]]
                       for c in tested})
    return a, top_de


def assert_same_prepared(x, y):
    assert list(x.adata.var_names) == list(y.adata.var_names) and x.adata.obs.equals(y.adata.obs)
    for name in ["X"] + [f"layers/{k}" for k in x.adata.layers]:
        mx = x.adata.X if name == "X" else x.adata.layers[name[7:]]
        my = y.adata.X if name == "X" else y.adata.layers[name[7:]]
        assert all(np.array_equal(getattr(mx, f), getattr(my, f)) for f in ("data", "indices", "indptr")), name
    assert x.de == y.de and x.meta["n_genes"] == y.meta["n_genes"]
    fx, fy = np.load(x.cache_dir / "features.npz"), np.load(y.cache_dir / "features.npz")
    assert fx.files == fy.files and all(np.array_equal(fx[k], fy[k]) for k in fx.files)


def check_paths_agree(spec: DataSpec, tmp_path: Path):
    mem = prepare(spec, tmp_path / "mem")
    disk = prepare(DataSpec(**{**spec.to_dict(), "backed": True}), tmp_path / "disk")
    assert not mem.adata.isbacked and disk.adata.isbacked
    disk.adata = ad.read_h5ad(disk.cache_dir / "prepared.h5ad")  # all of it: backed, the layers stay on disk
    assert_same_prepared(mem, disk)
    ref, top_de = scanpy_reference(spec)
    assert list(ref.var_names) == list(mem.adata.var_names)
    assert all(np.array_equal(getattr(ref.X, f), getattr(mem.adata.X, f)) for f in ("data", "indices", "indptr"))
    assert {(c, k): v["top_de"] for c, d in mem.de.items() for k, v in d.items() if k != "_skipped"} == top_de
    return mem


def test_synthetic_in_memory_and_chunked_preparation_are_identical(tmp_path, small_chunks):
    files = simulate({"seed": 0, "cells_per_condition": 15, "n_control_cells": 150}, tmp_path / "sim")
    spec = DataSpec(name="syn", path=str(files["h5ad"]), control_values=["ctrl"], n_hvg=100, split=SPLIT,
                    features=user_features(files["h5ad"], tmp_path))
    mem = check_paths_agree(spec, tmp_path)
    assert mem.meta["input_type"] == "counts" and "counts" in mem.adata.layers and mem.adata.n_obs > 2000


@pytest.mark.skipif(not DEVEL.is_file(), reason=f"real development file {DEVEL} not present (../shared/data)")
@pytest.mark.parametrize("extra", [{"obs_filter": {"dataset": ["norman19"]}}, {"batch_key": "dataset"}])
def test_devel_file_in_memory_and_chunked_preparation_are_identical(tmp_path, small_chunks, extra):
    spec = DataSpec(name="devel", path=str(DEVEL), control_values=["control", "ctrl"], n_hvg=150, split=SPLIT,
                    features=user_features(DEVEL, tmp_path), **extra)
    mem = check_paths_agree(spec, tmp_path)
    assert mem.meta["input_type"] == "log1p"


def tiny(tmp_path: Path, X=None, **kw) -> DataSpec:
    a = make_adata(n_per=20)
    if X is not None:
        a.X = X(a.X)
    path = tmp_path / f"raw{len(list(tmp_path.glob('raw*.h5ad')))}.h5ad"
    a.write_h5ad(path)
    feats = {"go": None, "progeny": None, "expression": {"n_components": 4}, "user": []}
    pd.DataFrame(np.eye(4), index=list("ABCD")).to_csv(tmp_path / "u.csv", header=False)
    feats["user"] = [str(tmp_path / "u.csv")]
    return DataSpec(**{"name": "tiny", "path": str(path), "control_values": ["ctrl"], "n_hvg": 10,
                       "features": feats, "split": SPLIT, **kw})


def test_dense_raw_file_reads_in_chunks_and_csc_is_refused(tmp_path, small_chunks):
    dense = tiny(tmp_path, X=lambda X: X.toarray())
    mem, disk = prepare(dense, tmp_path / "m"), prepare(DataSpec(**{**dense.to_dict(), "backed": True}), tmp_path / "d")
    disk.adata = ad.read_h5ad(disk.cache_dir / "prepared.h5ad")  # all of it: backed, the layers stay on disk
    assert_same_prepared(mem, disk)
    csc = tiny(tmp_path, X=lambda X: sp.csc_matrix(X), backed=True)
    with pytest.raises(DataError, match=r"column-major \(CSC\).*tocsr"):
        prepare(csc, tmp_path / "c")
    assert prepare(DataSpec(**{**csc.to_dict(), "backed": False}), tmp_path / "c").adata.n_obs == mem.adata.n_obs


def test_backed_raw_file_is_opened_read_only_and_never_modified(tmp_path):
    spec = tiny(tmp_path, backed=True)
    raw = Path(spec.path)
    before = (sha256_file(raw), raw.stat().st_mtime_ns)
    # HDF5 refuses to open a file for writing while this process holds it open read-only (chmod would not stop
    # root): any write-mode open of the raw file during preparation fails the test
    with h5py.File(raw, "r"):
        data = prepare(spec, tmp_path / "data")
    assert data.adata.isbacked and (sha256_file(raw), raw.stat().st_mtime_ns) == before


def test_interrupted_chunked_preparation_leaves_no_prepared_file(tmp_path, monkeypatch, small_chunks):
    spec = tiny(tmp_path, backed=True)
    monkeypatch.setattr(chunked, "CHUNK_VALUES", 30 * 50)  # 50-row chunks: several appends
    real, calls = chunked._append, []

    def interrupted(f, key, X):
        calls.append(key)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C half way through the prepared matrix
        real(f, key, X)

    monkeypatch.setattr(chunked, "_append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(spec, tmp_path / "data")
    (cache,) = (tmp_path / "data" / "prepared").iterdir()
    assert sorted(p.name for p in cache.iterdir()) == []  # no prepared.h5ad, no temporary file, no meta.json
    monkeypatch.setattr(chunked, "_append", real)
    assert prepare(spec, tmp_path / "data").adata.n_obs == 280


def test_too_large_for_memory_names_data_backed(tmp_path, monkeypatch, caplog):
    spec = tiny(tmp_path)
    assert chunked.plan(Path(spec.path), backed=False) is None  # small: prepared in memory
    assert chunked.plan(Path(spec.path), backed=True) == "data.backed=true"
    monkeypatch.setattr(chunked, "CHUNKED_ABOVE", 1000)
    assert "8.4e+03 cells x genes, above 1e+03" in chunked.plan(Path(spec.path), backed=False)
    monkeypatch.setattr(chunked, "CHUNKED_ABOVE", 10**12)
    monkeypatch.setattr(chunked, "available_memory_bytes", lambda: 20_000)  # a machine with 20 kB free
    with caplog.at_level(logging.INFO, logger="scfate.data.prepare"):
        with pytest.raises(DataError, match=r"too large for memory: .*Set data\.backed=true"):
            prepare(spec, tmp_path / "data")
    assert "in chunks read from disk (reading it into memory needs" in caplog.text  # the raw file went to disk
    meta = next((tmp_path / "data" / "prepared").glob("*/meta.json"))
    stamp = meta.stat().st_mtime_ns
    data = prepare(DataSpec(**{**spec.to_dict(), "backed": True}), tmp_path / "data")
    assert data.adata.isbacked and meta.stat().st_mtime_ns == stamp  # the cache is reused as it is
    assert os.access(data.cache_dir / "prepared.h5ad", os.R_OK)
