"""Stage ``flow``: resolve the backbone (path, hf://, or auto), fit the prior, train the flow head, export
``flow_heads/<dataset>/seed<N>/flow_best.pt`` and evaluate the test split beside every baseline."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger("scfate")


def head_behaviour(prior: str) -> dict:
    """What the head does with its prior (fixed behaviour, not user knobs): with a KRR prior the pairs' spread is
    centred on the prior's mean angle and the sampled angles' circular mean is put on it; with no prior the flow
    learns the mean angle itself (centred on the backbone's atlas, no anchoring). Cells are always residual-decoded
    and pairs coupled by minibatch OT (DESIGN §2.2)."""
    krr = prior == "krr"
    return {"target": "prior" if krr else "atlas", "anchor": "prior" if krr else "none", "decode": "residual",
            "coupling": "ot"}


@dataclass
class TrainedFlow:
    """What the flow stage produced: the head (CPU, eval mode), its checkpoint, its prior's description."""

    head: object
    path: Path
    prior_info: dict
    perturbations: list[str]
    contexts: list[str]
    units: dict[str, int]


def flow_identity(cfg: DictConfig, data) -> dict:
    """What makes a flow run this run, for ``ckpt_path=`` (scfate.pipelines.resume): its dataset and prepared data,
    split, seed, backbone (for ``backbone=auto`` its config: model, data, epochs, batches), head, prior and
    batches. Not the flow's epochs, trainer or evaluation: a resume may train on for more epochs elsewhere."""
    from omegaconf import OmegaConf

    from scfate.pipelines.backbone import backbone_config

    dm = OmegaConf.to_container(cfg.datamodule, resolve=True)
    ref = str(cfg.get("backbone", "auto"))
    return {"dataset": cfg.data.name, "data": data.cache_dir.name, "split": data.split.tag, "seed": int(cfg.seed),
            "backbone": backbone_config(cfg, data) if ref == "auto" else ref,
            "flow": OmegaConf.to_container(cfg.flow, resolve=True),
            "prior": OmegaConf.to_container(cfg.prior, resolve=True),
            "datamodule": {k: dm.get(k) for k in ("batch_size", "steps_per_epoch", "val_steps", "holdout_fraction",
                                                  "seed")}}


def train_flow(cfg: DictConfig, data, run_dir: Path) -> TrainedFlow:
    """Backbone (auto / given), prior, flow head on ``data``'s training perturbations (validation perturbations
    select the prior and the best epoch); export ``run_dir/flow_best.pt`` with its metrics and reproduce.sh."""
    from hydra.utils import instantiate

    from scfate.models.export import load_backbone
    from scfate.models.flow_export import export_flow
    from scfate.pipelines.backbone import resolve_backbone
    from scfate.pipelines.config import prior_settings
    from scfate.pipelines.resume import FLOW_STAGE, resume_checkpoint, seed_stream, write_history
    from scfate.pipelines.training import checkpoint_dir, fit_and_restore
    from scfate.prior.fit import fit_prior, perturbation_features
    from scfate.utils.reproduce import write_reproduce

    ckpt_dir, identity = checkpoint_dir(cfg, run_dir), flow_identity(cfg, data)
    # refuse another run's checkpoint now, not after the backbone it may first train
    resume_checkpoint(cfg.get("ckpt_path"), ckpt_dir, identity, f"run_dir={run_dir}")
    bb_path = resolve_backbone(cfg, data)
    # the head draws the same numbers whether or not this process trained the backbone first (a resumed run
    # finds it trained)
    seed_stream(int(cfg.seed), FLOW_STAGE)
    dm = instantiate(cfg.datamodule, _partial_=True)(data=data, val_mode="perturbations")
    dm.setup("fit")
    backbone, _ = load_backbone(bb_path, genes=list(data.adata.var_names))
    unit_feats, pert_feats = perturbation_features(dm)
    behaviour = head_behaviour(cfg.prior.name)
    prior_mu, prior_info = fit_prior(prior_settings(cfg), backbone, dm, pert_feats, unit_feats, behaviour["decode"])
    head = instantiate(cfg.flow.head, **behaviour, backbone=backbone, unit_features=unit_feats, prior_mu=prior_mu,
                       prior_offset=prior_info.pop("offset", None), prior_delta=prior_info.pop("delta", None),
                       n_contexts=len(dm.contexts),
                       use_dose=data.spec.perturbation_type == "drug")
    head, checkpoint, _ = fit_and_restore(cfg, head, cfg.callbacks.flow, ckpt_dir, int(cfg.epochs.flow),
                                          identity=identity, datamodule=dm)
    from scfate.utils.dist import is_rank_zero

    if not is_rank_zero():  # rank 0 selects the spread, exports and evaluates
        return TrainedFlow(head, run_dir / "flow_best.pt", prior_info, list(dm.perturbations), list(dm.contexts),
                           data.features.index())
    if dm.groups["val"]:  # the flow's spread, chosen on validation perturbations by MMD (0: the flow off)
        from scfate.eval.spread import select_spread

        prior_info["spread_selection"] = select_spread(head, dm, seed=int(cfg.seed))
        log.info("flow spread chosen on validation perturbations: %s", prior_info["spread_selection"])
    path = export_flow(head, data, run_dir / "flow_best.pt", bb_path, prior_info,
                       extra={"seed": int(cfg.seed), "best_" + checkpoint.monitor.replace("/", "_"):
                              float(checkpoint.best_model_score or 0)})
    write_history(run_dir / "flow_metrics.jsonl", head.history)
    write_reproduce(run_dir, "train.py", artifacts_dir=cfg.paths.artifacts_dir)
    print(f"flow head exported to {path}")
    return TrainedFlow(head, path, prior_info, list(dm.perturbations), list(dm.contexts), data.features.index())


def flow_predictors(trained: TrainedFlow, name: str) -> dict:
    """The model, and with a KRR prior the model with its flow switched off (the prior alone: its own mean
    applied to every control cell), as predictors."""
    from scfate.models.predictor import FlowPredictor

    t = trained
    out = {"model": FlowPredictor(t.head, t.perturbations, t.contexts, t.units, name)}
    if t.prior_info["prior"] == "krr":
        out["flow_off"] = FlowPredictor(t.head, t.perturbations, t.contexts, t.units, "flow_off", prior_only=True)
    return out


def run_flow(cfg: DictConfig, data) -> dict:
    """The whole flow stage on ``data``, prepared once by the caller (scfate.cli.run_train)."""
    from scfate.eval.results import build_eval_json, print_table, write_eval_json
    from scfate.eval.runner import EvalData, evaluate, score
    from scfate.pipelines.config import resolved

    run_dir = Path(cfg.run_dir)
    trained = train_flow(cfg, data, run_dir)
    from scfate.utils.dist import is_rank_zero

    if not is_rank_zero():
        return {}
    predictors = flow_predictors(trained, f"scfate:{cfg.data.name}")
    n_cells, seed = int(cfg.eval_n_cells), int(cfg.seed)
    scores = evaluate(data, predictors["model"], list(cfg.eval_baselines), n_cells=n_cells, seed=seed)
    if "flow_off" in predictors:  # the prior alone, reported as a baseline (DESIGN §2.4)
        ed = EvalData(data, n_cells=n_cells, seed=seed)
        predictors["flow_off"].fit(ed.pseudobulk())
        scores["baselines"]["krr_prior"] = score(ed, predictors["flow_off"])
    ev = build_eval_json(predictors["model"].name, data, scores, resolved(cfg), ckpt=str(trained.path), seed=seed)
    print_table(ev)
    write_eval_json(ev, run_dir / f"eval_{cfg.data.name}_seed{cfg.seed}.json")
    return ev
