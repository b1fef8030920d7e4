"""Stage `flow`: resolve the backbone (path, hf://, or auto), fit the KRR prior, train the flow head, export
``flow_heads/<dataset>/seed<N>/flow_best.pt``, and evaluate the test split beside every baseline."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from scfate.eval.baselines import Condition, Prediction, Predictor
from scfate.lie import circular_mean, wrap_angle

log = logging.getLogger("scfate")


@torch.no_grad()
def empirical_angles(backbone, dm, groups, n: int = 128) -> dict[str, torch.Tensor]:
    """Mean rotation of a perturbation measured in the latent (circular mean of pair angles), for validation."""
    out: dict[str, list] = {}
    rng = np.random.default_rng(0)
    for g in groups:
        ctx = torch.tensor(dm.contexts.index(g.context))
        ctrl = dm.heldout_controls[g.context]
        xc = torch.from_numpy(dm.reader(rng.choice(ctrl, n, replace=len(ctrl) < n)))
        xp = torch.from_numpy(dm.reader(rng.choice(g.cells, n, replace=len(g.cells) < n)))
        rel = backbone.group.relative_angle(backbone.encode(xc, ctx), backbone.encode(xp, ctx))
        out.setdefault(g.perturbation, []).append(circular_mean(rel))
    return {p: circular_mean(torch.stack(v)) for p, v in out.items()}


def fit_prior(cfg: DictConfig, backbone, dm, feats: torch.Tensor, unit_feats: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict]:
    """KRR from perturbation features to the atlas angles (train), selected on validation perturbations."""
    from scfate.prior import KRRPrior, select_krr, unwrap_around_mean

    k = backbone.hparams.theta_dim
    if cfg.prior.name == "none":
        return torch.zeros(len(dm.perturbations), k), {"prior": "none", "krr_gamma": None, "krr_alpha": None}
    index = {p: i for i, p in enumerate(dm.perturbations)}
    train = list(backbone.hparams.atlas_perturbations)
    F, Y = feats[[index[p] for p in train]], unwrap_around_mean(backbone.atlas.detach().float())
    kernel = cfg.prior.kernel
    alpha, gamma, selection = float(cfg.prior.krr_alpha), cfg.prior.krr_gamma, None
    val = empirical_angles(backbone, dm, dm.groups["val"]) if cfg.prior.select else {}
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
    space = cfg.prior.get("space", "angle")
    if space == "angle":
        return prior.predict(feats).float(), info
    mu_x, info_x = fit_expression_prior(cfg, backbone, dm, unit_feats, prior.predict(feats))
    if space == "expression" or not dm.groups["val"]:
        return mu_x, info_x
    # auto: the space whose prior alone predicts the validation perturbations' shifts better (mean delta cosine,
    # decoded as the flow head decodes); the two spaces win on different data (REPRODUCE.md §6)
    decode = cfg.flow.head.get("decode", "residual") if "flow" in cfg else "residual"
    scores = {"angle": validation_cos(backbone, dm, prior.predict(feats).float(), decode),
              "expression": validation_cos(backbone, dm, mu_x, decode, offset=info_x.get("offset"))}
    # with prior.lift_residual the expression prior is scored as it predicts (not degraded by the lift), so the
    # default margin is 0; a positive auto_margin makes expression win clearly before replacing DESIGN §2.4's angle
    chosen = "expression" if scores["expression"] > scores["angle"] + float(cfg.prior.get("auto_margin", 0.0)) \
        else "angle"
    log.info("prior.space=auto: validation delta cosine %s -> %s", {k: round(v, 4) for k, v in scores.items()}, chosen)
    mu, out = (mu_x, info_x) if chosen == "expression" else (prior.predict(feats).float(), info)
    return mu, {**out, "prior_space_selection": scores}


@torch.no_grad()
def validation_cos(backbone, dm, prior_mu: torch.Tensor, decode: str, n: int = 128,
                   offset: torch.Tensor | None = None) -> float:
    """Mean cosine between the validation conditions' true shift and the shift of held-out controls rotated by the
    prior's angle (the prior alone as a predictor), ``decode`` as in FlowHead.decode_rotated."""
    from scfate.eval.runner import mean_rows

    rng, cos = np.random.default_rng(0), []
    for g in dm.groups["val"]:
        ctx = torch.tensor(dm.contexts.index(g.context))
        ctrl = dm.heldout_controls[g.context]
        x = torch.from_numpy(dm.reader(np.sort(rng.choice(ctrl, min(n, len(ctrl)), replace=False))))
        z = backbone.encode(x, ctx).float()
        theta = prior_mu[dm.perturbations.index(g.perturbation)].expand(len(z), -1)
        out = backbone.decode(backbone.group.act(theta, z), ctx)
        if decode == "residual":
            out = x + out - backbone.decode(z, ctx)
            if offset is not None:  # the expression prior's shift its angle does not decode to (prior.lift_residual)
                out = out + offset[dm.perturbations.index(g.perturbation), int(ctx)]
        ctrl_mean = torch.as_tensor(mean_rows(dm.reader, ctrl), dtype=torch.float32)
        true = torch.as_tensor(mean_rows(dm.reader, g.cells), dtype=torch.float32) - ctrl_mean
        cos.append(float(torch.nn.functional.cosine_similarity(out.mean(0) - ctrl_mean, true, dim=0)))
    return float(np.mean(cos))


def control_latents(backbone, dm, n: int = 64, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``n`` held-out control latents per context (the lift's reference cells), and the context indices."""
    rng = np.random.default_rng(seed)
    z, ctxs = [], []
    for i, c in enumerate(dm.contexts):
        ctrl = dm.heldout_controls[c]
        ctx = torch.tensor(i)
        with torch.no_grad():
            z.append(backbone.encode(torch.from_numpy(dm.reader(np.sort(rng.choice(ctrl, min(n, len(ctrl)),
                                                                                   replace=False)))), ctx).float())
        ctxs.append(ctx)
    return z, ctxs


def perturbation_deltas(dm, split: str) -> dict[str, dict[str, torch.Tensor]]:
    """Pseudobulk shift of each perturbation of ``split`` vs its context's controls, averaged over its conditions
    (doses): {context: {perturbation: [G]}}."""
    from scfate.eval.runner import mean_rows

    ctrl = {c: mean_rows(dm.reader, np.concatenate([dm.controls[c], dm.heldout_controls[c]])) for c in dm.contexts}
    out: dict[str, dict[str, list]] = {c: {} for c in dm.contexts}
    for g in dm.groups[split]:
        out[g.context].setdefault(g.perturbation, []).append(mean_rows(dm.reader, g.cells) - ctrl[g.context])
    return {c: {p: torch.as_tensor(np.mean(v, 0), dtype=torch.float32) for p, v in d.items()} for c, d in out.items()}


def fit_expression_prior(cfg: DictConfig, backbone, dm, unit_feats: torch.Tensor, theta_init: torch.Tensor):
    """Member-additive KRR of the pseudobulk shift per context (scfate.prior.additive, ridges chosen on validation
    perturbations), lifted to angles through the frozen decoder (scfate.prior.lift), from the angle prior."""
    from scfate.prior.additive import AdditivePrior
    from scfate.prior.lift import decoded_means, lift_to_angles

    units = dm.data.features.index()
    members = [[units[m] for m in dm.data.members(p)] for p in dm.perturbations]
    rows = {s: perturbation_deltas(dm, s) for s in ("train", "val")}
    index = {p: i for i, p in enumerate(dm.perturbations)}
    priors, targets = [], []
    for c in dm.contexts:
        # a context with too few training perturbations borrows the pooled shifts of all contexts
        src = {s: rows[s][c] if len(rows["train"][c]) >= 2 else
               {p: d for cc in dm.contexts for p, d in rows[s][cc].items()} for s in rows}
        fit = {s: [(members[index[p]], d) for p, d in sorted(src[s].items())] for s in src}
        prior = AdditivePrior(cfg.prior.kernel).fit(unit_feats, fit["train"], fit["val"])
        log.info("expression prior (%s): %s", c, prior.info)
        priors.append(prior)
        targets.append(prior.predict(members))
    z, ctxs = control_latents(backbone, dm, n=int(cfg.prior.lift_cells))
    with torch.no_grad():  # the decoded change is what a residual-decoded prediction adds to its control cells
        zero = torch.zeros(1, backbone.hparams.theta_dim)
        targets = [t + decoded_means(backbone.group.act, backbone.decode, zero, zc, cc)[0]
                   for t, zc, cc in zip(targets, z, ctxs)]
    theta, err = lift_to_angles(backbone.group.act, backbone.decode, torch.stack(targets), z, ctxs, theta_init,
                                steps=int(cfg.prior.lift_steps), lr=float(cfg.prior.lift_lr))
    log.info("expression prior lifted to angles: decoded-mean MSE to the target %.5f (median over perturbations)",
             float(err.median()))
    offset = None
    if cfg.prior.get("lift_residual", False):
        from scfate.prior.lift import lift_residual

        # on more control cells than the lift's: a mean, no optimisation, so cheap
        zr, cr = control_latents(backbone, dm, n=int(cfg.prior.residual_cells), seed=1)
        deltas = [p.predict(members) for p in priors]
        offset = torch.stack([lift_residual(backbone.group.act, backbone.decode, theta, d, z, c)
                              for d, z, c in zip(deltas, zr, cr)], dim=1)  # [P, C, G]
        log.info("prior.lift_residual: the decoded prior misses %.4f of the shift's RMS %.4f (kept as an offset)",
                 float(offset.pow(2).mean().sqrt()), float(torch.stack(deltas).pow(2).mean().sqrt()))
    info = {"prior": "krr", "prior_space": "expression", "krr_kernel": cfg.prior.kernel,
            "krr_gamma": None, "krr_alpha": None, "prior_selection": [p.info for p in priors],
            "lift_cells": int(cfg.prior.lift_cells), "lift_steps": int(cfg.prior.lift_steps),
            "lift_lr": float(cfg.prior.lift_lr), "lift_mse_median": float(err.median()),
            "lift_residual": offset is not None, "state": {"contexts": [p.to_state() for p in priors]},
            "offset": offset}
    return theta, info


def perturbation_features(dm) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit features standardised on training units [n_units, d], and per-perturbation sums [n_perts, d]."""
    data = dm.data
    units = data.features.index()
    F = torch.as_tensor(data.features.matrix, dtype=torch.float32)
    train_units = sorted({units[m] for p in data.split.train for m in data.members(p)})
    mu, sd = F[train_units].mean(0), F[train_units].std(0)
    F = (F - mu) / torch.where(sd > 0, sd, torch.ones_like(sd))
    per = torch.stack([F[[units[m] for m in data.members(p)]].sum(0) for p in dm.perturbations])
    return F, per


class FlowPredictor(Predictor):
    """The flow head as an evaluation predictor (one predicted cell per sampled control cell)."""

    def __init__(self, head, perturbations: list[str], contexts: list[str], units: dict[str, int], name: str,
                 n_steps: int | None = None, prior_only: bool = False):
        self.head, self.perturbations, self.contexts, self.units = head.eval(), perturbations, contexts, units
        self.name, self.n_steps, self.prior_only = name, n_steps, prior_only

    @torch.no_grad()
    def predict(self, cond: Condition, ctrl_cells: np.ndarray) -> Prediction:
        x = torch.as_tensor(ctrl_cells, dtype=torch.float32)
        ctx = torch.tensor(self.contexts.index(cond.context))
        pert = torch.tensor(self.perturbations.index(cond.perturbation))
        if self.prior_only:  # the KRR prior alone: rotate every control by the predicted mean angle
            z = self.head.backbone.encode(x, ctx).float()
            out = self.head.decode_rotated(self.head.prior_mu[pert].expand(len(x), -1), z, x, ctx,
                                           self.head.offset_of(pert, ctx))
        else:
            members = torch.tensor([self.units[m] for m in cond.members])
            dose = torch.tensor(np.log10(cond.dose) if np.isfinite(cond.dose) else 0.0, dtype=torch.float32)
            out = self.head.sample_cells(x, ctx, pert, members, dose, self.n_steps)
        out = out.double().numpy()
        return Prediction(out.mean(0), out)


def run_flow(cfg: DictConfig, spec) -> dict:
    from pytorch_lightning.callbacks import ModelCheckpoint

    from scfate.eval.results import build_eval_json, print_table, write_eval_json
    from scfate.eval.runner import evaluate
    from scfate.models.export import load_backbone
    from scfate.models.flow_export import export_flow
    from scfate.pipeline import resolve_backbone
    from scfate.utils.io import atomic_write_text
    from scfate.utils.reproduce import write_reproduce

    bb_path = resolve_backbone(cfg, spec)
    dm = instantiate(cfg.datamodule, _partial_=True)(spec=spec, val_mode="perturbations")
    dm.prepare_data()
    dm.setup("fit")
    backbone, _ = load_backbone(bb_path, genes=list(dm.data.adata.var_names))
    unit_feats, pert_feats = perturbation_features(dm)
    prior_mu, prior_info = fit_prior(cfg, backbone, dm, pert_feats, unit_feats)
    target = cfg.flow.head.target
    if target == "prior" and prior_info["prior"] == "none":  # no prior mean to centre on: learn it (atlas)
        log.info("prior=none: the flow learns the mean angle itself (flow.head.target=atlas)")
        target = "atlas"
    anchor = cfg.flow.head.get("anchor", "none") if prior_info["prior"] != "none" else "none"
    head = instantiate(cfg.flow.head, target=target, anchor=anchor, backbone=backbone, unit_features=unit_feats,
                       prior_mu=prior_mu, prior_offset=prior_info.pop("offset", None),
                       n_contexts=len(dm.contexts), use_dose=spec.perturbation_type == "drug")
    run_dir = Path(cfg.run_dir)
    # Lightning checkpoints (for resume) mirror the run folder under checkpoints/
    rel = run_dir.resolve().relative_to(Path(cfg.paths.artifacts_dir).resolve()) \
        if run_dir.resolve().is_relative_to(Path(cfg.paths.artifacts_dir).resolve()) else Path(run_dir.name)
    ckpt_dir = Path(cfg.paths.artifacts_dir) / "checkpoints" / rel
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/delta_cos", mode="max",
                                 save_last=True)
    trainer = instantiate(cfg.trainer, callbacks=[checkpoint], logger=[instantiate(cfg.logger)],
                          max_epochs=cfg.epochs.flow if cfg.trainer.max_epochs is None else cfg.trainer.max_epochs)
    trainer.fit(head, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    from scfate.pipeline import finish_loggers

    finish_loggers(trainer)
    if checkpoint.best_model_path:
        head.load_state_dict(torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    head.cpu().eval()
    path = export_flow(head, dm.data, run_dir / "flow_best.pt", bb_path, prior_info,
                       extra={"seed": int(cfg.seed), "best_val_delta_cos": float(checkpoint.best_model_score or 0)})
    atomic_write_text(run_dir / "flow_metrics.jsonl", "".join(json.dumps(r) + "\n" for r in head.history))
    write_reproduce(run_dir, "train.py", artifacts_dir=cfg.paths.artifacts_dir)
    print(f"flow head exported to {path}")
    units = dm.data.features.index()
    model = FlowPredictor(head, dm.perturbations, dm.contexts, units, f"scfate:{cfg.data.name}")
    scores = evaluate(dm.data, model, list(cfg.eval_baselines), n_cells=int(cfg.eval_n_cells), seed=int(cfg.seed))
    if prior_info["prior"] == "krr":  # the prior alone, reported as a baseline (DESIGN §2.4)
        from scfate.eval.runner import EvalData, score

        ed = EvalData(dm.data, n_cells=int(cfg.eval_n_cells), seed=int(cfg.seed))
        prior_only = FlowPredictor(head, dm.perturbations, dm.contexts, units, "krr_prior", prior_only=True)
        prior_only.pb = ed.pseudobulk()
        scores["baselines"]["krr_prior"] = score(ed, prior_only)
    ev = build_eval_json(model.name, dm.data, scores, OmegaConf.to_container(cfg, resolve=True), ckpt=str(path))
    print_table(ev)
    write_eval_json(ev, run_dir / f"eval_{cfg.data.name}_seed{cfg.seed}.json")
    return ev
