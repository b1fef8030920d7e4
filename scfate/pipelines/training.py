"""The Lightning fit every stage runs: fit (resuming from ``ckpt_path`` only a checkpoint of this very run), end the
W&B run, reload the best checkpoint, move the module to the CPU in eval mode."""

from __future__ import annotations

import hashlib
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
    """Lightning's resume checkpoints of a run folder: its path under ``artifacts/checkpoints/``, or for a folder
    outside the artifacts tree ``checkpoints/runs/<name>-<hash of its resolved path>``. The hash keeps two runs
    whose folders share a last name (``a/detA``, ``b/detA``) from resuming each other's checkpoints; what each
    checkpoint was trained on is checked at resume (scfate.pipelines.resume)."""
    art, where = Path(cfg.paths.artifacts_dir).resolve(), Path(run_dir).resolve()
    if where.is_relative_to(art):
        return art / "checkpoints" / where.relative_to(art)
    key = hashlib.sha256(str(where).encode()).hexdigest()[:10]
    return art / "checkpoints" / "runs" / f"{where.name}-{key}"


def fit_and_restore(cfg: DictConfig, module, callback_cfg: DictConfig, ckpt_dir: Path, epochs: int,
                    loggers: bool = True, identity: dict | None = None, **fit_kwargs):
    """Train ``module`` with ``cfg.trainer`` (``trainer.max_epochs`` overrides ``epochs``), checkpointing with
    ``callback_cfg`` into ``ckpt_dir``; reload the best epoch. ``identity`` (plain values: dataset, split, model,
    seed, ...) is stored in every checkpoint, and ``ckpt_path`` resumes only a checkpoint with the same one.
    Returns (module on CPU in eval mode, checkpoint callback, trainer)."""
    from scfate.pipelines.resume import (
        AFTER_FIT,
        EpochSeed,
        RunCheckpoint,
        plain,
        resume_checkpoint,
        seed_stream,
    )

    resume = resume_checkpoint(cfg.get("ckpt_path"), ckpt_dir, identity, f"run checkpoints {ckpt_dir}")
    checkpoint = instantiate(callback_cfg, dirpath=ckpt_dir)
    if isinstance(checkpoint, RunCheckpoint):
        checkpoint.identity = plain(identity) if identity is not None else None
    logger = [instantiate(cfg.logger)] if loggers and cfg.get("logger") else False
    max_epochs = epochs if cfg.trainer.get("max_epochs") is None else cfg.trainer.max_epochs
    from scfate.pipelines.progress import progress_callbacks  # epoch log lines (conf/callbacks progress)

    trainer = instantiate(cfg.trainer, callbacks=[checkpoint, EpochSeed(int(cfg.seed)), *progress_callbacks(cfg)],
                          logger=logger, max_epochs=max_epochs)
    trainer.fit(module, ckpt_path=resume, **fit_kwargs)
    finish_loggers(trainer)
    # what follows the fit (spread selection, evaluation) draws the same numbers in a resumed run as in an
    # uninterrupted one, whose RNGs the epochs they did not replay would otherwise have advanced
    seed_stream(int(cfg.seed), AFTER_FIT)
    if checkpoint.best_model_path:
        state = safe_torch_load(checkpoint.best_model_path, "Lightning checkpoint")["state_dict"]
        module.load_state_dict(state)
        log.info("best checkpoint %s (%s %.4f)", checkpoint.best_model_path, checkpoint.monitor,
                 float(checkpoint.best_model_score or 0))
    return module.cpu().eval(), checkpoint, trainer
