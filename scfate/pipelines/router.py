"""``python evaluate.py router=default teachers=GLOB dataset=NAME``: the router ensemble over teachers for unseen
drugs (DESIGN §2.6; the routing itself is scfate.eval.routing), scored with every metric beside every single
teacher, the best single teacher, the uniform ensemble and the baselines, in one eval JSON.

Teachers (flow heads) come from a glob / list / hf:// refs; they must share dataset, genes and split, and the
prepared data must be theirs (``split_seed=null``: the teachers' split seed)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from scfate.errors import DataError, UsageError
from scfate.pipelines.teachers import Teacher

log = logging.getLogger("scfate")
# what teachers of one router share; each keeps its own backbone, since the router mixes their predicted cells
SHARED_BY_ROUTER = ("dataset", "perturbation_type", "data_sha256", "genes", "split", "perturbations", "contexts")
ROUTER_FIX = ("A router mixes teachers trained on one dataset, gene set and split: pass only those (e.g. train them "
              "with one split_seed=S).")


def load_teachers(teachers) -> list[Teacher]:
    """Expand, resolve and read the teachers (at least two, one drug dataset); raise naming the teachers that were
    trained differently and what differs."""
    from scfate.pipelines.teachers import check_teachers, expand_teachers, read_teachers

    out = read_teachers(expand_teachers(teachers, "router=..."))
    if len(out) < 2:
        raise DataError(f"A router needs at least two teachers; teachers={teachers!r} gave {len(out)}: "
                        f"{[str(t.path) for t in out]}.")
    check_teachers([f"{t.name} ({t.path})" for t in out], [t.ckpt for t in out], SHARED_BY_ROUTER, ROUTER_FIX)
    first = out[0]
    if first.ckpt["perturbation_type"] != "drug":
        raise DataError(f"The router routes unseen drugs by molecular similarity; teachers {first.name} ... were "
                        f"trained on {first.ckpt['dataset']!r}, a {first.ckpt['perturbation_type']} dataset.")
    return out


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def run_router(cfg: DictConfig) -> dict:
    from scfate.data.prepare import prepare
    from scfate.data.schema import check_same_genes
    from scfate.eval.results import build_eval_json, write_eval_json
    from scfate.eval.routing import print_router_table, route_and_score, router_settings
    from scfate.models.flow_export import load_flow
    from scfate.models.predictor import FlowPredictor
    from scfate.models.split_guard import check_split
    from scfate.pipelines.config import instantiate_spec, output_dir, resolved, split_seed_of
    from scfate.prior.baselines import make_baseline
    from scfate.utils.io import sha256_file

    other = [k for k in ("ckpt", "baseline", "predictions") if cfg.get(k) is not None]
    if other:
        raise UsageError(f"router=... evaluates the ensemble of teachers=...; drop {other} (one evaluation per run).")
    rc = cfg.router
    settings = router_settings(_plain(rc.similarities), _plain(rc.routing_metrics), rc.top_k, _plain(rc.temperature),
                               _plain(rc.get("smiles")))
    teachers = load_teachers(_plain(cfg.get("teachers")))
    ck = teachers[0].ckpt
    if ck["dataset"] != cfg.data.name:
        raise DataError(f"The teachers were trained on {ck['dataset']}: run with dataset={ck['dataset']} "
                        f"(got dataset={cfg.data.name}).")
    data = prepare(instantiate_spec(cfg, split_seed_of(cfg, ck["split"].get("seed"))), cfg.paths.data_dir)
    check_same_genes(list(ck["genes"]), list(data.adata.var_names), f"The prepared {cfg.data.name} data",
                     "The teachers were trained on other genes: prepare the data with their settings.")
    check_split(ck["split"], data.split.to_dict(), teachers[0].path)
    # the router has no training seed of its own: ``seed`` draws the evaluation's cells, as for a baseline
    seed = int(cfg.seed)
    models = {}
    for t in teachers:
        head, ckpt = load_flow(t.path)
        n_steps = int(cfg.n_steps) if cfg.get("n_steps") is not None else int(ckpt["n_steps"])
        units = {u: i for i, u in enumerate(ckpt["units"])}
        models[t.name] = FlowPredictor(head, list(ckpt["perturbations"]), list(ckpt["contexts"]), units, t.name,
                                       n_steps)
    baselines = {b: make_baseline(b) for b in cfg.eval_baselines}
    res = route_and_score(data, models, settings, baselines, int(cfg.eval_n_cells), seed)

    variants, metrics = res["variants"], settings.metrics
    headline = f"metric_{metrics[0]}.multi"
    missing = sorted(set(data.split.test) - set(res["test_drugs"]))
    ev = build_eval_json(f"router:{headline}", data, {"model": variants[headline], "scored": "test",
                                                      "baselines": res["baselines"],
                                                      "test_perturbations_without_cells": missing},
                         resolved(cfg), seed=seed)
    ev["variants"], ev["single_models"] = variants, res["singles"]
    ev["router"] = {
        "headline": headline,
        "config": {"similarities": settings.similarities, "routing_metrics": metrics, "top_k": settings.top_k,
                   "temperature": settings.temperatures, "smiles_overrides": settings.smiles},
        "teachers": [{"name": t.name, "ref": t.ref, "path": str(t.path), "prior": t.ckpt.get("prior"),
                      "seed": t.ckpt.get("seed")} for t in teachers],
        **{k: res[k] for k in ("test_drugs", "val_drugs", "val_scores", "validation", "best_single",
                               "unparseable_smiles")},
        **res["record"],
        "comparison": res["comparison"],
    }
    ev["provenance"]["checkpoints"] = [{"name": t.name, "ref": t.ref, "path": str(t.path),
                                        "sha256": sha256_file(t.path)} for t in teachers]
    print_router_table(ev)
    default = output_dir(cfg) / f"eval_router_{data.spec.name}_split{data.split.seed}_seed{seed}.json"
    print(f"eval JSON written to {write_eval_json(ev, cfg.get('out') or default)}")
    return ev
