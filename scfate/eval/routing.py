"""The router ensemble over teachers for unseen drugs (DESIGN §2.6), given loaded teachers and prepared data:

1. each teacher is scored on the validation drugs (never trained on); a drug's score is the mean over its conditions;
2. each test drug is compared with every validation drug under each similarity metric; `scfate.prior.router` turns
   the neighbours' scores into weights over teachers, per (routing metric, similarity) and per routing metric
   combining all similarities (``multi``);
3. all predictors are scored in one pass over the test conditions, so every one sees the same control and true
   cells, and each teacher samples each condition once (the ensembles mix those samples).
"""

from __future__ import annotations

import logging
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np

from scfate.errors import DataError
from scfate.eval import metrics as M
from scfate.models.predictor import Condition, NotPredictable, Prediction, Predictor
from scfate.prior import router as R

log = logging.getLogger("scfate")


@dataclass
class RouterSettings:
    similarities: list[str]
    metrics: list[str]  # routing metrics; the first names the headline router and the best single teacher
    top_k: int
    temperatures: dict[str, float]  # per routing metric
    smiles: dict[str, str] = field(default_factory=dict)  # drug -> SMILES used instead of the dataset's


def router_settings(similarities, routing_metrics, top_k, temperature, smiles=None) -> RouterSettings:
    """Checked settings (``conf/router``); ``temperature`` is a number or ``{metric: number, default: number}``."""
    sims, metrics = [str(s) for s in similarities], [str(m) for m in routing_metrics]
    bad_s = [s for s in sims if s not in R.SIMILARITIES]
    if bad_s or not sims:
        raise DataError(f"router.similarities {bad_s or sims} not known; valid: {sorted(R.SIMILARITIES)}.")
    bad_m = [m for m in metrics if m not in M.ALL_METRICS]
    if bad_m or not metrics:
        raise DataError(f"router.routing_metrics {bad_m or metrics} not metrics; valid: {list(M.ALL_METRICS)}.")
    if int(top_k) < 1:
        raise DataError(f"router.top_k={top_k} must be >= 1 (nearest validation drugs per test drug).")
    t = temperature
    temps = ({m: float(t.get(m, t.get("default", 0.05))) for m in metrics} if isinstance(t, dict)
             else {m: float(t) for m in metrics})
    if any(not v > 0 for v in temps.values()):
        raise DataError(f"router.temperature={t} must be > 0 (small values approach argmax).")
    return RouterSettings(sims, metrics, int(top_k), temps, {str(k): str(v) for k, v in (smiles or {}).items()})


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


def route_and_score(data, models: dict[str, Predictor], settings: RouterSettings, baselines: dict[str, Predictor],
                    n_cells: int, seed: int) -> dict:
    """Score the teachers (``models``, by name) on the validation drugs, route the test drugs, then score teachers,
    routers, the uniform ensemble and ``baselines`` on the test conditions. Returns what the eval JSON reports."""
    import torch

    from scfate.eval.runner import EvalData, score_many

    names, metrics = list(models), settings.metrics
    ed_val = EvalData(data, n_cells=n_cells, seed=seed, score_set="val")
    for mdl in models.values():
        mdl.fit(ed_val.pseudobulk())
    torch.manual_seed(seed)
    val_scores = score_many(ed_val, models)
    val_drugs = sorted({e["perturbation"] for s in val_scores.values() for e in s["per_perturbation"].values()})
    if not val_drugs:
        raise DataError(f"The split has no validation drugs with cells ({data.split_path}); the router needs them: "
                        "raise data.split.val_fraction.")
    val = {m: drug_matrix(val_scores, names, val_drugs, m) for m in metrics}
    best = {m: best_single(R.orient(m, val[m]), names) for m in metrics}

    ed = EvalData(data, n_cells=n_cells, seed=seed, score_set="test")
    test_drugs = sorted({g.perturbation for g in ed.groups["test"]})
    sims, bad = similarity_matrices(settings.similarities, data, test_drugs, val_drugs, settings.smiles)
    for d, smi in bad.items():
        log.warning("router: RDKit cannot parse the SMILES of drug %r (%r): SMILES-based similarities leave it out "
                    "(see the fallbacks in the eval JSON)", d, smi)
    weights, record = build_routing(val, sims, metrics, settings.top_k, settings.temperatures, names, test_drugs,
                                    val_drugs, bad)
    uniform = np.full((len(names), len(test_drugs)), 1.0 / len(names))

    reused = [Reuse(m) for m in models.values()]
    per_drug = lambda W: {d: W[:, t] for t, d in enumerate(test_drugs)}  # noqa: E731
    ensembles = {k: Mixture(k, reused, per_drug(W), seed) for k, W in weights.items()}
    ensembles["uniform"] = Mixture("uniform", reused, per_drug(uniform), seed)
    pb = ed.pseudobulk()
    for p in [*reused, *baselines.values()]:
        p.fit(pb)
    torch.manual_seed(seed)
    scores = score_many(ed, {**{f"teacher:{n}": r for n, r in zip(names, reused)}, **ensembles,
                             **{f"baseline:{b}": p for b, p in baselines.items()}})
    singles = {n: scores[f"teacher:{n}"] for n in names}
    variants = {k: scores[k] for k in weights}
    variants["best_single"], variants["uniform"] = singles[best[metrics[0]]], scores["uniform"]
    return {"variants": variants, "singles": singles, "baselines": {b: scores[f"baseline:{b}"] for b in baselines},
            "test_drugs": test_drugs, "val_drugs": val_drugs, "validation": val_scores, "best_single": best,
            "unparseable_smiles": bad, "record": record, "comparison": compare(variants, singles, metrics, best),
            "val_scores": {m: {n: {d: (float(x) if np.isfinite(x) else None) for d, x in zip(val_drugs, val[m][i])}
                               for i, n in enumerate(names)} for m in metrics}}


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
