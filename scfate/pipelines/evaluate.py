"""``evaluate.py``: score a baseline, a prediction file or a saved flow head (``ckpt=``, local or hf://) beside
every baseline, print one table, write one eval JSON; ``router=default`` routes teachers (scfate.pipelines.router).

A checkpoint carries its dataset, genes, split and vocabularies: they are checked against the prepared data, so a
score never silently comes from another split or gene order. ``split_seed=null`` (the default) means the
checkpoint's own split seed (for a baseline: ``seed``); the seed used is stored in the eval JSON."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from scfate.errors import DataError, UsageError

log = logging.getLogger("scfate")
TARGETS = ("ckpt", "baseline", "predictions")


def run_evaluate(cfg: DictConfig) -> dict:
    if cfg.get("router"):  # router=default teachers=GLOB: the router ensemble
        from scfate.pipelines.router import run_router

        return run_router(cfg)
    from scfate.prior.baselines import BASELINES, check_baseline

    chosen = [k for k in TARGETS if cfg.get(k) is not None]
    if len(chosen) != 1:
        raise UsageError(f"evaluate.py needs exactly one of ckpt=PATH, baseline=NAME ({sorted(BASELINES)}) "
                         f"or predictions=FILE.h5ad; got {chosen or 'none'}.")
    if cfg.get("baseline") is not None:
        check_baseline(cfg.baseline)  # before the data are prepared
    if cfg.ckpt is not None:
        return evaluate_checkpoint(cfg)
    return evaluate_baseline_or_predictions(cfg)


def evaluate_baseline_or_predictions(cfg: DictConfig) -> dict:
    from scfate.data.prepare import prepare
    from scfate.eval.runner import evaluate
    from scfate.pipelines.config import instantiate_spec, output_dir, split_seed_of
    from scfate.prior.baselines import make_baseline

    data = prepare(instantiate_spec(cfg, split_seed_of(cfg)), cfg.paths.data_dir)
    if cfg.baseline is not None:
        model, model_name = make_baseline(cfg.baseline), f"baseline:{cfg.baseline}"
    else:
        from scfate.eval.predictions import AnnDataPredictions

        model = AnnDataPredictions(cfg.predictions, list(data.adata.var_names), cfg.predictions_condition_key,
                                   cfg.predictions_context_key)
        model_name = model.name
    # a prediction file may cover some test conditions only: the baselines are scored on the same ones
    covered = model.covered(data.meta["contexts"]) if cfg.predictions else None
    scores = evaluate(data, model, list(cfg.eval_baselines), n_cells=int(cfg.eval_n_cells), seed=int(cfg.seed),
                      covered=covered)
    extra = {"coverage": coverage(cfg.predictions, data, scores)} if cfg.predictions else {}
    name = model_name.split(":")[0] if cfg.predictions else model_name.replace(":", "_")
    default = output_dir(cfg) / f"eval_{name}_{data.spec.name}_split{data.split.seed}_seed{cfg.seed}.json"
    return _write(cfg, model_name, data, scores, None, int(cfg.seed), default, extra=extra)


def coverage(path, data, scores: dict) -> dict:
    """How much of the test set a prediction file covers; partial coverage is logged (and an empty one refused),
    because a mean over 3 of 31 perturbations is not comparable with a published one over all 31."""
    per, left = list(scores["model"]["per_perturbation"].values()), scores["not_covered"]
    scored = sorted({e["perturbation"] for e in per})
    test = sorted(set(scored) | {e["perturbation"] for e in left})  # the test perturbations that have cells
    missing = [p for p in test if p not in set(scored)]
    cov = {"n_test_perturbations": len(test), "n_covered_perturbations": len(scored),
           "n_test_conditions": len(per) + len(left), "n_scored_conditions": len(per),
           "not_covered_perturbations": missing,
           "not_covered_conditions": [f"{e['context']}/{e['condition']}" for e in left]}
    if not scored:
        raise DataError(f"Prediction file {path} covers none of the {len(test)} test perturbations (e.g. "
                        f"{test[:5]}): its obs condition names must be the canonical test condition names "
                        f"(the split file {data.split_path} lists them).")
    shown = missing or cov["not_covered_conditions"]  # perturbations, or (each covered somewhere) the conditions
    if shown:
        log.warning("Prediction file %s covers %d of %d test perturbations (%d of %d conditions): the model and "
                    "every baseline are scored on those %d conditions only; not covered: %s%s", path, len(scored),
                    len(test), len(per), cov["n_test_conditions"], len(per), shown[:10],
                    " …" if len(shown) > 10 else "")
    return cov


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    from scfate.hub import resolve_checkpoint

    path = resolve_checkpoint(cfg.ckpt)  # a wrong path is named before the model layers (and Lightning) load
    from scfate.data.prepare import prepare
    from scfate.data.schema import check_same_genes
    from scfate.eval.runner import evaluate
    from scfate.models.export import read_checkpoint
    from scfate.models.flow_export import FORMAT, load_flow
    from scfate.models.predictor import FlowPredictor
    from scfate.models.split_guard import check_split
    from scfate.pipelines.config import instantiate_spec, output_dir, split_seed_of

    ckpt = read_checkpoint(path, FORMAT, "Flow-head", "Give a flow_best.pt (or its run folder / hf:// path).")
    if ckpt["dataset"] != cfg.data.name:
        raise DataError(f"checkpoint trained on {ckpt['dataset']}: run with dataset={ckpt['dataset']} "
                        f"(got dataset={cfg.data.name}; checkpoint {cfg.ckpt}).")
    split_seed = split_seed_of(cfg, ckpt["split"].get("seed"))
    if cfg.get("split_seed") is None:
        log.info("split_seed=%s: the checkpoint's own split (pass split_seed=N to choose another)", split_seed)
    data = prepare(instantiate_spec(cfg, split_seed), cfg.paths.data_dir)
    check_same_genes(list(ckpt["genes"]), list(data.adata.var_names), f"The prepared {cfg.data.name} data",
                     f"{path} was trained on other genes: prepare the data with the checkpoint's settings.")
    check_split(ckpt["split"], data.split.to_dict(), path)
    if ckpt.get("data_sha256") != data.meta["data_sha256"]:
        log.warning("the data file differs from the one %s was trained on (sha256 %s vs %s): same genes and split, "
                    "so it is scored, but numbers may not match the paper's", path, ckpt.get("data_sha256"),
                    data.meta["data_sha256"])
    head, ckpt = load_flow(path)
    n_steps = int(cfg.n_steps) if cfg.get("n_steps") is not None else int(ckpt["n_steps"])
    units = {u: i for i, u in enumerate(ckpt["units"])}  # the checkpoint's order: rows of its unit_features
    model = FlowPredictor(head, list(ckpt["perturbations"]), list(ckpt["contexts"]), units,
                          f"scfate:{ckpt['dataset']}", n_steps=n_steps)
    # cells are drawn with the head's own training seed, as train.py drew them: the same eval JSON metrics
    train_seed = int(ckpt.get("seed", cfg.seed))
    scores = evaluate(data, model, list(cfg.eval_baselines), n_cells=int(cfg.eval_n_cells), seed=train_seed)
    default = output_dir(cfg) / f"eval_scfate_{data.spec.name}_split{data.split.seed}_seed{train_seed}.json"
    ev = _write(cfg, model.name, data, scores, str(path), train_seed, default,
                provenance={"checkpoint_ref": str(cfg.ckpt), "n_steps": n_steps})
    return ev


def _write(cfg, model_name, data, scores, ckpt, seed, default_path, provenance: dict | None = None,
           extra: dict | None = None) -> dict:
    from scfate.eval.results import build_eval_json, print_table, write_eval_json
    from scfate.pipelines.config import resolved

    ev = build_eval_json(model_name, data, scores, resolved(cfg), ckpt=ckpt, seed=seed)
    ev["provenance"].update(provenance or {})
    ev.update(extra or {})
    print_table(ev)
    print(f"eval JSON written to {write_eval_json(ev, cfg.get('out') or default_path)}")
    return ev
