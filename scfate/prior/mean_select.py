"""A mean predictor that contains the baselines: for each class of perturbation (single genes, combinations;
drugs: one class) the candidate whose leave-one-perturbation-out shift best matches the held-out one, by mean
cosine over the fold's non-test perturbations (training and validation; test ones are never read). Candidates
are the member-additive expression prior (``prior``) and the baselines ``train_mean``, ``additive``,
``feature_ridge``, ``knn``, so where the features carry no signal the choice falls back to a baseline; and their
stack (non-negative weights fitted on the candidates' leave-one-out predictions, scored by a leave-one-out of its
own), chosen only where its own leave-one-out cosine beats every single candidate's. ``knn@VIEW`` candidates
restrict the neighbours to one feature view (GO, PROGENy, expression loadings, a user embedding), so the stack
weighs the views by how well each predicts held-out perturbations."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from scfate.models.predictor import Condition, NotPredictable, Pseudobulk
from scfate.prior.additive import AdditivePrior
from scfate.prior.baselines import CROSS_CONTEXT_BASELINES, make_baseline

CANDIDATES = ("prior", "train_mean", "additive", "feature_ridge", "knn")
# candidates only in cross-context folds: elsewhere no test unit's perturbation is trained anywhere
CROSS_CONTEXT = CROSS_CONTEXT_BASELINES


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


class _OnView:
    """A baseline that sees only the columns ``cols`` of the perturbation features (one feature view)."""

    def __init__(self, base: str, cols: slice):
        self.base, self.cols = make_baseline(base), cols

    def _view(self, cond: Condition) -> Condition:
        return replace(cond, features=cond.features[self.cols])

    def fit(self, pb: Pseudobulk):
        rows = {ctx: [(self._view(c), d) for c, d in rs] for ctx, rs in pb.train.items()}
        self.base.fit(replace(pb, train=rows, val={ctx: [(self._view(c), d) for c, d in rs]
                                                   for ctx, rs in pb.val.items()}))

    def predict_delta(self, cond: Condition):
        return self.base.predict_delta(self._view(cond))


def view_candidates(views: list[dict]) -> dict[str, slice]:
    """``{"knn@go": slice(...), ...}`` for the feature views of a ``PerturbationFeatures`` (``views`` entries
    ``{"name", "start", "stop"}``); none for a single view (it is the whole matrix: plain ``knn``)."""
    if len(views) < 2:
        return {}
    return {f"knn@{v['name']}": slice(int(v["start"]), int(v["stop"])) for v in views if v["stop"] > v["start"]}


def _candidate(name: str, unit_F, units, kernel, views: dict[str, slice] | None = None):
    if name == "prior":
        return _Prior(unit_F, units, kernel)
    if "@" in name:
        return _OnView(name.split("@")[0], (views or {})[name])
    return make_baseline(name)


def _predict(model, cond) -> np.ndarray | None:
    try:
        return np.asarray(model.predict_delta(cond)[0], dtype=float)
    except NotPredictable:
        return None


STACK = "stack"


def select_mean(pb: Pseudobulk, rows: list[tuple[Condition, np.ndarray]], unit_F: torch.Tensor,
                units: dict[str, int], kernel: str, candidates=CANDIDATES,
                others: dict[str, list[tuple[Condition, np.ndarray]]] | None = None,
                views: dict[str, slice] | None = None) -> dict:
    """Leave-one-out over ``rows`` (one context's non-test perturbations: (condition, shift)): per class, the mean
    cosine of every candidate, of their stack (:func:`stack_weights`), and the chosen one. ``pb`` carries the type,
    contexts and control means. ``others``: the other contexts' training rows, given where the test units are
    context units (a cross-context fold), so the left-out unit is, as a test unit will be, still trained in the
    other contexts."""
    preds: dict[str, dict[str, list]] = {}
    targets: dict[str, list[np.ndarray]] = {}
    for i, (cond, delta) in enumerate(rows):
        rest = [r for j, r in enumerate(rows) if j != i]
        inner = Pseudobulk(pb.perturbation_type, [cond.context], pb.ctrl_mean, {**(others or {}), cond.context: rest})
        cls = perturbation_class(cond, pb.perturbation_type)
        targets.setdefault(cls, []).append(delta)
        for name in candidates:
            model = _candidate(name, unit_F, units, kernel, views)
            model.fit(inner)
            preds.setdefault(cls, {}).setdefault(name, []).append(_predict(model, cond))
    out = {}
    for cls, by_name in preds.items():
        y = targets[cls]
        means = {n: float(np.mean([_cos(p, d) if p is not None else -1.0 for p, d in zip(v, y)]))
                 for n, v in by_name.items()}
        order = list(candidates)
        stack = _stack_entry(by_name, y)
        if stack is not None:
            means[STACK], order = stack["loo_cos"], order + [STACK]  # ties go to a single candidate
        # equal up to rounding (a stack of one candidate, rescaled, has that candidate's cosine): the earlier wins
        out[cls] = {"chosen": max(means, key=lambda n: (round(means[n], 9), -order.index(n))), "loo_cos": means,
                    "n": len(y)}
        if stack is not None:
            out[cls]["stack_weights"] = stack["weights"]
    return out


def stack_weights(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative weights ``w`` [K] minimising ``sum_j |sum_k w_k P[j, k] - y[j]|^2`` (Breiman's stacking):
    ``P`` [n, K, G] the candidates' out-of-sample predictions, ``y`` [n, G] the true shifts."""
    from scipy.optimize import nnls

    A = P.transpose(0, 2, 1).reshape(-1, P.shape[1])
    return nnls(A, y.reshape(-1))[0]


def _stack_entry(by_name: dict[str, list], y: list[np.ndarray]) -> dict | None:
    """The stack's own leave-one-out cosine (weights refitted without the left-out row, on the candidates' LOO
    predictions) and its weights on all rows; None with fewer than 3 rows or 2 candidates defined on every row."""
    names = [n for n, v in by_name.items() if all(p is not None for p in v)]
    if len(y) < 3 or len(names) < 2:
        return None
    P, Y = np.stack([np.stack(by_name[n]) for n in names], axis=1), np.stack(y)  # [n, K, G], [n, G]
    cos = []
    for i in range(len(Y)):
        keep = np.arange(len(Y)) != i
        cos.append(_cos(np.tensordot(stack_weights(P[keep], Y[keep]), P[i], axes=1), Y[i]))
    return {"loo_cos": float(np.mean(cos)), "weights": dict(zip(names, map(float, stack_weights(P, Y))))}


def selected_shifts(pb: Pseudobulk, context: str, conditions: list[Condition], choice: dict, unit_F, units,
                    kernel: str, fallback: torch.Tensor, views: dict[str, slice] | None = None) -> torch.Tensor:
    """Shifts ``[P, G]`` of ``conditions`` (one per vocabulary perturbation) in ``context``: each from its class's
    chosen candidate (or weighted stack of candidates) fitted on ``pb``'s training rows; a class without a choice
    (or a candidate that cannot predict it) keeps ``fallback`` (the expression prior's own shift)."""
    fitted = {}

    def predict(name, cond):
        if name not in fitted:
            fitted[name] = _candidate(name, unit_F, units, kernel, views)
            fitted[name].fit(pb)
        return _predict(fitted[name], cond)

    out = fallback.clone()
    for i, cond in enumerate(conditions):
        cls = perturbation_class(cond, pb.perturbation_type)
        entry = choice.get(cls) or {}
        name = entry.get("chosen", "prior")
        if name == "prior":
            continue
        cond = Condition(context, cond.condition, cond.perturbation, cond.members, cond.dose, cond.features)
        if name == STACK:
            parts = [(w, predict(n, cond)) for n, w in entry["stack_weights"].items() if w > 0]
            pred = (None if any(p is None for _, p in parts)
                    else sum((w * p for w, p in parts), np.zeros(out.shape[1])))
        else:
            pred = predict(name, cond)
        if pred is not None:
            out[i] = torch.as_tensor(pred, dtype=torch.float32)
    return out
