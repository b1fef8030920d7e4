"""Perturbation-level splits, deterministic per seed, saved to and loaded from JSON.

- ``simulation`` follows GEARS (`PertData.prepare_split(split='simulation')`): a fraction of perturbed *genes* is held
  out; test = singles of held-out genes (``unseen_single``), combos with 0 / 1 seen members (``combo_seen0/1``) and a
  random fraction of all-seen combos (``combo_seen2``). Validation is carved out of the training perturbations with
  the same procedure, so no test perturbation and no held-out gene ever reaches train or val.
- ``unseen_perturbation``: random held-out perturbations.
- ``unseen_drug``: held-out drugs (all doses, all contexts), optionally stratified by pathway / MoA.
- ``file``: a user-supplied JSON with train / val / test lists.

A split entry is a perturbation (all its cells, in every context) or a *context unit* ``CONTEXT::PERTURBATION``
(its cells in that context only): the cross-context benchmark holds out a gene in one cell line while it trains on
the gene in the others (``scfate.eval.cv.context_fold_split``).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scfate.data.schema import CONTROL, canonical_perturbation
from scfate.data.spec import CONTROL_VALUES, SplitSpec
from scfate.errors import DataError
from scfate.utils.io import atomic_write_json, sha256_json

SCHEMA_VERSION = 1
SPLIT_KEYS = ("schema_version", "mode", "seed", "params", "train", "val", "test", "subgroups")
SIMULATION_SUBGROUPS = ("unseen_single", "combo_seen0", "combo_seen1", "combo_seen2")
UNIT_SEP = "::"


def context_unit(context: str, perturbation: str) -> str:
    return f"{context}{UNIT_SEP}{perturbation}"


def parse_unit(entry: str) -> tuple[str | None, str]:
    """``(context or None, perturbation)`` of a split entry."""
    ctx, sep, pert = entry.rpartition(UNIT_SEP)
    return (ctx, pert) if sep else (None, entry)


def unit_perturbation(entry: str) -> str:
    return parse_unit(entry)[1]


def in_units(units: set[str], context: str, perturbation: str) -> bool:
    """Do the cells of ``perturbation`` in ``context`` belong to the split set ``units``?"""
    return perturbation in units or context_unit(context, perturbation) in units


def has_context_units(entries) -> bool:
    return any(UNIT_SEP in e for e in entries)


def shared_entries(a: set[str], b: set[str]) -> list[str]:
    """Entries of ``a`` that share cells with ``b``: the same entry, a perturbation and one of its context units,
    or (both plain) the same perturbation."""
    plain_b = {unit_perturbation(e) for e in b if UNIT_SEP not in e}
    pert_of_units_b = {unit_perturbation(e) for e in b if UNIT_SEP in e}
    return sorted(e for e in a if e in b or unit_perturbation(e) in plain_b
                  or (UNIT_SEP not in e and e in pert_of_units_b))


@dataclass
class Split:
    mode: str
    seed: int
    train: list[str]
    val: list[str]
    test: list[str]
    # subgroup name -> perturbations, for the test and val sets
    subgroups: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def set_of(self, perturbation: str) -> str | None:
        for name in ("train", "val", "test"):
            if perturbation in getattr(self, name):
                return name
        return None

    @property
    def tag(self) -> str:
        """Names the split by its content (the train / val / test lists), e.g. ``simulation_seed2_1f3a9c0e``: two
        settings that give the same lists share one name, and so one backbone (scfate.pipelines.backbone.backbone_dir)."""
        digest = sha256_json({k: sorted(getattr(self, k)) for k in ("train", "val", "test")})[:8]
        return f"{self.mode}_seed{self.seed}_{digest}"

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "mode": self.mode, "seed": self.seed, "params": self.params,
                "train": self.train, "val": self.val, "test": self.test, "subgroups": self.subgroups}


def _genes(p: str) -> list[str]:
    return p.split("+")


def _simulation(perts: list[str], gene_fraction: float, combo_fraction: float, rng: np.random.RandomState):
    """One GEARS simulation draw over ``perts`` -> (train, subgroups of the held-out set)."""
    singles = sorted(p for p in perts if "+" not in p)
    combos = sorted(p for p in perts if "+" in p)
    genes = sorted({g for p in perts for g in _genes(p)})
    n_out = int(round(len(genes) * gene_fraction))
    held = set(rng.choice(genes, n_out, replace=False).tolist()) if n_out else set()
    seen = lambda p: sum(g not in held for g in _genes(p))  # noqa: E731 - number of training members
    groups = {"unseen_single": [p for p in singles if p.split("+")[0] in held],
              "combo_seen0": [p for p in combos if seen(p) == 0],
              "combo_seen1": [p for p in combos if seen(p) == 1]}
    seen2 = [p for p in combos if seen(p) == 2]
    n_combo_out = int(round(len(seen2) * combo_fraction))
    groups["combo_seen2"] = sorted(rng.choice(seen2, n_combo_out, replace=False).tolist()) if n_combo_out else []
    out = {p for g in groups.values() for p in g}
    train = [p for p in singles + combos if p not in out]
    return train, {k: sorted(v) for k, v in groups.items()}, sorted(held)


def _random_holdout(items: list[str], fraction: float, rng, strata: dict[str, str] | None):
    """Hold out ``fraction`` of ``items``, per stratum when ``strata`` maps item -> label (at least one per stratum
    of two or more items, so every MoA is represented in the test set)."""
    if strata is None:
        n = int(round(len(items) * fraction))
        return sorted(rng.choice(items, n, replace=False).tolist()) if n else []
    out = []
    for label in sorted(set(strata[i] for i in items)):
        group = sorted(i for i in items if strata[i] == label)
        n = int(round(len(group) * fraction))
        n = max(n, 1) if len(group) >= 2 and fraction > 0 else n
        out += rng.choice(group, n, replace=False).tolist() if n else []
    return sorted(out)


def make_split(perturbations: list[str], spec: SplitSpec, strata: dict[str, str] | None = None) -> Split:
    """Split canonical perturbation names (no control) according to ``spec``; raise on an empty subgroup."""
    perts = sorted(set(perturbations))
    rng = np.random.RandomState(spec.seed)
    params = {k: v for k, v in vars(spec).items() if k not in ("seed", "mode")}
    if spec.mode == "file":
        return load_split(spec.file, perts)
    if spec.mode == "simulation":
        train, test_groups, held = _simulation(perts, spec.test_gene_fraction, spec.combo_seen2_test_fraction, rng)
        train, val_groups, _ = _simulation(train, spec.val_gene_fraction, spec.val_combo_seen2_fraction, rng)
        params["test_genes"] = held
        subgroups = {"test": test_groups, "val": val_groups}
        test = sorted(p for g in test_groups.values() for p in g)
        val = sorted(p for g in val_groups.values() for p in g)
    else:
        if spec.mode == "unseen_drug" and strata is None and spec.stratify_by:
            raise DataError(f"split.stratify_by={spec.stratify_by!r} gave no labels for the drugs.")
        test = _random_holdout(perts, spec.test_fraction, rng, strata)
        rest = [p for p in perts if p not in set(test)]
        val = _random_holdout(rest, spec.val_fraction / max(1e-9, 1 - spec.test_fraction), rng, strata)
        train = [p for p in rest if p not in set(val)]
        name = "unseen_drug" if spec.mode == "unseen_drug" else "unseen_perturbation"
        subgroups = {"test": {name: test}, "val": {name: val}}
    split = Split(spec.mode, spec.seed, sorted(train), val, test, subgroups, params)
    check_split(split, perts, spec.require_nonempty)
    return split


def _applicable(subgroup: str, perts: list[str]) -> bool:
    """Can the data populate this subgroup at all? (no combos -> no combo subgroups)."""
    if subgroup.startswith("combo"):
        return any("+" in p for p in perts)
    if subgroup == "unseen_single":
        return any("+" not in p for p in perts)
    return True


def check_split(split: Split, perts: list[str], require_nonempty: list[str] | None = None) -> None:
    """No leakage, full coverage, and no empty set or required subgroup; the error says how to fix it."""
    sets = {"train": set(split.train), "val": set(split.val), "test": set(split.test)}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = shared_entries(sets[a], sets[b])
        if both:
            raise DataError(f"Split puts {both[:10]} in both {a} and {b}.")
    # a perturbation named by context units only is covered in the contexts those name (cross-context folds)
    missing = set(perts) - {unit_perturbation(e) for e in set().union(*sets.values())}
    if missing:
        raise DataError(f"Split assigns no set to {len(missing)} perturbation(s), e.g. {sorted(missing)[:10]}.")
    fix = ("Use another split.seed, change the held-out fractions (split.test_gene_fraction, "
           "split.combo_seen2_test_fraction, split.test_fraction, split.val_fraction), or list only attainable "
           "subgroups in split.require_nonempty.")
    for name, members in sets.items():
        if not members:
            raise DataError(f"The {split.mode} split (seed {split.seed}) leaves the {name} set empty. {fix}")
    test_groups = split.subgroups.get("test", {})
    required = require_nonempty if require_nonempty is not None else [
        g for g in test_groups if _applicable(g, perts)]
    empty = [g for g in required if not test_groups.get(g)]
    if empty:
        raise DataError(f"The {split.mode} split (seed {split.seed}) leaves test subgroup(s) {empty} empty. {fix}")


def save_split(split: Split, path: str | Path) -> Path:
    return atomic_write_json(path, split.to_dict())


def _canonical_entries(entries, path: Path, where: str, control_values, separator: str | None) -> list[str]:
    """Split entries in the data's canonical form: a file from another tool may write ``B+A`` for the data's
    ``A+B`` or GEARS' ``A+ctrl`` for ``A``; both name the same perturbation (scfate.data.schema), so they are
    mapped, and an entry that then appears twice is kept once. An entry that is the control is refused."""
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise DataError(f"Split file {path}: {where} must be a list of perturbation names, got "
                        f"{type(entries).__name__} {str(entries)[:80]}.")
    controls = {v.lower() for v in control_values}
    out, control = [], []
    for e in entries:
        ctx, pert = parse_unit(e)
        canon = canonical_perturbation(pert, controls, separator)
        if canon == CONTROL:
            control.append(e)
        out.append(canon if ctx is None else context_unit(ctx, canon))
    if control:
        raise DataError(f"Split file {path}: {where} lists the control {control[:5]}; control cells are in no set "
                        "(every set is scored against them), remove them from the file.")
    return sorted(set(out))


def _check_keys(raw, path: Path) -> None:
    if not isinstance(raw, dict):
        raise DataError(f"Split file {path} holds a {type(raw).__name__}, not an object with train/val/test lists.")
    unknown = [k for k in raw if k not in SPLIT_KEYS]
    if unknown:  # ignored, a misspelt `subgroup` would silently leave the subgroups out of every score
        hints = {k: difflib.get_close_matches(k, SPLIT_KEYS, n=1) for k in unknown}
        said = "; ".join(f"{k!r} (did you mean {h[0]!r}?)" if h else repr(k) for k, h in hints.items())
        raise DataError(f"Split file {path} has unknown key(s) {said}. Known keys: {', '.join(SPLIT_KEYS)}.")
    missing = [k for k in ("train", "val", "test") if k not in raw]
    if missing:
        raise DataError(f"Split file {path} lacks key(s) {missing}; it needs train, val and test lists.")
    groups = raw.get("subgroups")
    if groups is not None and (not isinstance(groups, dict) or any(
            k not in ("train", "val", "test") or not isinstance(v, dict) for k, v in groups.items())):
        raise DataError(f"Split file {path}: subgroups must map a set (train, val, test) to {{subgroup: [names]}}, "
                        'e.g. {"test": {"combo_seen1": ["A+B"]}}.')


def load_split(path: str | Path, perturbations: list[str] | None = None, control_values=CONTROL_VALUES,
               separator: str | None = "+") -> Split:
    """Read a split JSON; with ``perturbations``, check it covers exactly the dataset's perturbations.

    Names are canonicalised with the data's own rule (``control_values``, ``separator``: the data spec's; a drug
    dataset passes ``separator=None``, its names may hold a "+")."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Split file not found: {path}. Set split.file to a JSON with train/val/test lists.")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"Split file {path} is not valid JSON: {exc}.") from exc
    _check_keys(raw, path)
    sets = {k: _canonical_entries(raw[k], path, k, control_values, separator) for k in ("train", "val", "test")}
    groups = {s: {g: _canonical_entries(v, path, f"subgroups.{s}.{g}", control_values, separator)
                  for g, v in gs.items()} for s, gs in (raw.get("subgroups") or {}).items()}
    split = Split(raw.get("mode", "file"), int(raw.get("seed", 0)), sets["train"], sets["val"], sets["test"],
                  groups or {"test": {"test": sets["test"]}}, raw.get("params", {}))
    if perturbations is not None:
        unknown = sorted(e for e in set(split.train + split.val + split.test)
                         if unit_perturbation(e) not in set(perturbations))
        if unknown:
            raise DataError(f"Split file {path} names perturbations absent from the data: {unknown[:10]}. "
                            "Labels must be canonical (members sorted, joined by '+').")
        check_split(split, perturbations, require_nonempty=[])
    return split
