"""What the Hydra entry points (train.py, evaluate.py, reflow.py) do: turn the config into one prepared dataset
and hand it to the stage. Heavy imports happen inside the functions, so ``--help`` is instant."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from scfate.errors import UsageError

log = logging.getLogger("scfate")
STAGES = ("prepare", "backbone", "flow")


def finish_run(cfg: DictConfig, result):
    """Every entry point ends here: plots beside the eval JSON, summary.md, the 5-line headline (scfate.pipelines
    .outputs); ``result`` is returned unchanged."""
    from scfate.pipelines.outputs import finish_run as finish

    return finish(cfg, result)


def run_prepare(cfg: DictConfig):
    """Prepare the configured dataset (cached), write its split JSON and summary, print the summary; return the
    PreparedData, which the rest of the run uses (data are prepared and hashed once per run)."""
    from scfate.data.prepare import prepare
    from scfate.data.summary import write_summary
    from scfate.pipelines.config import instantiate_spec, output_dir, resolved

    data = prepare(instantiate_spec(cfg), cfg.paths.data_dir, rebuild=bool(cfg.get("rebuild_data", False)))
    from scfate.utils.dist import is_rank_zero

    if is_rank_zero():
        write_summary(data, output_dir(cfg), resolved(cfg))
        log.info("summary written to %s", output_dir(cfg) / "data_summary.json")
    return data


def run_train(cfg: DictConfig):
    if cfg.stage not in STAGES:  # before Lightning loads (seconds)
        raise UsageError(f"stage={cfg.stage!r} is not a stage; valid: {list(STAGES)}.")
    import pytorch_lightning as pl

    from scfate.pipelines.config import check_outputs_writable
    from scfate.utils.dist import is_rank_zero

    if not is_rank_zero():  # a DDP rank > 0 trains beside rank 0 and writes nothing (scfate.utils.dist)
        return _run_stage(cfg, pl)
    check_outputs_writable(cfg)
    if cfg.stage == "flow":  # run_dir: locked, never silently overwritten, marked COMPLETE at the very end
        from scfate.pipelines.run_folder import run_folder

        with run_folder(cfg):
            return finish_run(cfg, _run_stage(cfg, pl))  # inside: COMPLETE lists the plots and summary.md
    return finish_run(cfg, _run_stage(cfg, pl))


def _run_stage(cfg: DictConfig, pl):
    pl.seed_everything(int(cfg.seed), workers=True)
    data = run_prepare(cfg)
    if cfg.stage == "prepare":
        from scfate.data.summary import summarise

        return summarise(data)
    if cfg.stage == "backbone":
        from scfate.pipelines.backbone import run_backbone

        return run_backbone(cfg, data)
    from scfate.pipelines.flow import run_flow

    return run_flow(cfg, data)


def run_evaluate(cfg: DictConfig) -> dict:
    from scfate.pipelines.config import check_outputs_writable
    from scfate.pipelines.evaluate import run_evaluate as run

    check_outputs_writable(cfg)
    return finish_run(cfg, run(cfg))


def run_reflow(cfg: DictConfig) -> dict:
    from scfate.pipelines.config import check_outputs_writable
    from scfate.pipelines.reflow import run_reflow as run

    check_outputs_writable(cfg)
    return finish_run(cfg, run(cfg))
