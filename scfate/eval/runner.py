"""Evaluation runner: predict every test condition, score it with every metric, beside every baseline.

Reads cells in row batches (never the whole matrix). Baselines learn only from training (and validation)
pseudobulk; test means are computed here and never reach a predictor.
"""

from __future__ import annotations

import logging

import numpy as np

from scfate.data import schema
from scfate.data.datamodule import condition_groups
from scfate.data.rows import RowReader
from scfate.data.splits import context_unit
from scfate.eval import metrics as M
from scfate.eval.plotdata import PlotData, pca_picks
from scfate.models.predictor import Condition, NotPredictable, Predictor, Pseudobulk
from scfate.prior.baselines import DEFAULT_BASELINES, make_baseline
from scfate.utils.progress import Progress

log = logging.getLogger(__name__)
# numbers (float64) held per window of test conditions: 128 MiB, a few dozen conditions of 300 cells x 2,000 genes
# (enough to fill the flow's stacked solves, flow_sampling.MAX_ROWS), a handful at 8,000 genes
WINDOW_VALUES = 2 ** 24


def sample(idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(idx, n, replace=False)) if len(idx) > n else idx


class EvalData:
    """Everything the runner needs from a `PreparedData`, computed once: means, DE indices, PCA, conditions."""

    def __init__(self, data, n_cells: int = 300, n_pcs: int = 30, seed: int = 0, score_set: str = "test"):
        self.data, self.n_cells, self.score_set = data, n_cells, score_set
        self.rng = np.random.default_rng(seed)
        adata = data.adata
        self.reader = (RowReader(path=data.cache_dir / "prepared.h5ad") if adata.isbacked
                       else RowReader(matrix=adata.X))
        obs = adata.obs
        self.genes = list(adata.var_names)
        gene_pos = {g: i for i, g in enumerate(self.genes)}
        ctx = obs[schema.CONTEXT].astype(str).to_numpy()
        is_ctrl = obs[schema.IS_CONTROL].to_numpy()
        self.contexts = data.meta["contexts"]
        self.controls = {c: np.flatnonzero(is_ctrl & (ctx == c)) for c in self.contexts}
        # pseudobulk means from preparation's group sums: no pass over the cells (millions, genome-wide)
        sums = data.group_sums
        self.ctrl_mean = {c: sums.mean(c, schema.CONTROL, len(i)) for c, i in self.controls.items()}
        self.groups = {s: condition_groups(obs, set(getattr(data.split, s))) for s in ("train", "val", "test")}
        feats, units = data.features, data.features.index()
        dose = obs[schema.DOSE].to_numpy()

        def condition(g) -> Condition:
            members = data.members(g.perturbation)
            vec = feats.matrix[[units[m] for m in members]].sum(0).astype(np.float64)
            d = float(dose[g.cells[0]])
            if data.spec.perturbation_type == "drug":
                vec = np.append(vec, np.log10(d))
            return Condition(g.context, g.condition, g.perturbation, members, d, vec)

        self.conditions = {(g.context, g.condition): condition(g) for gs in self.groups.values() for g in gs}
        self.means = {(g.context, g.condition): sums.mean(g.context, g.condition, len(g.cells))
                      for s in ("train", "val", "test") for g in self.groups[s]}
        self.de = {}
        for g in self.groups[score_set]:
            entry = data.de.get(g.context, {}).get(g.condition)
            self.de[(g.context, g.condition)] = (
                np.array([gene_pos[x] for x in entry["top_de"]]) if entry else np.array([], int),
                np.array([gene_pos[x] for x in entry["top_non_dropout_de"]]) if entry else np.array([], int))
        self._fit_pca(n_pcs)
        self.subgroup_of = {p: name for name, ps in data.split.subgroups.get(score_set, {}).items() for p in ps}

    def _fit_pca(self, n_pcs: int) -> None:
        """PCA on (up to 5000) training cells, controls included: the space of the distribution metrics."""
        from sklearn.decomposition import PCA

        train = np.concatenate([g.cells for g in self.groups["train"]] + list(self.controls.values()))
        X = self.reader(sample(train, 5000, self.rng))
        self.pca = PCA(n_components=min(n_pcs, min(X.shape) - 1), random_state=0).fit(X)

    def pseudobulk(self) -> Pseudobulk:
        def rows(which):
            out = {}
            for g in self.groups[which]:
                key = (g.context, g.condition)
                out.setdefault(g.context, []).append((self.conditions[key], self.means[key] - self.ctrl_mean[g.context]))
            return out

        return Pseudobulk(self.data.spec.perturbation_type, self.contexts, self.ctrl_mean, rows("train"), rows("val"))


def score(ed: EvalData, predictor: Predictor, plot: PlotData | None = None, name: str = "model") -> dict:
    """Per-condition metrics of one predictor on ``ed.score_set`` (the test set unless an oracle check asks for
    training perturbations), aggregated overall and per subgroup; ``plot`` keeps its shifts under ``name``."""
    return score_many(ed, {name: predictor}, plot=plot)[name]


def subgroup_of(ed: EvalData, context: str, perturbation: str) -> str:
    return ed.subgroup_of.get(context_unit(context, perturbation), ed.subgroup_of.get(perturbation, ed.score_set))


def score_many(ed: EvalData, predictors: dict[str, Predictor], reference: str | None = None,
               plot: PlotData | None = None) -> dict[str, dict]:
    """:func:`score` for several predictors in one pass over ``ed.score_set``: every predictor sees the same control
    cells and is compared with the same true cells (ensembles can then mix the very samples they are scored on).
    ``reference`` (a name in ``predictors``, e.g. ``additive``): each combination also gets ``interaction_cos``,
    the cosine between predicted and true shift beyond the reference's, i.e. whether the non-additive part is right.
    ``plot`` (scfate.eval.plotdata) keeps what the plots beside the eval JSON need; it draws no random numbers, so
    the scores are the same with or without it.

    A predictor with its own ``predict_each`` (the flow) predicts a window of conditions in one stacked pass
    (:func:`window_size`); the others predict condition by condition after it. A window draws its cells in the
    usual order and a flow draws its source noise condition by condition, so the scores are those of one condition
    at a time as long as at most one predictor draws from torch's global RNG (evaluation's model alone, or a model
    beside baselines and its prior-only twin) and none returns more cells than it was given controls."""
    entries = {n: {} for n in predictors}
    deltas = {n: {} for n in predictors}
    # a flow predicts hundreds of cells per condition: on a large test set this pass takes minutes
    names = [getattr(p, "name", n) if n == "model" else n for n, p in predictors.items()]
    label = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    groups = ed.groups[ed.score_set]
    progress = Progress(len(groups), f"scoring {label}", unit="conditions")
    batched = [n for n, p in predictors.items() if type(p).predict_each is not Predictor.predict_each]
    window = window_size(ed, len(batched))
    for start in range(0, len(groups), window):
        # each condition's control and true cells, drawn in the order (ctrl, true, ctrl, true, ...) they always were
        drawn = [(g, ed.reader(sample(ed.controls[g.context], ed.n_cells, ed.rng)),
                  ed.pca.transform(ed.reader(sample(g.cells, ed.n_cells, ed.rng))))
                 for g in groups[start:start + window]]
        conds = [ed.conditions[(g.context, g.condition)] for g, *_ in drawn]
        ahead = {n: predictors[n].predict_each(conds, [ctrl for _, ctrl, _ in drawn]) for n in batched}
        for j, (g, ctrl_cells, true_pcs) in enumerate(drawn):
            _score_condition(ed, g, ctrl_cells, true_pcs, predictors, {n: p[j] for n, p in ahead.items()},
                             entries, deltas, plot)
            progress.step()
    if reference is not None:
        _add_interaction(ed, entries, deltas, reference)
    out = {}
    for name, es in entries.items():
        _add_discrimination(es, deltas[name])
        for e in es.values():
            if not e["notes"]:
                e.pop("notes")
        groups = sorted({e["subgroup"] for e in es.values()})
        out[name] = {"overall": M.aggregate(list(es.values())),
                     "by_subgroup": {s: M.aggregate([e for e in es.values() if e["subgroup"] == s]) for s in groups},
                     "per_perturbation": es}
    return out


def _score_condition(ed: EvalData, g, ctrl_cells, true_pcs, predictors: dict[str, Predictor], ahead: dict,
                     entries: dict, deltas: dict, plot: PlotData | None) -> None:
    key = (g.context, g.condition)
    cond, ctrl_mean = ed.conditions[key], ed.ctrl_mean[g.context]
    de_idx, de_nd_idx = ed.de[key]
    true_sq = M.true_sq_dists(true_pcs)  # shared by every predictor
    for name, predictor in predictors.items():
        entry = {"context": g.context, "condition": g.condition, "perturbation": g.perturbation,
                 "subgroup": subgroup_of(ed, g.context, g.perturbation), "n_true_cells": int(len(g.cells)),
                 "n_de": int(len(de_idx)), "n_de_non_dropout": int(len(de_nd_idx)), "metrics": {},
                 "undefined": {}, "notes": []}
        if len(de_idx) < M.N_DE:
            entry["notes"].append(f"only {len(de_idx)} DE genes (fewer than {M.N_DE}): DA/PDE/MSE use those")
        entries[name][f"{g.context}/{g.condition}"] = entry
        try:
            pred = ahead[name] if name in ahead else predictor.predict(cond, ctrl_cells)
            if isinstance(pred, NotPredictable):
                raise pred
        except NotPredictable as exc:
            entry["undefined"] = {m: f"not defined: {exc}" for m in M.ALL_METRICS}
            continue
        entry["notes"].extend(pred.notes)
        vals, undef = M.mean_metrics(ctrl_mean, ed.means[key], pred.mean, de_idx, de_nd_idx)
        pred_pcs = ed.pca.transform(sample_rows(pred.cells, ed.n_cells, ed.rng))
        dvals, dundef = M.distribution_metrics(pred_pcs, true_pcs, true_sq)
        entry["metrics"], entry["undefined"] = {**vals, **dvals}, {**undef, **dundef}
        deltas[name][key] = (pred.mean - ctrl_mean, ed.means[key] - ctrl_mean)
        if plot is not None:
            plot.add_shift(name, f"{g.context}/{g.condition}", entry["subgroup"], de_idx, *deltas[name][key])
            if plot.wants_cells(name, g.context, g.condition):
                plot.add_cells(f"{g.context}/{g.condition}", pred_pcs, true_pcs, ed.pca.transform(ctrl_cells))


def window_size(ed: EvalData, n_batched: int) -> int:
    """Test conditions drawn and predicted together when some predictor predicts in batches (``predict_each``):
    as many as keep the window's control cells and every batched predictor's cells within WINDOW_VALUES numbers;
    one when none does, so sequential predictors see the very draws, in the very order, they always did."""
    if not n_batched:
        return 1
    per_condition = ed.n_cells * len(ed.genes) * (1 + n_batched)
    return max(1, WINDOW_VALUES // per_condition)


def _add_interaction(ed: EvalData, entries: dict, deltas: dict, reference: str) -> None:
    for name, by_key in deltas.items():
        for key, (pred, true) in by_key.items():
            if name == reference or len(ed.conditions[key].members) < 2 or key not in deltas[reference]:
                continue
            ref = deltas[reference][key][0]
            a, b = pred - ref, true - ref
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            if na > 1e-9 * max(1.0, np.linalg.norm(pred)) and nb > 0:
                entries[name][f"{key[0]}/{key[1]}"]["metrics"]["interaction_cos"] = float(a @ b / (na * nb))


def sample_rows(X: np.ndarray, n: int, rng) -> np.ndarray:
    return X[sample(np.arange(len(X)), n, rng)]


def _add_discrimination(entries: dict, deltas: dict) -> None:
    """Perturbation discrimination within each context, among the conditions this predictor could predict."""
    for ctx in sorted({c for c, _ in deltas}):
        keys = [k for k in deltas if k[0] == ctx]
        for k in keys:
            entry = entries[f"{k[0]}/{k[1]}"]
            if len(keys) < 2:
                entry["undefined"].update({m: "fewer than 2 test conditions in this context" for m in M.RANK_METRICS})
        if len(keys) < 2:
            continue
        pred = np.stack([deltas[k][0] for k in keys])
        true = np.stack([deltas[k][1] for k in keys])
        for k, rank in zip(keys, M.discrimination_ranks(pred, true)):
            entries[f"{k[0]}/{k[1]}"]["metrics"].update({"pds": int(rank), "pds_normalized": (rank - 1) / (len(keys) - 1)})


def evaluate(data, model: Predictor, baselines: list[str] | None = None, n_cells: int = 300, seed: int = 0,
             score_set: str = "test", covered: set[tuple[str, str]] | None = None) -> dict:
    """Score ``model`` and every baseline (except the model itself) on ``data``'s test split (or ``score_set``).

    ``covered`` (``(context, condition)`` pairs, e.g. those a prediction file has cells for) restricts the scoring
    to those conditions for the model *and* the baselines, so their means are over the same set; the conditions
    left out are listed in ``not_covered``."""
    ed = EvalData(data, n_cells=n_cells, seed=seed, score_set=score_set)
    every = ed.groups[score_set]
    if covered is not None:
        ed.groups[score_set] = [g for g in every if (g.context, g.condition) in covered]
    pb = ed.pseudobulk()
    names = [b for b in (baselines if baselines is not None else DEFAULT_BASELINES) if b != model.name]
    keys = [(g.context, g.condition) for g in ed.groups[score_set]]
    plot = PlotData(pca_picks(keys, lambda k: subgroup_of(ed, k[0], ed.conditions[k].perturbation)))
    plot.pca_var = ed.pca.explained_variance_ratio_[:2]
    predictors = {"model": model, **{f"baseline:{name}": make_baseline(name) for name in names}}
    for predictor in predictors.values():
        predictor.fit(pb)
    # one pass: every baseline on the model's very control cells and true cells (a paired comparison); baselines
    # draw no random numbers of their own, so the model's cells are those it would get scored alone
    scores = score_many(ed, predictors, plot=plot)
    out = {"model": scores["model"], "baselines": {name: scores[f"baseline:{name}"] for name in names}}
    missing = sorted(set(getattr(data.split, score_set)) - {g.perturbation for g in every})
    out["test_perturbations_without_cells"] = missing
    if covered is not None:
        out["not_covered"] = [{"context": g.context, "condition": g.condition, "perturbation": g.perturbation}
                              for g in every if (g.context, g.condition) not in covered]
    out["scored"] = score_set
    out["plot_data"] = plot  # not part of the eval JSON: written beside it (scfate.eval.results.write_eval_json)
    return out
