"""One log line per training epoch (conf/callbacks/default.yaml ``progress``), for logs that outlive the terminal.

Lightning's rich bar redraws one terminal line: redirected to a file (``train.py > run.log``, a SLURM job) it leaves
control codes and no epoch history. This callback logs ``epoch 3/15: train/fm_loss 0.0123 | val/delta_cos 0.512
(best 0.530) | 4.1 s`` through the ``scfate`` logger (so Hydra's ``<job>.log`` keeps it too), and switches the bar
off where stderr is not a terminal, where it would only add noise.
"""

from __future__ import annotations

import logging
import sys
import time

from pytorch_lightning.callbacks import Callback, ModelCheckpoint, ProgressBar

log = logging.getLogger("scfate")


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def epoch_line(epoch: int, max_epochs: int, metrics: dict, best: tuple[str, float] | None, seconds: float) -> str:
    """``epoch 3/15: train/fm_loss 0.0123 | val/delta_cos 0.512 (best 0.530) | 4.1 s`` (1-based epochs)."""
    def fmt(key):
        text = f"{key} {metrics[key]:.4g}"
        return text + (f" (best {best[1]:.4g})" if best and best[0] == key else "")

    train = [fmt(k) for k in sorted(metrics) if k.startswith("train/")]
    val = [fmt(k) for k in sorted(metrics) if k.startswith("val/")]
    parts = [", ".join(p) for p in (train, val) if p]
    total = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
    return f"epoch {epoch + 1}{total}: " + " | ".join([*parts, f"{seconds:.1f} s"])


class EpochLog(Callback):
    """Log one line per training epoch with its losses and validation metrics (and the monitored one's best).

    ``bar``: ``auto`` keeps Lightning's progress bar only on a terminal, ``on`` / ``off`` force it."""

    def __init__(self, bar: str = "auto"):
        if bar not in ("auto", "on", "off"):
            raise ValueError(f"EpochLog(bar={bar!r}): use auto, on or off")
        self.bar = bar
        self._start = time.monotonic()

    def setup(self, trainer, pl_module, stage: str) -> None:
        # ProgressBar.disable is what Lightning itself calls on non-zero ranks: the bar stays in place, silent
        if self.bar == "off" or (self.bar == "auto" and not stderr_is_terminal()):
            for cb in trainer.callbacks:
                if isinstance(cb, ProgressBar):
                    cb.disable()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # validation ran before this hook, so the metrics hold the epoch's train *and* val values
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        ckpt = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor), None)
        # the values the modules show in their bar (prog_bar=True: the loss and the validation metric), and the
        # monitored one; the backbone logs a dozen more, which would make the line unreadable
        shown = set(trainer.progress_bar_metrics) | ({ckpt.monitor} if ckpt else set())
        metrics = {}
        for k in sorted(shown):
            try:
                metrics[k] = float(trainer.callback_metrics[k])
            except (KeyError, TypeError, ValueError):
                continue
        best = None
        if ckpt is not None and ckpt.monitor in metrics:
            # the checkpoint callback runs after this one (Lightning orders them last): fold this epoch in
            now, prev = metrics[ckpt.monitor], ckpt.best_model_score
            pick = max if ckpt.mode == "max" else min
            best = (ckpt.monitor, now if prev is None else pick(now, float(prev)))
        log.info("%s", epoch_line(trainer.current_epoch, trainer.max_epochs, metrics, best,
                                  time.monotonic() - self._start))


def progress_callbacks(cfg) -> list:
    """The epoch-line callback of ``cfg.callbacks.progress`` (none when it is null or the config has no callbacks
    group), for :func:`scfate.pipelines.training.fit_and_restore` to add beside its checkpoint."""
    from hydra.utils import instantiate

    spec = (cfg.get("callbacks") or {}).get("progress")
    return [instantiate(spec)] if spec else []
