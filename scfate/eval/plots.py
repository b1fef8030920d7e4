"""Plots beside an eval JSON (``plots/<eval stem>/``, PNG + PDF): predicted vs true mean shift on the top-20 DE genes,
per-subgroup bars of DA / cos / PDE beside the baselines, predicted vs true cells on the shared PCA, training curves.

Drawn from saved files only (the eval JSON, its ``.plotdata.npz``, the run folder's ``*metrics.jsonl``), so
``python -m scfate.report plots`` redraws them without the model or the data. Figures are made with matplotlib's
object API on the Agg canvas, never pyplot: no global backend is switched in the caller's process (a notebook keeps
its own) and no display is needed.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from scfate.errors import UsageError
from scfate.eval.plotdata import load_plotdata, pca_picks
from scfate.eval.summary import HEADLINE_METRICS, best_baseline
from scfate.utils.io import atomic_path

MAX_SCATTER = 16  # panels of the shift scatter: a test set of 60 would make stamps no one can read
MODEL_COLOR, BASE_COLOR, TRUE_COLOR, CTRL_COLOR = "#d95f02", "#7f7f7f", "#1b9e77", "#c7c7c7"


def plots_dir(eval_json: str | Path) -> Path:
    """``<run folder>/plots/<eval stem>/``: one ``plots/`` per run folder, a subfolder per eval JSON, so that
    several eval JSONs written into one folder (``out=``) never overwrite each other's plots."""
    p = Path(eval_json)
    return p.parent / "plots" / p.stem


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: Path, name: str) -> list[Path]:
    """PNG and PDF, each written atomically; no creation date in the PDF, so a redraw of the same data gives the
    same bytes."""
    engine = fig.get_layout_engine()
    if engine is not None:  # lay out once, not once per format (the layout is most of the drawing time)
        engine.execute(fig)
        fig.set_layout_engine("none")
    paths = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = out / f"{name}.{ext}"
        with atomic_path(path, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=120, metadata=meta)
        paths.append(path)
    return paths


def shift_scatter(ev: dict, pdata: dict, out: Path) -> list[Path]:
    """One panel per test condition (up to MAX_SCATTER, spread over the subgroups): predicted against true mean
    shift on its top-20 DE genes, the model and the baseline with the best overall cos."""
    present = {n.removeprefix("baseline:") for n in pdata["pred"] if n.startswith("baseline:")}
    best = best_baseline(ev, "cos", among=present)
    sub = dict(zip(pdata["keys"], pdata["subgroups"]))
    picks = pca_picks(pdata["keys"], sub.get, MAX_SCATTER)
    rows = pdata["keys"].index
    ncol = min(4, len(picks))
    nrow = math.ceil(len(picks) / ncol)
    fig = _figure(2.3 * ncol, 2.3 * nrow + 0.6)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.flat[len(picks):]:
        ax.set_visible(False)
    series = [("model", ev["model"], MODEL_COLOR, "o")]
    if best is not None:
        series.append((f"baseline:{best[0]}", f"best baseline ({best[0]}, by cos)", BASE_COLOR, "x"))
    for ax, key in zip(axes.flat, picks):
        true = pdata["true"][rows(key)]
        for name, label, color, marker in series:
            ax.scatter(true, pdata["pred"][name][rows(key)], s=12, c=color, marker=marker, label=label,
                       linewidths=1)
        finite = np.concatenate([true, *[pdata["pred"][s[0]][rows(key)] for s in series]])
        finite = finite[np.isfinite(finite)]
        lim = float(np.abs(finite).max()) * 1.1 if finite.size else 1.0
        ax.plot([-lim, lim], [-lim, lim], ls="--", lw=0.8, c="k")
        ax.axhline(0, lw=0.4, c="k")
        ax.axvline(0, lw=0.4, c="k")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_title(f"{key}\n{sub[key]}", fontsize=7)  # context/condition: a gene may be tested in two lines
        ax.tick_params(labelsize=6)
        ax.locator_params(nbins=4)
    axes.flat[0].set_xlabel("true shift", fontsize=7)
    axes.flat[0].set_ylabel("predicted shift", fontsize=7)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8)
    fig.suptitle(f"{ev['dataset']}: mean shift vs control on the top-20 DE genes "
                 f"({len(picks)} of {len(pdata['keys'])} test conditions)", fontsize=9)
    return _save(fig, out, "shift_scatter")


def _bar_values(evs: list[dict], metric: str, group: str) -> dict[str, list[float]]:
    """{predictor: [value per eval JSON]} of one metric and subgroup (the model under its own name)."""
    out: dict[str, list[float]] = {}
    for ev in evs:
        for name, res in [(ev["model"], ev["metrics"]), *((f"baseline:{b}", r) for b, r in ev["baselines"].items())]:
            block = res.get("overall") if group == "overall" else (res.get("by_subgroup") or {}).get(group)
            v = ((block or {}).get(metric) or {}).get("mean")
            if v is not None:
                out.setdefault(name, []).append(float(v))
    return out


def subgroup_bars(evs: list[dict], out: Path, name: str = "subgroup_bars") -> list[Path]:
    """DA / cos / PDE per subgroup for the model and every baseline; with several eval JSONs (seeds) the bar is
    their mean and the whisker their sd, the dots the runs."""
    datasets = sorted({ev["dataset"] for ev in evs})
    if len(datasets) > 1:
        raise UsageError(f"The eval JSONs are of several datasets ({datasets}): give those of one dataset (its "
                         "seeds), so that each bar is the spread of one setting.")
    groups = ["overall", *sorted({g for ev in evs for g in ev["metrics"].get("by_subgroup") or {}})]
    predictors = list(dict.fromkeys(n for ev in evs for n in [ev["model"], *(f"baseline:{b}" for b in ev["baselines"])]))
    fig = _figure(max(6.0, 1.1 * len(groups) * max(1, len(predictors)) / 3), 7.5)
    axes = fig.subplots(len(HEADLINE_METRICS), 1, squeeze=False)[:, 0]
    from matplotlib import colormaps

    # tab10 without its orange, the model's colour
    palette = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 1]
    width = 0.8 / max(1, len(predictors))
    for ax, metric in zip(axes, HEADLINE_METRICS):
        for gi, group in enumerate(groups):
            vals = _bar_values(evs, metric, group)
            for pi, pred in enumerate(predictors):
                v = vals.get(pred)
                if not v:
                    continue
                x = gi + (pi - (len(predictors) - 1) / 2) * width
                sd = statistics.stdev(v) if len(v) > 1 else None
                color = MODEL_COLOR if pred == evs[0]["model"] else palette[pi % len(palette)]
                ax.bar(x, statistics.fmean(v), width, yerr=sd, color=color, capsize=2,
                       label=pred if gi == 0 else None, edgecolor="k" if pred == evs[0]["model"] else None)
                if len(v) > 1:
                    ax.scatter([x] * len(v), v, s=5, c="k", zorder=3)
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_ylabel(metric)
        ax.axhline(0, lw=0.5, c="k")
    axes[0].legend(fontsize=7, ncol=4, loc="lower left", bbox_to_anchor=(0, 1.02))
    spread = f"mean ± sd over {len(evs)} eval JSONs" if len(evs) > 1 else "one run"
    fig.suptitle(f"{datasets[0]}: per subgroup ({spread}; higher is better)", fontsize=9)
    return _save(fig, out, name)


def pca_cells(ev: dict, pdata: dict, out: Path) -> list[Path]:
    """Predicted, true and control cells of a few test conditions on the PCA the distribution metrics use (fit
    on training cells), one panel each, same axes."""
    keys = sorted(pdata["cells"])
    sub = dict(zip(pdata["keys"], pdata["subgroups"]))
    fig = _figure(3.2 * len(keys), 3.4)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    allpts = np.concatenate([c[p] for c in pdata["cells"].values() for p in ("pred", "true", "control")])
    lo, hi = allpts.min(0), allpts.max(0)
    pad = 0.05 * (hi - lo)
    for ax, key in zip(axes, keys):
        cells = pdata["cells"][key]
        for part, color, label in (("control", CTRL_COLOR, "control"), ("true", TRUE_COLOR, "true"),
                                   ("pred", MODEL_COLOR, f"predicted ({ev['model']})")):
            ax.scatter(cells[part][:, 0], cells[part][:, 1], s=6, c=color, alpha=0.7, label=label, linewidths=0)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(f"{key}\n{sub.get(key, '')}", fontsize=8)
        ax.tick_params(labelsize=6)
    var = [f" ({100 * v:.0f}%)" if np.isfinite(v) else "" for v in pdata["pca_var"]]
    axes[0].set_xlabel(f"PC1{var[0]}", fontsize=8)
    axes[0].set_ylabel(f"PC2{var[1]}", fontsize=8)
    axes[0].legend(fontsize=7, markerscale=3)
    fig.suptitle(f"{ev['dataset']}: predicted vs true cells on the shared PCA (training cells)", fontsize=9)
    return _save(fig, out, "pca_cells")


def metrics_files(eval_json: Path, ev: dict) -> list[Path]:
    """The ``*metrics.jsonl`` of the eval JSON's folder, else of its checkpoint's (evaluate.py ckpt=RUN)."""
    ckpt = (ev.get("provenance") or {}).get("checkpoint")
    for folder in [eval_json.parent, *([Path(ckpt).parent] if ckpt else [])]:
        found = sorted(folder.glob("*metrics.jsonl"))
        if found:
            return found
    return []


def training_curves(files: list[Path], out: Path) -> list[Path]:
    """Every per-epoch metric of the run's metrics jsonl files, one panel per metric."""
    series: dict[str, tuple[list, list]] = {}
    for f in files:
        prefix = f.name.removesuffix("metrics.jsonl").rstrip("_")
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                    xs, ys = series.setdefault(f"{prefix} {k}".strip(), ([], []))
                    xs.append(row.get("epoch", len(xs)) + 1)  # 1-based, as the epoch lines of the log
                    ys.append(v)
    if not series:
        return []
    ncol = min(3, len(series))
    nrow = math.ceil(len(series) / ncol)
    fig = _figure(3.3 * ncol, 2.4 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.flat[len(series):]:
        ax.set_visible(False)
    for ax, (name, (xs, ys)) in zip(axes.flat, sorted(series.items())):
        ax.plot(xs, ys, marker="o", ms=3, c=MODEL_COLOR)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=6)
    fig.suptitle("training curves (" + ", ".join(f.name for f in files) + ")", fontsize=9)
    return _save(fig, out, "training_curves")


def plot_eval(eval_json: str | Path, out: str | Path | None = None) -> dict:
    """Every plot of one eval JSON into ``out`` (default :func:`plots_dir`). Returns ``{"dir",
    "written": [paths], "skipped": {plot: why}}``: a plot whose data the run did not keep is skipped, not faked."""
    from scfate.eval.results import read_eval_json

    eval_json = Path(eval_json)
    ev = read_eval_json(eval_json)
    out = Path(out) if out else plots_dir(eval_json)
    out.mkdir(parents=True, exist_ok=True)
    pdata = load_plotdata(eval_json)
    written, skipped = subgroup_bars([ev], out), {}
    no_data = f"no {eval_json.stem}.plotdata.npz beside the eval JSON (written by the runner since this version)"
    if pdata is None or not pdata["keys"]:
        skipped["shift_scatter"] = no_data if pdata is None else "no scored condition"
    else:
        written += shift_scatter(ev, pdata, out)
    if pdata is None or not pdata["cells"]:
        skipped["pca_cells"] = no_data if pdata is None else "no predicted cells kept"
    else:
        written += pca_cells(ev, pdata, out)
    files = metrics_files(eval_json, ev)
    curves = training_curves(files, out) if files else []
    if not curves:
        skipped["training_curves"] = "no *metrics.jsonl in the run folder (a baseline or a backbone's oracle check)"
    return {"dir": out, "written": written + curves, "skipped": skipped}
