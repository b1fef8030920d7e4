"""Member-additive expression prior: ``delta(p) = sum_{m in p} g(m) + h(p)`` (DESIGN §2.4, ``prior.space=expression``).

``g(m)`` is the measured shift of ``m`` when ``m`` was a training single (the additive baseline's ingredient), and a
KRR prediction from ``m``'s features otherwise (fitted on the training singles, centred on their mean shift). ``h``
is the interaction of combinations: KRR from the pair's summed features to ``delta(pair) - sum g`` over training
combinations. Both ridges are chosen on validation perturbations (singles for ``g``, combinations for ``h``), so a
feature view with no signal falls back to the mean single shift / the mean interaction. For drugs every
perturbation is one unit, so only ``g`` exists. Pure torch; the fitted prior is a unit table ``[U, G]`` plus the
interaction KRR's tensors, so it lives in a ``weights_only`` checkpoint and predicts any set of known units.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scfate.prior.krr import KRRPrior, select_krr

ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def _fit_selected(F: Tensor, Y: Tensor, Fv: Tensor | None, Yv: Tensor | None, kernel: str) -> tuple[KRRPrior, dict]:
    """KRR with alpha/gamma chosen on validation rows when there are any (else alpha 1, gamma 1/d)."""
    standardize = kernel == "rbf"
    if Fv is not None and len(Fv):
        sel = select_krr(F, Y, Fv, Yv, kernel=kernel, alphas=ALPHAS, standardize=standardize)
        info = {k: sel[k] for k in ("alpha", "gamma", "val_mse", "val_mse_mean_only")}
    else:
        info = {"alpha": 1.0, "gamma": None if kernel == "tanimoto" else 1.0 / F.shape[1], "val_mse": None,
                "val_mse_mean_only": None}
    return KRRPrior(kernel, gamma=info["gamma"], alpha=info["alpha"], standardize=standardize).fit(F, Y), info


class AdditivePrior:
    """Fit on unit features ``unit_F [U, d]`` and shifts of train / val perturbations given as
    ``[(member unit indices, delta [G]), ...]``; :meth:`predict` takes lists of member indices -> ``[P, G]``."""

    def __init__(self, kernel: str = "rbf", min_gain: float = 0.1):
        self.kernel, self.min_gain = kernel, float(min_gain)
        self.unit_table: Tensor | None = None  # [U, G]: g(m) for every unit
        self.interaction: KRRPrior | None = None
        self.interaction_mean: Tensor | None = None  # [G]: used when there are too few training combinations
        self.unit_F: Tensor | None = None
        self.info: dict = {}

    def fit(self, unit_F: Tensor, train: list[tuple[list[int], Tensor]], val: list[tuple[list[int], Tensor]]):
        self.unit_F = unit_F.float()
        singles = [(m[0], d) for m, d in train if len(m) == 1]
        vsingles = [(m[0], d) for m, d in val if len(m) == 1]
        G = train[0][1].shape[0]
        if len(singles) >= 2:
            g_model, self.info["singles"] = _fit_selected(
                unit_F[[u for u, _ in singles]], torch.stack([d for _, d in singles]),
                unit_F[[u for u, _ in vsingles]] if vsingles else None,
                torch.stack([d for _, d in vsingles]) if vsingles else None, self.kernel)
            table = g_model.predict(unit_F)
        else:  # no singles to learn g from: the interaction model carries everything
            table, self.info["singles"] = torch.zeros(len(unit_F), G), {"note": "fewer than 2 training singles"}
        for u, d in singles:  # a measured single is its own best estimate (as in the additive baseline)
            table[u] = d
        self.unit_table = table.float()
        combos = [(m, d - self.unit_table[m].sum(0)) for m, d in train if len(m) > 1]
        vcombos = [(m, d - self.unit_table[m].sum(0)) for m, d in val if len(m) > 1]
        self.interaction_mean, self.info["interaction"] = torch.zeros(G), {"chosen": "none"}
        if len(combos) >= 2 and vcombos:
            # three candidates on validation combinations: no interaction, the mean one, a KRR of the features;
            # a richer one must beat the simpler by min_gain (a few validation pairs make selection noisy)
            feats = lambda rows: torch.stack([unit_F[m].sum(0) for m, _ in rows])  # noqa: E731
            R, Rv = torch.stack([r for _, r in combos]), torch.stack([r for _, r in vcombos])
            krr, info = _fit_selected(feats(combos), R, feats(vcombos), Rv, self.kernel)
            mse = {"none": float((Rv ** 2).mean()), "mean": float(((Rv - R.mean(0)) ** 2).mean()),
                   "krr": info["val_mse"]}
            chosen = "none"
            for cand in ("mean", "krr"):
                if mse[cand] < (1 - self.min_gain) * mse[chosen]:
                    chosen = cand
            self.info["interaction"] = {"chosen": chosen, **info, "val_mse_candidates": mse}
            if chosen == "mean":
                self.interaction_mean = R.mean(0)
            elif chosen == "krr":
                self.interaction = krr
        return self

    def predict(self, members: list[list[int]]) -> Tensor:
        out = torch.stack([self.unit_table[m].sum(0) for m in members])
        multi = [i for i, m in enumerate(members) if len(m) > 1]
        if multi:
            out[multi] += self.interaction_mean
            if self.interaction is not None:
                out[multi] += self.interaction.predict(torch.stack([self.unit_F[members[i]].sum(0) for i in multi]))
        return out

    def to_state(self) -> dict:
        return {"kernel": self.kernel, "unit_table": self.unit_table, "unit_F": self.unit_F,
                "interaction_mean": self.interaction_mean,
                "interaction": self.interaction.to_state() if self.interaction is not None else {}}

    @classmethod
    def from_state(cls, state: dict) -> AdditivePrior:
        prior = cls(str(state["kernel"]))
        prior.unit_table, prior.unit_F = state["unit_table"].float(), state["unit_F"].float()
        prior.interaction_mean = state["interaction_mean"].float()
        prior.interaction = KRRPrior.from_state(state["interaction"]) if state["interaction"] else None
        return prior
