"""Report CLI: ``python -m scfate.report table1 DIR_OR_FILE... [--metrics da,cos,pde] [--format both]``.

Reads only saved eval JSONs (no model, no data), so it is cheap and stdlib-only.
"""

from __future__ import annotations

import argparse
import sys

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
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
