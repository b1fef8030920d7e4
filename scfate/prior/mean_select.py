"""A mean predictor that contains the baselines: for each class of perturbation (single genes, combinations;
drugs: one class) the candidate whose leave-one-perturbation-out shift best matches the held-out one, by mean
cosine over the fold's non-test perturbations (training and validation; test ones are never read). Candidates
are the member-additive expression prior (``prior``) and the baselines ``train_mean``, ``additive``,
``feature_ridge``, ``knn``, so where the features carry no signal the choice falls back to a baseline."""

from __future__ import annotations

import numpy as np
import torch

from scfate.models.predictor import Condition, NotPredictable, Pseudobulk
from scfate.prior.additive import AdditivePrior
from scfate.prior.baselines import make_baseline

CANDIDATES = ("prior", "train_mean", "additive", "feature_ridge", "knn")


def perturbation_class(cond: Condition, perturbation_type: str) -> str:
    if perturbation_type == "drug":
        return "drug"
    return "single" if len(cond.members) == 1 else "combination"


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


class _Prior:
    """The member-additive expression prior as a candidate with the baselines' interface."""

    def __init__(self, unit_F: torch.Tensor, units: dict[str, int], kernel: str):
        self.unit_F, self.units, self.kernel = unit_F, units, kernel

    def fit(self, pb: Pseudobulk):
        rows = [([self.units[m] for m in c.members], torch.as_tensor(d, dtype=torch.float32))
                for ctx in pb.contexts for c, d in pb.train.get(ctx, [])]
        self.model = AdditivePrior(self.kernel).fit(self.unit_F, rows, [])

    def predict_delta(self, cond: Condition):
        return self.model.predict([[self.units[m] for m in cond.members]])[0].double().numpy(), []


def _candidate(name: str, unit_F, units, kernel):
    return _Prior(unit_F, units, kernel) if name == "prior" else make_baseline(name)


def _predict(model, cond) -> np.ndarray | None:
    try:
        return np.asarray(model.predict_delta(cond)[0], dtype=float)
    except NotPredictable:
        return None


def select_mean(pb: Pseudobulk, rows: list[tuple[Condition, np.ndarray]], unit_F: torch.Tensor,
                units: dict[str, int], kernel: str, candidates=CANDIDATES) -> dict:
    """Leave-one-out over ``rows`` (one context's non-test perturbations: (condition, shift)): per class, the mean
    cosine of every candidate and the chosen one. ``pb`` carries the type, contexts and control means."""
    scores: dict[str, dict[str, list[float]]] = {}
    for i, (cond, delta) in enumerate(rows):
        rest = [r for j, r in enumerate(rows) if j != i]
        inner = Pseudobulk(pb.perturbation_type, [cond.context], pb.ctrl_mean, {cond.context: rest})
        cls = perturbation_class(cond, pb.perturbation_type)
        for name in candidates:
            model = _candidate(name, unit_F, units, kernel)
            model.fit(inner)
            pred = _predict(model, cond)
            scores.setdefault(cls, {}).setdefault(name, []).append(_cos(pred, delta) if pred is not None else -1.0)
    out = {}
    for cls, by_name in scores.items():
        means = {n: float(np.mean(v)) for n, v in by_name.items()}
        out[cls] = {"chosen": max(means, key=lambda n: (means[n], -candidates.index(n))), "loo_cos": means,
                    "n": len(next(iter(by_name.values())))}
    return out


def selected_shifts(pb: Pseudobulk, context: str, conditions: list[Condition], choice: dict, unit_F, units,
                    kernel: str, fallback: torch.Tensor) -> torch.Tensor:
    """Shifts ``[P, G]`` of ``conditions`` (one per vocabulary perturbation) in ``context``: each from its class's
    chosen candidate fitted on ``pb``'s training rows; a class without a choice (or a candidate that cannot
    predict it) keeps ``fallback`` (the expression prior's own shift)."""
    fitted = {}
    out = fallback.clone()
    for i, cond in enumerate(conditions):
        cls = perturbation_class(cond, pb.perturbation_type)
        name = (choice.get(cls) or {}).get("chosen", "prior")
        if name == "prior":
            continue
        if name not in fitted:
            fitted[name] = _candidate(name, unit_F, units, kernel)
            fitted[name].fit(pb)
        pred = _predict(fitted[name], Condition(context, cond.condition, cond.perturbation, cond.members, cond.dose,
                                                cond.features))
        if pred is not None:
            out[i] = torch.as_tensor(pred, dtype=torch.float32)
    return out
