"""Stage ``backbone``: train a RotationAE on the split's training perturbations, export it with its oracle check;
and resolve the backbone a flow run uses (``backbone=auto``: the one of its split *and* its backbone config)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from scfate.errors import DataError
from scfate.utils.io import atomic_write_json, sha256_json

log = logging.getLogger("scfate")
CONFIG_FILE = "backbone_config.json"


def backbone_config(cfg: DictConfig, data) -> dict:
    """Everything that decides which backbone a run trains, except the split (in the folder name already) and the
    training seed (the heads of several seeds on one split share its backbone, as the card's do): the model, the
    prepared data (its cache key: file sha256 + every preparation setting), the epochs and the batches."""
    dm = OmegaConf.to_container(cfg.datamodule, resolve=True)
    epochs = cfg.epochs.backbone if cfg.trainer.get("max_epochs") is None else cfg.trainer.max_epochs
    return {"model": OmegaConf.to_container(cfg.model, resolve=True), "data": data.cache_dir.name,
            "epochs": int(epochs),
            "datamodule": {k: dm.get(k) for k in ("batch_size", "steps_per_epoch", "val_steps", "holdout_fraction")}}


def backbone_dir(cfg: DictConfig, data) -> Path:
    """``backbones/<dataset>/<split tag>-<config hash>/``: one folder per split and backbone config, so
    ``model.theta_dim=48`` after a 32-plane run trains its own backbone instead of reusing the other's."""
    key = sha256_json(backbone_config(cfg, data))[:8]
    return Path(cfg.paths.artifacts_dir) / "backbones" / cfg.data.name / f"{data.split.tag}-{key}"


def config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``["model.theta_dim: 32 vs 48", ...]``: every leaf where two nested configs differ."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} vs {vb!r}")
    return out


def run_backbone(cfg: DictConfig, data) -> dict:
    """Train a RotationAE on ``data`` (prepared once by the caller), export ``backbone.pt`` with ``split.json`` and
    ``backbone_config.json`` beside it, score the oracle check, return its JSON."""
    from hydra.utils import instantiate

    from scfate.data.splits import save_split, unit_perturbation
    from scfate.eval.results import build_eval_json, print_table, write_eval_json
    from scfate.eval.runner import evaluate
    from scfate.models.export import export_backbone
    from scfate.models.predictor import BackboneOracle
    from scfate.pipelines.config import resolved
    from scfate.pipelines.training import fit_and_restore
    from scfate.utils.reproduce import job_overrides, write_reproduce

    dm = instantiate(cfg.datamodule, _partial_=True)(data=data, val_mode="heldout_cells",
                                                     with_counts=cfg.model.likelihood == "nb")
    dm.setup("fit")
    model = instantiate(cfg.model, n_genes=dm.n_genes, n_contexts=len(dm.contexts), perturbations=dm.perturbations,
                        atlas_perturbations=sorted({unit_perturbation(e) for e in data.split.train}), _convert_="all")
    out = backbone_dir(cfg, data)
    # a stable folder (not the timestamped run dir) per split, config and seed, so that `ckpt_path=last` resumes
    # this backbone and never another split's or another config's; the epochs are left out of its key, so a
    # resume may train on for more epochs (and exports to the folder of its own, longer, config)
    same_but_epochs = {k: v for k, v in backbone_config(cfg, data).items() if k != "epochs"}
    ckpt_dir = Path(cfg.paths.artifacts_dir) / "checkpoints" / "backbones" / cfg.data.name / \
        f"{data.split.tag}-{sha256_json(same_but_epochs)[:8]}" / f"seed{cfg.seed}"
    identity = {"dataset": cfg.data.name, "split": data.split.tag, "seed": int(cfg.seed), **same_but_epochs}
    model, checkpoint, trainer = fit_and_restore(cfg, model, cfg.callbacks.backbone, ckpt_dir,
                                                 int(cfg.epochs.backbone), identity=identity, datamodule=dm)
    from scfate.utils.dist import is_rank_zero

    if not is_rank_zero():  # rank 0 exports and scores it
        return {}
    save_split(data.split, out / "split.json")  # `data.split.mode=file data.split.file=...` reuses it
    config = backbone_config(cfg, data)
    path = export_backbone(model, data, out / "backbone.pt",
                           extra={"seed": int(cfg.seed), "best_val_loss": float(checkpoint.best_model_score or 0),
                                  "val_recon_r2": float(trainer.callback_metrics.get("val/recon_r2", float("nan"))),
                                  "backbone_config": config})
    atomic_write_json(out / CONFIG_FILE, config)
    print(f"backbone exported to {path}")
    # a backbone is shared by every flow head of its split: its command is this job's, as the backbone stage alone
    keep = [o for o in job_overrides() if not o.startswith(("stage=", "prior=", "flow", "run_dir=", "epochs.flow"))]
    write_reproduce(out, "train.py", overrides=[*keep, "stage=backbone"], artifacts_dir=cfg.paths.artifacts_dir)
    scores = evaluate(data, BackboneOracle(model, dm.contexts), baselines=["no_change", "train_mean"],
                      n_cells=int(cfg.eval_n_cells), seed=int(cfg.seed), score_set="train")
    ev = build_eval_json("oracle:backbone", data, scores, resolved(cfg), ckpt=str(path), seed=int(cfg.seed))
    print_table(ev)
    print("Oracle check: training perturbations, predicted by rotating control cells with their learned angle "
          "(in-sample: how well the rotation latent can express real effects; not a zero-shot score).")
    write_eval_json(ev, out / "oracle_eval.json")
    return ev


def resolve_backbone(cfg: DictConfig, data) -> Path:
    """The backbone of this run, checked against the run's split (scfate.models.split_guard).

    ``backbone=auto``: reuse ``backbone_dir(cfg, data)/backbone.pt`` or train it first, under a file lock so that
    parallel multirun jobs of one split train it once. Otherwise a file, folder or hf:// reference (scfate.hub),
    refused if it was trained on this run's held-out perturbations."""
    import json

    from scfate.models.export import read_backbone_checkpoint
    from scfate.models.split_guard import check_backbone_split, same_split

    split = data.split
    ref = str(cfg.get("backbone", "auto"))
    if ref != "auto":
        from scfate.hub import resolve_backbone_ref

        try:  # a backbone.pt, its folder, or hf://OWNER/REPO[@REV]/backbones/<dataset>
            path = resolve_backbone_ref(ref)
        except DataError as exc:
            how = "cannot be fetched" if ref.startswith("hf://") else "does not exist"
            raise DataError(f"backbone={ref} {how}: {exc} Or use backbone=auto to reuse or train "
                            "artifacts/backbones/<dataset>/<split>-<config>/backbone.pt.") from exc
        check_backbone_split(read_backbone_checkpoint(path), split.to_dict(), f"backbone={ref}")
        return path
    import contextlib

    from filelock import FileLock

    from scfate.utils.dist import barrier, is_rank_zero

    out = backbone_dir(cfg, data)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / ".train.lock")) if is_rank_zero() else contextlib.nullcontext():
        if not (out / "backbone.pt").is_file():
            log.info("no backbone for split %s and this backbone config at %s: training it first", split.tag, out)
            run_backbone(cfg, data)
    barrier()  # the other ranks read the backbone rank 0 exported
    ckpt = read_backbone_checkpoint(out / "backbone.pt")
    if not same_split(ckpt.get("split") or {}, split.to_dict()):  # a file put there by hand, or a stale layout
        raise DataError(f"{out / 'backbone.pt'} was not trained on split {split.tag} (its folder's name): delete the "
                        "folder to retrain it, or pass the backbone explicitly with backbone=PATH.")
    stored = ckpt.get("backbone_config")
    if stored is None and (out / CONFIG_FILE).is_file():
        stored = json.loads((out / CONFIG_FILE).read_text())
    diffs = config_differences(stored or {}, backbone_config(cfg, data))
    if diffs:
        raise DataError(f"{out / 'backbone.pt'} was trained with another backbone config than this run's "
                        f"({'; '.join(diffs)}; the backbone's vs this run's). Delete the folder to retrain it, or pass "
                        "the backbone explicitly with backbone=PATH.")
    check_backbone_split(ckpt, split.to_dict(), f"backbone {out / 'backbone.pt'}")
    return out / "backbone.pt"
