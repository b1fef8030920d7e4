"""Table 1 from saved eval JSONs: mean ± sd over seeds per (dataset, model), never inventing a cell.

A cell is built only from the per-JSON aggregates (``metrics[group][metric]["mean"]``) that exist; a metric
absent from a JSON is reported as missing, naming the files it was looked for in. Pure stdlib, so that the
CLI stays fast and the numbers are easy to audit.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from scfate.errors import DataError
from scfate.eval.results import SCHEMA_VERSION

DEFAULT_METRICS = ("da", "cos", "pde")


@dataclass(frozen=True)
class Row:
    """One (JSON, predictor) pair: the model itself, or one of the baselines the JSON also scored."""

    path: Path
    dataset: str
    split_mode: str
    seed: int | None  # training seed
    split_seed: int | None
    model: str
    results: dict  # {"overall": {...}, "by_subgroup": {...}, ...} as in the eval JSON
    time: str  # provenance time; breaks ties when runs of one seed disagree
    primary: bool  # the JSON's own model (not an extra baseline it scored): preferred when runs disagree


def _is_eval_json(obj) -> bool:
    return isinstance(obj, dict) and "schema_version" in obj and "metrics" in obj


def _rows_of(path: Path, obj: dict) -> list[Row]:
    if obj["schema_version"] != SCHEMA_VERSION:
        raise DataError(f"{path}: eval JSON schema_version {obj['schema_version']!r}, expected {SCHEMA_VERSION}.")
    split = obj.get("split") or {}
    # a run is (split seed, training seed); an eval JSON written before split_seed existed had seed == split seed
    split_seed = obj.get("split_seed", split.get("seed"))
    seed = obj.get("seed", split_seed)
    common = dict(path=path, dataset=str(obj.get("dataset")), split_mode=str(split.get("mode", "?")), seed=seed,
                  split_seed=split_seed,
                  time=str((obj.get("provenance") or {}).get("time") or ""))
    rows = [Row(model=str(obj.get("model")), results=obj["metrics"], primary=True, **common)]
    rows += [Row(model=f"baseline:{name}", results=res, primary=False, **common) for name, res in (obj.get("baselines") or {}).items()]
    return rows


def collect(paths, include_baselines: bool = True) -> list[Row]:
    """Every eval JSON in the given files/directories (recursively); other JSONs inside directories are skipped."""
    rows: list[Row] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        for f in sorted(p.rglob("*.json")) if p.is_dir() else [p]:
            try:
                obj = json.loads(f.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                obj = None
            if not _is_eval_json(obj):
                if f == p:  # named explicitly, so silently dropping it would hide a mistake
                    raise DataError(f"{f}: not an eval JSON (needs top-level schema_version and metrics)")
                continue
            rows += [r for r in _rows_of(f, obj) if include_baselines or r.primary]
    return rows


def _value(row: Row, metric: str, subgroup: str) -> float | None:
    group = row.results.get("overall") if subgroup == "overall" else (row.results.get("by_subgroup") or {}).get(subgroup)
    agg = (group or {}).get(metric) or {}
    v = agg.get("mean")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def run_label(row: Row):
    """The seed (``3``) when the training seed is the split seed (GEARS: seed=1,2,3 -m), else ``"split1/seed3"``."""
    if row.split_seed is None or row.split_seed == row.seed:
        return row.seed
    return f"split{row.split_seed}/seed{row.seed}"


def table_from_rows(rows: list[Row], metrics=DEFAULT_METRICS, subgroup: str = "overall") -> dict:
    """Group rows by (dataset, split mode, model); one value per run, a run being its (split seed, training seed):
    three training seeds on one split are n=3, as are three seeds with a split each (reruns and a baseline scored
    in several JSONs of one run count once)."""
    files = sorted({r.path.resolve() for r in rows})
    root = Path(os.path.commonpath(files)) if files else Path()
    root = root.parent if len(files) == 1 else root

    def name(p: Path) -> str:  # short but unambiguous: reruns often share a basename
        return p.resolve().relative_to(root).as_posix()

    groups: dict[tuple, dict] = {}
    for r in rows:
        groups.setdefault((r.dataset, r.split_mode, r.model), {}).setdefault(run_label(r), []).append(r)
    out_rows, conflicts = [], {}
    order = sorted(groups, key=lambda k: (k[0], k[1], k[2].startswith("baseline:"), k[2]))
    for key in order:
        by_seed = groups[key]
        cells = {}
        for m in metrics:
            values, seeds, used, missing_in = [], [], [], []
            for seed in sorted(by_seed, key=str):
                cands = sorted(by_seed[seed], key=lambda r: (r.primary, r.time, str(r.path)), reverse=True)
                have = [(r, v) for r in cands if (v := _value(r, m, subgroup)) is not None]
                if not have:
                    missing_in += [name(r.path) for r in cands]
                    continue
                if any(not math.isclose(v, have[0][1], rel_tol=1e-9, abs_tol=1e-12) for _, v in have):
                    ck = ("/".join(key), seed, name(have[0][0].path), ", ".join(name(r.path) for r, _ in have[1:]))
                    conflicts.setdefault(ck, []).append(m)
                values.append(have[0][1])
                seeds.append(seed)
                used.append(name(have[0][0].path))
            n = len(values)
            cells[m] = {"mean": statistics.fmean(values) if n else None,
                        "sd": statistics.stdev(values) if n > 1 else None,  # ddof=1
                        "n": n, "seeds": seeds, "files": used, "missing_in": sorted(set(missing_in))}
        src = sorted({name(r.path) for rs in by_seed.values() for r in rs})
        out_rows.append({"dataset": key[0], "split": key[1], "model": key[2], "sources": src, "cells": cells})
    notes = [f"{k} seed {seed}: runs disagree on {', '.join(ms)}; used {used} (own model, else latest) over {others}"
             for (k, seed, used, others), ms in conflicts.items()]
    return {"subgroup": subgroup, "metrics": list(metrics), "rows": out_rows, "notes": notes}


def table1(paths, metrics=DEFAULT_METRICS, subgroup: str = "overall", include_baselines: bool = True) -> dict:
    return table_from_rows(collect(paths, include_baselines=include_baselines), metrics, subgroup)


def format_cell(cell: dict, pm: str = "±") -> str:
    if cell["n"] == 0:
        return f"missing (looked in: {', '.join(cell['missing_in'])})"
    s = f"{cell['mean']:.3f}" + (f" {pm} {cell['sd']:.3f}" if cell["sd"] is not None else "")
    miss = f"; missing in: {', '.join(cell['missing_in'])}" if cell["missing_in"] else ""
    return f"{s} (n={cell['n']}{miss})"


def _caption(table: dict) -> str:
    return (f"Subgroup: {table['subgroup']}. Cells: mean ± sd (ddof=1) over runs (a run: split seed and "
            f"training seed) of each eval JSON's mean over test conditions; n = runs with a value.")


def to_markdown(table: dict) -> str:
    cols = ["dataset", "split", "model", *table["metrics"]]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table["rows"]:
        cells = [format_cell(row["cells"][m]).replace("|", "\\|") for m in table["metrics"]]
        lines.append("| " + " | ".join([row["dataset"], row["split"], row["model"], *cells]) + " |")
    lines += ["", _caption(table)] + [f"- note: {n}" for n in table["notes"]]
    return "\n".join(lines) + "\n"


_LATEX_ESC = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
              "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_ESC.get(c, c) for c in s)


def to_latex(table: dict) -> str:
    cols = ["dataset", "split", "model", *table["metrics"]]
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{lll" + "r" * len(table["metrics"]) + "}",
             r"\toprule", " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    for row in table["rows"]:
        # escape first, then put the math-mode ± in, so it is not escaped itself
        cells = [latex_escape(format_cell(row["cells"][m], pm="PLUSMINUS")).replace("PLUSMINUS", r"$\pm$")
                 for m in table["metrics"]]
        lines.append(" & ".join([latex_escape(row[k]) for k in ("dataset", "split", "model")] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + latex_escape(_caption(table)).replace("±", r"$\pm$") + "}",
              r"\end{table}"]
    lines += [f"% note: {n}" for n in table["notes"]]
    return "\n".join(lines) + "\n"
