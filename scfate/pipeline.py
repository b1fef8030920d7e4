"""Pipeline stages driven by the Hydra config: train the backbone, export it, run its oracle check, and resolve the
backbone a flow run uses (its own split's)."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("scfate")


def backbone_dir(cfg: DictConfig, split) -> Path:
    """Where the exported backbone of this dataset and split lives: ``backbones/<dataset>/<split tag>/`` (the card's
    ``backbones/<dataset>/``, one folder per split). A backbone is trained on its split's training perturbations
    only, so a flow head of another split must never reuse it (scfate.models.split_guard)."""
    return Path(cfg.paths.artifacts_dir) / "backbones" / cfg.data.name / split.tag


def finish_loggers(trainer) -> None:
    """End the W&B run of this job (one run per job, grouped by experiment), so multirun jobs do not share one."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()


def run_backbone(cfg: DictConfig, spec) -> dict:
    """Train a RotationAE, export ``backbones/<dataset>/<split tag>/backbone.pt`` (with the split as ``split.json``
    beside it), score the oracle check, return its JSON."""
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    from scfate.data.splits import save_split
    from scfate.eval.results import build_eval_json, print_table, write_eval_json
    from scfate.eval.runner import evaluate
    from scfate.models.export import export_backbone
    from scfate.models.oracle import BackboneOracle

    # _partial_: the spec is a dataclass, which instantiate would turn into a DictConfig if passed as a kwarg
    dm = instantiate(cfg.datamodule, _partial_=True)(spec=spec, val_mode="heldout_cells",
                                                     with_counts=cfg.model.likelihood == "nb")
    dm.prepare_data()
    dm.setup("fit")
    model = instantiate(cfg.model, n_genes=dm.n_genes, n_contexts=len(dm.contexts), perturbations=dm.perturbations,
                        atlas_perturbations=list(dm.data.split.train), _convert_="all")
    # a stable folder (not the timestamped run dir) so that `ckpt_path=last` resumes the previous run
    # ... and one per split, so that resuming never continues another split's backbone
    ckpt_dir = Path(cfg.paths.artifacts_dir) / "checkpoints" / "backbones" / cfg.data.name / dm.data.split.tag / \
        f"seed{cfg.seed}"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_last=True)
    loggers = [instantiate(cfg.logger)] if cfg.get("logger") else False
    epochs = cfg.epochs.backbone if cfg.trainer.get("max_epochs") is None else cfg.trainer.max_epochs
    trainer = instantiate(cfg.trainer, callbacks=[checkpoint], logger=loggers, max_epochs=epochs)
    trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    finish_loggers(trainer)
    if checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
        log.info("best checkpoint %s (val/loss %.4f)", checkpoint.best_model_path, checkpoint.best_model_score)
    model.cpu().eval()

    out = backbone_dir(cfg, dm.data.split)
    save_split(dm.data.split, out / "split.json")  # `data.split.mode=file data.split.file=...` reuses it
    path = export_backbone(model, dm.data, out / "backbone.pt",
                           extra={"seed": int(cfg.seed), "best_val_loss": float(checkpoint.best_model_score or 0),
                                  "val_recon_r2": float(trainer.callback_metrics.get("val/recon_r2", float("nan")))})
    print(f"backbone exported to {path}")
    from scfate.utils.reproduce import job_overrides, write_reproduce

    # a backbone is shared by every flow head of its dataset: its command is this job's, as the backbone stage alone
    keep = [o for o in job_overrides() if not o.startswith(("stage=", "prior=", "flow", "run_dir=", "epochs.flow"))]
    write_reproduce(out, "train.py", overrides=[*keep, "stage=backbone"], artifacts_dir=cfg.paths.artifacts_dir)
    scores = evaluate(dm.data, BackboneOracle(model, dm.contexts), baselines=["no_change", "train_mean"],
                      n_cells=int(cfg.get("eval_n_cells", 300)), seed=int(cfg.seed), score_set="train")
    ev = build_eval_json("oracle:backbone", dm.data, scores, OmegaConf.to_container(cfg, resolve=True), ckpt=str(path))
    print_table(ev)
    print("Oracle check: training perturbations, predicted by rotating control cells with their learned angle "
          "(in-sample: how well the rotation latent can express real effects; not a zero-shot score).")
    write_eval_json(ev, out / "oracle_eval.json")
    return ev


def resolve_backbone(cfg: DictConfig, spec) -> Path:
    """The backbone of this run, checked against the run's split (scfate.models.split_guard).

    ``backbone=auto``: reuse ``artifacts/backbones/<dataset>/<split tag>/backbone.pt`` or train it first, under a
    file lock so that parallel multirun jobs of one split train it once; a run of another split gets (or trains)
    its own, so no flow head sits on a backbone that saw its validation or test perturbations. Otherwise a file,
    folder or hf:// reference (scfate.hub), refused if it was trained on this run's held-out perturbations."""
    from scfate.data.errors import DataError
    from scfate.data.prepare import prepare
    from scfate.models.export import read_backbone_checkpoint
    from scfate.models.split_guard import check_backbone_split, same_split

    split = prepare(spec, cfg.paths.data_dir).split  # cached: the split this run trains, selects and tests on
    ref = str(cfg.get("backbone", "auto"))
    if ref != "auto":
        from scfate.hub import resolve_backbone_ref

        try:  # a backbone.pt, its folder, or hf://OWNER/REPO[@REV]/backbones/<dataset>
            path = resolve_backbone_ref(ref)
        except DataError as exc:
            how = "cannot be fetched" if ref.startswith("hf://") else "does not exist"
            raise DataError(f"backbone={ref} {how}: {exc} Or use backbone=auto to reuse or train "
                            "artifacts/backbones/<dataset>/<split>/backbone.pt.") from exc
        check_backbone_split(read_backbone_checkpoint(path), split.to_dict(), f"backbone={ref}")
        return path
    from filelock import FileLock

    out = backbone_dir(cfg, split)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / ".train.lock")):
        if not (out / "backbone.pt").is_file():
            log.info("no backbone for split %s at %s: training it first", split.tag, out)
            run_backbone(cfg, spec)
    ckpt = read_backbone_checkpoint(out / "backbone.pt")
    if not same_split(ckpt.get("split") or {}, split.to_dict()):  # a file put there by hand, or a stale layout
        raise DataError(f"{out / 'backbone.pt'} was not trained on split {split.tag} (its folder's name): delete the "
                        "folder to retrain it, or pass the backbone explicitly with backbone=PATH.")
    check_backbone_split(ckpt, split.to_dict(), f"backbone {out / 'backbone.pt'}")
    return out / "backbone.pt"
