"""The 5-line headline a run ends with (and its ``summary.md``): the model against its best baseline on DA, cos
and PDE, and where the eval JSON, the full table, the plots and the checkpoint are.

The wide table has 7 metrics x (1 + 7 predictors) x 5 subgroups: it is written to a file beside the eval JSON
(scfate.eval.results.render_table); a person reading a terminal or a log first wants only whether the model beats
the baselines, and where to look next.
"""

from __future__ import annotations

import os
from pathlib import Path

HEADLINE_METRICS = ("da", "cos", "pde")
LOWER_IS_BETTER = {"mse_top20_de", "mse_top20_de_normalized", "mse_top20_de_non_dropout",
                   "mse_top20_de_non_dropout_normalized", "energy_distance", "mmd", "pds", "pds_normalized"}


def _mean(results: dict | None, metric: str, group: str = "overall") -> float | None:
    block = (results or {}).get("overall") if group == "overall" else ((results or {}).get("by_subgroup") or {}).get(group)
    return ((block or {}).get(metric) or {}).get("mean")


def best_baseline(ev: dict, metric: str, among: set[str] | None = None) -> tuple[str, float] | None:
    """(name, overall mean) of the baseline best on ``metric`` (only those in ``among`` when given), or None."""
    scored = [(name, v) for name, res in (ev.get("baselines") or {}).items()
              if (v := _mean(res, metric)) is not None and (among is None or name in among)]
    if not scored:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(scored, key=lambda nv: nv[1])


def _short(path) -> str:
    """A path as short as it can be read: relative to the working folder when it lies inside it."""
    if path is None:
        return "none"
    p = Path(path)
    try:
        rel = os.path.relpath(p.resolve(), Path.cwd())
    except ValueError:  # another drive (Windows)
        return str(p)
    return str(p) if rel.startswith("..") else rel


def _scope(ev: dict) -> str:
    n = len(ev["metrics"].get("per_perturbation") or {})
    scored = (ev.get("split") or {}).get("scored", "test")
    if "coverage" in ev:
        cov = ev["coverage"]
        return f"{cov['n_scored_conditions']} of {cov['n_test_conditions']} test conditions (a partial prediction file)"
    return f"{n} {scored} conditions" + (" (in-sample oracle check, not zero-shot)" if scored == "train" else "")


def headline(ev: dict, eval_json, plots: Path | None = None, table: Path | None = None,
             metrics=HEADLINE_METRICS) -> list[str]:
    """Five lines: what was scored; one per metric (model, best baseline, difference); where the files are."""
    split = ev.get("split") or {}
    tag = split.get("tag") or f"{split.get('mode')} seed {split.get('seed')}"
    lines = [f"{ev['model']} on {ev['dataset']} | split {tag} | training seed {ev.get('seed')} | {_scope(ev)}"]
    width = max(len(m) for m in metrics)
    for m in metrics:
        mine, best = _mean(ev["metrics"], m), best_baseline(ev, m)
        text = f"  {m:<{width}}  {'n/d' if mine is None else f'{mine:.3f}'}"
        if best is None:
            text += "   (no baseline defines it)"
        else:
            better = "lower" if m in LOWER_IS_BETTER else "higher"
            diff = "" if mine is None else f"  ({mine - best[1]:+.3f}, {better} is better)"
            text += f"   vs {best[1]:.3f} best baseline {best[0]}{diff}"
        lines.append(text)
    ckpt = (ev.get("provenance") or {}).get("checkpoint")
    where = [f"eval JSON {_short(eval_json)}"]
    where += [f"table {_short(table)}"] if table else []
    where += [f"plots {_short(plots)}/"] if plots else []
    lines.append(" | ".join([*where, f"checkpoint {_short(ckpt)}"]))
    return lines


def summary_markdown(lines: list[str]) -> str:
    """``summary.md``: the headline as a heading, a code block of the metric lines and the locations."""
    head, body, where = lines[0], lines[1:-1], lines[-1]
    items = "".join(f"- {part}\n" for part in where.split(" | "))
    return f"# {head}\n\n```\n" + "\n".join(body) + "\n```\n\n" + items
