"""``python -m scfate.bench dataset=NAME folds=5 repeats=3 [overrides]``: the cross-validated benchmark.

Per repeat, the perturbations are partitioned into folds; each fold is a split (its test perturbations; validation
perturbations drawn from the rest, which select the prior and the flow's epoch; training = the rest). Each fold
trains the whole pipeline (its own backbone, cached by split and config, prior, flow head) on its training
perturbations only, then scores the model, the model with its flow switched off and every baseline in one pass on
the same control and true cells. The test perturbations are read only there. Output in ``bench_dir``:
``bench.json`` (per-perturbation rows, summary with paired bootstrap CIs, provenance), ``bench.md``, plots.

``mode=cross_context``: the test units are (context, perturbation) pairs of perturbations measured in several
contexts, each held out in one context while trained in the others (scfate.eval.cv.context_folds); the
``other_contexts`` baseline and the backbone's ``rotation_transfer`` are scored beside the rest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from scfate.errors import UsageError
from scfate.utils.io import atomic_write_json, atomic_write_text, sha256_json

log = logging.getLogger("scfate")
MODEL = "scfate"
# part of the benchmark folder's key: bump it when the pipeline's behaviour changes, so that finished folds of an
# earlier model are not resumed into a new benchmark
PIPELINE_VERSION = 6  # 6: the flow head selected by val/fm_loss (its first epoch was always kept before)
MODES = ("perturbation", "cross_context")


def bench_dir(cfg: DictConfig) -> Path:
    """One folder per dataset and benchmark setting (folds, repeats, seeds, model config): rerunning resumes."""
    from omegaconf import OmegaConf

    key = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "flow", "prior", "datamodule")}
    key.update(folds=int(cfg.folds), repeats=int(cfg.repeats), seed=int(cfg.seed), val_fraction=float(cfg.val_fraction),
               epochs=OmegaConf.to_container(cfg.epochs), max_epochs=cfg.trainer.get("max_epochs"),
               data=OmegaConf.to_container(cfg.data, resolve=True), baselines=list(cfg.eval_baselines),
               n_cells=int(cfg.eval_n_cells), pipeline=PIPELINE_VERSION)
    if cfg.mode != "perturbation":  # keeps the folders of earlier perturbation benchmarks
        key["mode"] = str(cfg.mode)
    return Path(cfg.bench_dir) / sha256_json(key)[:10]


def baselines_of(cfg: DictConfig) -> list[str]:
    from scfate.prior.baselines import CROSS_CONTEXT_BASELINES

    extra = [b for b in CROSS_CONTEXT_BASELINES if b not in cfg.eval_baselines] if cfg.mode == "cross_context" else []
    return list(cfg.eval_baselines) + extra


def run_fold(cfg: DictConfig, spec, fold: dict, out: Path) -> list[dict]:
    """Train and score one fold; its per-perturbation rows (cached in ``out/rows.json``)."""
    from scfate.data.prepare import prepare
    from scfate.data.splits import context_unit
    from scfate.eval.results import build_eval_json, write_eval_json
    from scfate.eval.runner import EvalData, score_many
    from scfate.pipelines.config import resolved
    from scfate.pipelines.flow import flow_predictors, train_flow
    from scfate.prior.baselines import make_baseline

    if (out / "rows.json").is_file():
        return json.loads((out / "rows.json").read_text())
    split_file = out / "split.json"
    atomic_write_json(split_file, fold["split"])
    fold_spec = dataclasses.replace(spec, split=dataclasses.replace(spec.split, mode="file", file=str(split_file),
                                                                    seed=fold["split"]["seed"]))
    data = prepare(fold_spec, cfg.paths.data_dir)
    fold_cfg = cfg.copy()  # the fold's own run folder; the user's config is left as given
    with open_dict(fold_cfg):
        fold_cfg.run_dir = str(out)
    trained = train_flow(fold_cfg, data, out)
    own = flow_predictors(trained, MODEL)  # the model, and with a KRR prior the model with its flow off
    predictors = {MODEL: own["model"], **({"flow_off": own["flow_off"]} if "flow_off" in own else {})}
    predictors.update({b: make_baseline(b) for b in baselines_of(cfg)})
    from scfate.models.predictor import RotationSum, RotationTransfer

    # the backbone's own zero-shot rules: a rotation learned in other contexts, or members' angles summed
    rotation = RotationTransfer if cfg.mode == "cross_context" else RotationSum
    if cfg.mode == "cross_context" or any("+" in p for p in data.split.test):
        predictors[rotation.name] = rotation(trained.head.backbone, data.meta["contexts"])
    ed = EvalData(data, n_cells=int(cfg.eval_n_cells), seed=int(cfg.seed) + fold["repeat"])
    pb = ed.pseudobulk()
    for p in predictors.values():
        p.fit(pb)
    scores = score_many(ed, predictors, reference="additive" if "additive" in predictors else None)
    ev = build_eval_json(MODEL, data, {"model": scores[MODEL], "scored": "test",
                                       "baselines": {k: v for k, v in scores.items() if k != MODEL},
                                       "test_perturbations_without_cells": []}, resolved(fold_cfg),
                         ckpt=str(trained.path), seed=int(cfg.seed))
    write_eval_json(ev, out / "eval_fold.json")
    unit = (lambda e: context_unit(e["context"], e["perturbation"])) if cfg.mode == "cross_context" else (
        lambda e: e["perturbation"])
    rows = [{"repeat": fold["repeat"], "fold": fold["fold"], "predictor": name, "context": e["context"],
             "condition": e["condition"], "perturbation": e["perturbation"], "unit": unit(e),
             "subgroup": e["subgroup"], "metrics": e["metrics"]}
            for name, res in scores.items() for e in res["per_perturbation"].values()]
    atomic_write_json(out / "rows.json", rows)
    return rows


def context_pairs(data) -> list[tuple[str, str]]:
    """The (context, perturbation) pairs with cells in the prepared data."""
    from scfate.data import schema

    obs = data.adata.obs
    keep = ~obs[schema.IS_CONTROL].to_numpy()
    keys = obs.loc[keep, [schema.CONTEXT, schema.PERT]].astype(str)
    return sorted(set(zip(keys[schema.CONTEXT], keys[schema.PERT])))


def run_bench(cfg: DictConfig) -> dict:
    import pytorch_lightning as pl

    from scfate.data.prepare import prepare
    from scfate.eval import bench_report as report
    from scfate.eval.cv import context_fold_split, context_folds, fold_split, perturbation_folds
    from scfate.pipelines.config import instantiate_spec, resolved

    if cfg.mode not in MODES:
        raise UsageError(f"mode={cfg.mode!r} is not a benchmark mode; valid: {list(MODES)}.")
    pl.seed_everything(int(cfg.seed), workers=True)
    spec = instantiate_spec(cfg)
    prepared = prepare(spec, cfg.paths.data_dir)  # preparation does not depend on the split
    cross = cfg.mode == "cross_context"
    if cross:
        pairs = context_pairs(prepared)
        folds = context_folds(pairs, int(cfg.folds), int(cfg.repeats), seed=int(cfg.seed))
        units = sorted({u for f in folds for u in f["test"]})
    else:
        units = prepared.perturbations
        folds = perturbation_folds(units, int(cfg.folds), int(cfg.repeats), seed=int(cfg.seed))
    root = bench_dir(cfg)
    what = "(context, perturbation) units" if cross else "perturbations"
    log.info("benchmark: %d %s, %d folds x %d repeats -> %s", len(units), what, cfg.folds, cfg.repeats, root)
    rows = []
    for i, fold in enumerate(folds):
        fold_seed = 1000 * fold["repeat"] + fold["fold"] + 1
        fold["split"] = (context_fold_split(pairs, fold["test"], float(cfg.val_fraction), seed=fold_seed) if cross
                         else fold_split(units, fold["test"], float(cfg.val_fraction), seed=fold_seed,
                                         perturbation_type=spec.perturbation_type))
        print(f"[bench] fold {i + 1}/{len(folds)}: repeat {fold['repeat']} fold {fold['fold']}, "
              f"{len(fold['test'])} test {what}", flush=True)
        rows += run_fold(cfg, spec, fold, root / "folds" / f"r{fold['repeat']}_f{fold['fold']}")
    extra = ("rotation_transfer",) if cross else ("rotation_sum",)
    names = [MODEL] + [p for p in ("flow_off", *baselines_of(cfg), *extra) if any(r["predictor"] == p for r in rows)]
    summary = report.summarise(rows, MODEL, names, n_boot=int(cfg.n_boot), seed=int(cfg.seed))
    interaction = report.interaction_summary(rows, names, n_boot=int(cfg.n_boot), seed=int(cfg.seed))
    md = report.to_markdown(summary, MODEL, unit=what) + report.interaction_markdown(interaction)
    header = (f"# Benchmark: {cfg.data.name}, mode {cfg.mode}, {cfg.folds} folds x {cfg.repeats} repeats, "
              f"{len(units)} {what} (each tested once per repeat)\n\nCells: mean over (repeat, test unit) ± sd over "
              "repeats.\n\n")
    atomic_write_text(root / "bench.md", header + md)
    figures = [str(p) for p in report.plots(rows, summary, MODEL, root / "plots")]
    result = {"dataset": cfg.data.name, "mode": str(cfg.mode), "folds": int(cfg.folds), "repeats": int(cfg.repeats),
              "n_perturbations": len(units), "predictors": names, "summary": summary,
              "interaction": interaction, "rows": rows,
              "folds_detail": [{k: f[k] for k in ("repeat", "fold", "test")} | {"subgroups": f["split"]["subgroups"]}
                               for f in folds],
              "plots": figures, "config": resolved(cfg)}
    atomic_write_json(root / "bench.json", result)
    print(header + md)
    print(f"benchmark written to {root}")
    return result
