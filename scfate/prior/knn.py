"""k-nearest-neighbour baseline: a test perturbation's shift is the similarity-weighted mean shift of its nearest
training perturbations in feature space, shrunk toward the mean training shift. ``k`` and the shrinkage are chosen
by leave-one-perturbation-out cross-validation on the training perturbations of each context (never on
validation or test ones), so shrinkage 1 (the training mean) wins where the features carry no signal."""

from __future__ import annotations

import numpy as np

from scfate.models.predictor import NotPredictable, Predictor

KS = (1, 2, 3, 5, 10)
SHRINKS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _cosine(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    A = A / np.clip(np.linalg.norm(A, axis=1, keepdims=True), 1e-12, None)
    B = B / np.clip(np.linalg.norm(B, axis=1, keepdims=True), 1e-12, None)
    return A @ B.T


def knn_shift(sim: np.ndarray, Y: np.ndarray, mean: np.ndarray, k: int, shrink: float) -> np.ndarray:
    """``(1 - shrink) * sum_i w_i y_i / sum_i w_i + shrink * mean`` over the ``k`` most similar rows of ``Y``
    (weights: positive similarities; none positive: the mean). ``sim`` [n], ``Y`` [n, G]."""
    order = np.argsort(-sim, kind="stable")[:k]
    w = np.clip(sim[order], 0.0, None)
    near = mean if w.sum() <= 0 else (w[:, None] * Y[order]).sum(0) / w.sum()
    return (1.0 - shrink) * near + shrink * mean


def select_knn(F: np.ndarray, Y: np.ndarray) -> dict:
    """Leave-one-out choice of (k, shrink) by mean squared error of the left-out perturbation's shift: every
    left-out row at once (its neighbours among the others, their mean, each k's weighted mean), knn_shift's
    arithmetic term by term. It runs once per fit, and the mean predictor's leave-one-out fits it hundreds of times."""
    n = len(F)
    sim = _cosine(F, F)
    grid = [(k, shrink) for k in KS if k <= n - 1 for shrink in SHRINKS]
    rows = np.arange(n)[:, None]
    excluded = sim.copy()
    np.fill_diagonal(excluded, -np.inf)  # a row is never its own neighbour: last in every stable order
    order = np.argsort(-excluded, axis=1, kind="stable")
    means = (Y.sum(0)[None, :] - Y) / (n - 1)  # each row's mean over the others
    errors = {}
    for k in sorted({k for k, _ in grid}):
        w = np.clip(sim[rows, order[:, :k]], 0.0, None)  # [n, k]
        total = w.sum(1, keepdims=True)
        weighted = np.einsum("ik,ikg->ig", w, Y[order[:, :k]]) / np.where(total > 0, total, 1.0)
        near = np.where(total > 0, weighted, means)
        for shrink in SHRINKS:
            errors[(k, shrink)] = float(np.mean(((1.0 - shrink) * near + shrink * means - Y) ** 2, axis=1).mean())
    errors = {key: errors[key] for key in grid}
    # ties (to 12 significant digits: a shrink between equal neighbour and mean shifts differs by rounding only):
    # more shrinkage
    k, shrink = min(errors, key=lambda key: (float(f"{errors[key]:.12g}"), -key[1]))
    return {"k": k, "shrink": shrink, "loo_mse": errors[(k, shrink)],
            "loo_mse_mean_only": errors.get((min(KS), 1.0))}


class KNN(Predictor):
    name = "knn"

    def fit(self, pb):
        super().fit(pb)
        self.models, self.chosen = {}, {}
        for ctx in pb.contexts:
            rows = pb.train.get(ctx, [])
            if len(rows) < 3:
                continue
            F = np.stack([c.features for c, _ in rows])
            Y = np.stack([d for _, d in rows])
            mu, sd = F.mean(0), F.std(0)
            sd[sd == 0] = 1.0
            self.chosen[ctx] = select_knn((F - mu) / sd, Y)
            self.models[ctx] = ((F - mu) / sd, Y, mu, sd)

    def predict_delta(self, cond):
        if cond.context not in self.models:
            raise NotPredictable(f"fewer than 3 training perturbations in context {cond.context!r}")
        Fs, Y, mu, sd = self.models[cond.context]
        choice = self.chosen[cond.context]
        sim = _cosine(((cond.features - mu) / sd)[None, :], Fs)[0]
        note = f"knn k={choice['k']} shrink={choice['shrink']} (leave-one-out on training perturbations)"
        return knn_shift(sim, Y, Y.mean(0), choice["k"], choice["shrink"]), [note]
