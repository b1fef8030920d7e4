"""What the Hydra entry points (train.py, evaluate.py, reflow.py, python -m scfate.data) actually do.

Entry points stay thin; heavy imports happen here, inside the functions, so ``--help`` is instant.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("scfate")
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
STAGES = ("prepare", "backbone", "flow")


class UsageError(RuntimeError):
    """A command line that asks for something the entry point does not do (unknown stage, baseline, ...)."""


def friendly_errors(fn):
    """Bad input and bad usage end with one clear message and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from scfate.data.errors import DataError

        try:
            return fn(*args, **kwargs)
        except (DataError, UsageError) as exc:
            print(f"\nscfate error: {exc}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def instantiate_spec(cfg: DictConfig):
    from hydra.utils import instantiate

    return instantiate(cfg.data)


def output_dir(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.get("output_dir") or ".")


def run_prepare(cfg: DictConfig) -> dict:
    """Prepare the configured dataset (cached), write its split JSON and summary, print the summary."""
    from scfate.data.prepare import prepare
    from scfate.data.summary import print_summary, summarise
    from scfate.utils.io import atomic_write_json

    spec = instantiate_spec(cfg)
    data = prepare(spec, cfg.paths.data_dir, rebuild=bool(cfg.get("rebuild_data", False)))
    summary = summarise(data)
    print_summary(summary)
    out = output_dir(cfg)
    atomic_write_json(out / "data_summary.json", summary)
    OmegaConf.save(cfg, out / "resolved_config.yaml", resolve=True)
    log.info("summary written to %s", out / "data_summary.json")
    return summary


def run_train(cfg: DictConfig) -> dict:
    import pytorch_lightning as pl

    if cfg.stage not in STAGES:
        raise UsageError(f"stage={cfg.stage!r} is not a stage; valid: {list(STAGES)}.")
    pl.seed_everything(int(cfg.seed), workers=True)
    summary = run_prepare(cfg)
    if cfg.stage == "prepare":
        return summary
    if cfg.stage == "backbone":
        from scfate.pipeline import run_backbone

        return run_backbone(cfg, instantiate_spec(cfg))
    from scfate.pipeline_flow import run_flow

    return run_flow(cfg, instantiate_spec(cfg))


def run_evaluate(cfg: DictConfig) -> dict:
    """Score a model (checkpoint or prediction file) or a baseline beside every baseline; write one eval JSON."""
    if cfg.get("router"):  # router=default teachers=GLOB: the router ensemble (scfate/eval/router_eval.py)
        from scfate.eval.router_eval import run_router
        return run_router(cfg)
    from scfate.data.prepare import prepare
    from scfate.eval.baselines import BASELINES, make_baseline
    from scfate.eval.results import build_eval_json, print_table, write_eval_json
    from scfate.eval.runner import evaluate

    chosen = [k for k in ("ckpt", "baseline", "predictions") if cfg.get(k) is not None]
    if len(chosen) != 1:
        raise UsageError(f"evaluate.py needs exactly one of ckpt=PATH, baseline=NAME ({sorted(BASELINES)}) "
                                f"or predictions=FILE.h5ad; got {chosen or 'none'}.")
    if cfg.ckpt is not None:  # a local flow_best.pt / run folder / hf:// ref, checked against the prepared data
        from scfate.hub.evaluate import evaluate_checkpoint

        return evaluate_checkpoint(cfg)
    data = prepare(instantiate_spec(cfg), cfg.paths.data_dir)
    if cfg.baseline is not None:
        if cfg.baseline not in BASELINES:
            raise UsageError(f"baseline={cfg.baseline!r} is not a baseline; valid: {sorted(BASELINES)}.")
        model, model_name = make_baseline(cfg.baseline), f"baseline:{cfg.baseline}"
    else:
        from scfate.eval.predictions import AnnDataPredictions

        model = AnnDataPredictions(cfg.predictions, list(data.adata.var_names), cfg.predictions_condition_key,
                                   cfg.predictions_context_key)
        model_name = model.name
    scores = evaluate(data, model, list(cfg.baselines), n_cells=int(cfg.n_cells), seed=int(cfg.seed))
    ev = build_eval_json(model_name, data, scores, OmegaConf.to_container(cfg, resolve=True))
    print_table(ev)
    name = model_name.split(":")[0] if cfg.predictions else model_name.replace(":", "_")
    path = write_eval_json(ev, cfg.get("out") or output_dir(cfg) / f"eval_{name}_{data.spec.name}_seed{ev['seed']}.json")
    print(f"eval JSON written to {path}")
    return ev
