"""Fit the flow head's prior for a frozen backbone: the KRR prior in angle space, the member-additive expression
prior lifted to angles, or (``space=auto``) the one whose prior alone predicts the validation perturbations better.

Inputs are explicit (``PriorSettings``, a frozen backbone, a set-up ``PerturbationDataModule``); only training
perturbations are fitted on and only validation perturbations are selected on.
"""

from __future__ import annotations

import logging

import torch

from scfate.data.splits import has_context_units, unit_perturbation
from scfate.lie import circular_mean, wrap_angle
from scfate.prior.additive import AdditivePrior
from scfate.prior.krr import KRRPrior, select_krr, unwrap_around_mean
from scfate.prior.lift import lift_residual, lift_shifts
from scfate.prior.settings import PriorSettings
from scfate.prior.validation import control_latents, empirical_angles, perturbation_deltas, validation_cos

log = logging.getLogger("scfate")


def perturbation_features(dm) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit features standardised on training units [n_units, d], and per-perturbation sums [n_perts, d]."""
    data = dm.data
    units = data.features.index()
    F = torch.as_tensor(data.features.matrix, dtype=torch.float32)
    train_units = sorted({units[m] for e in data.split.train for m in data.members(unit_perturbation(e))})
    mu, sd = F[train_units].mean(0), F[train_units].std(0)
    F = (F - mu) / torch.where(sd > 0, sd, torch.ones_like(sd))
    per = torch.stack([F[[units[m] for m in data.members(p)]].sum(0) for p in dm.perturbations])
    return F, per


def fit_prior(settings: PriorSettings, backbone, dm, feats: torch.Tensor, unit_feats: torch.Tensor,
              decode: str = "residual") -> tuple[torch.Tensor, dict]:
    """(prior mean angle per perturbation [P, k], the prior's description and state for the checkpoint).

    KRR from perturbation features to the atlas angles (training perturbations), its ridge and kernel width
    selected on validation perturbations; then the space (``settings.space``), ``decode`` as the flow head decodes."""
    k = backbone.hparams.theta_dim
    if settings.name == "none":
        return torch.zeros(len(dm.perturbations), k), {"prior": "none", "krr_gamma": None, "krr_alpha": None}
    index = {p: i for i, p in enumerate(dm.perturbations)}
    train = list(backbone.hparams.atlas_perturbations)
    F, Y = feats[[index[p] for p in train]], unwrap_around_mean(backbone.atlas.detach().float())
    kernel = settings.kernel
    alpha, gamma, selection = float(settings.krr_alpha), settings.krr_gamma, None
    val = empirical_angles(backbone, dm, dm.groups["val"]) if settings.select else {}
    if val:
        vp = sorted(val)
        centre = circular_mean(Y)  # validation angles unwrapped around the training atlas, like Y
        Yv = centre + wrap_angle(torch.stack([val[p] for p in vp]) - centre)
        selection = select_krr(F, Y, feats[[index[p] for p in vp]], Yv, kernel=kernel, standardize=kernel == "rbf")
        alpha, gamma = selection["alpha"], selection["gamma"]
        log.info("KRR prior selected on %d validation perturbations: alpha=%s gamma=%s (val MSE %.4f; mean-only %.4f)",
                 len(vp), alpha, gamma, selection["val_mse"], selection["val_mse_mean_only"])
    prior = KRRPrior(kernel, gamma=gamma, alpha=alpha, standardize=kernel == "rbf").fit(F, Y)
    info = {"prior": "krr", "prior_space": "angle", "krr_kernel": kernel, "krr_gamma": gamma, "krr_alpha": alpha,
            "krr_val_mse": selection["val_mse"] if selection else None,
            "krr_val_mse_mean_only": selection["val_mse_mean_only"] if selection else None,
            "state": prior.to_state()}
    if settings.space == "angle":
        return prior.predict(feats).float(), info
    mu_x, info_x = fit_expression_prior(settings, backbone, dm, unit_feats, prior.predict(feats))
    if settings.space == "expression" or not dm.groups["val"]:
        return mu_x, info_x
    # auto: the space whose prior alone predicts the validation perturbations' shifts better (mean delta cosine)
    scores = {"angle": validation_cos(backbone, dm, prior.predict(feats).float(), decode),
              "expression": validation_cos(backbone, dm, mu_x, decode, offset=info_x.get("offset"))}
    chosen = "expression" if scores["expression"] > scores["angle"] + settings.auto_margin else "angle"
    log.info("prior.space=auto: validation delta cosine %s -> %s", {k: round(v, 4) for k, v in scores.items()}, chosen)
    mu, out = (mu_x, info_x) if chosen == "expression" else (prior.predict(feats).float(), info)
    return mu, {**out, "prior_space_selection": scores}


def fit_expression_prior(settings: PriorSettings, backbone, dm, unit_feats: torch.Tensor, theta_init: torch.Tensor):
    """Member-additive KRR of the pseudobulk shift per context (scfate.prior.additive, ridges chosen on validation
    perturbations), lifted to angles through the frozen decoder (scfate.prior.lift), from the angle prior."""
    units = dm.data.features.index()
    members = [[units[m] for m in dm.data.members(p)] for p in dm.perturbations]
    rows = {s: perturbation_deltas(dm, s) for s in ("train", "val")}
    index = {p: i for i, p in enumerate(dm.perturbations)}
    priors, sources = [], []
    for c in dm.contexts:
        # a context with too few training perturbations borrows the pooled shifts of all contexts
        src = {s: rows[s][c] if len(rows["train"][c]) >= 2 else
               {p: d for cc in dm.contexts for p, d in rows[s][cc].items()} for s in rows}
        sources.append(src)
        fit = {s: [(members[index[p]], d) for p, d in sorted(src[s].items())] for s in src}
        prior = AdditivePrior(settings.kernel).fit(unit_feats, fit["train"], fit["val"])
        log.info("expression prior (%s): %s", c, prior.info)
        priors.append(prior)
    deltas = [p.predict(members) for p in priors]
    mean_choice = {}
    if settings.mean_candidates and dm.data.spec.perturbation_type == "gene":
        deltas, mean_choice = _select_means(settings, dm, unit_feats, sources, deltas)
    z, ctxs = control_latents(backbone, dm, n=settings.lift_cells)
    act, decode = backbone.group.act, backbone.decode
    theta, err = lift_shifts(act, decode, deltas, z, ctxs, theta_init, steps=settings.lift_steps, lr=settings.lift_lr)
    log.info("expression prior lifted to angles: decoded-mean MSE to the target %.5f (median over perturbations)",
             float(err.median()))
    offset = None
    if settings.lift_residual:
        # on more control cells than the lift's: a mean, no optimisation, so cheap
        zr, cr = control_latents(backbone, dm, n=settings.residual_cells, seed=1)
        offset = torch.stack([lift_residual(act, decode, theta, d, zz, cc) for d, zz, cc in zip(deltas, zr, cr)],
                             dim=1)  # [P, C, G]
        log.info("prior.lift_residual: the decoded prior misses %.4f of the shift's RMS %.4f (kept as an offset)",
                 float(offset.pow(2).mean().sqrt()), float(torch.stack(deltas).pow(2).mean().sqrt()))
    info = {"prior": "krr", "prior_space": "expression", "krr_kernel": settings.kernel,
            "krr_gamma": None, "krr_alpha": None, "prior_selection": [p.info for p in priors],
            "lift_cells": settings.lift_cells, "lift_steps": settings.lift_steps, "lift_lr": settings.lift_lr,
            "lift_mse_median": float(err.median()), "lift_residual": offset is not None,
            "state": {"contexts": [p.to_state() for p in priors]}, "offset": offset,
            "delta": torch.stack(deltas, dim=1), "mean_selection": mean_choice}  # delta: [P, C, G]
    return theta, info


def _select_means(settings: PriorSettings, dm, unit_feats: torch.Tensor, sources: list[dict], deltas: list):
    """Per context and class, the mean predictor chosen by leave-one-out over the non-test perturbations
    (scfate.prior.mean_select) on the shifts the expression prior was fitted on (``sources``: per context,
    {"train"|"val": {perturbation: shift}}); returns the shifts of every vocabulary perturbation and the choices."""
    import numpy as np

    from scfate.models.predictor import Condition, Pseudobulk
    from scfate.prior.mean_select import CROSS_CONTEXT, select_mean, selected_shifts, view_candidates

    data, units = dm.data, dm.data.features.index()
    raw = np.asarray(data.features.matrix, dtype=np.float64)

    def cond(ctx, p):  # as the evaluation's baselines see a perturbation (scfate.eval.runner.EvalData)
        ms = data.members(p)
        return Condition(ctx, p, p, ms, float("nan"), raw[[units[m] for m in ms]].sum(0))

    cross = has_context_units(data.split.test)
    # with several feature views, kNN on each view alone too, so the stack can weigh the views
    views = view_candidates(data.features.views) if "knn" in settings.mean_candidates else {}
    candidates = tuple(settings.mean_candidates) + tuple(views) + (CROSS_CONTEXT if cross else ())
    own_rows = {c: [(cond(c, p), d.double().numpy()) for p, d in sorted(src["train"].items())]
                for c, src in zip(dm.contexts, sources)}
    out, choices = [], {}
    for c, src, fallback in zip(dm.contexts, sources, deltas):
        as_rows = {s: [(cond(c, p), d.double().numpy()) for p, d in sorted(src[s].items())] for s in src}
        others = {cc: rows for cc, rows in own_rows.items() if cc != c} if cross else {}
        pb = Pseudobulk("gene", [c], {c: np.zeros(dm.n_genes)}, {**others, c: as_rows["train"]})  # shifts only
        choice = select_mean(pb, as_rows["train"] + as_rows["val"], unit_feats, units, settings.kernel,
                             candidates, others=others, views=views)
        log.info("mean predictor (%s), leave-one-out over %d non-test perturbations: %s", c,
                 len(as_rows["train"]) + len(as_rows["val"]), choice)
        out.append(selected_shifts(pb, c, [cond(c, p) for p in dm.perturbations], choice, unit_feats, units,
                                   settings.kernel, fallback, views))
        choices[c] = choice
    return out, choices
