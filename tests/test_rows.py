"""Backed row reads (scfate.data.rows) against the same rows of the matrix in memory."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scfate.data import rows as rows_mod
from scfate.data.rows import RowReader, mean_rows


@pytest.fixture()
def matrix_file(tmp_path):
    import anndata as ad

    rng = np.random.default_rng(0)
    X = sp.random(500, 40, density=0.15, format="csr", random_state=1, dtype=np.float32)
    X[rng.choice(500, 30, replace=False)] = 0  # empty rows: zero-length slices
    X.eliminate_zeros()
    path = tmp_path / "m.h5ad"
    ad.AnnData(X=X, layers={"counts": sp.csr_matrix(X * 3)}).write_h5ad(path)
    return X, path


@pytest.mark.parametrize("max_gap", [0, 50, 1 << 20])  # every row its own read / some blocks / one block
def test_backed_rows_equal_in_memory(matrix_file, monkeypatch, max_gap):
    X, path = matrix_file
    monkeypatch.setattr(rows_mod, "MAX_GAP", max_gap)
    rng = np.random.default_rng(max_gap)
    backed, memory = RowReader(path=path), RowReader(matrix=X)
    for idx in (rng.choice(500, 64, replace=True), rng.permutation(500), np.array([7]), np.array([499, 0, 499]),
                np.arange(100, 140)):
        np.testing.assert_array_equal(backed(idx), memory(idx))
        np.testing.assert_array_equal(backed(idx), X[idx].toarray())
    np.testing.assert_array_equal(RowReader(path=path, key="layers/counts")(np.arange(0, 500, 7)),
                                  (X * 3)[np.arange(0, 500, 7)].toarray())
    idx = np.sort(rng.choice(500, 300, replace=False))
    np.testing.assert_allclose(mean_rows(backed, idx, chunk=64), X[idx].toarray().mean(0), rtol=1e-6)


def test_dense_backed_matrix_is_read_too(tmp_path):
    import anndata as ad

    X = np.random.default_rng(0).random((50, 6)).astype(np.float32)
    ad.AnnData(X=X).write_h5ad(tmp_path / "d.h5ad")
    idx = np.array([3, 1, 40, 1])
    np.testing.assert_array_equal(RowReader(path=tmp_path / "d.h5ad")(idx), X[idx])


def test_condition_groups_match_a_loop_over_cells():
    """The vectorised grouping against the plain definition, with context units and a missing value."""
    import pandas as pd

    from scfate.data import schema
    from scfate.data.datamodule import condition_groups

    rng = np.random.default_rng(0)
    n = 3000
    pert = rng.choice(["ctrl", "A", "B", "A+B", "C"], n)
    ctx = rng.choice(["K562", "RPE1"], n)
    cond = np.where(pert == "ctrl", "ctrl", np.char.add(pert.astype(str), rng.choice(["@1", "@10"], n)))
    obs = pd.DataFrame({schema.PERT: pd.Categorical(pert), schema.CONTEXT: pd.Categorical(ctx),
                        schema.CONDITION: pd.Categorical(cond)})
    obs.loc[5, schema.CONDITION] = np.nan
    wanted = {"A", "A+B", "RPE1::C"}
    keys = obs[[schema.CONTEXT, schema.CONDITION, schema.PERT]].astype(str)
    expect = {}
    for i, (c, k, p) in enumerate(keys.itertuples(index=False)):
        if p in wanted or f"{c}::{p}" in wanted:
            expect.setdefault((c, k, p), []).append(i)
    got = condition_groups(obs, wanted)
    assert [(g.context, g.condition, g.perturbation) for g in got] == sorted(expect)
    for g in got:
        np.testing.assert_array_equal(g.cells, expect[(g.context, g.condition, g.perturbation)])
    assert {g.perturbation for g in got} == {"A", "A+B", "C"}
    assert {g.context for g in got if g.perturbation == "C"} == {"RPE1"}


def test_backed_read_leaves_layers_on_disk(matrix_file):
    """anndata's backed mode reads every layer into memory (as large as X); ours leaves them on disk."""
    from scfate.data.load import read_h5ad, stored_layers

    X, path = matrix_file
    backed = read_h5ad(path, backed=True)
    assert backed.isbacked and len(backed.layers) == 0 and stored_layers(backed) == {"counts"}
    assert stored_layers(read_h5ad(path)) == {"counts"}
    np.testing.assert_array_equal(backed.X[np.array([2, 9])].toarray(), X[[2, 9]].toarray())
    backed.file.close()
