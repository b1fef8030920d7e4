"""Per-group sufficient statistics (cell counts, sums, sums of squares) accumulated over row chunks, and everything
preparation derives from them: seurat-flavour HVG dispersions, Welch t DE rankings and pseudobulk means.

One implementation for both preparation paths: the in-memory path feeds its matrix through the same chunks, so a
file prepared in memory and one prepared from disk get the same genes and DE lists. The formulas are scanpy's
(``pp.highly_variable_genes(flavor='seurat')`` and ``tl.rank_genes_groups(method='t-test', reference=...)``),
reproduced from these statistics; tests/test_out_of_core.py checks them against scanpy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfate.errors import DataError

# a chunk's groups x genes block of sums is built densely up to this size (or 4x the chunk's values): above it
# (thousands of perturbations x thousands of genes) only the cells the chunk touches are summed
DENSE_BLOCK_VALUES = 1 << 22


class GroupMoments:
    """``n [K]``, ``s [K, G]``, ``ss [K, G]`` (float64) of the rows of each of ``K`` groups, added chunk by chunk.

    Squares are taken in the data's own dtype before the float64 sum, as scanpy's sparse kernel does, so that
    variances agree with scanpy's to float64 rounding rather than to float32 rounding.
    """

    def __init__(self, n_groups: int, n_genes: int):
        self.n = np.zeros(n_groups, np.int64)
        self.s = np.zeros(n_groups * n_genes)
        self.ss = np.zeros(n_groups * n_genes)
        self.shape = (n_groups, n_genes)

    def add(self, X, codes: np.ndarray) -> None:
        """Rows of CSR ``X`` belong to groups ``codes`` (rows with code -1 belong to none)."""
        X = sp.csr_matrix(X)
        codes = np.asarray(codes, np.int64)
        self.n += np.bincount(codes[codes >= 0], minlength=self.shape[0])
        groups, local = np.unique(codes, return_inverse=True)  # the groups this chunk touches (-1 first, if any)
        per_row = np.diff(X.indptr)
        keep = np.repeat(codes, per_row) >= 0
        values, indices, G = X.data[keep], X.indices[keep], self.shape[1]
        weights = (values.astype(np.float64), (values * values).astype(np.float64))
        if len(groups) * G <= max(4 * len(values), DENSE_BLOCK_VALUES):  # a dense block is cheap here
            flat = np.repeat(local, per_row)[keep] * G + indices
            ok = groups >= 0
            for acc, w in zip((self.s, self.ss), weights):
                block = np.bincount(flat, weights=w, minlength=len(groups) * G).reshape(len(groups), G)
                acc.reshape(self.shape)[groups[ok]] += block[ok]
        else:  # many groups (a genome-wide screen): only the (group, gene) cells present, not a K x G block
            flat, inv = np.unique(np.repeat(codes, per_row)[keep] * G + indices, return_inverse=True)
            for acc, w in zip((self.s, self.ss), weights):
                acc[flat] += np.bincount(inv, weights=w, minlength=len(flat))
        # both ways add each (group, gene) cell's values in row order, so the sums do not depend on the branch

    def sums(self) -> tuple[np.ndarray, np.ndarray]:
        return self.s.reshape(self.shape), self.ss.reshape(self.shape)

    def mean_var(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased variance of group ``k`` (scanpy's ``_get_mean_var``: no correction for one row)."""
        s, ss = self.sums()
        n = int(self.n[k])
        mean = s[k] / n
        var = ss[k] / n - mean ** 2
        if n != 1:
            var = var * (n / (n - 1))
        return mean, var


def seurat_dispersions(mean: np.ndarray, var: np.ndarray, n_bins: int = 20) -> pd.DataFrame:
    """scanpy's seurat flavour for one batch, from the mean and variance of ``expm1(X)``: log dispersions
    normalised within 20 equal-width bins of log mean (a bin with a single gene gets a normalised dispersion of 1)."""
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = var / mean
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
    df = pd.DataFrame({"means": np.log1p(mean), "dispersions": dispersion})
    df["mean_bin"] = pd.cut(df["means"], bins=n_bins)
    stats = df.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    single = stats["dev"].isnull()
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0
    stats = stats.loc[df["mean_bin"]].set_index(df.index)
    df["dispersions_norm"] = (df["dispersions"] - stats["avg"]) / stats["dev"]
    return df.drop(columns="mean_bin")


def hvg_table(moments: GroupMoments, var_names, batched: bool) -> pd.DataFrame:
    """``means``, ``dispersions``, ``dispersions_norm`` per gene, from the moments of ``expm1(X)`` per batch.

    With batches (scanpy's ``batch_key``), each batch is scored on the genes it expresses, the genes it does not
    express count as 0 in that batch (as scanpy fills them), and each column is averaged over batches (NaN skipped).
    """
    if not batched:
        return seurat_dispersions(*moments.mean_var(0)).set_index(pd.Index(var_names))
    s, _ = moments.sums()
    parts = []
    for b in range(moments.shape[0]):
        if moments.n[b] == 0:
            continue
        expressed = s[b] > 0  # scanpy filters unexpressed genes per batch (filter_genes min_cells=1)
        mean, var = moments.mean_var(b)
        part = np.zeros((moments.shape[1], 3))
        part[expressed] = seurat_dispersions(mean[expressed], var[expressed]).to_numpy()
        parts.append(part)
    stacked = np.stack(parts)
    seen = (~np.isnan(stacked)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = np.where(seen > 0, np.nansum(stacked, 0) / seen, np.nan)
    return pd.DataFrame(avg, index=pd.Index(var_names), columns=["means", "dispersions", "dispersions_norm"])


def top_hvg(table: pd.DataFrame, n_hvg: int) -> np.ndarray:
    """Indices of exactly ``n_hvg`` genes by normalised dispersion (scanpy's cut-off would keep every gene tied at
    the threshold), ties broken by gene order so that the choice is reproducible."""
    score = np.nan_to_num(np.asarray(table["dispersions_norm"], dtype=float), nan=-np.inf)
    return np.argsort(-score, kind="stable")[:n_hvg]


def welch_scores(mean1, var1, n1: int, mean2, var2, n2: int) -> np.ndarray:
    """Welch's t of group 1 against group 2 as scanpy computes it (scipy from the statistics; NaN -> 0)."""
    from scipy import stats

    with np.errstate(invalid="ignore", divide="ignore"):
        scores, _ = stats.ttest_ind_from_stats(mean1=mean1, std1=np.sqrt(var1), nobs1=n1, mean2=mean2,
                                               std2=np.sqrt(var2), nobs2=n2, equal_var=False)
    scores = np.asarray(scores, dtype=float)
    scores[np.isnan(scores)] = 0
    return scores


def rank_abs(scores: np.ndarray) -> np.ndarray:
    """Gene order by |score| as scanpy's ``_select_top_n`` builds it (same partition and sort, so that exact ties
    fall the same way)."""
    a = np.abs(scores)
    partition = np.argpartition(a, -len(a))[-len(a):]
    return partition[np.argsort(a[partition])[::-1]]


def de_from_moments(moments: GroupMoments, keys: list[tuple[str, str]], var_names, control: str,
                    n_de: int) -> dict[str, dict]:
    """The DE table of scfate.data.preprocess.differential_expression from per-(context, condition) moments."""
    var_names = np.asarray(var_names).astype(str)
    s, _ = moments.sums()
    index = {key: k for k, key in enumerate(keys)}
    out: dict[str, dict] = {}
    for ctx in sorted({c for c, _ in keys}):
        conds = {cond: index[(c, cond)] for c, cond in keys if c == ctx and moments.n[index[(c, cond)]] > 0}
        skipped = sorted(c for c, k in conds.items() if moments.n[k] < 2 and c != control)
        tested = sorted(c for c, k in conds.items() if moments.n[k] >= 2 and c != control)
        result: dict = {"_skipped": skipped}
        out[ctx] = result
        if not tested:
            continue
        ref = conds.get(control)
        if ref is None:
            raise DataError(f"Context(s) {[ctx]} have perturbed cells but no control cells, so no effect can be "
                            "measured there. Add their controls or drop them with data.obs_filter.")
        if moments.n[ref] < 2:
            raise DataError(f"Context {ctx!r} has a single control cell: no variance to test perturbations against. "
                            "Add its controls or drop the context with data.obs_filter.")
        ctrl_mean, ctrl_var = moments.mean_var(ref)
        ctrl_zero = s[ref] == 0
        for cond in tested:
            k = conds[cond]
            mean, var = moments.mean_var(k)
            order = rank_abs(welch_scores(mean, var, int(moments.n[k]), ctrl_mean, ctrl_var, int(moments.n[ref])))
            dropout = (s[k] == 0) & ~ctrl_zero  # GEARS: non-dropout = non-zero, or zero in both condition and control
            result[cond] = {"top_de": var_names[order[:n_de]].tolist(),
                            "top_non_dropout_de": var_names[order[~dropout[order]][:n_de]].tolist(),
                            "n_cells": int(moments.n[k])}
    return out
