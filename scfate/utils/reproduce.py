"""``reproduce.sh`` beside every exported run: the exact command (entry point + Hydra overrides) that recreates it."""

from __future__ import annotations

import shlex
from pathlib import Path

from scfate.utils.io import atomic_write_text


def job_overrides() -> list[str]:
    """This Hydra job's command-line overrides (one job of a sweep: its own value, not the swept list)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def command_line(script: str, overrides: list[str] | None = None) -> str:
    """``python SCRIPT override...`` (default: this job's overrides)."""
    overrides = job_overrides() if overrides is None else overrides
    return " ".join(["python", script, *(shlex.quote(o) for o in overrides)])


def write_reproduce(run_dir: str | Path, script: str, overrides: list[str] | None = None) -> Path:
    """Write ``run_dir/reproduce.sh`` (executable); run it from the project root."""
    text = ("#!/usr/bin/env bash\n# Recreates this run folder. Run from the scfate project root.\nset -euo pipefail\n"
            f"{command_line(script, overrides)}\n")
    path = atomic_write_text(Path(run_dir) / "reproduce.sh", text)
    path.chmod(0o755)
    return path
