"""Oracle check of a backbone: predict each *training* perturbation by rotating control cells with its learned
mean angle and decoding. It measures whether the rotation latent can express real effects at all (an in-sample
upper bound for the flow head, not a zero-shot score)."""

from __future__ import annotations

import numpy as np
import torch

from scfate.eval.baselines import Condition, NotPredictable, Prediction, Predictor


class BackboneOracle(Predictor):
    name = "oracle:backbone"

    def __init__(self, model, contexts: list[str]):
        self.model, self.contexts = model.eval(), contexts
        self.index = {p: i for i, p in enumerate(model.hparams.perturbations)}

    @torch.no_grad()
    def predict(self, cond: Condition, ctrl_cells: np.ndarray) -> Prediction:
        if cond.perturbation not in set(self.model.hparams.atlas_perturbations):
            raise NotPredictable(f"{cond.perturbation!r} has no learned angle (not a training perturbation)")
        ctx = torch.tensor(self.contexts.index(cond.context))
        theta = self.model.theta_bar(torch.tensor(self.index[cond.perturbation]))
        x = self.model.transport(torch.as_tensor(ctrl_cells, dtype=torch.float32), ctx, theta).double().numpy()
        return Prediction(x.mean(0), x)
