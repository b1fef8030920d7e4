"""What makes ``ckpt_path=`` resume *the same run*: the checkpoint it resumes must be this run's (its identity is
stored in every Lightning checkpoint and compared before anything is trained), and every batch draws its random
numbers from ``(seed, epoch, batch)`` alone, so an interrupted and resumed run computes what an uninterrupted one
does (CPU; bit for bit).

Lightning restores the weights, the optimiser, the loops and the callbacks' state, but not the global RNGs that
the flow's noise, time and OT pairing draw from; the batches' cells are keyed by (seed, epoch) already
(``scfate.data.datamodule._StepSampler``)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint

from scfate.errors import UsageError
from scfate.utils.checkpoint import safe_torch_load

log = logging.getLogger("scfate")
IDENTITY_KEY = "scfate_run_identity"
# the streams of seed_stream(): distinct constants, so no epoch's stream is another phase's
TRAIN, VALIDATION, AFTER_FIT, FLOW_STAGE = 0, 1, 2, 3


def seed_stream(seed: int, *keys: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (CPU and every GPU) from ``(seed, *keys)``."""
    value = int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    # not torch.manual_seed: where CUDA / XPU / MTIA are not initialised (every CPU run) it formats the caller's
    # whole stack three times to queue lazy seed calls, ~0.4 ms a call at Lightning's hook depth, paid per batch
    # (4k batches in the quickstart). CPU, CUDA and MPS are seeded: the devices this project trains on.
    torch.default_generator.manual_seed(value)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(value)
    if torch.backends.mps.is_available():
        torch.mps.manual_seed(value)


class EpochSeed(Callback):
    """Reseed before every training batch from (seed, epoch, batch) and before every validation batch from
    (seed, batch): a resumed run draws the noise an uninterrupted one draws there, whatever ran before in the
    process (the sanity check, an earlier stage, the epochs the checkpoint stands for). Per batch, not per epoch:
    on a resume Lightning skips ``on_train_epoch_start`` and creates the loader's iterator (which draws from the
    global RNG) at another point than in an uninterrupted run. Every validation pass sees the same noise, so the
    epochs' scores differ by the weights alone."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        seed_stream(self.seed, TRAIN, trainer.current_epoch, batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        seed_stream(self.seed, VALIDATION, dataloader_idx, batch_idx)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (best by the monitored metric, ``last.ckpt``) that also stores the run's identity
    in every checkpoint (read back by :func:`resume_checkpoint`) and keeps ``last.ckpt`` the latest state: after
    every validation and at the end of training. Lightning's own saves ``last`` only when the best checkpoint
    changes, so a kill after an epoch that did not improve resumed from an earlier one, and a finished run's
    ``last.ckpt`` was not its final state. (``_should_skip_saving_checkpoint`` says whether this step was saved
    already; Lightning's private API, stable across 2.x.)"""

    identity: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.identity is not None:
            checkpoint[IDENTITY_KEY] = self.identity

    def _save_last_if_behind(self, trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_behind(trainer)


def plain(obj):
    """``obj`` as JSON would return it (tuples as lists, keys as strings): how a stored identity compares."""
    return json.loads(json.dumps(obj, default=str))


def resume_checkpoint(ckpt_ref, ckpt_dir: Path, identity: dict | None, run: str) -> str | None:
    """The checkpoint file ``fit`` resumes, or None for a fresh fit (whose folder is emptied of an earlier fit's
    checkpoints, which Lightning would otherwise keep beside the new ones as ``best-v1.ckpt``, ``last-v1.ckpt``).

    ``ckpt_ref``: None, ``last`` (``ckpt_dir/last.ckpt``: refused when there is none, where Lightning would
    silently start afresh) or a file. A checkpoint whose stored identity differs from ``identity`` is refused,
    naming every difference. ``run`` names the run in the messages (e.g. ``run_dir=...``)."""
    from scfate.pipelines.backbone import config_differences

    ckpt_dir = Path(ckpt_dir)
    if ckpt_ref is None:
        from scfate.utils.dist import is_rank_zero

        for stale in ckpt_dir.glob("*.ckpt") if is_rank_zero() else ():
            stale.unlink()
        return None
    path = ckpt_dir / "last.ckpt" if str(ckpt_ref) == "last" else Path(str(ckpt_ref))
    if not path.is_file():
        where = f"this run's checkpoint folder {ckpt_dir}" if str(ckpt_ref) == "last" else "that path"
        raise UsageError(f"ckpt_path={ckpt_ref}: there is no checkpoint at {path} ({run}; {where}), so there is "
                         "nothing to resume. Start the run afresh with ckpt_path=null, or give a .ckpt file.")
    if identity is None:
        return str(path)
    stored = safe_torch_load(path, "Lightning checkpoint").get(IDENTITY_KEY)
    if stored is None:
        log.warning("%s stores no run identity (written by an older scFATE): resuming it unchecked", path)
        return str(path)
    diffs = config_differences(plain(stored), plain(identity))
    if diffs:
        hint = (" trainer.max_epochs sets the backbone's epochs too (so another backbone): to train the head on, "
                "raise epochs.flow instead." if any(d.startswith("backbone.epochs") for d in diffs) else "")
        raise UsageError(f"ckpt_path={ckpt_ref} ({path}) is the checkpoint of another run than this one ({run}): "
                         f"{'; '.join(diffs)} (the checkpoint's vs this run's). Resume it with its own config, or "
                         f"start afresh with ckpt_path=null.{hint}")
    log.info("resuming %s (same run: dataset, split and model match)", path)
    return str(path)


def write_history(path: Path, history: list[dict]) -> Path:
    """Write the per-epoch metrics to ``path`` (JSON lines): the head's history (restored with its checkpoint,
    so a resumed run keeps the epochs before the interruption), completed by the file's earlier epochs where the
    history lacks them (a checkpoint from before histories were stored); one line per epoch, the latest wins, and
    epochs past the last trained one (left by a longer run this one was resumed before) are dropped."""
    from scfate.utils.io import atomic_write_text

    path = Path(path)
    records = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line cut off by a kill while it was written
                continue
            if isinstance(r, dict) and "epoch" in r:
                records[int(r["epoch"])] = r
    records.update({int(r["epoch"]): r for r in history})
    last = max((int(r["epoch"]) for r in history), default=max(records, default=-1))
    rows = [records[e] for e in sorted(records) if e <= last]
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
