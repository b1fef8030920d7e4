"""What every predictor shares: a test ``Condition`` in, a ``Prediction`` (mean and cells) out.

Baselines (scfate.prior.baselines), the flow head (``FlowPredictor``), the backbone's oracle check, prediction files
and the router's mixtures all implement ``Predictor``; the evaluation runner, the router, ``evaluate.py ckpt=`` and
``scfate.load(...).predict`` call them the same way, so a score never depends on which door a model came in by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby

import numpy as np
import torch

from scfate.errors import UsageError
from scfate.models.flow_sampling import Controls, Request, max_rows


class NotPredictable(ValueError):
    """This predictor has no prediction for this condition; the message says why (recorded as 'not defined')."""


@dataclass
class Condition:
    context: str
    condition: str
    perturbation: str
    members: list[str]
    dose: float  # NaN for genes
    features: np.ndarray  # sum of member unit features (+ log10 dose for drugs)


@dataclass
class Pseudobulk:
    """What a baseline may learn from: training (and validation) condition deltas, never test ones."""

    perturbation_type: str
    contexts: list[str]
    ctrl_mean: dict[str, np.ndarray]  # context -> [G]
    train: dict[str, list[tuple[Condition, np.ndarray]]]  # context -> [(condition, delta [G])]
    val: dict[str, list[tuple[Condition, np.ndarray]]] = field(default_factory=dict)

    def train_delta_mean(self, context: str) -> np.ndarray:
        rows = self.train.get(context) or [r for c in self.contexts for r in self.train.get(c, [])]
        if not rows:
            raise NotPredictable("no training perturbations to average")
        return np.mean([d for _, d in rows], axis=0)


@dataclass
class Prediction:
    mean: np.ndarray  # [G] predicted mean expression
    cells: np.ndarray  # [n, G] predicted cells (for distribution metrics)
    notes: list[str] = field(default_factory=list)


class Predictor:
    """Interface shared by baselines and models."""

    name = "predictor"

    def fit(self, pb: Pseudobulk) -> None:
        self.pb = pb

    def predict(self, cond: Condition, ctrl_cells: np.ndarray) -> Prediction:
        delta, notes = self.predict_delta(cond)
        return Prediction(self.pb.ctrl_mean[cond.context] + delta, ctrl_cells + delta[None, :], notes)

    def predict_delta(self, cond: Condition) -> tuple[np.ndarray, list[str]]:
        raise NotPredictable(f"{self.name} predicts cells directly")

    def predict_each(self, conds: list[Condition], ctrl_cells: list[np.ndarray]) -> list[Prediction | NotPredictable]:
        """``predict`` of each condition on its own control cells, in order; a condition it cannot predict gives
        its NotPredictable in its place. A predictor that overrides this predicts them as one batch, and the
        evaluation runner then hands it many conditions at once (scfate.eval.runner)."""
        out: list[Prediction | NotPredictable] = []
        for cond, cells in zip(conds, ctrl_cells, strict=True):
            try:
                out.append(self.predict(cond, cells))
            except NotPredictable as exc:
                out.append(exc)
        return out


class FlowPredictor(Predictor):
    """The flow head as a predictor (one predicted cell per control cell), for evaluation, the router, reflow and
    ``scfate.load(...).predict`` alike. A perturbation of the head's vocabulary uses its stored prior; one outside it
    (an unseen combination in the API) needs ``prior_of_new(members, z_ctrl, ctx) -> (theta_mu, offset)``.
    ``generator``: a CPU ``torch.Generator`` for the flow's source noise (the API's ``seed``); None draws from the
    global RNG, as evaluation does after its ``seed_everything``. Control cells may come pre-encoded (``encode``),
    and ``predict_many`` predicts many perturbations on one control batch in one pass (scfate.models.flow_sampling)."""

    def __init__(self, head, perturbations: list[str], contexts: list[str], units: dict[str, int], name: str,
                 n_steps: int | None = None, prior_only: bool = False, prior_of_new=None,
                 generator: torch.Generator | None = None):
        # 0 would silently mean "the head's default" further down (``n_steps or hparams.n_steps``)
        if n_steps is not None and (isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer))
                                    or n_steps < 1):
            raise UsageError(f"n_steps={n_steps!r}: the number of flow integration steps must be an integer >= 1 "
                             f"(or None for the head's own, {head.hparams.n_steps}).")
        self.head, self.perturbations, self.contexts, self.units = head.eval(), perturbations, contexts, units
        self.name, self.prior_only, self.prior_of_new, self.generator = name, prior_only, prior_of_new, generator
        self.n_steps = None if n_steps is None else int(n_steps)
        self._index = {p: i for i, p in enumerate(perturbations)}

    def encode(self, ctrl_cells: np.ndarray, context: str) -> Controls:
        """Control cells of ``context`` encoded once: give the result, or its ``take(rows)`` (a resample of them),
        to ``predict`` / ``predict_many`` for any number of perturbations; nothing about the cells is recomputed."""
        return self.head.encode_controls(torch.as_tensor(ctrl_cells, dtype=torch.float32),
                                         torch.tensor(self.contexts.index(context)))

    def predict(self, cond: Condition, ctrl_cells: np.ndarray | Controls) -> Prediction:
        return self.predict_many([cond], ctrl_cells)[0]

    @torch.no_grad()
    def predict_many(self, conds: list[Condition], ctrl_cells: np.ndarray | Controls) -> list[Prediction]:
        """``predict`` of every condition (one context) on the same control cells, encoded once and run through
        the flow and the decoder as one stacked batch; the source noise is drawn condition by condition in order,
        as that many ``predict`` calls would. An unpredictable condition raises before any cell is sampled."""
        if not conds:
            return []
        if len({c.context for c in conds}) > 1:
            raise UsageError(f"predict_many takes conditions of one context (the control cells'), got "
                             f"{sorted({c.context for c in conds})}")
        controls = ctrl_cells if isinstance(ctrl_cells, Controls) else self.encode(ctrl_cells, conds[0].context)
        if int(controls.context) != self.contexts.index(conds[0].context):
            raise UsageError(f"the control cells were encoded for context {self.contexts[int(controls.context)]!r}, "
                             f"not {conds[0].context!r}")
        requests = [self._request(cond, controls) for cond in conds]
        # the KRR prior alone (flow_off) applies to the vocabulary; a new perturbation always goes through the flow
        alone = [self.prior_only and r.perturbation is not None for r in requests]
        flow = [r for r, a in zip(requests, alone) if not a]
        sampled = iter(self.head.sample_cells_many(controls, flow, self.n_steps, self.generator) if flow else [])
        out = [self._prior_alone(r, controls) if a else next(sampled) for r, a in zip(requests, alone)]
        return [Prediction(o.mean(0), o) for o in (o.double().numpy() for o in out)]

    @torch.no_grad()
    def predict_each(self, conds: list[Condition], ctrl_cells: list[np.ndarray]) -> list[Prediction | NotPredictable]:
        """``predict`` of each condition on its own control cells, stacked: each run of consecutive conditions of
        one context and batch size is encoded, solved and decoded as one paired batch (flow_sampling), the source
        noise drawn condition by condition in order, as that many ``predict`` calls would draw it."""
        out: list[Prediction | NotPredictable] = []
        for _, run in groupby(zip(conds, ctrl_cells, strict=True), key=lambda c: (c[0].context, np.shape(c[1]))):
            cs, xs = zip(*run)
            out.extend(self._predict_paired(list(cs), list(xs)))
        return out

    def _predict_paired(self, conds: list[Condition], ctrl_cells: list[np.ndarray]) -> list:
        controls = self.encode(np.stack(ctrl_cells), conds[0].context)
        out, requests, flow = [], {}, []
        for p, cond in enumerate(conds):
            try:
                requests[p] = self._request(cond, controls.item(p))
            except NotPredictable as exc:
                out.append(exc)
                continue
            out.append(None)
            if not (self.prior_only and requests[p].perturbation is not None):
                flow.append(p)
        paired = controls if len(flow) == len(conds) else controls.pick(flow)
        sampled = self.head.sample_cells_many(paired, [requests[p] for p in flow], self.n_steps,
                                              self.generator) if flow else []
        cells = dict(zip(flow, sampled))
        for p, r in requests.items():
            o = cells[p] if p in cells else self._prior_alone(r, controls.item(p))
            o = o.double().numpy()
            out[p] = Prediction(o.mean(0), o)
        return out

    def _request(self, cond: Condition, controls: Controls) -> Request:
        members = torch.tensor([self.units[m] for m in cond.members])
        dose = torch.tensor(np.log10(cond.dose) if np.isfinite(cond.dose) else 0.0, dtype=torch.float32)
        index = self._index.get(cond.perturbation)
        if index is not None:
            return Request(torch.tensor(index), members, dose)
        if self.prior_of_new is None:
            raise NotPredictable(f"{cond.perturbation!r} is not in this head's vocabulary")
        theta_mu, offset = self.prior_of_new(cond.members, controls.z, controls.context)
        return Request(None, members, dose, theta_mu, offset)

    def _prior_alone(self, r: Request, c: Controls) -> torch.Tensor:
        """The KRR prior alone: every control rotated by the predicted mean angle (no ODE, no source noise)."""
        h = self.head
        out = h.decode_rotated(h.prior_mu[r.perturbation].expand(len(c), -1), c.z, c.x, c.context,
                               h.offset_of(r.perturbation, c.context), base=c.base)
        return h.anchor_to_delta(out, c.x, r.perturbation, c.context)


class BackboneOracle(Predictor):
    """Oracle check of a backbone: predict each *training* perturbation by rotating control cells with its learned
    mean angle and decoding. It measures whether the rotation latent can express real effects at all (an in-sample
    upper bound for the flow head, not a zero-shot score)."""

    name = "oracle:backbone"

    def __init__(self, model, contexts: list[str]):
        self.model, self.contexts = model.eval(), contexts
        self.index = {p: i for i, p in enumerate(model.hparams.perturbations)}

    def theta(self, cond: Condition) -> torch.Tensor:
        """The angle ``cond`` acts by: its learned atlas angle."""
        if cond.perturbation not in set(self.model.hparams.atlas_perturbations):
            raise NotPredictable(f"{cond.perturbation!r} has no learned angle (not a training perturbation)")
        return self.model.theta_bar(torch.tensor(self.index[cond.perturbation]))

    def predict(self, cond: Condition, ctrl_cells: np.ndarray) -> Prediction:
        out = self.predict_each([cond], [ctrl_cells])[0]
        if isinstance(out, NotPredictable):
            raise out
        return out

    @torch.no_grad()
    def predict_each(self, conds: list[Condition], ctrl_cells: list[np.ndarray]) -> list[Prediction | NotPredictable]:
        """Every condition on its own control cells, those of one context encoded and decoded together (in calls
        of flow_sampling.MAX_ROWS rows): no random numbers, the same cells as one call each to float rounding."""
        out: list[Prediction | NotPredictable] = []
        for context, run in groupby(zip(conds, ctrl_cells, strict=True), key=lambda c: c[0].context):
            run = list(run)
            thetas = []
            for cond, _ in run:
                try:
                    thetas.append(self.theta(cond))
                except NotPredictable as exc:
                    thetas.append(exc)
            ok = [i for i, t in enumerate(thetas) if not isinstance(t, NotPredictable)]
            cells = self._transport(context, [run[i][1] for i in ok], [thetas[i] for i in ok])
            done = dict(zip(ok, cells))
            out.extend(Prediction(done[i].mean(0), done[i]) if i in done else thetas[i] for i in range(len(run)))
        return out

    def _transport(self, context: str, xs: list[np.ndarray], thetas: list[torch.Tensor]) -> list[np.ndarray]:
        if not xs:
            return []
        ctx, sizes = torch.tensor(self.contexts.index(context)), [len(x) for x in xs]
        x = torch.as_tensor(np.concatenate(xs), dtype=torch.float32)
        theta = torch.cat([t.expand(n, -1) for t, n in zip(thetas, sizes)])
        step = max_rows(x)
        cells = torch.cat([self.model.transport(x[i:i + step], ctx, theta[i:i + step]) for i in range(0, len(x), step)])
        return np.split(cells.double().numpy(), np.cumsum(sizes)[:-1])


class RotationTransfer(BackboneOracle):
    """The card's rotation idea across contexts: a perturbation held out in one context and trained in others
    acts there by the rotation it learned elsewhere (its atlas angle), applied to this context's control latents.
    Zero-shot for that context's cells (the backbone never saw them); scored by the cross-context benchmark."""

    name = "rotation_transfer"


class RotationSum(BackboneOracle):
    """The card's composition rule: a combination acts by ``R(theta_a + theta_b)``, its members' learned angles
    (atlas entries of training singles) summed in the Lie algebra and decoded from the control latents. The decoder
    is non-linear, so the predicted shift need not be the sum of the members' shifts: scored against that sum (the
    ``additive`` baseline) it shows whether the rotation algebra captures the non-additive part."""

    name = "rotation_sum"

    def theta(self, cond: Condition) -> torch.Tensor:
        atlas = set(self.model.hparams.atlas_perturbations)
        if len(cond.members) < 2 or not all(m in atlas for m in cond.members):
            raise NotPredictable("rotation_sum composes a combination of members trained as singles")
        return sum(self.model.theta_bar(torch.tensor(self.index[m])) for m in cond.members)
