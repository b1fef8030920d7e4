"""Report CLI: ``python -m scfate.report table1 DIR_OR_FILE... [--metrics da,cos,pde] [--format both]`` and
``python -m scfate.report plots RUN_DIR_OR_EVAL_JSON... [--out DIR]``.

Reads only saved files (eval JSONs, their plot data, metrics jsonl; no model, no data); table1 is stdlib-only,
plots imports matplotlib when it runs.
"""

from __future__ import annotations

import argparse
import sys

from scfate.errors import ScfateError
from scfate.eval.report import DEFAULT_METRICS, collect, table_from_rows, to_latex, to_markdown
from scfate.utils.io import atomic_write_text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scfate.report", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table1", help="mean ± sd over seeds per dataset and model, from eval JSONs")
    t.add_argument("paths", nargs="+", help="eval JSON files or directories searched recursively for *.json")
    t.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated metric keys")
    t.add_argument("--subgroup", default="overall", help="'overall' or a subgroup name, e.g. combo_seen1")
    t.add_argument("--format", choices=("markdown", "latex", "both"), default="markdown")
    t.add_argument("--no-baselines", action="store_true", help="leave out the baseline rows")
    t.add_argument("--out", help="also write the output to this file (atomically)")
    g = sub.add_parser("plots", help="(re)draw the plots beside each eval JSON; several: also the seed spread")
    g.add_argument("paths", nargs="+", help="eval JSON files or run folders (searched recursively for eval JSONs)")
    g.add_argument("--out", help="folder for the seed-spread bars of several eval JSONs (default: their common "
                                 "folder's plots/)")
    return p


def plots(args) -> int:
    from scfate.eval.plots import plot_eval, subgroup_bars
    from scfate.eval.results import read_eval_json

    files = sorted({r.path for r in collect(args.paths, include_baselines=False)})
    if not files:
        print(f"error: no eval JSON found in: {', '.join(args.paths)}", file=sys.stderr)
        return 2
    for f in files:
        done = plot_eval(f)
        print(f"{f}: {len(done['written'])} files in {done['dir']}")
        for name, why in done["skipped"].items():
            print(f"  {name} skipped: {why}")
    if len(files) > 1:  # the runs of one model on one dataset (its seeds): one set of bars with their spread
        import os
        from pathlib import Path

        out = Path(args.out) if args.out else Path(os.path.commonpath([f.resolve().parent for f in files])) / "plots"
        out.mkdir(parents=True, exist_ok=True)
        groups: dict[tuple, list] = {}
        for f in files:
            ev = read_eval_json(f)
            groups.setdefault((ev["dataset"], ev["model"], ev["split"].get("scored", "test")), []).append(ev)
        for (dataset, model, scored), evs in sorted(groups.items()):
            if len(evs) < 2:  # one run has no spread: its own bars are in its plots folder
                continue
            name = "_".join(["subgroup_bars", dataset, model.replace(":", "-"), *([scored] if scored != "test" else [])])
            paths = subgroup_bars(evs, out, name)
            print(f"{model} on {dataset}: bars over {len(evs)} eval JSONs in {paths[0].with_suffix('')}.{{png,pdf}}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plots":
        try:
            return plots(args)
        except (FileNotFoundError, ValueError, ScfateError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        rows = collect(args.paths, include_baselines=not args.no_baselines)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: no eval JSON found in: {', '.join(args.paths)}", file=sys.stderr)
        return 2
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    table = table_from_rows(rows, metrics=metrics, subgroup=args.subgroup)
    parts = []
    if args.format in ("markdown", "both"):
        parts.append(to_markdown(table))
    if args.format in ("latex", "both"):
        parts.append(to_latex(table))
    text = "\n".join(parts)
    print(text, end="")
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
