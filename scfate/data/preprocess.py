"""Gene selection and differential expression, on log-normalised data, from per-group sufficient statistics
accumulated over row chunks (scfate.data.stats, scfate.data.chunked), so that the same code serves a matrix in memory
and a file read from disk.

HVGs: scanpy's seurat flavour on log data (``pp.highly_variable_genes(flavor='seurat')``), exactly ``n_hvg`` genes.
DE follows the field's evaluation protocol (GEARS / scFATE §3): per context, each condition against that context's
controls by Welch's t as ``scanpy.tl.rank_genes_groups(method='t-test', rankby_abs=True)`` ranks them, over all
selected genes; the top-20 DE genes, and the GEARS non-dropout top-20 (`get_dropout_non_zero_genes`: skip genes
whose mean is zero under the perturbation but not in control).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from scfate.data import chunked, stats
from scfate.data.schema import CONDITION, CONTEXT, CONTROL, IS_CONTROL, group_codes
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


def batch_codes(obs, batch_key: str | None) -> tuple[np.ndarray, int]:
    """Batch index per cell (-1: no batch, left out as scanpy leaves it out) and the number of batches."""
    if batch_key is None:
        return np.zeros(len(obs), np.int64), 1
    cat = pd.Categorical(obs[batch_key])
    return cat.codes.astype(np.int64), len(cat.categories)


def choose_genes(raw: chunked.RawMatrix, rows: np.ndarray, kind: str, obs, var_names: pd.Index, n_hvg: int,
                 keep: list[str], batch_key: str | None = None, log1p_base: float | None = None) -> np.ndarray:
    """Column indices of the top ``n_hvg`` highly variable genes plus every gene in ``keep``, in the file's order.

    ``raw`` holds the input (counts or log1p, ``kind``) of the cells ``rows``, whose obs is ``obs``.
    """
    if len(var_names) <= n_hvg:
        return np.arange(len(var_names))
    codes, n_batches = batch_codes(obs, batch_key)
    moments = chunked.hvg_moments(raw, rows, kind, codes, n_batches, log1p_base)
    top = stats.top_hvg(stats.hvg_table(moments, var_names, batched=batch_key is not None), n_hvg)
    chosen = np.zeros(len(var_names), bool)
    chosen[top] = True
    chosen |= var_names.isin(keep)
    return np.flatnonzero(chosen)


def select_genes(adata, n_hvg: int, keep: list[str], batch_key: str | None = None) -> list[str]:
    """``choose_genes`` on log-normalised data in memory: the selected names, in the original var order."""
    base = adata.uns.get("log1p", {}).get("base")
    idx = choose_genes(chunked.RawMatrix.in_memory(adata.X), np.arange(adata.n_obs), "log1p", adata.obs,
                       adata.var_names, n_hvg, keep, batch_key, base)
    return list(adata.var_names[idx])


def require_controls(obs) -> None:
    """Every context with perturbed cells needs control cells: the effect is measured against them."""
    contexts = obs[CONTEXT].astype(str).to_numpy()
    no_ctrl = sorted(set(contexts) - set(contexts[obs[IS_CONTROL].to_numpy()]))
    if no_ctrl:
        raise DataError(f"Context(s) {no_ctrl} have perturbed cells but no control cells, so no effect can be "
                        "measured there. Add their controls or drop them with data.obs_filter.")


def condition_codes(obs) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The (context, condition) groups DE and pseudobulk are computed over, and each cell's group index."""
    return group_codes(obs, [CONTEXT, CONDITION])


def differential_expression(adata, n_de: int = 20) -> dict[str, dict[str, dict]]:
    """``{context: {condition: {"top_de": [...], "top_non_dropout_de": [...], "n_cells": int}}}``.

    Conditions with fewer than 2 cells cannot be tested (t-test) and are listed under the key ``"_skipped"``.
    """
    require_controls(adata.obs)
    keys, codes = condition_codes(adata.obs)
    raw = chunked.RawMatrix.in_memory(adata.X)
    moments = stats.GroupMoments(len(keys), adata.n_vars)
    for start, X in raw.chunks(np.arange(adata.n_obs)):
        moments.add(X, codes[start:start + X.shape[0]])
    return stats.de_from_moments(moments, keys, adata.var_names, CONTROL, n_de)
