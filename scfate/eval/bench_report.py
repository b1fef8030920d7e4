"""The cross-validated benchmark's numbers from its per-perturbation rows: per predictor and subgroup the mean
(and the sd over repeats), paired differences model - baseline with bootstrap CIs, a markdown table and plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from scfate.eval.cv import paired_bootstrap

METRICS = ("da", "cos", "pde", "energy_distance", "mmd")
LOWER_IS_BETTER = {"energy_distance", "mmd", "mse_top20_de", "mse_top20_de_normalized", "pds", "pds_normalized"}


def per_perturbation(rows: list[dict], predictor: str, metric: str, subgroup: str = "overall"
                     ) -> dict[tuple[int, str], float]:
    """{(repeat, perturbation): value} for one predictor: the mean over the perturbation's conditions (contexts,
    doses) in that repeat; undefined values are left out."""
    acc: dict[tuple[int, str], list[float]] = {}
    for r in rows:
        if r["predictor"] != predictor or (subgroup != "overall" and r["subgroup"] != subgroup):
            continue
        v = r["metrics"].get(metric)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            # the test unit: a perturbation, or in a cross-context benchmark a (context, perturbation) unit
            acc.setdefault((r["repeat"], r.get("unit", r["perturbation"])), []).append(float(v))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def paired_matrix(a: dict, b: dict) -> np.ndarray:
    """[repeats, perturbations] of a - b where both are defined (NaN elsewhere)."""
    keys = sorted(set(a) & set(b))
    repeats, perts = sorted({k[0] for k in keys}), sorted({k[1] for k in keys})
    out = np.full((len(repeats), len(perts)), np.nan)
    for rep, p in keys:
        out[repeats.index(rep), perts.index(p)] = a[(rep, p)] - b[(rep, p)]
    return out


def summarise(rows: list[dict], model: str, predictors: list[str], metrics=METRICS, n_boot: int = 2000,
              seed: int = 0) -> dict:
    """``{subgroup: {"n_perturbations", "predictors": {name: {metric: {mean, sd_over_repeats}}},
    "vs_model": {baseline: {metric: {diff, lo, hi, n}}}}}``: ``diff`` = model - baseline (for energy distance and
    MMD lower is better, so the model is better where diff < 0)."""
    groups = ["overall"] + sorted({r["subgroup"] for r in rows})
    out = {}
    for g in groups:
        block = {"predictors": {}, "vs_model": {}}
        vals = {p: {m: per_perturbation(rows, p, m, g) for m in metrics} for p in predictors}
        block["n_perturbations"] = len({k[1] for m in metrics for k in vals[model][m]})
        for p in predictors:
            block["predictors"][p] = {}
            for m in metrics:
                v = vals[p][m]
                by_rep = [np.mean([x for (rep, _), x in v.items() if rep == r]) for r in sorted({k[0] for k in v})]
                block["predictors"][p][m] = {"mean": float(np.mean(list(v.values()))) if v else None,
                                             "sd_over_repeats": float(np.std(by_rep, ddof=1)) if len(by_rep) > 1
                                             else None, "n": len(v)}
        for p in predictors:
            if p == model:
                continue
            block["vs_model"][p] = {}
            for m in metrics:
                d = paired_matrix(vals[model][m], vals[p][m])
                mean, lo, hi = paired_bootstrap(d, n_boot=n_boot, seed=seed) if d.size else (None, None, None)
                block["vs_model"][p][m] = {"diff": mean, "lo": lo, "hi": hi, "n": int(np.isfinite(d).sum())}
        out[g] = block
    return out


def interaction_summary(rows: list[dict], predictors: list[str], n_boot: int = 2000, seed: int = 0) -> dict:
    """``{subgroup: {predictor: {mean, lo, hi, n}}}`` of ``interaction_cos`` (combinations: the cosine of the
    predicted and true shift beyond ``additive``'s), with a bootstrap CI of the mean; 0 = no better than chance
    at the non-additive part. Only subgroups and predictors where it is defined."""
    out: dict[str, dict] = {}
    for g in ["overall"] + sorted({r["subgroup"] for r in rows}):
        for p in predictors:
            v = per_perturbation(rows, p, "interaction_cos", g)
            if not v:
                continue
            keys = sorted(v)
            reps, units = sorted({k[0] for k in keys}), sorted({k[1] for k in keys})
            m = np.full((len(reps), len(units)), np.nan)
            for (rep, u), x in v.items():
                m[reps.index(rep), units.index(u)] = x
            mean, lo, hi = paired_bootstrap(m, n_boot=n_boot, seed=seed)
            out.setdefault(g, {})[p] = {"mean": mean, "lo": lo, "hi": hi, "n": len(v)}
    return out


def interaction_markdown(block: dict) -> str:
    if not block:
        return ""
    lines = ["### The non-additive part of combinations", "",
             "`interaction_cos`: cosine of (predicted - additive) and (true - additive) shifts, mean [95% bootstrap "
             "CI] (n = combination x repeat); 0 = no better than chance.", "",
             "| subgroup | " + " | ".join(sorted({p for b in block.values() for p in b})) + " |"]
    names = sorted({p for b in block.values() for p in b})
    lines.append("|---" * (len(names) + 1) + "|")
    for g, b in block.items():
        cells = [f"{_fmt(b[p]['mean'])} [{_fmt(b[p]['lo'])}, {_fmt(b[p]['hi'])}] (n={b[p]['n']})" if p in b else ""
                 for p in names]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def _fmt(x, nd=3):
    return "n/d" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def to_markdown(summary: dict, model: str, metrics=METRICS, unit: str = "perturbations") -> str:
    lines = []
    for g, block in summary.items():
        lines += [f"### {g} ({block['n_perturbations']} {unit})", "",
                  "| predictor | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for p, ms in block["predictors"].items():
            cells = [f"{_fmt(ms[m]['mean'])} ± {_fmt(ms[m]['sd_over_repeats'])}" for m in metrics]
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
        lines += ["", f"{model} - baseline, mean [95% bootstrap CI]; * = CI excludes 0 "
                  "(energy distance, MMD: lower is better)", "",
                  "| baseline | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for p, ms in block["vs_model"].items():
            cells = []
            for m in metrics:
                c = ms[m]
                sig = c["lo"] is not None and not math.isnan(c["lo"]) and (c["lo"] > 0 or c["hi"] < 0)
                cells.append(f"{_fmt(c['diff'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}]{'*' if sig else ''}")
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plots(rows: list[dict], summary: dict, model: str, out_dir: Path, metric: str = "cos") -> list[Path]:
    """Per-perturbation model vs best baseline (``metric``) scatter, and per-subgroup bars of the paired
    differences with their CIs; PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    overall = summary["overall"]["predictors"]
    better = (lambda a, b: a < b) if metric in LOWER_IS_BETTER else (lambda a, b: a > b)
    best = None
    for p, ms in overall.items():
        if p != model and ms[metric]["mean"] is not None and (best is None or better(ms[metric]["mean"],
                                                                                   overall[best][metric]["mean"])):
            best = p
    paths = []
    a, b = per_perturbation(rows, model, metric), per_perturbation(rows, best, metric)
    keys = sorted(set(a) & set(b))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter([b[k] for k in keys], [a[k] for k in keys], s=12, alpha=0.7)
    lim = [min([a[k] for k in keys] + [b[k] for k in keys] + [0]), max([a[k] for k in keys] + [b[k] for k in keys])]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel(f"{best} ({metric})")
    ax.set_ylabel(f"{model} ({metric})")
    ax.set_title(f"per perturbation and repeat (n={len(keys)})")
    paths += _save(fig, out_dir / f"scatter_{metric}")
    groups = list(summary)
    baselines = [p for p in overall if p != model]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.2), sharey=False)
    for ax, m in zip(np.atleast_1d(axes), METRICS):
        for i, p in enumerate(baselines):
            xs = np.arange(len(groups)) + (i - len(baselines) / 2) * 0.8 / len(baselines)
            ds = [summary[g]["vs_model"][p][m] for g in groups]
            mid = [d["diff"] if d["diff"] is not None else np.nan for d in ds]
            err = [[mi - (d["lo"] if d["lo"] is not None else np.nan) for mi, d in zip(mid, ds)],
                   [(d["hi"] if d["hi"] is not None else np.nan) - mi for mi, d in zip(mid, ds)]]
            ax.errorbar(xs, mid, yerr=np.abs(err), fmt="o", ms=3, label=p)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{m}: {model} - baseline", fontsize=8)
    np.atleast_1d(axes)[0].legend(fontsize=6)
    fig.tight_layout()
    paths += _save(fig, out_dir / "paired_differences")
    return paths


def _save(fig, stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths
