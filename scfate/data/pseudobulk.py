"""Per-(context, condition) cell counts and expression sums of the prepared matrix, accumulated by preparation's
single pass over the data (the DE statistics' first moments) and kept beside the prepared file.

Evaluation, the baselines and the prior need the pseudobulk mean of every condition and of every context's
controls; with these sums none of them reads the matrix again (a genome-wide screen is millions of rows). A subset
of a group (the training cells once the backbone holds some out) is the group's sums less the left-out rows', so
only those rows are read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scfate.data.rows import RowReader, mean_rows
from scfate.errors import DataError
from scfate.utils.io import atomic_path, atomic_write_json

# the sums as .npy, memory-mapped when read (a genome-wide screen's K x G float64 is hundreds of MB); keys and
# counts in JSON beside them
FILE, KEYS = "group_sums.npy", "group_sums.json"


@dataclass
class GroupSums:
    """``n [K]`` cells and float64 ``sums [K, G]`` of each (context, condition) group ``keys[k]``."""

    keys: list[tuple[str, str]]
    n: np.ndarray
    sums: np.ndarray

    def __post_init__(self):
        self._index = {key: k for k, key in enumerate(self.keys)}

    @classmethod
    def from_moments(cls, moments, keys) -> GroupSums:
        """From preparation's ``stats.GroupMoments`` over ``keys`` (preprocess.condition_codes)."""
        return cls([(str(c), str(k)) for c, k in keys], moments.n.copy(), moments.sums()[0])

    def save(self, folder: Path) -> None:
        with atomic_path(folder / FILE, suffix=".npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(self.sums, dtype=np.float64))
        atomic_write_json(folder / KEYS, {"keys": [list(k) for k in self.keys], "n": self.n.tolist()})

    @classmethod
    def load(cls, folder: Path) -> GroupSums:
        meta = json.loads((folder / KEYS).read_text())
        return cls([tuple(k) for k in meta["keys"]], np.asarray(meta["n"], np.int64),
                   np.load(folder / FILE, mmap_mode="r"))

    def n_of(self, context: str, condition: str) -> int:
        k = self._index.get((context, condition))
        return 0 if k is None else int(self.n[k])

    def mean(self, context: str, condition: str, n_cells: int | None = None) -> np.ndarray:
        """Mean expression of all cells of a group; ``n_cells``, how many the caller's group holds, is checked."""
        k = self._index.get((context, condition))
        if k is None or (n_cells is not None and n_cells != self.n[k]):
            have = "none" if k is None else int(self.n[k])
            raise DataError(f"{FILE} holds {have} cells of ({context!r}, {condition!r}), the prepared data "
                            f"{n_cells}: the cache is inconsistent. Prepare it again with rebuild_data=true.")
        return np.asarray(self.sums[k], np.float64) / self.n[k]

    def mean_without(self, context: str, condition: str, left_out: np.ndarray, reader: RowReader) -> np.ndarray:
        """Mean of a group's cells other than ``left_out`` (row indices of that group): its sums less theirs."""
        m = len(left_out)
        if not m:
            return self.mean(context, condition)
        k = self._index.get((context, condition))
        if k is None:
            return self.mean(context, condition)  # raises: no such group
        if m >= self.n[k]:
            raise ValueError(f"({context!r}, {condition!r}) has {self.n[k]} cells; leaving {m} out leaves none")
        left_sum = mean_rows(reader, left_out) * m
        return (self.sums[k] - left_sum) / (self.n[k] - m)
