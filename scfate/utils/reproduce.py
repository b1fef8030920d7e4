"""``reproduce.sh`` beside every exported run: the exact command (entry point + Hydra overrides) that recreates it.

Machine-specific paths do not belong in a released command: ``paths.*`` overrides are dropped (the defaults put the
run back in ``artifacts/``), and the artifacts folder inside other values (``run_dir=``, ``teacher=``) is written as
``${paths.artifacts_dir}``, so the command recreates the same tree wherever it is run.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from scfate.utils.io import atomic_write_text


def job_overrides() -> list[str]:
    """This Hydra job's command-line overrides (one job of a sweep: its own value, not the swept list)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def portable(overrides: list[str], artifacts_dir: str | os.PathLike | None) -> list[str]:
    out = []
    roots = sorted({str(artifacts_dir), str(Path(artifacts_dir).resolve())}, key=len, reverse=True) \
        if artifacts_dir else []
    for o in overrides:
        if o.lstrip("+~").startswith("paths."):
            continue
        for root in roots:
            o = o.replace(root, "${paths.artifacts_dir}")
        out.append(o)
    return out


def command_line(script: str, overrides: list[str] | None = None, artifacts_dir=None) -> str:
    """``python SCRIPT override...`` (default: this job's overrides), made portable."""
    overrides = portable(job_overrides() if overrides is None else overrides, artifacts_dir)
    return " ".join(["python", script, *(shlex.quote(o) for o in overrides)])


def write_reproduce(run_dir: str | Path, script: str, overrides: list[str] | None = None,
                    artifacts_dir: str | os.PathLike | None = None) -> Path:
    """Write ``run_dir/reproduce.sh`` (executable); run it from the project root."""
    text = ("#!/usr/bin/env bash\n# Recreates this run folder. Run from the scfate project root.\nset -euo pipefail\n"
            f"{command_line(script, overrides, artifacts_dir)}\n")
    path = atomic_write_text(Path(run_dir) / "reproduce.sh", text)
    path.chmod(0o755)
    return path
