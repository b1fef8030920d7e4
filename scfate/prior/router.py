"""Router ensemble math (DESIGN §2.6): drug similarities, neighbour-weighted validation scores, routing weights,
and the weighted mixture of several models' predictions.

Notation: M models, V validation drugs, T test drugs, G genes. ``val`` [M, V] is a validation metric per model and
validation drug, oriented so that higher is better (see `orient`); NaN where the metric was undefined.
Only the SMILES -> vector step touches RDKit (imported inside the functions); everything else is numpy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from scfate.data.features.drugs import tanimoto_matrix
from scfate.errors import UsageError

# Metrics where a smaller value is better: negated before routing, so every routing score is "higher is better".
LOWER_IS_BETTER = frozenset({"mse_top20_de", "mse_top20_de_non_dropout", "mse_top20_de_normalized",
                             "mse_top20_de_non_dropout_normalized", "energy_distance", "mmd", "pds", "pds_normalized"})

# similarity name -> (drug representation, kernel). "features" is the dataset's own perturbation features (the
# model's input), the only one that needs no SMILES: it still places a drug whose SMILES RDKit cannot parse.
SIMILARITIES = {
    "tanimoto_morgan2048": ("morgan2048", "tanimoto"),
    "tanimoto_maccs": ("maccs", "tanimoto"),
    "tanimoto_atompair2048": ("atompair2048", "tanimoto"),
    "cosine_rdkit_descriptors": ("rdkit_descriptors", "cosine"),
    "cosine_features": ("features", "cosine"),
}


def orient(metric: str, values: np.ndarray) -> np.ndarray:
    """Values of ``metric`` with "higher is better" (negated for `LOWER_IS_BETTER` metrics)."""
    values = np.asarray(values, dtype=np.float64)
    return -values if metric in LOWER_IS_BETTER else values


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of the rows: a [n, d], b [m, d] -> float64 [n, m]; a zero row has similarity 0 to all
    (it carries no direction, so it should neither attract nor repel)."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"vector lengths differ: {a.shape[1]} vs {b.shape[1]}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    out = (a @ b.T) / np.where(na > 0, na, 1.0)[:, None] / np.where(nb > 0, nb, 1.0)[None, :]
    out[na == 0, :] = 0.0
    out[:, nb == 0] = 0.0
    return np.clip(out, -1.0, 1.0)


def kernel_matrix(kernel: str, a: np.ndarray, b: np.ndarray, a_ok: np.ndarray, b_ok: np.ndarray) -> np.ndarray:
    """Similarity [n, m] of representations a [n, d] and b [m, d]; NaN where either drug has none (``*_ok`` False)."""
    out = np.full((len(a), len(b)), np.nan)
    ia, ib = np.flatnonzero(a_ok), np.flatnonzero(b_ok)
    if ia.size and ib.size:
        fn = {"tanimoto": tanimoto_matrix, "cosine": cosine_matrix}[kernel]
        out[np.ix_(ia, ib)] = fn(a[ia], b[ib])
    return out


def representation(kind: str, smiles: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of drugs from SMILES for one of the RDKit kinds -> (X float64 [n, d], ok bool [n]).

    A SMILES that is None or that RDKit cannot parse gives ok=False and a zero row. Descriptors are z-scored over
    the parsed drugs given here (structure only, no labels: using every drug of the dataset leaks nothing).
    """
    from scfate.data.features.drugs import _mol, morgan_bits, raw_descriptors, standardise_descriptors

    mols = [_mol(s) if s else None for s in smiles]
    ok = np.array([m is not None for m in mols], dtype=bool)
    if kind == "morgan2048":
        fn = lambda m: morgan_bits(m, 2, 2048)  # noqa: E731
    elif kind == "atompair2048":
        from rdkit.Chem import rdFingerprintGenerator

        gen = rdFingerprintGenerator.GetAtomPairGenerator(fpSize=2048)
        fn = lambda m: gen.GetFingerprintAsNumPy(m).astype(np.uint8)  # noqa: E731
    elif kind == "maccs":
        from rdkit.Chem import MACCSkeys

        fn = lambda m: np.array(list(MACCSkeys.GenMACCSKeys(m)), dtype=np.uint8)  # noqa: E731
    elif kind == "rdkit_descriptors":
        fn = raw_descriptors
    else:
        raise UsageError(f"representation {kind!r} is not built from SMILES; valid: "
                         "['atompair2048', 'maccs', 'morgan2048', 'rdkit_descriptors']")
    rows = {i: np.asarray(fn(m), dtype=np.float64) for i, m in enumerate(mols) if m is not None}
    d = len(next(iter(rows.values()))) if rows else 1
    X = np.zeros((len(smiles), d))
    for i, row in rows.items():
        X[i] = row
    if kind == "rdkit_descriptors" and rows:
        raw = X[ok].copy()
        raw[~np.isfinite(raw)] = np.nan
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns become 0 below
            mean, sd = np.nanmean(raw, axis=0), np.nanstd(raw, axis=0)
        X[ok] = standardise_descriptors(X[ok], mean, sd)
    return X, ok


@dataclass
class Routing:
    """One router's result. scores/weights [M, T]; fallback [T] True where no score existed (uniform weights);
    neighbours[t] = [(val index, similarity), ...] used for test drug t (empty for the multi-metric router)."""

    scores: np.ndarray
    weights: np.ndarray
    fallback: np.ndarray
    neighbours: list[list[tuple[int, float]]] = field(default_factory=list)


def neighbour_scores(sim: np.ndarray, val: np.ndarray, top_k: int) -> tuple[np.ndarray, list]:
    """Similarity-weighted mean of each model's validation score over each test drug's top_k most similar
    validation drugs.

    sim [T, V] (NaN = unknown), val [M, V] (NaN = undefined) -> (scores [M, T], neighbours per test drug).
    Only validation drugs some model has a score for are candidates. Weights are the similarities clipped at 0
    (a dissimilar drug is no evidence; a negative weight would reward failing on it); when all are 0 the
    neighbours count equally. A model with no defined value among the neighbours gets NaN.
    """
    if top_k < 1:
        raise UsageError(f"top_k={top_k} must be >= 1")
    M, T = val.shape[0], sim.shape[0]
    scores, neighbours = np.full((M, T), np.nan), []
    has_score = np.isfinite(val).any(0)
    for t in range(T):
        cand = np.flatnonzero(np.isfinite(sim[t]) & has_score)
        order = cand[np.argsort(-sim[t, cand], kind="stable")][:top_k]
        neighbours.append([(int(j), float(sim[t, j])) for j in order])
        if not order.size:
            continue
        w = np.clip(sim[t, order], 0.0, None)
        w = w if w.sum() > 0 else np.ones_like(w)
        v = val[:, order]
        defined = np.isfinite(v)
        num, den = (np.where(defined, v, 0.0) * w).sum(1), (defined * w).sum(1)
        scores[:, t] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return scores, neighbours


def softmax_weights(scores: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights over models per test drug: softmax(score / temperature) over the models with a score (others 0).

    scores [M, T] -> (weights [M, T], each column sums to 1; fallback [T], True where no model had a score and the
    weights are uniform)."""
    if not temperature > 0:
        raise UsageError(f"temperature={temperature} must be > 0 (small values approach argmax)")
    M, T = scores.shape
    weights, fallback = np.zeros((M, T)), np.zeros(T, dtype=bool)
    for t in range(T):
        ok = np.isfinite(scores[:, t])
        if not ok.any():
            weights[:, t], fallback[t] = 1.0 / M, True
            continue
        z = (scores[ok, t] - scores[ok, t].max()) / temperature  # shift by the max: exp never overflows
        e = np.exp(z)
        weights[ok, t] = e / e.sum()
    return weights, fallback


def standardise_models(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-score each column across models (NaN ignored) -> (z [M, T], spread sd [T]); a column whose models tie
    has z = 0 (no preference)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        mu, sd = np.nanmean(scores, axis=0), np.nanstd(scores, axis=0)
    z = (scores - mu) / np.where(sd > 0, sd, 1.0)
    z = np.where(np.isfinite(scores) & ~(sd > 0), 0.0, z)
    return z, sd


def multi_scores(per_similarity: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Combine single-similarity scores [M, T] each: the mean over similarity metrics of the scores standardised
    across models, rescaled by the mean across-model spread so that it stays in the routing metric's units (one
    temperature then means the same sharpness for single- and multi-metric routers; the ranking is unchanged).

    A similarity metric with no score for a test drug (e.g. its SMILES did not parse) is left out for that drug.
    Returns (scores [M, T], n_used [T] = similarity metrics used per test drug)."""
    zs, sds = zip(*(standardise_models(s) for s in per_similarity))
    Z, SD = np.stack(zs), np.stack(sds)  # [S, M, T], [S, T]
    used = np.isfinite(np.stack(per_similarity)).any(1)  # [S, T]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        z = np.nanmean(np.where(used[:, None, :], Z, np.nan), axis=0)
        scale = np.nanmean(np.where(used, SD, np.nan), axis=0)
    return z * np.where(np.isfinite(scale), scale, 0.0)[None, :], used.sum(0)


def route(sim: np.ndarray, val: np.ndarray, top_k: int, temperature: float) -> Routing:
    """Single-metric router: neighbour scores then softmax."""
    scores, neighbours = neighbour_scores(sim, val, top_k)
    weights, fallback = softmax_weights(scores, temperature)
    return Routing(scores, weights, fallback, neighbours)


def route_multi(routings: list[Routing], temperature: float) -> tuple[Routing, np.ndarray]:
    """Multi-metric router over several single-metric routings of the same routing metric -> (routing, n_used)."""
    scores, n_used = multi_scores([r.scores for r in routings])
    weights, fallback = softmax_weights(scores, temperature)
    return Routing(scores, weights, fallback, []), n_used


def apportion(weights: np.ndarray, n: int) -> np.ndarray:
    """Integer cell counts [M] summing to n, proportional to ``weights`` (largest remainder; ties -> lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or (w < 0).any() or not w.sum() > 0:
        raise UsageError(f"weights must be a non-negative vector with a positive sum, got {w}")
    raw = w / w.sum() * n
    counts = np.floor(raw).astype(int)
    rest = n - counts.sum()
    counts[np.argsort(-(raw - counts), kind="stable")[:rest]] += 1
    return counts


def mixture(means: np.ndarray, cells: list[np.ndarray], weights: np.ndarray, n: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mixture of M models' predictions for one condition.

    means [M, G], cells: M arrays [n_i, G], weights [M] summing to 1 -> (mean [G] = weights @ means,
    cells [n, G]: `apportion`(weights, n) cells drawn without replacement from each model's cells)."""
    counts = apportion(weights, n)
    parts = [c[np.sort(rng.choice(len(c), k, replace=k > len(c)))] for c, k in zip(cells, counts) if k > 0]
    return np.asarray(weights, np.float64) @ np.asarray(means, np.float64), np.concatenate(parts)
