"""How a run ends for the person who started it: plots beside its eval JSON (also to W&B when the run logs
there), ``summary.md`` in its folder, and a 5-line headline on the terminal instead of the wide table.

Called once at the end of ``train.py`` / ``evaluate.py`` (scfate.cli); a plot that fails to draw is a warning,
never the end of a run whose model is already trained and scored."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger("scfate")


def eval_json_of(cfg: DictConfig, result) -> Path | None:
    """Where the run's eval JSON was written (scfate.eval.results.EvalJSON.path), or None for a run that wrote
    none (stage=prepare). A run folder renamed after the write (written aside, moved into place on success) is
    looked up by the same name under ``run_dir``."""
    path = getattr(result, "path", None)
    if path is None:
        return None
    path = Path(path)
    if not path.is_file() and cfg.get("run_dir") and (Path(cfg.run_dir) / path.name).is_file():
        path = Path(cfg.run_dir) / path.name
    return path if path.is_file() else None


def finish_run(cfg: DictConfig, result):
    """Plots, W&B images, ``summary.md`` and the printed headline of a finished run's eval JSON; returns ``result``
    (what the stage returned) unchanged, so the entry points can end with ``return finish_run(cfg, run(cfg))``."""
    from scfate.eval.results import table_path
    from scfate.eval.summary import headline, summary_markdown
    from scfate.utils.io import atomic_write_text

    path = eval_json_of(cfg, result)
    if path is None:
        return result
    plots = None
    try:
        from scfate.eval.plots import plot_eval

        plots = plot_eval(path)
        for name, why in plots["skipped"].items():
            log.info("plot %s not drawn: %s", name, why)
    except Exception as exc:  # the run is done; a plot must not fail it
        log.warning("plots for %s not drawn (%s: %s); redraw them with python -m scfate.report plots %s",
                    path, type(exc).__name__, exc, path)
    if plots is not None:
        log_to_wandb(cfg, plots)
    lines = headline(result, path, plots["dir"] if plots else None, table_path(path))
    summary = atomic_write_text(path.parent / "summary.md", summary_markdown(lines))
    print("\n".join(lines))
    log.info("summary written to %s", summary)
    return result


def wandb_settings(cfg: DictConfig) -> dict | None:
    """``wandb.init`` arguments for the plots of a run whose logger is W&B (None otherwise): the run's project and
    group, offline unless the logger is online (so no network is needed unless it was asked for)."""
    lg = cfg.get("logger")
    if not lg or "WandbLogger" not in str(lg.get("_target_", "")):
        return None
    return {"project": lg.get("project"), "group": lg.get("group"), "job_type": "plots",
            "name": f"{lg.get('name') or 'scfate'}_plots", "dir": lg.get("save_dir"),
            "mode": "offline" if lg.get("offline", True) else "online"}


def log_to_wandb(cfg: DictConfig, plots: dict) -> None:
    """The PNGs as W&B images: into the active run if there is one, else a ``plots`` run of the same group (the
    training run itself was finished when its fit ended, one run per job)."""
    settings = wandb_settings(cfg)
    pngs = [p for p in plots["written"] if Path(p).suffix == ".png"]
    if settings is None or not pngs:
        return
    try:
        import wandb

        own = wandb.run is None
        run = wandb.init(**settings) if own else wandb.run
        run.log({f"plots/{Path(p).stem}": wandb.Image(str(p)) for p in pngs})
        if own:
            run.finish()
        log.info("plots logged to W&B (%s run %s)", settings["mode"], getattr(run, "name", "?"))
    except Exception as exc:  # W&B being down or offline must not fail a finished run
        log.warning("plots not logged to W&B (%s: %s); they are in %s", type(exc).__name__, exc, plots["dir"])
