"""``python evaluate.py router=default teachers=GLOB dataset=NAME``: the router ensemble over teachers for unseen drugs
(DESIGN §2.6), scored with every metric beside every single teacher, the best single teacher, the uniform ensemble
and the baselines, in one eval JSON.

1. Teachers (flow heads) from a glob / list / hf:// refs; they must share dataset, genes and split.
2. Each teacher is scored on the validation drugs (never trained on); a drug's score is the mean over its conditions.
3. Each test drug is compared with every validation drug under each similarity metric; `scfate.prior.router` turns
   the neighbours' scores into weights over teachers, per (routing metric, similarity) and per routing metric
   combining all similarities (``multi``).
4. All predictors are scored in one pass over the test conditions, so every one sees the same control and true
   cells, and each teacher samples each condition once (the ensembles mix those samples).
"""

from __future__ import annotations

import glob
import logging
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from scfate.data.errors import DataError
from scfate.eval import metrics as M
from scfate.eval.baselines import Condition, NotPredictable, Prediction, Predictor
from scfate.prior import router as R

log = logging.getLogger("scfate")
GLOB_CHARS = set("*?[")


@dataclass
class Teacher:
    name: str
    ref: str
    path: Path
    ckpt: dict


def expand_teachers(teachers) -> list[str]:
    """``teachers`` (a string or a list; local globs expanded here, hf:// refs kept) -> refs, in order, deduplicated."""
    if teachers is None or (not isinstance(teachers, str) and len(teachers) == 0):
        raise DataError("router=... needs teachers=GLOB_OR_LIST, e.g. teachers='artifacts/sciplex3_path_b/teachers/*/s*' "
                        "(run folders or flow_best.pt files of flow heads trained on one dataset and split).")
    items = [teachers] if isinstance(teachers, str) else [str(t) for t in teachers]
    refs: list[str] = []
    for item in items:
        if not item.startswith("hf://") and GLOB_CHARS & set(item):
            hits = sorted(glob.glob(os.path.expanduser(item)))
            if not hits:
                raise DataError(f"teachers={item!r} matches nothing (relative to {Path.cwd()}). Give a glob that "
                                "matches flow-head run folders or flow_best.pt files, e.g. 'artifacts/sciplex3_path_b/"
                                "teachers/*/s*'.")
            refs += hits
        else:
            refs.append(item)
    return list(dict.fromkeys(refs))


def teacher_names(paths: list[Path]) -> list[str]:
    """Short unique names: each run folder relative to the folders' common parent (e.g. 'priorkrr/s1')."""
    dirs = [p.resolve().parent for p in paths]
    if len(dirs) == 1:
        return [dirs[0].name]
    common = Path(os.path.commonpath(dirs))
    names = [str(d.relative_to(common)) for d in dirs]
    return names if len(set(names)) == len(names) and "." not in names else [str(p) for p in paths]


def _differ(key: str, a, b) -> str | None:
    if a == b:
        return None
    if key == "split":
        parts = [f"{s}: only in the first {sorted(set(a.get(s, [])) - set(b.get(s, [])))[:5]}, only in the other "
                 f"{sorted(set(b.get(s, [])) - set(a.get(s, [])))[:5]}" for s in ("train", "val", "test")
                 if a.get(s) != b.get(s)]
        return "; ".join(parts) or f"mode/seed/params {a.get('mode')}/{a.get('seed')} vs {b.get('mode')}/{b.get('seed')}"
    if isinstance(a, list):
        return f"{len(a)} vs {len(b)} entries; only in the first {sorted(set(a) - set(b))[:5]}"
    return f"{a!r} vs {b!r}"


def load_teachers(teachers) -> list[Teacher]:
    """Resolve and read the teachers' checkpoints; raise naming the first pair that was trained differently."""
    from scfate.hub import resolve_checkpoint
    from scfate.models.export import read_checkpoint
    from scfate.models.flow_export import FORMAT

    refs = expand_teachers(teachers)
    by_path: dict[Path, str] = {}  # resolved checkpoint -> first ref naming it (a folder and its file are one)
    for r in refs:
        by_path.setdefault(resolve_checkpoint(r, filename="flow_best.pt").resolve(), r)
    if len(by_path) < 2:
        raise DataError(f"A router needs at least two teachers; teachers={teachers!r} gave {len(by_path)}: "
                        f"{[str(p) for p in by_path]}.")
    paths = list(by_path)
    out = [Teacher(n, by_path[p], p, read_checkpoint(p, FORMAT, "Flow-head", "Give flow_best.pt files or their run "
                                                     "folders.")) for n, p in zip(teacher_names(paths), paths)]
    first = out[0]
    for t in out[1:]:
        for key in ("dataset", "perturbation_type", "data_sha256", "genes", "split", "perturbations", "contexts"):
            why = _differ(key, first.ckpt.get(key), t.ckpt.get(key))
            if why:
                raise DataError(f"Teachers {first.name} ({first.path}) and {t.name} ({t.path}) differ in {key} "
                                f"({why}). A router mixes teachers trained on one dataset, gene set and split: pass "
                                "only those (e.g. train them with one data.split.seed).")
    if first.ckpt["perturbation_type"] != "drug":
        raise DataError(f"The router routes unseen drugs by molecular similarity; teachers {first.name} ... were "
                        f"trained on {first.ckpt['dataset']!r}, a {first.ckpt['perturbation_type']} dataset.")
    return out


class Reuse(Predictor):
    """A predictor that returns its last prediction when called again for the same condition and the same control
    cells (the very array): the ensembles then mix the teacher's own sample, with no second sampling."""

    def __init__(self, inner: Predictor):
        self.inner, self.name, self._last = inner, inner.name, None

    def fit(self, pb):
        super().fit(pb)
        self.inner.fit(pb)

    def predict(self, cond: Condition, ctrl_cells: np.ndarray) -> Prediction:
        key = (cond.context, cond.condition)
        if self._last is None or self._last[0] != key or self._last[1] is not ctrl_cells:
            self._last = (key, ctrl_cells, self.inner.predict(cond, ctrl_cells))
        return self._last[2]


class Mixture(Predictor):
    """Weighted mixture of teachers; weights per drug (dose-independent). Cells are drawn with a seed fixed per
    condition, the same for every mixture, so two mixtures with equal weights predict the same cells."""

    def __init__(self, name: str, models: list[Reuse], weights: dict[str, np.ndarray], seed: int):
        self.name, self.models, self.weights, self.seed = name, models, weights, seed

    def predict(self, cond, ctrl_cells):
        w = self.weights.get(cond.perturbation)
        if w is None:
            raise NotPredictable(f"no routing weights for drug {cond.perturbation!r}")
        use = np.flatnonzero(w > 0)
        preds = [self.models[i].predict(cond, ctrl_cells) for i in use]
        rng = np.random.default_rng([self.seed, zlib.crc32(f"{cond.context}/{cond.condition}".encode())])
        mean, cells = R.mixture(np.stack([p.mean for p in preds]), [p.cells for p in preds], w[use] / w[use].sum(),
                                len(ctrl_cells), rng)
        return Prediction(mean, cells, [n for p in preds for n in p.notes])


def drug_matrix(scores: dict[str, dict], models: list[str], drugs: list[str], metric: str) -> np.ndarray:
    """[M, D]: each model's mean of ``metric`` over each drug's conditions (doses, contexts); NaN if never defined."""
    out = np.full((len(models), len(drugs)), np.nan)
    col = {d: j for j, d in enumerate(drugs)}
    for i, m in enumerate(models):
        per: dict[str, list[float]] = {}
        for e in scores[m]["per_perturbation"].values():
            if metric in e["metrics"] and e["perturbation"] in col:
                per.setdefault(e["perturbation"], []).append(e["metrics"][metric])
        for d, vals in per.items():
            out[i, col[d]] = float(np.mean(vals))
    return out


def similarity_matrices(names: list[str], data, rows: list[str], cols: list[str], overrides: dict
                        ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Similarity [len(rows), len(cols)] of drugs under each metric (NaN where a drug has no representation), and
    the drugs whose SMILES RDKit cannot parse (name -> SMILES). SMILES: the dataset's, replaced by ``overrides``."""
    units = list(data.features.units)
    unknown = sorted(set(overrides) - set(units))
    if unknown:
        raise DataError(f"router.smiles names drugs not in the dataset: {unknown}. Drugs: {units}.")
    smiles = {u: overrides.get(u, data.features.resolved.get(u)) for u in units}
    pos = {u: i for i, u in enumerate(units)}
    ri, ci = [pos[d] for d in rows], [pos[d] for d in cols]
    out, bad, reps = {}, {}, {}
    for name in names:
        kind, kernel = R.SIMILARITIES[name]
        if kind not in reps:
            if kind == "features":
                X = np.asarray(data.features.matrix, np.float64)
                reps[kind] = (X - X.mean(0), np.ones(len(units), bool))  # centred: cosine about the average drug
            else:
                reps[kind] = R.representation(kind, [smiles[u] for u in units])
                bad.update({u: smiles[u] for u, ok in zip(units, reps[kind][1]) if not ok})
        X, ok = reps[kind]
        out[name] = R.kernel_matrix(kernel, X[ri], X[ci], ok[ri], ok[ci])
    return out, bad


def _check_router_cfg(rc) -> tuple[list[str], list[str], int, dict[str, float]]:
    sims, metrics = [str(s) for s in rc.similarities], [str(m) for m in rc.routing_metrics]
    bad_s = [s for s in sims if s not in R.SIMILARITIES]
    if bad_s or not sims:
        raise DataError(f"router.similarities {bad_s or sims} not known; valid: {sorted(R.SIMILARITIES)}.")
    bad_m = [m for m in metrics if m not in M.ALL_METRICS]
    if bad_m or not metrics:
        raise DataError(f"router.routing_metrics {bad_m or metrics} not metrics; valid: {list(M.ALL_METRICS)}.")
    if int(rc.top_k) < 1:
        raise DataError(f"router.top_k={rc.top_k} must be >= 1 (nearest validation drugs per test drug).")
    t = rc.temperature
    temps = ({m: float(t.get(m, t.get("default", 0.05))) for m in metrics} if isinstance(t, (dict, DictConfig))
             else {m: float(t) for m in metrics})
    if any(not v > 0 for v in temps.values()):
        raise DataError(f"router.temperature={OmegaConf.to_container(t) if isinstance(t, DictConfig) else t} must be "
                        "> 0 (small values approach argmax).")
    return sims, metrics, int(rc.top_k), temps


def build_routing(val: dict[str, np.ndarray], sims: dict[str, np.ndarray], metrics, top_k, temps, models, test_drugs,
                  val_drugs, bad_smiles) -> tuple[dict[str, np.ndarray], dict]:
    """Every router's weights ([M, T] per variant key) and what the JSON records about them."""
    weights, record = {}, {"weights": {}, "scores": {}, "neighbours": {}, "fallbacks": []}
    for m in metrics:
        vm = R.orient(m, val[m])
        singles = {s: R.route(S, vm, top_k, temps[m]) for s, S in sims.items()}
        multi, n_used = R.route_multi(list(singles.values()), temps[m])
        for key, r in [*((f"metric_{m}.{s}", r) for s, r in singles.items()), (f"metric_{m}.multi", multi)]:
            weights[key] = r.weights
            record["weights"][key] = {d: dict(zip(models, map(float, r.weights[:, t]))) for t, d in enumerate(test_drugs)}
            record["scores"][key] = {d: dict(zip(models, [None if not np.isfinite(x) else float(x)
                                                         for x in R.orient(m, r.scores[:, t])]))
                                     for t, d in enumerate(test_drugs)}
            for t in np.flatnonzero(r.fallback):
                record["fallbacks"].append({"variant": key, "drug": test_drugs[t], "action": (
                    f"uniform weights over the {len(models)} teachers: no validation neighbour with a score"
                    + (" (its SMILES does not parse)" if test_drugs[t] in bad_smiles else ""))})
        for t, d in enumerate(test_drugs):
            if 0 < n_used[t] < len(sims):
                left = [s for s, r in singles.items() if np.isfinite(r.scores[:, t]).any()]
                record["fallbacks"].append({"variant": f"metric_{m}.multi", "drug": d,
                                            "action": f"multi-metric router used the remaining similarity metrics {left}"})
        if m == metrics[0]:
            record["neighbours"] = {s: {d: [[val_drugs[j], x] for j, x in r.neighbours[t]]
                                        for t, d in enumerate(test_drugs)} for s, r in singles.items()}
    return weights, record


def best_single(val: np.ndarray, names: list[str]) -> str:
    """The teacher with the best mean validation score over drugs (val [M, V], oriented; NaN ignored; first on ties)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a teacher with no defined value: -inf below
        mean = np.nanmean(val, axis=1)
    return names[int(np.argmax(np.where(np.isfinite(mean), mean, -np.inf)))]


def _mean(res: dict, metric: str):
    return (res["overall"].get(metric) or {}).get("mean")


def _beats(a, b, sign: float) -> bool | None:
    return None if a is None or b is None else bool(sign * a > sign * b)


def compare(variants: dict, singles: dict, metrics, best: dict[str, str]) -> dict:
    """Per routing metric: does the multi-metric router beat the best single teacher and the uniform ensemble on it?"""
    out = {}
    for m in metrics:
        sign = -1.0 if m in R.LOWER_IS_BETTER else 1.0
        multi, bs, uni = _mean(variants[f"metric_{m}.multi"], m), _mean(singles[best[m]], m), _mean(variants["uniform"], m)
        out[m] = {"multi": multi, "best_single": bs, "best_single_model": best[m], "uniform": uni,
                  "beats_best_single": _beats(multi, bs, sign), "beats_uniform": _beats(multi, uni, sign)}
    return out


def print_router_table(ev: dict, cols=("da", "cos", "pde", "pearson_delta")) -> None:
    from rich.console import Console
    from rich.table import Table

    r = ev["router"]
    table = Table(title=f"router ensemble | {ev['dataset']} | {len(r['teachers'])} teachers | "
                        f"{len(r['test_drugs'])} unseen test drugs, {len(r['val_drugs'])} validation drugs")
    for c in ("predictor", *cols):
        table.add_column(c, justify="left" if c == "predictor" else "right")
    groups = [("", ev["variants"]), ("teacher:", ev["single_models"]), ("baseline:", ev["baselines"])]
    for prefix, rows in groups:
        for i, (name, res) in enumerate(rows.items()):
            label = f"best_single ({r['best_single'][r['config']['routing_metrics'][0]]})" if name == "best_single" else name
            table.add_row(prefix + label, *[("n/d" if _mean(res, c) is None else f"{_mean(res, c):.3f}") for c in cols],
                          end_section=i == len(rows) - 1)
    console = Console(width=max(120, Console().width))
    console.print(table)
    for m, c in r["comparison"].items():
        verdict = lambda b: "n/d" if b is None else ("beats" if b else "does NOT beat")  # noqa: E731
        fmt = lambda x: "n/d" if x is None else f"{x:.3f}"  # noqa: E731
        console.print(f"metric_{m}.multi ({m} {fmt(c['multi'])}) {verdict(c['beats_best_single'])} the best single "
                      f"teacher {c['best_single_model']} ({fmt(c['best_single'])}) and {verdict(c['beats_uniform'])} "
                      f"the uniform ensemble ({fmt(c['uniform'])}) on the unseen test drugs.")
    for f in r["fallbacks"]:
        console.print(f"fallback: {f['variant']} for {f['drug']}: {f['action']}")


def run_router(cfg: DictConfig) -> dict:
    import torch

    from scfate.cli import instantiate_spec, output_dir
    from scfate.data.prepare import prepare
    from scfate.data.schema import check_same_genes
    from scfate.eval.baselines import make_baseline
    from scfate.eval.results import build_eval_json, write_eval_json
    from scfate.eval.runner import EvalData, score_many
    from scfate.hub.evaluate import check_split
    from scfate.models.flow_export import load_flow
    from scfate.pipeline_flow import FlowPredictor
    from scfate.utils.io import sha256_file

    other = [k for k in ("ckpt", "baseline", "predictions") if cfg.get(k) is not None]
    if other:
        raise DataError(f"router=... evaluates the ensemble of teachers=...; drop {other} (one evaluation per run).")
    sim_names, metrics, top_k, temps = _check_router_cfg(cfg.router)
    raw = cfg.get("teachers")
    teachers = load_teachers(OmegaConf.to_container(raw) if OmegaConf.is_config(raw) else raw)
    ck = teachers[0].ckpt
    if ck["dataset"] != cfg.data.name:
        raise DataError(f"The teachers were trained on {ck['dataset']}: run with dataset={ck['dataset']} "
                        f"(got dataset={cfg.data.name}).")
    data = prepare(instantiate_spec(cfg), cfg.paths.data_dir)
    check_same_genes(list(ck["genes"]), list(data.adata.var_names), f"The prepared {cfg.data.name} data",
                     "The teachers were trained on other genes: prepare the data with their settings.")
    check_split(ck["split"], data.split.to_dict(), teachers[0].path)
    seed, n_cells, names = int(cfg.seed), int(cfg.n_cells), [t.name for t in teachers]
    models = []
    for t in teachers:
        head, ckpt = load_flow(t.path)
        n_steps = int(cfg.n_steps) if cfg.get("n_steps") is not None else int(ckpt["n_steps"])
        units = {u: i for i, u in enumerate(ckpt["units"])}
        models.append(FlowPredictor(head, list(ckpt["perturbations"]), list(ckpt["contexts"]), units, t.name, n_steps))

    # validation drugs: every teacher's score per drug, the evidence the routers weigh
    ed_val = EvalData(data, n_cells=n_cells, seed=seed, score_set="val")
    for mdl in models:
        mdl.fit(ed_val.pseudobulk())
    torch.manual_seed(seed)
    val_scores = score_many(ed_val, dict(zip(names, models)))
    val_drugs = sorted({e["perturbation"] for s in val_scores.values() for e in s["per_perturbation"].values()})
    if not val_drugs:
        raise DataError(f"The split has no validation drugs with cells ({data.split_path}); the router needs them: "
                        "raise data.split.val_fraction.")
    val = {m: drug_matrix(val_scores, names, val_drugs, m) for m in metrics}
    best = {m: best_single(R.orient(m, val[m]), names) for m in metrics}

    # test drugs: similarities to the validation drugs and the weights of every router
    ed = EvalData(data, n_cells=n_cells, seed=seed, score_set="test")
    test_drugs = sorted({g.perturbation for g in ed.groups["test"]})
    overrides = OmegaConf.to_container(cfg.router.smiles) if cfg.router.get("smiles") else {}
    sims, bad = similarity_matrices(sim_names, data, test_drugs, val_drugs, {str(k): str(v) for k, v in overrides.items()})
    for d, smi in bad.items():
        log.warning("router: RDKit cannot parse the SMILES of drug %r (%r): SMILES-based similarities leave it out "
                    "(see the fallbacks in the eval JSON)", d, smi)
    weights, record = build_routing(val, sims, metrics, top_k, temps, names, test_drugs, val_drugs, bad)
    uniform = np.full((len(names), len(test_drugs)), 1.0 / len(names))

    # one pass over the test conditions: teachers, every ensemble, every baseline
    reused = [Reuse(m) for m in models]
    per_drug = lambda W: {d: W[:, t] for t, d in enumerate(test_drugs)}  # noqa: E731
    ensembles = {k: Mixture(k, reused, per_drug(W), seed) for k, W in weights.items()}
    ensembles["uniform"] = Mixture("uniform", reused, per_drug(uniform), seed)
    baselines = {b: make_baseline(b) for b in cfg.baselines}
    pb = ed.pseudobulk()
    for p in [*reused, *baselines.values()]:
        p.fit(pb)
    torch.manual_seed(seed)
    scores = score_many(ed, {**{f"teacher:{n}": r for n, r in zip(names, reused)}, **ensembles,
                             **{f"baseline:{b}": p for b, p in baselines.items()}})
    singles = {n: scores[f"teacher:{n}"] for n in names}
    variants = {k: scores[k] for k in weights}
    variants["best_single"], variants["uniform"] = singles[best[metrics[0]]], scores["uniform"]
    headline = f"metric_{metrics[0]}.multi"
    missing = sorted(set(data.split.test) - set(test_drugs))
    ev = build_eval_json(f"router:{headline}", data, {"model": variants[headline], "scored": "test",
                                                      "baselines": {b: scores[f"baseline:{b}"] for b in baselines},
                                                      "test_perturbations_without_cells": missing},
                         OmegaConf.to_container(cfg, resolve=True))
    ev["variants"], ev["single_models"] = variants, singles
    ev["router"] = {
        "headline": headline,
        "config": {"similarities": sim_names, "routing_metrics": metrics, "top_k": top_k, "temperature": temps,
                   "smiles_overrides": overrides},
        "teachers": [{"name": t.name, "ref": t.ref, "path": str(t.path), "prior": t.ckpt.get("prior"),
                      "seed": t.ckpt.get("seed")} for t in teachers],
        "test_drugs": test_drugs, "val_drugs": val_drugs,
        "val_scores": {m: {n: {d: (float(x) if np.isfinite(x) else None) for d, x in zip(val_drugs, val[m][i])}
                           for i, n in enumerate(names)} for m in metrics},
        "validation": val_scores,
        "best_single": best,
        "unparseable_smiles": bad,
        **record,
        "comparison": compare(variants, singles, metrics, best),
    }
    ev["provenance"]["checkpoints"] = [{"name": t.name, "ref": t.ref, "path": str(t.path),
                                        "sha256": sha256_file(t.path)} for t in teachers]
    print_router_table(ev)
    out = cfg.get("out") or output_dir(cfg) / f"eval_router_{data.spec.name}_seed{ev['seed']}.json"
    print(f"eval JSON written to {write_eval_json(ev, out)}")
    return ev
