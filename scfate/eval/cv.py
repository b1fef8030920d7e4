"""Cross-validation over perturbations, with power: folds in which every perturbation is a test perturbation
exactly once per repeat, GEARS subgroups relative to each fold's training set, and paired bootstrap confidence
intervals of model - baseline differences over perturbations and repeats."""

from __future__ import annotations

import numpy as np

from scfate.data.splits import context_unit, parse_unit
from scfate.errors import UsageError

SUBGROUPS = ("unseen_single", "combo_seen0", "combo_seen1", "combo_seen2")
CROSS_CONTEXT = "cross_context"


def perturbation_folds(perturbations: list[str], n_folds: int, n_repeats: int, seed: int = 0) -> list[dict]:
    """``[{"repeat": r, "fold": f, "test": [...]}, ...]``: in each repeat a fresh random partition of the
    perturbations into ``n_folds`` near-equal folds, so each perturbation is tested exactly once per repeat."""
    perts = sorted(set(perturbations))
    if n_folds < 2 or n_folds > len(perts):
        raise UsageError(f"folds={n_folds}: need 2 <= folds <= the {len(perts)} perturbations.")
    if n_repeats < 1:
        raise UsageError(f"repeats={n_repeats}: need at least one repeat.")
    out = []
    for r in range(n_repeats):
        order = np.random.default_rng([seed, r]).permutation(len(perts))
        for f, idx in enumerate(np.array_split(order, n_folds)):
            out.append({"repeat": r, "fold": f, "test": sorted(perts[i] for i in idx)})
    return out


def fold_subgroups(held_out: list[str], train: list[str], perturbation_type: str = "gene") -> dict[str, list[str]]:
    """GEARS subgroups of held-out perturbations relative to ``train``: a single is ``unseen_single`` (its own
    single perturbation is never trained on; the gene may still occur in training pairs), a pair is
    ``combo_seenK`` with K members trained on as singles. Drugs: one group, ``unseen_drug``."""
    if perturbation_type == "drug":
        return {"unseen_drug": sorted(held_out)}
    singles = {p for p in train if "+" not in p}
    groups: dict[str, list[str]] = {g: [] for g in SUBGROUPS}
    for p in sorted(held_out):
        members = p.split("+")
        if len(members) == 1:
            groups["unseen_single"].append(p)
        else:
            groups[f"combo_seen{min(2, sum(m in singles for m in members))}"].append(p)
    return {g: ps for g, ps in groups.items() if ps}


def fold_split(perturbations: list[str], test: list[str], val_fraction: float, seed: int,
               perturbation_type: str = "gene") -> dict:
    """A split JSON (``scfate.data.splits.load_split``) for one fold: ``test``; validation perturbations drawn
    from the rest (they select the prior and the flow's epoch: an inner split of the training perturbations);
    subgroups of test and validation relative to the training set."""
    test_set = set(test)
    rest = sorted(p for p in perturbations if p not in test_set)
    n_val = max(1, int(round(len(rest) * val_fraction))) if val_fraction > 0 else 0
    val = sorted(np.random.default_rng(seed).choice(rest, n_val, replace=False).tolist()) if n_val else []
    train = sorted(p for p in rest if p not in set(val))
    return {"mode": "file", "seed": int(seed), "train": train, "val": val, "test": sorted(test),
            "subgroups": {"test": fold_subgroups(test, train, perturbation_type),
                          "val": fold_subgroups(val, train, perturbation_type)},
            "params": {"val_fraction": val_fraction}}


def context_folds(pairs: list[tuple[str, str]], n_folds: int, n_repeats: int, seed: int = 0) -> list[dict]:
    """Cross-context folds over ``pairs`` (context, perturbation): the test units are context units
    ``CONTEXT::PERTURBATION`` of perturbations present in two or more contexts, each tested exactly once per repeat,
    and no two contexts of one perturbation in the same fold (so every test unit's perturbation is trained in
    another context). Pairs of single-context perturbations are never test units (they stay in training)."""
    by_pert: dict[str, list[str]] = {}
    for ctx, pert in sorted(set(pairs)):
        by_pert.setdefault(pert, []).append(ctx)
    multi = sorted(p for p, cs in by_pert.items() if len(cs) >= 2)
    widest = max((len(by_pert[p]) for p in multi), default=0)
    if not multi:
        raise UsageError("mode=cross_context needs perturbations measured in two or more contexts; this data has "
                         "none. Use mode=perturbation.")
    if n_folds < widest:
        raise UsageError(f"mode=cross_context with folds={n_folds}: a perturbation is in {widest} contexts, and its "
                         f"units must go to different folds. Use folds>={widest}.")
    if n_repeats < 1:
        raise UsageError(f"repeats={n_repeats}: need at least one repeat.")
    out = []
    for r in range(n_repeats):
        rng = np.random.default_rng([seed, r, 1])
        folds: list[list[str]] = [[] for _ in range(n_folds)]
        slot = int(rng.integers(n_folds))
        # consecutive slots (mod folds) for one perturbation's contexts: distinct folds, and sizes within one
        for i in rng.permutation(len(multi)):
            for ctx in rng.permutation(by_pert[multi[i]]):
                folds[slot % n_folds].append(context_unit(str(ctx), multi[i]))
                slot += 1
        out += [{"repeat": r, "fold": f, "test": sorted(units)} for f, units in enumerate(folds)]
    return out


def by_context(units: list[str]) -> dict[str, list[str]]:
    """Subgroups of cross-context units: ``cross_context:CONTEXT`` (the context the unit is held out in)."""
    out: dict[str, list[str]] = {}
    for u in sorted(units):
        out.setdefault(f"{CROSS_CONTEXT}:{parse_unit(u)[0]}", []).append(u)
    return out


def context_fold_split(pairs: list[tuple[str, str]], test: list[str], val_fraction: float, seed: int) -> dict:
    """A split JSON for one cross-context fold: test context units; validation context units drawn from the rest
    whose perturbation keeps a training unit in another context (an inner cross-context split); training = every
    other (context, perturbation) as a context unit."""
    test_set = set(test)
    rest = sorted(context_unit(c, p) for c, p in set(pairs) if context_unit(c, p) not in test_set)
    n_val = max(1, int(round(len(rest) * val_fraction))) if val_fraction > 0 else 0
    train_of = {}
    for u in rest:
        train_of.setdefault(parse_unit(u)[1], set()).add(u)
    val = []
    for i in np.random.default_rng(seed).permutation(len(rest)):
        u = rest[i]
        pert = parse_unit(u)[1]
        if len(val) < n_val and len(train_of[pert]) >= 2:
            val.append(u)
            train_of[pert].discard(u)
    if n_val and not val:
        raise UsageError("mode=cross_context: no validation unit can be drawn (every perturbation would lose its "
                         "last training context). Use more folds than the data has contexts per perturbation.")
    train = sorted(u for us in train_of.values() for u in us)
    return {"mode": "file", "seed": int(seed), "train": train, "val": sorted(val), "test": sorted(test),
            "subgroups": {"test": by_context(test), "val": by_context(val)},
            "params": {"val_fraction": val_fraction, "cross_context": True}}


def paired_bootstrap(diff: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
                     ) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of ``diff`` [repeats, perturbations] (NaN = undefined), with a percentile
    bootstrap interval that resamples repeats and perturbations with replacement (two-stage: the spread over
    repeats and the spread over perturbations both enter)."""
    diff = np.asarray(diff, dtype=float)
    if diff.ndim == 1:
        diff = diff[None, :]
    if np.isnan(diff).all():
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    R, P = diff.shape
    stats = np.empty(n_boot)
    for b in range(n_boot):
        sample = diff[rng.integers(R, size=R)][:, rng.integers(P, size=P)]
        stats[b] = np.nanmean(sample) if not np.isnan(sample).all() else np.nan
    lo, hi = np.nanquantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(np.nanmean(diff)), float(lo), float(hi)
