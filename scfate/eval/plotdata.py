"""What the plots of an evaluation need beyond its eval JSON, kept compact in ``<eval stem>.plotdata.npz``.

The eval JSON holds per-perturbation metrics, not the predicted means or cells they came from, and by the time a
plot is drawn (or redrawn by ``python -m scfate.report plots``) the model is gone. The runner keeps, as it scores,
the top-20 DE genes' true and predicted shifts of every condition for every predictor (a few kB) and, for a few
conditions, the model's predicted, true and control cells on the first two components of the shared PCA.
Plain arrays only (``allow_pickle=False`` to read), written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scfate.utils.io import atomic_path

N_SHIFT = 20  # the DE genes of DA / PDE / MSE (scfate.eval.metrics.N_DE)
N_PCA = 4  # conditions whose cells are kept
MAX_CELLS = 200  # cells per cloud: enough to see a distribution, small enough to store


def pca_picks(keys: list[tuple[str, str]], subgroup_of: dict, n: int = N_PCA) -> list[tuple[str, str]]:
    """``n`` conditions to show cells of, one per subgroup in turn (an unseen single, a combo, ...), so the few
    panels cover the kinds of test perturbations rather than the first names of the alphabet."""
    by_group: dict[str, list] = {}
    for k in sorted(keys):
        by_group.setdefault(subgroup_of(k), []).append(k)
    picks, queues = [], [list(v) for _, v in sorted(by_group.items())]
    while len(picks) < n and any(queues):
        for q in queues:
            if q and len(picks) < n:
                picks.append(q.pop(0))
    return picks


class PlotData:
    """Filled by the runner while it scores; ``cells_of`` names the conditions (and ``cells_for`` the predictor)
    whose cells are kept."""

    def __init__(self, cells_of: list[tuple[str, str]] | None = None, cells_for: str = "model"):
        self.cells_of, self.cells_for = set(cells_of or []), cells_for
        self.keys: list[str] = []
        self.subgroups: dict[str, str] = {}
        self.true: dict[str, np.ndarray] = {}
        self.pred: dict[str, dict[str, np.ndarray]] = {}  # predictor -> condition -> shift
        self.cells: dict[str, dict[str, np.ndarray]] = {}  # condition -> {"pred", "true", "control"}
        self.pca_var = np.full(2, np.nan)

    def add_shift(self, name: str, key: str, subgroup: str, de_idx: np.ndarray, pred: np.ndarray,
                  true: np.ndarray) -> None:
        idx = np.asarray(de_idx[:N_SHIFT], dtype=int)
        if key not in self.true:
            self.keys.append(key)
            self.subgroups[key] = subgroup
            self.true[key] = _pad(true[idx])
        self.pred.setdefault(name, {})[key] = _pad(pred[idx])

    def wants_cells(self, name: str, context: str, condition: str) -> bool:
        return name == self.cells_for and (context, condition) in self.cells_of

    def add_cells(self, key: str, pred_pcs: np.ndarray, true_pcs: np.ndarray, ctrl_pcs: np.ndarray) -> None:
        self.cells[key] = {k: np.asarray(v[:MAX_CELLS, :2], dtype=np.float32)
                           for k, v in (("pred", pred_pcs), ("true", true_pcs), ("control", ctrl_pcs))}

    def to_arrays(self) -> dict[str, np.ndarray]:
        names = sorted(self.pred)
        out = {"keys": np.array(self.keys, dtype=str), "subgroups": np.array([self.subgroups[k] for k in self.keys], dtype=str),
               "true_shift": _stack([self.true[k] for k in self.keys]), "predictors": np.array(names, dtype=str),
               "pca_keys": np.array(sorted(self.cells), dtype=str), "pca_var": np.asarray(self.pca_var, float)}
        nan = np.full(N_SHIFT, np.nan, dtype=np.float32)
        for i, n in enumerate(names):
            out[f"pred_shift_{i}"] = _stack([self.pred[n].get(k, nan) for k in self.keys])
        for i, k in enumerate(sorted(self.cells)):
            for part, arr in self.cells[k].items():
                out[f"pca_{part}_{i}"] = arr
        return out


def _pad(v: np.ndarray) -> np.ndarray:
    out = np.full(N_SHIFT, np.nan, dtype=np.float32)
    out[: len(v)] = v
    return out


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, N_SHIFT), np.float32)


def plotdata_path(eval_json: str | Path) -> Path:
    p = Path(eval_json)
    return p.with_name(p.stem + ".plotdata.npz")


def save_plotdata(plot: PlotData, eval_json: str | Path) -> Path:
    path = plotdata_path(eval_json)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **plot.to_arrays())
    return path


def load_plotdata(eval_json: str | Path) -> dict | None:
    """``{"keys", "subgroups", "true", "pred": {predictor: (n, 20)}, "cells": {condition: {...}}, "pca_var"}``,
    or None where the evaluation kept none (an older run, a router or benchmark JSON)."""
    path = plotdata_path(eval_json)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["predictors"]]
        return {"keys": [str(k) for k in z["keys"]], "subgroups": [str(s) for s in z["subgroups"]],
                "true": z["true_shift"], "pred": {n: z[f"pred_shift_{i}"] for i, n in enumerate(names)},
                "cells": {str(k): {p: z[f"pca_{p}_{i}"] for p in ("pred", "true", "control")}
                          for i, k in enumerate(z["pca_keys"])},
                "pca_var": z["pca_var"]}
