"""``python -m scfate.bench dataset=NAME folds=5 repeats=3 [overrides]``: the cross-validated benchmark.

Per repeat, the perturbations are partitioned into folds; each fold is a split (its test perturbations; validation
perturbations drawn from the rest, which select the prior and the flow's epoch; training = the rest). Each fold
trains the whole pipeline (its own backbone, cached by split and config, prior, flow head) on its training
perturbations only, then scores the model, the model with its flow switched off and every baseline in one pass on
the same control and true cells. The test perturbations are read only there. Output in ``bench_dir``:
``bench.json`` (per-perturbation rows, summary with paired bootstrap CIs, provenance), ``bench.md``, plots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from scfate.utils.io import atomic_write_json, atomic_write_text, sha256_json

log = logging.getLogger("scfate")
MODEL = "scfate"
# part of the benchmark folder's key: bump it when the pipeline's behaviour changes, so that finished folds of an
# earlier model are not resumed into a new benchmark
PIPELINE_VERSION = 3


def bench_dir(cfg: DictConfig) -> Path:
    """One folder per dataset and benchmark setting (folds, repeats, seeds, model config): rerunning resumes."""
    from omegaconf import OmegaConf

    key = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "flow", "prior", "datamodule")}
    key.update(folds=int(cfg.folds), repeats=int(cfg.repeats), seed=int(cfg.seed), val_fraction=float(cfg.val_fraction),
               epochs=OmegaConf.to_container(cfg.epochs), max_epochs=cfg.trainer.get("max_epochs"),
               data=OmegaConf.to_container(cfg.data, resolve=True), baselines=list(cfg.eval_baselines),
               n_cells=int(cfg.eval_n_cells), pipeline=PIPELINE_VERSION)
    return Path(cfg.bench_dir) / sha256_json(key)[:10]


def run_fold(cfg: DictConfig, spec, fold: dict, out: Path) -> list[dict]:
    """Train and score one fold; its per-perturbation rows (cached in ``out/rows.json``)."""
    from scfate.data.prepare import prepare
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
    predictors.update({b: make_baseline(b) for b in cfg.eval_baselines})
    ed = EvalData(data, n_cells=int(cfg.eval_n_cells), seed=int(cfg.seed) + fold["repeat"])
    pb = ed.pseudobulk()
    for p in predictors.values():
        p.fit(pb)
    scores = score_many(ed, predictors)
    ev = build_eval_json(MODEL, data, {"model": scores[MODEL], "scored": "test",
                                       "baselines": {k: v for k, v in scores.items() if k != MODEL},
                                       "test_perturbations_without_cells": []}, resolved(fold_cfg),
                         ckpt=str(trained.path), seed=int(cfg.seed))
    write_eval_json(ev, out / "eval_fold.json")
    rows = [{"repeat": fold["repeat"], "fold": fold["fold"], "predictor": name, "context": e["context"],
             "condition": e["condition"], "perturbation": e["perturbation"], "subgroup": e["subgroup"],
             "metrics": e["metrics"]}
            for name, res in scores.items() for e in res["per_perturbation"].values()]
    atomic_write_json(out / "rows.json", rows)
    return rows


def run_bench(cfg: DictConfig) -> dict:
    import pytorch_lightning as pl

    from scfate.data.prepare import prepare
    from scfate.eval.bench_report import plots, summarise, to_markdown
    from scfate.eval.cv import fold_split, perturbation_folds
    from scfate.pipelines.config import instantiate_spec, resolved

    pl.seed_everything(int(cfg.seed), workers=True)
    spec = instantiate_spec(cfg)
    perts = prepare(spec, cfg.paths.data_dir).perturbations  # preparation does not depend on the split
    folds = perturbation_folds(perts, int(cfg.folds), int(cfg.repeats), seed=int(cfg.seed))
    root = bench_dir(cfg)
    log.info("benchmark: %d perturbations, %d folds x %d repeats -> %s", len(perts), cfg.folds, cfg.repeats, root)
    rows = []
    for i, fold in enumerate(folds):
        fold["split"] = fold_split(perts, fold["test"], float(cfg.val_fraction), seed=1000 * fold["repeat"] +
                                   fold["fold"] + 1, perturbation_type=spec.perturbation_type)
        print(f"[bench] fold {i + 1}/{len(folds)}: repeat {fold['repeat']} fold {fold['fold']}, "
              f"{len(fold['test'])} test perturbations", flush=True)
        rows += run_fold(cfg, spec, fold, root / "folds" / f"r{fold['repeat']}_f{fold['fold']}")
    names = [MODEL] + [p for p in ("flow_off", *cfg.eval_baselines) if any(r["predictor"] == p for r in rows)]
    summary = summarise(rows, MODEL, names, n_boot=int(cfg.n_boot), seed=int(cfg.seed))
    md = to_markdown(summary, MODEL)
    header = (f"# Benchmark: {cfg.data.name}, {cfg.folds} folds x {cfg.repeats} repeats, {len(perts)} perturbations "
              "(each tested once per repeat)\n\nCells: mean over (repeat, perturbation) ± sd over repeats.\n\n")
    atomic_write_text(root / "bench.md", header + md)
    figures = [str(p) for p in plots(rows, summary, MODEL, root / "plots")]
    result = {"dataset": cfg.data.name, "folds": int(cfg.folds), "repeats": int(cfg.repeats),
              "n_perturbations": len(perts), "predictors": names, "summary": summary, "rows": rows,
              "folds_detail": [{k: f[k] for k in ("repeat", "fold", "test")} | {"subgroups": f["split"]["subgroups"]}
                               for f in folds],
              "plots": figures, "config": resolved(cfg)}
    atomic_write_json(root / "bench.json", result)
    print(header + md)
    print(f"benchmark written to {root}")
    return result
