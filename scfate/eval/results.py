"""The eval JSON (one per evaluation, written atomically, with provenance), and beside it the wide comparison
table (``<stem>.table.txt``) and what its plots need (``<stem>.plotdata.npz``, scfate.eval.plotdata)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
from pathlib import Path

from scfate._version import __version__
from scfate.errors import DataError
from scfate.utils.io import atomic_write_json, atomic_write_text, sha256_file

log = logging.getLogger("scfate")
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


class EvalJSON(dict):
    """An eval JSON: a plain dict to every reader (json.dumps, ==, ``ev["metrics"]``), which also carries what
    is not JSON: ``plot_data`` (the runner's, saved beside it) and ``path`` (where write_eval_json put it), so the
    stages need not pass them along for the summary and plots drawn after the run (scfate.pipelines.outputs)."""

    plot_data = None
    path: Path | None = None


def build_eval_json(model_name: str, data, scores: dict, resolved_config: dict, ckpt: str | None = None, *,
                    seed: int) -> EvalJSON:
    """``seed`` is the training seed of the scored model (for a baseline: the seed of its cell draws); the split's
    own seed is ``split_seed``. Table 1 takes one value per (split_seed, seed) run."""
    split = data.split
    ev = EvalJSON({
        "schema_version": SCHEMA_VERSION,
        "model": model_name,
        "dataset": data.spec.name,
        # the tag names the split by its lists, as the backbone folder (backbones/<dataset>/<tag>-<config>) does
        "split": {"mode": split.mode, "seed": split.seed, "tag": split.tag, "file": str(data.split_path),
                  "test": split.test,
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
    })
    ev.plot_data = scores.get("plot_data")
    return ev


def table_path(eval_json: str | Path) -> Path:
    p = Path(eval_json)
    return p.with_name(p.stem + ".table.txt")


def write_eval_json(obj: dict, path: str | Path) -> Path:
    """The eval JSON at ``path``, the wide table beside it and, when the runner kept them, its plot data."""
    path = atomic_write_json(path, obj)
    atomic_write_text(table_path(path), render_table(obj))
    if getattr(obj, "plot_data", None) is not None:
        from scfate.eval.plotdata import save_plotdata

        save_plotdata(obj.plot_data, path)
    if isinstance(obj, EvalJSON):
        obj.path = path
    return path


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
    """Say in the log what was scored. The wide table (:func:`render_table`) no longer goes to the terminal, where
    its 160 columns wrap: write_eval_json puts it beside the eval JSON, and the run ends with a 5-line summary
    (scfate.eval.summary) that names that file."""
    log.info("scored %s on %d %s conditions beside %d baselines (%s); the full table goes beside the eval JSON "
             "(*.table.txt)", ev["model"], len(ev["metrics"]["per_perturbation"]), ev["split"].get("scored", "test"),
             len(ev["baselines"]), ", ".join(ev["baselines"]))


def render_table(ev: dict, metrics=TABLE_METRICS) -> str:
    """One table: per subgroup, the model and every baseline side by side (mean over its conditions), as text."""
    import io

    from rich.console import Console
    from rich.table import Table

    rows = {ev["model"]: ev["metrics"], **{f"baseline:{k}": v for k, v in ev["baselines"].items()}}
    scope = f"{len(ev['metrics']['per_perturbation'])} {ev['split'].get('scored', 'test')} conditions"
    if "coverage" in ev:  # a partial prediction file: say of how many, so n is never read as the whole test set
        cov = ev["coverage"]
        scope = (f"{cov['n_scored_conditions']} of {cov['n_test_conditions']} test conditions "
                  f"({cov['n_covered_perturbations']} of {cov['n_test_perturbations']} perturbations) covered")
    split = ev["split"].get("tag") or f"{ev['split']['mode']} seed {ev['split']['seed']}"
    table = Table(title=f"{ev['dataset']} | split {split} | training seed {ev['seed']} | {scope}")
    for col in ("subgroup", "n", "predictor", *metrics):
        table.add_column(col, justify="left" if col in ("subgroup", "predictor") else "right")
    groups = ["overall"] + sorted(ev["metrics"]["by_subgroup"])
    for group in groups:
        n_cond = sum(1 for e in ev["metrics"]["per_perturbation"].values() if group in ("overall", e["subgroup"]))
        for i, (name, res) in enumerate(rows.items()):
            agg = res["overall"] if group == "overall" else res["by_subgroup"].get(group, {})
            table.add_row(group if i == 0 else "", str(n_cond) if i == 0 else "", name,
                          *[_fmt(agg.get(m)) for m in metrics], end_section=i == len(rows) - 1)
    buf = io.StringIO()
    console = Console(file=buf, width=160, color_system=None, force_terminal=False)  # plain text, any terminal
    console.print(table)
    console.print("n/d = not defined for any condition of the group (reasons are in the eval JSON). Higher is better "
                  "for da, cos, pde, pearson_delta; lower for mse_top20_de_normalized (< 1 beats no_change), "
                  "energy_distance and pds_normalized (0 = the true perturbation is the closest).")
    return buf.getvalue()
