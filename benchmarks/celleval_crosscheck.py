"""Cross-check scFATE's ``pearson_delta`` and ``da`` against Arc Institute's cell-eval on the same predictions.

    python benchmarks/celleval_crosscheck.py            # from the repository root

(1) project venv: prepare norman_devel (seed 1, simulation split); for the additive and train_mean baselines,
predicted cells = the context's control cells shifted by delta_hat (Predictor interface), clipped at 0 (cell-eval
refuses negative log1p); write real.h5ad (true test + control cells) and pred.h5ad (predicted + the same control
cells); score them with scfate.eval.metrics. (2) cell-eval venv, subprocess: cell_eval.MetricsEvaluator (profile
full, its own pdex DE) on the same files. (3) compare; write benchmarks/results/celleval_crosscheck.{json,md}.
cell-eval is no project dependency; install it into its own venv (or pass --celleval-python / $CELLEVAL_PYTHON):
    python3 -m venv benchmarks/.venv-celleval && benchmarks/.venv-celleval/bin/pip install cell-eval==0.8.2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
CELLEVAL_VERSION = "0.8.2"
INSTALL = ("python3 -m venv benchmarks/.venv-celleval && "
           f"benchmarks/.venv-celleval/bin/pip install cell-eval=={CELLEVAL_VERSION}")
PERT_COL, CONTROL = "condition", "control"
FDR = 0.05  # cell-eval's default significance threshold for its DE metrics

DEFINITIONS = """## Definitions compared

| | scFATE (`scfate/eval/metrics.py`) | cell-eval {version} |
| --- | --- | --- |
| pearson delta | `pearson_delta` = Pearson(mean(pred_p) - c, mean(true_p) - c) over all genes; c = mean of the context's real control cells, for both | `pearson_delta` = `scipy.stats.pearsonr(mean(pred_p) - mean(pred_ctrl), mean(real_p) - mean(real_ctrl))` over all genes; each file's own control cells |
| direction | `da` = mean over D of [sign(delta_hat_g) == sign(delta_g)], D = top-20 genes by \\|t\\| (scanpy `rank_genes_groups`, t-test vs the context's controls, `rankby_abs`), whether significant or not | `de_direction_match` = mean over S of [sign(lfc_pred_g) == sign(lfc_real_g)], S = genes with BH-FDR < {fdr} in cell-eval's own DE of the real cells (pdex: Mann-Whitney U vs control, BH over the genes of each perturbation); lfc = log2(expm1(mean log1p X_p) / expm1(mean log1p X_ctrl)), computed separately in real and pred |

* **pearson_delta: same definition** (arithmetic mean of log1p values, Pearson over all genes). They would differ
  only if the predicted file held other control cells than the real one (cell-eval subtracts the predicted controls'
  mean from the prediction, scFATE always the real one); here both files hold the same control cells. cell-eval's
  pseudobulk is float32 (polars mean of a float32 matrix) and `pearsonr` on float32 returns float32, so differences of
  a few 1e-7 (float32 eps = 1.2e-7) are rounding; scFATE accumulates in float64.
* **Sign per gene: same definition.** pdex's default pseudobulk is expm1(mean log1p X), increasing in the mean, so
  sign(lfc) = sign(delta), 0 when the means are equal (0/0 -> lfc 0): a three-valued sign in both tools, a 0 where
  the truth moves counts as wrong. Check: `da_on_celleval_genes` (scFATE's `direction_agreement` on cell-eval's set
  S) must equal `de_direction_match`.
* **Gene set: different.** scFATE always scores 20 genes ranked by |t| (GEARS `frac_correct_direction_20`), significant
  or not; cell-eval every gene significant in a rank test at FDR {fdr}: from 0 (metric missing, left out of its mean)
  to all genes. So `da` and `de_direction_match` differ by design; `n_sig` and `top-20 in sig` show the overlap.
* **Clipping.** cell-eval rejects negative log1p values; control cells shifted by a negative delta_hat go below 0, so
  predicted cells are clipped at 0 and both tools score the clipped cells (clipping can turn a negative change into 0,
  never flip a sign). `pearson_delta_unclipped` is what `evaluate.py` reports; cell-eval's `pearson_delta` is also
  run directly on the unclipped cells (its input check bypassed) for that comparison.
"""


# ---------------------------------------------------------------- cell-eval side (runs in cell-eval's venv)
def worker(work: Path) -> None:
    from importlib.metadata import version

    import anndata as ad
    from cell_eval import MetricsEvaluator, PerturbationAnndataPair, metrics_registry

    for d in sorted(p.parent for p in work.glob("*/*/real.h5ad")):
        ev = MetricsEvaluator(adata_pred=str(d / "pred.h5ad"), adata_real=str(d / "real.h5ad"), control_pert=CONTROL,
                              pert_col=PERT_COL, outdir=str(d / "celleval"))
        results, _ = ev.compute(profile="full", write_csv=True, break_on_error=True)
        pair = PerturbationAnndataPair(real=ad.read_h5ad(d / "real.h5ad"), pred=ad.read_h5ad(d / "pred_unclipped.h5ad"),
                                       pert_col=PERT_COL, control_pert=CONTROL)
        out = {"cell_eval_version": version("cell-eval"), "per_perturbation": results.to_dicts(),
               "pearson_delta_unclipped": metrics_registry.compute("pearson_delta", pair)}
        (d / "celleval.json").write_text(json.dumps(out))


def find_celleval_python(arg: str | None) -> str:
    candidates = [arg, os.environ.get("CELLEVAL_PYTHON"), str(BENCH / ".venv-celleval" / "bin" / "python"),
                  sys.executable]
    for py in filter(None, candidates):
        if Path(py).exists() and subprocess.run([py, "-c", "import cell_eval"], capture_output=True).returncode == 0:
            return py
    sys.exit(f"cell-eval is not installed. It is only needed by this script; install it with\n    {INSTALL}\n"
             "(from the repository root) or pass --celleval-python / set CELLEVAL_PYTHON.")


# ---------------------------------------------------------------- scFATE side (project venv)
def load_data(shared_data: str | None):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from scfate.data.prepare import prepare
    from scfate.pipelines.config import CONF_DIR

    overrides = ["dataset=norman_devel", "seed=1", f"paths.root_dir={ROOT}"]
    if shared_data:
        overrides.append(f"paths.shared_data_dir={shared_data}")
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("prepare", overrides=overrides)
    return prepare(instantiate(cfg.data), cfg.paths.data_dir)


def write_inputs(ed, baseline: str, work: Path) -> dict:
    """Write real/pred h5ad per context for one baseline; return scFATE's metrics on exactly those cells."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from scfate.eval import metrics as M
    from scfate.prior.baselines import NotPredictable, make_baseline

    pred_model = make_baseline(baseline)
    pred_model.fit(ed.pseudobulk())
    ours = {}
    for ctx in ed.contexts:
        groups = [g for g in ed.groups["test"] if g.context == ctx]
        ctrl = ed.reader(ed.controls[ctx]).astype(np.float32)
        real_x, pred_x, unclip_x, labels = [ctrl], [ctrl], [ctrl], [CONTROL] * len(ctrl)
        for g in groups:
            key = (g.context, g.condition)
            try:
                pred = pred_model.predict(ed.conditions[key], ctrl.astype(np.float64))
            except NotPredictable:
                continue
            cells = pred.cells.astype(np.float32)
            real_x.append(ed.reader(g.cells).astype(np.float32))
            pred_x.append(np.maximum(cells, 0))
            unclip_x.append(cells)
            labels += [g.condition] * len(ctrl)
            vals, _ = M.mean_metrics(ed.ctrl_mean[ctx], ed.means[key], pred_x[-1].mean(0, dtype=np.float64), *ed.de[key])
            unclipped, _ = M.mean_metrics(ed.ctrl_mean[ctx], ed.means[key], pred.mean, *ed.de[key])
            ours[key] = {"pearson_delta": vals.get("pearson_delta"), "da": vals.get("da"),
                         "pearson_delta_unclipped": unclipped.get("pearson_delta"),
                         "top20": [ed.genes[i] for i in ed.de[key][0]],
                         "clipped_fraction": float((cells < 0).mean()), "delta": ed.means[key] - ed.ctrl_mean[ctx],
                         "delta_hat": pred_x[-1].mean(0, dtype=np.float64) - ed.ctrl_mean[ctx]}
        real_labels = [CONTROL] * len(ctrl) + [g.condition for g in groups if (ctx, g.condition) in ours
                                               for _ in g.cells]
        d = work / baseline / ctx
        d.mkdir(parents=True, exist_ok=True)
        var = pd.DataFrame(index=ed.genes)
        for name, xs, labs in (("real", real_x, real_labels), ("pred", pred_x, labels), ("pred_unclipped", unclip_x, labels)):
            obs = pd.DataFrame({PERT_COL: pd.Categorical(labs)}, index=[f"c{i}" for i in range(len(labs))])
            ad.AnnData(X=np.concatenate(xs), obs=obs, var=var).write_h5ad(d / f"{name}.h5ad")
    return ours


def compare(ours: dict, work: Path, baseline: str, genes: list[str]) -> tuple[list[dict], str]:
    import pandas as pd

    from scfate.eval.metrics import UndefinedMetric, direction_agreement

    rows, version = [], None
    pos = {g: i for i, g in enumerate(genes)}
    for ctx in sorted({c for c, _ in ours}):
        d = work / baseline / ctx
        ce = json.loads((d / "celleval.json").read_text())
        version = ce["cell_eval_version"]
        ce_rows = {r["perturbation"]: r for r in ce["per_perturbation"]}
        de = pd.read_csv(d / "celleval" / "real_de.csv")
        sig = de[de["fdr"] < FDR].groupby("target")["feature"].apply(list).to_dict()
        for (_, cond), o in sorted((k, v) for k, v in ours.items() if k[0] == ctx):
            r, s = ce_rows.get(cond, {}), sig.get(cond, [])
            try:
                da_s = direction_agreement(o["delta_hat"], o["delta"], [pos[g] for g in s])
            except UndefinedMetric:
                da_s = None
            rows.append({"context": ctx, "perturbation": cond, "pearson_delta": o["pearson_delta"],
                         "celleval_pearson_delta": r.get("pearson_delta"),
                         "pearson_delta_unclipped": o["pearson_delta_unclipped"],
                         "celleval_pearson_delta_unclipped": ce["pearson_delta_unclipped"].get(cond),
                         "da": o["da"], "celleval_de_direction_match": r.get("de_direction_match"),
                         "da_on_celleval_genes": da_s, "n_sig": len(s),
                         "top20_in_sig": len(set(o["top20"]) & set(s)), "clipped_fraction": o["clipped_fraction"],
                         "celleval_de_sig_genes_recall": r.get("de_sig_genes_recall")})
    for r in rows:  # NaN (e.g. no significant gene) -> None, so the JSON stays standard
        for k, v in r.items():
            if isinstance(v, float) and not math.isfinite(v):
                r[k] = None
    return rows, version


PAIRS = {"pearson_delta": ("pearson_delta", "celleval_pearson_delta"),
         "pearson_delta_unclipped": ("pearson_delta_unclipped", "celleval_pearson_delta_unclipped"),
         "da_vs_de_direction_match": ("da", "celleval_de_direction_match"),
         "da_on_celleval_genes_vs_de_direction_match": ("da_on_celleval_genes", "celleval_de_direction_match")}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for name, (a, b) in PAIRS.items():
        diffs = [abs(r[a] - r[b]) for r in rows if r[a] is not None and r[b] is not None]
        out[name] = {"n": len(diffs), "n_missing": len(rows) - len(diffs),
                     "max_abs_diff": max(diffs) if diffs else None,
                     "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None}
    return out


def markdown(report: dict) -> str:
    f = lambda v, p=4: "—" if v is None else (f"{v:.2e}" if p == "e" else f"{v:.{p}f}")  # noqa: E731
    lines = [f"# scFATE vs cell-eval {report['cell_eval_version']}: pearson_delta and DE direction\n",
             f"Dataset `{report['dataset']}` (seed {report['seed']}, {report['split']} split), "
             f"{report['n_test_conditions']} test conditions. Written by `python benchmarks/celleval_crosscheck.py`.\n",
             "## Absolute differences per perturbation\n", "| baseline | compared | n | missing | max | mean |",
             "| --- | --- | --- | --- | --- | --- |"]
    for b, res in report["baselines"].items():
        for name, s in res["summary"].items():
            lines.append(f"| {b} | {name} | {s['n']} | {s['n_missing']} | {f(s['max_abs_diff'], 'e')} | "
                         f"{f(s['mean_abs_diff'], 'e')} |")
    lines += ["", "## Per perturbation\n", "| baseline | perturbation | pearson_delta | cell-eval | da (top-20 t) | "
              "de_direction_match | da on cell-eval genes | n_sig | top-20 in sig | clipped |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b, res in report["baselines"].items():
        for r in res["per_perturbation"]:
            lines.append(f"| {b} | {r['perturbation']} | {f(r['pearson_delta'])} | {f(r['celleval_pearson_delta'])} | "
                         f"{f(r['da'], 2)} | {f(r['celleval_de_direction_match'], 3)} | "
                         f"{f(r['da_on_celleval_genes'], 3)} | {r['n_sig']} | {r['top20_in_sig']} | "
                         f"{r['clipped_fraction']:.1%} |")
    return "\n".join(lines) + "\n\n" + DEFINITIONS.format(version=report["cell_eval_version"], fdr=FDR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baselines", nargs="+", default=["additive", "train_mean"])
    ap.add_argument("--celleval-python", help="interpreter with cell-eval (default: benchmarks/.venv-celleval)")
    ap.add_argument("--shared-data", help="folder with norman19_mcfaline23_devel.h5ad (default ../shared/data)")
    ap.add_argument("--work", default=str(BENCH / ".celleval_work"), help="where the h5ad files and DE tables go")
    ap.add_argument("--out", default=str(BENCH / "results"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(Path(args.worker))
    py = find_celleval_python(args.celleval_python)  # fail early, before preparing anything
    sys.path.insert(0, str(ROOT))
    from scfate.eval.runner import EvalData
    from scfate.utils.io import atomic_write_json, atomic_write_text

    data = load_data(args.shared_data)
    ed = EvalData(data, seed=1)
    work = Path(args.work)
    ours = {b: write_inputs(ed, b, work) for b in args.baselines}
    print(f"running cell-eval ({py}) on {work} ...", flush=True)
    subprocess.run([py, str(Path(__file__).resolve()), "--worker", str(work)], check=True,
                   env={**os.environ, "TQDM_DISABLE": "1"})
    report = {"dataset": data.spec.name, "seed": data.spec.split.seed, "split": data.spec.split.mode,
              "n_test_conditions": len(ed.groups["test"]), "fdr_threshold": FDR, "baselines": {}}
    for b in args.baselines:
        rows, report["cell_eval_version"] = compare(ours[b], work, b, ed.genes)
        report["baselines"][b] = {"summary": summarise(rows), "per_perturbation": rows}
    out = Path(args.out)
    atomic_write_json(out / "celleval_crosscheck.json", report)
    atomic_write_text(out / "celleval_crosscheck.md", markdown(report))
    for b, res in report["baselines"].items():
        for name, s in res["summary"].items():
            print(f"{b:12s} {name:45s} max|diff| {s['max_abs_diff']}  mean|diff| {s['mean_abs_diff']}  (n={s['n']})")
    print(f"written {out / 'celleval_crosscheck.json'} and {out / 'celleval_crosscheck.md'}")


if __name__ == "__main__":
    main()
