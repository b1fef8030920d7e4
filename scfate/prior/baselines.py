"""Baselines with the model's interface: fit on training pseudobulk, predict a test condition's expression.

Every baseline predicts a mean shift ``delta_hat`` from the context's control mean; its predicted cells are the
control cells shifted by it, so mean-based metrics are exact and distribution metrics are comparable with a model's.
"""

from __future__ import annotations

import numpy as np

from scfate.errors import UsageError
from scfate.models.predictor import NotPredictable, Predictor, Pseudobulk
from scfate.prior.knn import KNN


class NoChange(Predictor):
    name = "no_change"

    def predict_delta(self, cond):
        return np.zeros_like(self.pb.ctrl_mean[cond.context]), []


class TrainMean(Predictor):
    name = "train_mean"

    def predict_delta(self, cond):
        return self.pb.train_delta_mean(cond.context), []


class Additive(Predictor):
    """Sum of the members' single-perturbation deltas seen in training; a member never seen alone uses the mean
    training delta instead, and the prediction says so."""

    name = "additive"

    def predict_delta(self, cond):
        if self.pb.perturbation_type != "gene":
            raise NotPredictable("additive is defined for gene combinations, not drugs")
        singles = {c.perturbation: d for c, d in self.pb.train.get(cond.context, []) if len(c.members) == 1}
        unseen = [m for m in cond.members if m not in singles]
        total = sum((singles[m] for m in cond.members if m in singles), np.zeros_like(self.pb.ctrl_mean[cond.context]))
        if unseen:
            total = total + len(unseen) * self.pb.train_delta_mean(cond.context)
        notes = [f"members {unseen} never seen alone in training: used train_mean for them"] if unseen else []
        return total, notes


class OtherContexts(Predictor):
    """Cross-context transfer: the mean shift of the same perturbation in the other contexts it was trained in
    (a gene held out in one cell line and seen in the others). Not defined for a perturbation no other context
    trained on, so it is scored only where a benchmark holds out context units (scfate.eval.cv)."""

    name = "other_contexts"

    def predict_delta(self, cond):
        seen = [d for ctx, rows in sorted(self.pb.train.items()) if ctx != cond.context
                for c, d in rows if c.perturbation == cond.perturbation]
        if not seen:
            raise NotPredictable(f"{cond.perturbation!r} was trained in no context other than {cond.context!r}")
        return np.mean(seen, axis=0), [f"mean of {len(seen)} other context(s)"]


class OtherContextsCentred(Predictor):
    """Cross-context transfer of the perturbation-specific part only: this context's mean training shift plus the
    perturbation's shift minus the mean training shift in each other context it was trained in, averaged. Most of
    a measured shift is systematic and differs between cell lines (Systema, Vinas Torne et al. 2025); this moves
    only what is specific to the perturbation."""

    name = "other_contexts_centred"

    def predict_delta(self, cond):
        seen = [d - self.pb.train_delta_mean(ctx) for ctx, rows in sorted(self.pb.train.items())
                if ctx != cond.context for c, d in rows if c.perturbation == cond.perturbation]
        if not seen:
            raise NotPredictable(f"{cond.perturbation!r} was trained in no context other than {cond.context!r}")
        return self.pb.train_delta_mean(cond.context) + np.mean(seen, axis=0), [f"{len(seen)} other context(s)"]


def _rows(pb: Pseudobulk, context: str, which: str = "train"):
    rows = getattr(pb, which).get(context, [])
    return np.stack([c.features for c, _ in rows]) if rows else None, np.stack([d for _, d in rows]) if rows else None


class Linear(Predictor):
    """Ahlmann-Eltze et al. 2025: ``Y ~ G W P^T + b`` with G the top-K PCs of the training delta matrix (genes),
    P a K-dim PCA of the training perturbations' features, closed-form ridge with lambda = 0.1."""

    name = "linear"

    def __init__(self, k: int = 10, ridge: float = 0.1):
        self.k, self.ridge = k, ridge

    def fit(self, pb):
        super().fit(pb)
        self.models = {}
        for ctx in pb.contexts:
            F, Y = _rows(pb, ctx)
            if F is None or len(F) < 2:
                continue
            b = Y.mean(0)
            k = min(self.k, len(F) - 1)
            U, S, _ = np.linalg.svd((Y - b).T, full_matrices=False)  # [G, n]
            G = U[:, :k] * S[:k]  # PC scores of the genes, as prcomp(...)$x in the reference R code
            f_mean = F.mean(0)
            _, _, Vt = np.linalg.svd(F - f_mean, full_matrices=False)
            proj = Vt[: min(self.k, len(F) - 1, F.shape[1])].T  # [d, k']
            P = (F - f_mean) @ proj
            lam = self.ridge
            W = np.linalg.solve(G.T @ G + lam * np.eye(G.shape[1]), G.T @ (Y - b).T @ P)
            W = W @ np.linalg.inv(P.T @ P + lam * np.eye(P.shape[1]))
            self.models[ctx] = (G, W, b, f_mean, proj)

    def predict_delta(self, cond):
        if cond.context not in self.models:
            raise NotPredictable(f"fewer than 2 training perturbations in context {cond.context!r}")
        G, W, b, f_mean, proj = self.models[cond.context]
        return G @ W @ ((cond.features - f_mean) @ proj) + b, []


class FeatureRidge(Predictor):
    """Kernel ridge (RBF) from standardised perturbation features to the delta, centred on the mean training
    delta; alpha and gamma chosen on validation perturbations when the context has them."""

    name = "feature_ridge"
    ALPHAS, GAMMA_SCALES = (0.1, 1.0, 10.0), (0.1, 1.0, 10.0)

    def fit(self, pb):
        super().fit(pb)
        self.models, self.chosen = {}, {}
        for ctx in pb.contexts:
            F, Y = _rows(pb, ctx)
            if F is not None and len(F) >= 2:
                self.models[ctx], self.chosen[ctx] = self._fit_context(F, Y, *_rows(pb, ctx, "val"))

    def _fit_context(self, F, Y, Fv, Yv):
        from sklearn.kernel_ridge import KernelRidge

        mu, sd = F.mean(0), F.std(0)
        sd[sd == 0] = 1.0
        y_mean = Y.mean(0)
        grid = [(1.0, 1.0)] if Fv is None else [(a, g) for a in self.ALPHAS for g in self.GAMMA_SCALES]
        best = None
        for alpha, scale in grid:  # without validation perturbations: alpha 1, gamma 1/d
            gamma = scale / F.shape[1]
            model = KernelRidge(alpha=alpha, kernel="rbf", gamma=gamma).fit((F - mu) / sd, Y - y_mean)
            err = 0.0 if Fv is None else float(np.mean((model.predict((Fv - mu) / sd) + y_mean - Yv) ** 2))
            if best is None or err < best[0]:
                best = (err, model, {"alpha": alpha, "gamma": gamma, "selected_on_val": Fv is not None})
        return (best[1], mu, sd, y_mean), best[2]

    def predict_delta(self, cond):
        if cond.context not in self.models:
            raise NotPredictable(f"fewer than 2 training perturbations in context {cond.context!r}")
        model, mu, sd, y_mean = self.models[cond.context]
        return model.predict(((cond.features - mu) / sd)[None, :])[0] + y_mean, []


BASELINES = {cls.name: cls for cls in (NoChange, TrainMean, Additive, Linear, FeatureRidge, KNN, OtherContexts,
                                            OtherContextsCentred)}
# defined only where a test unit's perturbation is trained in another context (the cross-context benchmark)
CROSS_CONTEXT_BASELINES = (OtherContexts.name, OtherContextsCentred.name)
DEFAULT_BASELINES = [n for n in BASELINES if n not in CROSS_CONTEXT_BASELINES]


def check_baseline(name: str) -> str:
    if name not in BASELINES:
        raise UsageError(f"baseline={name!r} is not a baseline; valid: {sorted(BASELINES)}.")
    return name


def make_baseline(name: str) -> Predictor:
    return BASELINES[check_baseline(name)]()
