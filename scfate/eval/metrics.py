"""Per-perturbation metrics, as pure functions on arrays (DESIGN §3).

Notation, per perturbation p in one context: ``c`` = control mean [G], ``delta = mean(true_p) - c``,
``delta_hat = mean(pred_p) - c``, ``D`` = indices of the top-20 DE genes (``rank_genes_groups``, t-test,
``rankby_abs=True``) and ``D_nd`` the GEARS non-dropout top-20.

- ``da``  = mean_{g in D} [sign(delta_hat_g) == sign(delta_g)] with the three-valued sign (a zero where the truth
  moves is wrong). GEARS ``frac_correct_direction_20``; ``da_non_dropout`` on D_nd is
  ``frac_correct_direction_top20_non_dropout``.
- ``cos`` = <delta_hat, delta> / (|delta_hat| |delta|) over all genes.
- ``pde`` = Pearson(delta_hat_D, delta_D) (GEARS ``pearson_delta_de``); ``pearson_delta`` over all genes.
- ``mse_top20_de`` = mean_{g in D} (mean(pred)_g - mean(true)_g)^2 (GEARS ``mse_de``), likewise on D_nd; each also
  divided by the no-change baseline's MSE (which predicts c, i.e. delta_hat = 0): ``*_normalized``.
- ``energy_distance`` = 2 E|x-y|^2 - E|x-x'|^2 - E|y-y'|^2 with squared Euclidean distances (Peidli et al. 2024, as in
  CellFlow ``compute_e_distance``); ``mmd`` = mean over gammas {2, 1, 0.5, 0.1, 0.01, 0.005} of the biased RBF MMD^2
  (CellFlow ``compute_scalar_mmd``). Both between predicted and true cells in a PCA space fitted on training cells.
- ``pds`` = rank of the true effect of p among all test effects by L1 distance to delta_hat (1 = best), and
  ``pds_normalized`` = (rank - 1) / (n - 1) in [0, 1] (0 = best).

A metric that is not defined (a constant vector in a correlation, a zero vector in a cosine, an empty DE set, a
zero no-change MSE) raises `UndefinedMetric` with the reason; the runner records the reason instead of a number and
aggregates only defined values, reporting how many were undefined.
"""

from __future__ import annotations

import numpy as np

N_DE = 20
MMD_GAMMAS = (2.0, 1.0, 0.5, 0.1, 0.01, 0.005)
MEAN_METRICS = ("da", "da_non_dropout", "cos", "pde", "pearson_delta", "mse_top20_de", "mse_top20_de_non_dropout",
                "mse_top20_de_normalized", "mse_top20_de_non_dropout_normalized")
DISTRIBUTION_METRICS = ("energy_distance", "mmd")
RANK_METRICS = ("pds", "pds_normalized")
ALL_METRICS = MEAN_METRICS + DISTRIBUTION_METRICS + RANK_METRICS


class UndefinedMetric(ValueError):
    """The metric has no value for this input; the message says why."""


def _idx(idx) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size == 0:
        raise UndefinedMetric("no DE genes")
    return idx


def direction_agreement(delta_hat: np.ndarray, delta: np.ndarray, de_idx) -> float:
    """Fraction of DE genes whose three-valued sign of delta_hat equals that of delta (GEARS)."""
    idx = _idx(de_idx)
    return float(np.mean(np.sign(delta_hat[idx]) == np.sign(delta[idx])))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise UndefinedMetric("zero vector (no change predicted or observed)")
    return float(np.dot(a, b) / (na * nb))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2:
        raise UndefinedMetric(f"Pearson needs at least 2 values, got {a.size}")
    ac, bc = a - a.mean(), b - b.mean()
    na, nb = np.linalg.norm(ac), np.linalg.norm(bc)
    if na == 0 or nb == 0:
        raise UndefinedMetric("constant vector (Pearson correlation is undefined)")
    return float(np.dot(ac, bc) / (na * nb))


def mse(a: np.ndarray, b: np.ndarray, idx) -> float:
    idx = _idx(idx)
    return float(np.mean((np.asarray(a, np.float64)[idx] - np.asarray(b, np.float64)[idx]) ** 2))


def normalized_mse(delta_hat: np.ndarray, delta: np.ndarray, idx) -> float:
    """MSE divided by the no-change baseline's MSE on the same genes (delta_hat = 0): < 1 beats no-change."""
    base = mse(np.zeros_like(delta), delta, idx)
    if base == 0:
        raise UndefinedMetric("the no-change baseline has zero error on these genes")
    return mse(delta_hat, delta, idx) / base


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    # |x|^2 + |y|^2 - 2 x.y, each step in place: a cell-by-cell matrix is several hundred kB, and every
    # temporary of that size is freshly mapped memory (page faults cost more here than the arithmetic)
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :]
    xy = x @ y.T
    xy *= 2.0
    d -= xy
    return np.maximum(d, 0.0, out=d)


def _nonempty(x, y) -> None:
    if len(x) == 0 or len(y) == 0:
        raise UndefinedMetric("no cells")


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """E-distance with squared Euclidean distances (Peidli et al. 2024; CellFlow). x [n, d], y [m, d]."""
    _nonempty(x, y)
    return _energy(_sq_dists(x, x), _sq_dists(y, y), _sq_dists(x, y))


def mmd(x: np.ndarray, y: np.ndarray, gammas=MMD_GAMMAS) -> float:
    """Mean over gammas of the biased RBF-kernel MMD^2, k(a, b) = exp(-gamma |a - b|^2) (CellFlow)."""
    _nonempty(x, y)
    return _mmd(_sq_dists(x, x), _sq_dists(y, y), _sq_dists(x, y), gammas)


def _energy(dxx, dyy, dxy) -> float:
    return float(2 * dxy.mean() - dxx.mean() - dyy.mean())


def _mmd(dxx, dyy, dxy, gammas=MMD_GAMMAS) -> float:
    bufs = {d.shape: np.empty(d.shape) for d in (dxx, dyy, dxy)}  # exp(-g d) written in place, gamma after gamma

    def kernel_mean(d, g):
        buf = np.multiply(d, -g, out=bufs[d.shape])
        return np.exp(buf, out=buf).mean()

    vals = [kernel_mean(dxx, g) + kernel_mean(dyy, g) - 2 * kernel_mean(dxy, g) for g in gammas]
    return float(np.mean(vals))


def discrimination_ranks(delta_hat: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """For each row p: 1 + number of other true effects strictly closer (L1) to delta_hat_p than delta_p.

    delta_hat, delta: [n, G] for the n test perturbations of one context. Returns int [n]; 1 = best.
    """
    d = np.abs(delta_hat[:, None, :] - delta[None, :, :]).sum(-1)  # [n_pred, n_true]
    own = np.diag(d)
    return 1 + (d < own[:, None]).sum(1)


def mean_metrics(ctrl_mean: np.ndarray, true_mean: np.ndarray, pred_mean: np.ndarray, de_idx, de_nd_idx
                 ) -> tuple[dict[str, float], dict[str, str]]:
    """All mean-based metrics for one perturbation -> (values, reasons for the undefined ones)."""
    delta, delta_hat = true_mean - ctrl_mean, pred_mean - ctrl_mean
    fns = {
        "da": lambda: direction_agreement(delta_hat, delta, de_idx),
        "da_non_dropout": lambda: direction_agreement(delta_hat, delta, de_nd_idx),
        "cos": lambda: cosine(delta_hat, delta),
        "pde": lambda: pearson(delta_hat[_idx(de_idx)], delta[_idx(de_idx)]),
        "pearson_delta": lambda: pearson(delta_hat, delta),
        "mse_top20_de": lambda: mse(pred_mean, true_mean, de_idx),
        "mse_top20_de_non_dropout": lambda: mse(pred_mean, true_mean, de_nd_idx),
        "mse_top20_de_normalized": lambda: normalized_mse(delta_hat, delta, de_idx),
        "mse_top20_de_non_dropout_normalized": lambda: normalized_mse(delta_hat, delta, de_nd_idx),
    }
    return _collect(fns)


def true_sq_dists(true_pcs: np.ndarray) -> np.ndarray:
    """The true cells' own distances, computed once per condition for every predictor scored on them."""
    return _sq_dists(true_pcs, true_pcs)


def distribution_metrics(pred_pcs: np.ndarray, true_pcs: np.ndarray, true_sq: np.ndarray | None = None
                         ) -> tuple[dict[str, float], dict[str, str]]:
    """Energy distance and MMD from one set of the three distance matrices (``true_sq``: true_sq_dists)."""
    if len(pred_pcs) == 0 or len(true_pcs) == 0:
        return _collect({m: lambda: _nonempty(pred_pcs, true_pcs) for m in ("energy_distance", "mmd")})
    dxx, dxy = _sq_dists(pred_pcs, pred_pcs), _sq_dists(pred_pcs, true_pcs)
    dyy = true_sq if true_sq is not None else _sq_dists(true_pcs, true_pcs)
    return _collect({"energy_distance": lambda: _energy(dxx, dyy, dxy), "mmd": lambda: _mmd(dxx, dyy, dxy)})


def _collect(fns) -> tuple[dict[str, float], dict[str, str]]:
    values, undefined = {}, {}
    for name, fn in fns.items():
        try:
            values[name] = fn()
        except UndefinedMetric as exc:
            undefined[name] = str(exc)
    return values, undefined


def aggregate(entries: list[dict]) -> dict[str, dict]:
    """Mean and sd over perturbations of each metric, with n defined and n undefined (never a NaN mean)."""
    out = {}
    for name in ALL_METRICS:
        vals = [e["metrics"][name] for e in entries if name in e["metrics"]]
        n_undef = sum(name in e.get("undefined", {}) for e in entries)
        out[name] = {"mean": float(np.mean(vals)) if vals else None,
                     "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                     "n": len(vals), "n_undefined": n_undef}
    return out
