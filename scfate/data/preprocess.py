"""Gene selection and differential expression, on log-normalised data.

DE follows the field's evaluation protocol (GEARS / scFATE §3): per context, each condition against that context's
controls with ``scanpy.tl.rank_genes_groups(method='t-test', rankby_abs=True)`` over all selected genes; the top-20
DE genes, and the GEARS non-dropout top-20 (`get_dropout_non_zero_genes`: skip genes whose mean is zero under the
perturbation but not in control).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfate.data.schema import CONDITION, CONTEXT, CONTROL, IS_CONTROL
from scfate.errors import DataError

log = logging.getLogger(__name__)


def match_measured(genes: list[str], var_names: pd.Index) -> dict[str, str]:
    """Perturbed gene symbol -> measured var name (exact, else case-insensitive), for genes that are measured."""
    upper = {v.upper(): v for v in var_names}
    out = {}
    for g in genes:
        if g in var_names:
            out[g] = g
        elif g.upper() in upper:
            out[g] = upper[g.upper()]
    return out


def select_genes(adata, n_hvg: int, keep: list[str], batch_key: str | None = None) -> list[str]:
    """Top ``n_hvg`` highly variable genes (scanpy, seurat flavour on log data) plus every gene in ``keep``.

    Returned in the original var order so the prepared matrix keeps the file's gene order.
    """
    import scanpy as sc

    if adata.n_vars <= n_hvg:
        return list(adata.var_names)
    hvg = sc.pp.highly_variable_genes(adata, n_top_genes=n_hvg, flavor="seurat", batch_key=batch_key,
                                      inplace=False, subset=False)
    # scanpy's cut-off keeps every gene tied at the threshold; rank ourselves to take exactly n_hvg
    score = np.nan_to_num(np.asarray(hvg["dispersions_norm"], dtype=float), nan=-np.inf)
    top = np.argsort(-score, kind="stable")[:n_hvg]
    chosen = set(adata.var_names[top]) | set(keep)
    return [g for g in adata.var_names if g in chosen]


def group_means(X, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean expression per label without densifying X: (unique labels [n], means [n, n_genes])."""
    uniq, inv = np.unique(labels, return_inverse=True)
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    indicator = sp.csr_matrix((1.0 / counts[inv], (inv, np.arange(len(inv)))), shape=(len(uniq), len(inv)))
    means = indicator @ X
    return uniq, np.asarray(means.todense() if sp.issparse(means) else means)


def differential_expression(adata, n_de: int = 20) -> dict[str, dict[str, dict]]:
    """``{context: {condition: {"top_de": [...], "top_non_dropout_de": [...], "n_cells": int}}}``.

    Conditions with fewer than 2 cells cannot be tested (t-test) and are listed under the key ``"_skipped"``.
    """
    import anndata as ad
    import scanpy as sc

    out: dict[str, dict] = {}
    contexts = adata.obs[CONTEXT].astype(str).to_numpy()
    no_ctrl = sorted(set(contexts) - set(contexts[adata.obs[IS_CONTROL].to_numpy()]))
    if no_ctrl:
        raise DataError(f"Context(s) {no_ctrl} have perturbed cells but no control cells, so no effect can be "
                        "measured there. Add their controls or drop them with data.obs_filter.")
    for ctx in sorted(set(contexts)):
        mask = contexts == ctx
        sub = ad.AnnData(X=adata.X[mask], var=pd.DataFrame(index=adata.var_names))
        sub.obs[CONDITION] = adata.obs[CONDITION].astype(str).to_numpy()[mask]
        sizes = sub.obs[CONDITION].value_counts()
        skipped = sorted(c for c, n in sizes.items() if n < 2 and c != CONTROL)
        tested = sorted(c for c, n in sizes.items() if n >= 2 and c != CONTROL)
        result: dict = {"_skipped": skipped}
        out[ctx] = result
        if not tested:
            continue
        keep = sub.obs[CONDITION].isin(tested + [CONTROL]).to_numpy()
        sub = sub[keep].copy()
        sub.obs[CONDITION] = pd.Categorical(sub.obs[CONDITION])
        with warnings.catch_warnings():  # scanpy's own pandas PerformanceWarning, once per group
            warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
            sc.tl.rank_genes_groups(sub, groupby=CONDITION, groups=tested, reference=CONTROL, method="t-test",
                                    rankby_abs=True, n_genes=sub.n_vars, use_raw=False)
        names = sub.uns["rank_genes_groups"]["names"]
        labels, means = group_means(sub.X, sub.obs[CONDITION].astype(str).to_numpy())
        mean_of = dict(zip(labels, means))
        ctrl_zero = mean_of[CONTROL] == 0
        gene_idx = {g: i for i, g in enumerate(sub.var_names)}
        for cond in tested:
            ranked = [str(g) for g in names[cond]]
            zero = mean_of[cond] == 0
            dropout = zero & ~ctrl_zero  # GEARS: non-dropout = non-zero, or zero in both condition and control
            non_dropout = [g for g in ranked if not dropout[gene_idx[g]]]
            result[cond] = {"top_de": ranked[:n_de], "top_non_dropout_de": non_dropout[:n_de],
                            "n_cells": int(sizes[cond])}
    return out
