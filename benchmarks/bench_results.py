"""Condense a finished `python -m scfate.bench` folder into `benchmarks/results/bench_<name>.{json,md}`: the summary
(overall and per subgroup, paired CIs), the non-additive part of combinations, the folds and what each fold chose
on its own training perturbations (prior space, mean predictor per context and class, the flow's spread).

    .venv/bin/python benchmarks/bench_results.py BENCH_DIR NAME --command "python -m scfate.bench ... (timing)"

``--complete-repeats`` summarises a benchmark that was stopped early from its finished folds, keeping only the
repeats whose every fold finished (each test unit then still counts once per kept repeat).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scfate.utils.checkpoint import safe_torch_load

RESULTS = Path(__file__).parent / "results"


def fold_choices(bench: Path) -> list[dict]:
    out = []
    for fold in sorted((bench / "folds").iterdir()):
        if not (fold / "rows.json").is_file():
            continue
        ckpt = safe_torch_load(fold / "flow_best.pt")
        mean = {ctx: {cls: c["chosen"] for cls, c in by_cls.items()}
                for ctx, by_cls in (ckpt.get("mean_selection") or {}).items()}
        stacks = {ctx: {cls: {k: round(w, 3) for k, w in c["stack_weights"].items() if w > 0}
                        for cls, c in by_cls.items() if c["chosen"] == "stack"}
                  for ctx, by_cls in (ckpt.get("mean_selection") or {}).items()}
        out.append({"fold": fold.name, "prior_space": ckpt.get("prior_space"), "spread": ckpt.get("spread"),
                    "mean_predictor": mean, **({"stack_weights": stacks} if any(stacks.values()) else {})})
    return out


def from_folds(bench: Path, n_folds: int) -> dict:
    """The summary of the whole repeats among the finished folds (as ``run_bench`` writes it at the end)."""
    from scfate.eval import bench_report as report

    done = {}
    for fold in sorted((bench / "folds").iterdir()):
        if (fold / "rows.json").is_file():
            r, f = (int(x[1:]) for x in fold.name.split("_"))
            done.setdefault(r, {})[f] = json.loads((fold / "rows.json").read_text())
    repeats = sorted(r for r, fs in done.items() if len(fs) == n_folds)
    if not repeats:
        raise SystemExit(f"no repeat of {bench} has all its {n_folds} folds finished")
    rows = [row for r in repeats for f in sorted(done[r]) for row in done[r][f]]
    first = [row["predictor"] for row in rows]
    names = ["scfate"] + [p for p in dict.fromkeys(first) if p != "scfate"]
    summary = report.summarise(rows, "scfate", names)
    interaction = report.interaction_summary(rows, names)
    units = {row.get("unit", row["perturbation"]) for row in rows}
    md = (f"# Benchmark (stopped early): {len(repeats)} complete repeat(s) of {n_folds} folds, {len(units)} test "
          "units (each tested once per repeat)\n\nCells: mean over (repeat, test unit) ± sd over repeats.\n\n"
          + report.to_markdown(summary, "scfate", unit="(context, perturbation) units" if any("::" in u for u in units)
                               else "perturbations") + report.interaction_markdown(interaction))
    return {"repeats": len(repeats), "folds": n_folds, "n_perturbations": len(units), "predictors": names,
            "summary": summary, "interaction": interaction, "markdown": md}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--command", required=True, help="the command that produced it, with its timing")
    ap.add_argument("--complete-repeats", type=int, default=None, metavar="FOLDS",
                    help="summarise from the finished folds (FOLDS per repeat), whole repeats only")
    args = ap.parse_args()
    res = (from_folds(args.bench_dir, args.complete_repeats) if args.complete_repeats
           else json.loads((args.bench_dir / "bench.json").read_text()))
    keep = ("dataset", "mode", "folds", "repeats", "n_perturbations", "predictors", "summary", "interaction",
            "folds_detail")
    out = {k: res[k] for k in keep if k in res}
    out.update(command=args.command, fold_choices=fold_choices(args.bench_dir))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bench_{args.name}.json").write_text(json.dumps(out, indent=1))
    md = res.get("markdown") or (args.bench_dir / "bench.md").read_text()
    (RESULTS / f"bench_{args.name}.md").write_text(f"Command: `{args.command}`\n\n{md}")
    print(f"wrote {RESULTS / f'bench_{args.name}.json'} and .md")


if __name__ == "__main__":
    main()
