"""The Lightning fit every stage runs: fit (resuming from ``ckpt_path``), end the W&B run, reload the best
checkpoint, move the module to the CPU in eval mode."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from scfate.utils.checkpoint import safe_torch_load

log = logging.getLogger("scfate")


def finish_loggers(trainer) -> None:
    """End the W&B run of this job (one run per job, grouped by experiment), so multirun jobs do not share one."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()


def checkpoint_dir(cfg: DictConfig, run_dir: Path) -> Path:
    """Lightning's resume checkpoints of a run folder: its path under ``artifacts/checkpoints/`` (a folder outside
    the artifacts tree by its last name)."""
    art = Path(cfg.paths.artifacts_dir).resolve()
    rel = run_dir.resolve().relative_to(art) if run_dir.resolve().is_relative_to(art) else Path(run_dir.name)
    return art / "checkpoints" / rel


def fit_and_restore(cfg: DictConfig, module, callback_cfg: DictConfig, ckpt_dir: Path, epochs: int,
                    loggers: bool = True, **fit_kwargs):
    """Train ``module`` with ``cfg.trainer`` (``trainer.max_epochs`` overrides ``epochs``), checkpointing with
    ``callback_cfg`` into ``ckpt_dir``; reload the best epoch. Returns (module on CPU in eval mode, checkpoint
    callback, trainer)."""
    checkpoint = instantiate(callback_cfg, dirpath=ckpt_dir)
    logger = [instantiate(cfg.logger)] if loggers and cfg.get("logger") else False
    max_epochs = epochs if cfg.trainer.get("max_epochs") is None else cfg.trainer.max_epochs
    trainer = instantiate(cfg.trainer, callbacks=[checkpoint], logger=logger, max_epochs=max_epochs)
    trainer.fit(module, ckpt_path=cfg.get("ckpt_path"), **fit_kwargs)
    finish_loggers(trainer)
    if checkpoint.best_model_path:
        state = safe_torch_load(checkpoint.best_model_path, "Lightning checkpoint")["state_dict"]
        module.load_state_dict(state)
        log.info("best checkpoint %s (%s %.4f)", checkpoint.best_model_path, checkpoint.monitor,
                 float(checkpoint.best_model_score or 0))
    return module.cpu().eval(), checkpoint, trainer
