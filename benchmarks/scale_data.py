"""Synthetic screens of any size for benchmarks/bench_scale.py, written in row chunks and never densified whole, and
the I/O floor: the rows a training run reads, read straight through h5py with no anndata layer above it.

The file looks like a genome-wide CRISPRi screen (Replogle et al. 2022) scaled down in genes: raw integer counts as
float32 CSR in ``X``, one cell line, ``condition`` = ``ctrl`` or the knocked-down gene, each gene knocking itself
down and shifting a few dozen others, so that preparation's HVG and DE passes have real work to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

CHUNK_CELLS = 8192  # 8192 x 2000 Poisson draws per chunk: ~130 MB of int64 at most, whatever the file's size
CONTROL_FRACTION = 0.2


def screen_design(n_genes: int, n_perts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(base expression rate per gene [G], multiplicative effect per perturbation [P + 1, G], row 0 = control)."""
    rng = np.random.default_rng(seed)
    base = rng.lognormal(mean=-2.6, sigma=1.2, size=n_genes)  # ~10% of the counts non-zero, like 10x data
    effect = np.ones((n_perts + 1, n_genes))
    for p in range(n_perts):
        targets = rng.choice(n_genes, 40, replace=False)
        effect[p + 1, targets] = rng.lognormal(0.0, 0.6, size=40)
        effect[p + 1, p] = 0.1  # the knocked-down gene itself
    return base, effect


def write_screen(path: Path, n_cells: int, n_genes: int = 2000, n_perts: int = 100, seed: int = 0) -> dict:
    """Write the screen to ``path`` (h5ad) chunk by chunk; returns its size. Cells come in random order, as in a
    pooled screen, so a perturbation's cells are scattered over the file."""
    import anndata as ad
    import h5py
    from anndata.io import sparse_dataset, write_elem

    rng = np.random.default_rng([seed, n_cells])
    base, effect = screen_design(n_genes, n_perts, seed)
    genes = [f"G{i:05d}" for i in range(n_genes)]
    is_ctrl = rng.random(n_cells) < CONTROL_FRACTION
    code = np.where(is_ctrl, 0, rng.integers(1, n_perts + 1, n_cells))
    labels = np.array(["ctrl", *genes[:n_perts]])
    obs = pd.DataFrame({"condition": pd.Categorical.from_codes(code, categories=labels),
                        "cell_type": pd.Categorical.from_codes(np.zeros(n_cells, int), categories=["K562"])},
                       index=pd.RangeIndex(n_cells).astype(str))
    tmp = path.with_name(path.name + ".tmp")
    ad.AnnData(obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(tmp)
    nnz = 0
    with h5py.File(tmp, "a") as f:
        for start in range(0, n_cells, CHUNK_CELLS):
            c = code[start:start + CHUNK_CELLS]
            depth = rng.lognormal(0.0, 0.3, size=(len(c), 1))  # library size varies between cells
            X = sp.csr_matrix(rng.poisson(base * effect[c] * depth).astype(np.float32))
            nnz += X.nnz
            if "X" in f:
                sparse_dataset(f["X"]).append(X)
            else:
                write_elem(f, "X", X)
    tmp.replace(path)
    return {"cells": n_cells, "genes": n_genes, "perturbations": n_perts, "nnz": int(nnz),
            "density": round(nnz / (n_cells * n_genes), 4), "file_mb": round(path.stat().st_size / 2**20, 1)}


class H5pyRows:
    """Rows of a CSR ``X`` read with one h5py slice of ``data`` and ``indices`` per row (``indptr`` in memory),
    densified to float32: the least any reader of a random batch must do, so its speed is the training I/O floor."""

    def __init__(self, path: Path, key: str = "X"):
        import h5py

        self.group = h5py.File(path, "r")[key]
        self.indptr = self.group["indptr"][:]
        self.data, self.indices = self.group["data"], self.group["indices"]
        self.n_genes = int(self.group.attrs["shape"][1])

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        out = np.zeros((len(idx), self.n_genes), np.float32)
        for i, row in enumerate(np.asarray(idx)):
            a, b = self.indptr[row], self.indptr[row + 1]
            if b > a:
                out[i, self.indices[a:b]] = self.data[a:b]
        return out


def sequential_read(path: Path, rows_per_read: int = CHUNK_CELLS) -> dict:
    """One pass over the whole raw ``X`` in row blocks through h5py: the floor of any preparation pass."""
    import time

    import h5py

    start, nbytes = time.perf_counter(), 0
    with h5py.File(path, "r") as f:
        X = f["X"]
        indptr = X["indptr"][:]
        n = len(indptr) - 1
        for r in range(0, n, rows_per_read):
            a, b = indptr[r], indptr[min(r + rows_per_read, n)]
            nbytes += X["data"][a:b].nbytes + X["indices"][a:b].nbytes
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "cells_per_s": round(n / seconds), "mb_per_s": round(nbytes / 2**20 / seconds)}
