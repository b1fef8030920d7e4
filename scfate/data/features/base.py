"""The container every perturbation featuriser returns, and its pickle-free .npz round trip."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scfate.errors import DataError
from scfate.utils.io import atomic_path

FORMAT_VERSION = 1


@dataclass
class PerturbationFeatures:
    """Per-unit feature matrix built from several named views.

    kind:     "gene" or "drug".
    units:    requested names, row order of ``matrix`` (length n_units).
    matrix:   float32 [n_units, dim], the views concatenated along columns.
    views:    [{"name": str, "start": int, "stop": int}, ...] column slice of each view.
    present:  bool [n_units, n_views]; False means the unit had no data in that view (its slice is zeros).
    resolved: requested name -> official gene symbol or canonical SMILES.
    """

    kind: str
    units: list[str]
    matrix: np.ndarray
    views: list[dict]
    present: np.ndarray
    resolved: dict[str, str]

    def __post_init__(self) -> None:
        self.units = [str(u) for u in self.units]
        self.matrix = np.asarray(self.matrix, dtype=np.float32)
        self.present = np.asarray(self.present, dtype=bool)
        n = len(self.units)
        if self.matrix.ndim != 2 or self.matrix.shape[0] != n or self.present.shape != (n, len(self.views)):
            raise ValueError(f"shapes disagree: {n} units, matrix {self.matrix.shape}, present {self.present.shape}, "
                             f"{len(self.views)} views")

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def index(self) -> dict[str, int]:
        """Unit name -> row of ``matrix``."""
        return {u: i for i, u in enumerate(self.units)}

    def view(self, name: str) -> np.ndarray:
        """Columns of one view: float32 [n_units, stop - start]."""
        for v in self.views:
            if v["name"] == name:
                return self.matrix[:, v["start"]:v["stop"]]
        raise KeyError(f"no view {name!r}; views are {[v['name'] for v in self.views]}")

    def save(self, path) -> Path:
        """Write an .npz atomically. Strings go in as unicode arrays and dicts as JSON text, so loading
        never needs pickle (a pickled file can run code when opened)."""
        arrays = {
            "format_version": np.array(FORMAT_VERSION),
            "kind": np.array(self.kind),
            # An empty list would give dtype float; force a unicode dtype so load stays pickle-free.
            "units": np.array(self.units, dtype=np.str_),
            "matrix": self.matrix,
            "views": np.array(json.dumps(self.views)),
            "present": self.present,
            "resolved": np.array(json.dumps(self.resolved)),
        }
        # Write through a file handle: np.savez would append ".npz" to a bare temp path and break the rename.
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path) -> PerturbationFeatures:
        path = Path(path)
        if not path.exists():
            raise DataError(f"Feature file not found: {path}. Build it with build_gene_features/build_drug_features.")
        with np.load(path, allow_pickle=False) as z:
            version = int(z["format_version"])
            if version != FORMAT_VERSION:
                raise DataError(f"{path} has feature format {version}, expected {FORMAT_VERSION}; rebuild it.")
            return cls(kind=str(z["kind"]), units=[str(u) for u in z["units"]], matrix=z["matrix"],
                       views=json.loads(str(z["views"])), present=z["present"],
                       resolved=json.loads(str(z["resolved"])))


def need_file(key: str, path) -> Path:
    """Path of an input named by config key ``features.<key>``; unset or missing -> DataError naming both."""
    if path is None:
        raise DataError(f"features.{key} is not set; give the path of the file or disable that view (null).")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"features.{key}: file not found: {p}. Fix the path in the config.")
    return p


def assemble(kind: str, units: list[str], blocks: list[tuple[str, np.ndarray, np.ndarray]],
             resolved: dict[str, str]) -> PerturbationFeatures:
    """Concatenate per-view blocks into one PerturbationFeatures.

    blocks: [(view name, float [n_units, d_view], bool [n_units]), ...] in column order.
    """
    n = len(units)
    views, mats, pres, start = [], [], [], 0
    for name, mat, present in blocks:
        mat = np.array(mat, dtype=np.float32).reshape(n, -1 if n else np.shape(mat)[-1])  # copy: zeroed below
        present = np.asarray(present, dtype=bool).reshape(n)
        mat[~present] = 0.0  # a missing view is exactly zeros, whatever the source held
        views.append({"name": name, "start": start, "stop": start + mat.shape[1]})
        mats.append(mat)
        pres.append(present)
        start += mat.shape[1]
    matrix = np.concatenate(mats, axis=1) if mats else np.zeros((n, 0), np.float32)
    present = np.stack(pres, axis=1) if pres else np.zeros((n, 0), bool)
    return PerturbationFeatures(kind, list(units), matrix, views, present, dict(resolved))
