"""The eval JSON (one per evaluation, written atomically, with provenance) and the printed comparison table."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

from scfate._version import __version__
from scfate.errors import DataError
from scfate.utils.io import atomic_write_json, sha256_file

SCHEMA_VERSION = 1
TABLE_METRICS = ("da", "cos", "pde", "pearson_delta", "mse_top20_de_normalized", "energy_distance", "pds_normalized")


def git_commit(path: Path | None = None) -> str | None:
    """The checkout's commit (with '-dirty' when it has uncommitted changes), or None outside git."""
    cwd = path or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha.strip() + ("-dirty" if dirty else "")


def build_eval_json(model_name: str, data, scores: dict, resolved_config: dict, ckpt: str | None = None, *,
                    seed: int) -> dict:
    """``seed`` is the training seed of the scored model (for a baseline: the seed of its cell draws); the split's
    own seed is ``split_seed``. Table 1 takes one value per (split_seed, seed) run."""
    split = data.split
    return {
        "schema_version": SCHEMA_VERSION,
        "model": model_name,
        "dataset": data.spec.name,
        "split": {"mode": split.mode, "seed": split.seed, "file": str(data.split_path), "test": split.test,
                  "scored": scores.get("scored", "test"),
                  "subgroups": split.subgroups.get("test", {}),
                  "test_perturbations_without_cells": scores["test_perturbations_without_cells"]},
        "seed": int(seed),
        "split_seed": split.seed,
        "metrics": scores["model"],
        "baselines": scores["baselines"],
        "provenance": {
            "config": resolved_config,
            "data_sha256": data.meta["data_sha256"],
            "data_source": data.meta["source"],
            "checkpoint": ckpt,
            "checkpoint_sha256": sha256_file(ckpt) if ckpt and Path(ckpt).is_file() else None,
            "scfate_version": __version__,
            "git_commit": git_commit(),
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }


def write_eval_json(obj: dict, path: str | Path) -> Path:
    return atomic_write_json(path, obj)


def read_eval_json(path: str | Path) -> dict:
    obj = json.loads(Path(path).read_text())
    if obj.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{path}: eval JSON schema_version {obj.get('schema_version')!r}, expected {SCHEMA_VERSION}.")
    return obj


def _fmt(agg: dict | None) -> str:
    if not agg or agg.get("mean") is None:
        return "n/d"
    return f"{agg['mean']:.3f}"


def print_table(ev: dict, metrics=TABLE_METRICS) -> None:
    """One table: per subgroup, the model and every baseline side by side (mean over its conditions)."""
    from rich.console import Console
    from rich.table import Table

    rows = {ev["model"]: ev["metrics"], **{f"baseline:{k}": v for k, v in ev["baselines"].items()}}
    scope = f"{len(ev['metrics']['per_perturbation'])} {ev['split'].get('scored', 'test')} conditions"
    if "coverage" in ev:  # a partial prediction file: say of how many, so n is never read as the whole test set
        cov = ev["coverage"]
        scope = (f"{cov['n_scored_conditions']} of {cov['n_test_conditions']} test conditions "
                  f"({cov['n_covered_perturbations']} of {cov['n_test_perturbations']} perturbations) covered")
    table = Table(title=f"{ev['dataset']} | split {ev['split']['mode']} seed {ev['split']['seed']} | training seed {ev['seed']} | "
                        f"{scope}")
    for col in ("subgroup", "n", "predictor", *metrics):
        table.add_column(col, justify="left" if col in ("subgroup", "predictor") else "right")
    groups = ["overall"] + sorted(ev["metrics"]["by_subgroup"])
    for group in groups:
        n_cond = sum(1 for e in ev["metrics"]["per_perturbation"].values() if group in ("overall", e["subgroup"]))
        for i, (name, res) in enumerate(rows.items()):
            agg = res["overall"] if group == "overall" else res["by_subgroup"].get(group, {})
            table.add_row(group if i == 0 else "", str(n_cond) if i == 0 else "", name,
                          *[_fmt(agg.get(m)) for m in metrics], end_section=i == len(rows) - 1)
    console = Console(width=max(160, Console().width))
    console.print(table)
    console.print("n/d = not defined for any condition of the group (reasons are in the eval JSON). Higher is better "
                  "for da, cos, pde, pearson_delta; lower for mse_top20_de_normalized (< 1 beats no_change), "
                  "energy_distance and pds_normalized (0 = the true perturbation is the closest).")
