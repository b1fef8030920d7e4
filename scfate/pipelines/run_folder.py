"""A run folder (``run_dir``) belongs to one run at a time, is never silently overwritten, and says when it is
complete: a ``COMPLETE`` marker (JSON: what was written, with sizes and sha256) is its last file, so a folder left
by a kill (``flow_best.pt`` and no eval JSON) is recognisably incomplete."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from scfate.errors import UsageError

log = logging.getLogger("scfate")
MARKER, LOCK, HOLDER = "COMPLETE", ".run.lock", ".run.lock.json"
# what a run writes into its folder; only these are removed by overwrite=true (anything else there is left alone)
OUTPUTS = ("COMPLETE", "flow_best.pt", "config.json", "flow_metrics.jsonl", "reproduce.sh", "summary.md",
           "couplings.pt", "eval_*", "plots")


def previous_outputs(run_dir: Path, ckpt_dir: Path) -> list[Path]:
    """A previous run's outputs in ``run_dir``, and its Lightning checkpoints (which a fresh run would replace)."""
    found = sorted({p for pattern in OUTPUTS for p in Path(run_dir).glob(pattern)})
    return found + sorted(Path(ckpt_dir).glob("*.ckpt"))


def _snapshot(run_dir: Path) -> dict:
    """Every file of the run folder but the marker and the lock, by size and modification time."""
    return {p.relative_to(run_dir).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in run_dir.rglob("*") if p.is_file() and p.name not in (MARKER, LOCK, HOLDER)}


def _holder(run_dir: Path) -> str:
    try:
        h = json.loads((run_dir / HOLDER).read_text())
        return f"pid {h['pid']} on {h['host']}, started {h['started']}, its output folder {h['output_dir']}"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is still writing it, or it is gone
        return "its process could not be named"


def _lock(run_dir: Path, output_dir: Path):
    from filelock import FileLock, Timeout

    lock = FileLock(str(run_dir / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"run_dir={run_dir} is in use by another run ({_holder(run_dir)}): two runs in one folder "
                         "would overwrite each other's files. Wait for it to finish, or give this run another "
                         "run_dir=PATH.") from None
    (run_dir / HOLDER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                              "output_dir": str(output_dir.absolute()), "argv": sys.argv}))
    return lock


def write_marker(run_dir: Path, ckpt_dir: Path, resumed_from) -> Path:
    """``COMPLETE``: every file of the run folder (bytes, sha256) and its checkpoint folder, written last."""
    from scfate.utils.io import atomic_write_json, sha256_file

    files = {p.relative_to(run_dir).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name not in (MARKER, LOCK, HOLDER)}
    return atomic_write_json(run_dir / MARKER, {
        "complete": True, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_dir": str(run_dir.resolve()),
        "files": files, "checkpoints": str(ckpt_dir),
        "resumed_from": None if resumed_from is None else str(resumed_from)})


@contextlib.contextmanager
def run_folder(cfg: DictConfig):
    """Hold ``cfg.run_dir`` for this run: lock it (another run on it is refused, naming that run), refuse a folder
    that holds a previous run's outputs unless ``overwrite=true`` (which removes them first) or ``ckpt_path=``
    resumes it, and write ``COMPLETE`` when the body ends without an error. Checked before any data is prepared
    or any model trained."""
    from scfate.pipelines.config import output_dir
    from scfate.pipelines.training import checkpoint_dir

    run_dir, ckpt_ref = Path(cfg.run_dir), cfg.get("ckpt_path")
    overwrite = bool(cfg.get("overwrite", False))
    if overwrite and str(ckpt_ref) == "last":
        raise UsageError("overwrite=true replaces the run in run_dir, ckpt_path=last resumes it: pass one of them.")
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = checkpoint_dir(cfg, run_dir)
    lock = _lock(run_dir, output_dir(cfg))
    try:
        found = previous_outputs(run_dir, ckpt_dir)
        if found and ckpt_ref is None and not overwrite:
            shown = ", ".join(str(p.relative_to(run_dir) if p.is_relative_to(run_dir) else p) for p in found[:6])
            state = "a complete run" if (run_dir / MARKER).is_file() else "an incomplete run (no COMPLETE marker)"
            raise UsageError(f"run_dir={run_dir} holds the outputs of {state} ({shown}{' …' if len(found) > 6 else ''})"
                             ": resume it with ckpt_path=last, replace it with overwrite=true, or give this run "
                             "another run_dir=PATH.")
        marker, before = run_dir / MARKER, _snapshot(run_dir)
        kept = marker.read_bytes() if marker.is_file() else None
        marker.unlink(missing_ok=True)  # from here on the folder is this run's, and incomplete
        if overwrite and found:  # (its checkpoints: a fresh fit clears them itself, scfate.pipelines.resume)
            log.warning("overwrite=true: removing the previous run's outputs in %s", run_dir)
            for p in (p for p in found if p.is_relative_to(run_dir)):
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
        try:
            yield run_dir
        except BaseException:
            # a resume refused (or failed) before it changed a file: the folder is still the complete run it was
            if kept is not None and _snapshot(run_dir) == before:
                marker.write_bytes(kept)
            raise
        write_marker(run_dir, ckpt_dir, ckpt_ref)
    finally:
        (run_dir / HOLDER).unlink(missing_ok=True)
        lock.release()
