"""Rows of the prepared expression matrix as dense float32, from memory or from the h5ad on disk.

On disk the prepared ``X`` is CSR (scfate.data.chunked.write_prepared), so a row is one slice of ``data`` and
``indices`` at offsets that ``indptr`` (read once: 8 bytes a cell) gives. Rows close together in the file are read
as one slice over the gap, rows far apart one slice each: a random training batch costs a few reads per row, and a
perturbation's cells (pseudobulks) are read in long runs. That is 2-4x faster than anndata's backed fancy indexing
(benchmarks/results/bench_scale.md) and reads nothing twice.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

MAX_GAP = 4096  # stored values (16 KB an array): read across a gap this short rather than issue another h5py read
# (~10 us each, the time to read ~30 KB of page cache)


class CsrFile:
    """CSR rows of one group (``X`` or ``layers/counts``) of an h5ad opened read-only."""

    def __init__(self, path: Path, key: str):
        import h5py

        self.file = h5py.File(path, "r")
        group = self.file[key]
        self.data, self.indices, self.indptr = group["data"], group["indices"], group["indptr"][:]
        self.shape = tuple(int(n) for n in group.attrs["shape"])

    def rows(self, idx: np.ndarray) -> sp.csr_matrix:
        """Rows ``idx`` (increasing, repeats allowed) as CSR."""
        starts, ends = self.indptr[idx], self.indptr[idx + 1]
        lengths = ends - starts
        # a block of rows starts where the gap from every earlier row's end exceeds MAX_GAP
        cuts = [0, *(np.flatnonzero(starts[1:] - np.maximum.accumulate(ends)[:-1] > MAX_GAP) + 1), len(idx)]
        data, indices = [], []
        first, last = starts.tolist(), ends.tolist()  # Python ints: ~10 us of h5py per read, little else
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            if hi - lo == 1:  # a row alone (most rows of a random batch): its slice is the row
                a, b = first[lo], last[lo]
                if b > a:
                    data.append(self.data[a:b])
                    indices.append(self.indices[a:b])
                continue
            a, b = first[lo], max(last[lo:hi])
            if b == a:
                continue
            lens = lengths[lo:hi]
            # positions of each row's values inside the slice [a, b); repeats and gaps between rows handled alike
            pos = np.arange(lens.sum()) + np.repeat(starts[lo:hi] - a - np.concatenate([[0], np.cumsum(lens)[:-1]]),
                                                    lens)
            data.append(self.data[a:b][pos])
            indices.append(self.indices[a:b][pos])
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        if not data:
            return sp.csr_matrix((len(idx), self.shape[1]), dtype=np.float32)
        return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr), shape=(len(idx), self.shape[1]))


class RowReader:
    """Dense float32 rows ``[len(idx), n_genes]`` from an in-memory matrix or a backed h5ad.

    A backed file is opened lazily in each process (DataLoader workers cannot share an h5py handle).
    """

    def __init__(self, matrix=None, path: str | Path | None = None, key: str = "X"):
        if (matrix is None) == (path is None):
            raise ValueError("RowReader needs exactly one of `matrix` or `path`.")
        self.matrix, self.path, self.key = matrix, path, key  # key: "X" or "layers/counts" inside the h5ad
        self._handle, self._pid = None, None

    def __getstate__(self):
        return {**self.__dict__, "_handle": None, "_pid": None}

    def _source(self):
        if self.matrix is not None:
            return self.matrix
        if self._handle is None or self._pid != os.getpid():
            import h5py

            with h5py.File(self.path, "r") as f:
                encoding = f[self.key].attrs.get("encoding-type")
            if encoding == "csr_matrix":
                self._handle = CsrFile(self.path, self.key)
            else:  # dense or CSC: anndata's reader (prepare always writes CSR, so only files from elsewhere)
                from anndata.io import sparse_dataset

                node = h5py.File(self.path, "r")[self.key]
                self._handle = sparse_dataset(node) if encoding == "csc_matrix" else node
            self._pid = os.getpid()
        return self._handle

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        source = self._source()
        if isinstance(source, CsrFile):  # it reads increasing indices
            order = np.argsort(idx, kind="stable")
            out = np.empty((len(idx), source.shape[1]), np.float32)
            out[order] = source.rows(idx[order]).toarray()
            return out
        if self.matrix is None:  # an h5py or anndata node: increasing, unique indices only
            uniq, inverse = np.unique(idx, return_inverse=True)
            rows = _dense(source[uniq])[inverse.ravel()]
        else:
            rows = _dense(source[idx])
        return np.asarray(rows, dtype=np.float32)


def _dense(rows) -> np.ndarray:
    return rows.toarray() if sp.issparse(rows) else np.asarray(rows)


def mean_rows(reader: RowReader, idx: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Mean of the given rows, read ``chunk`` rows at a time (float64 accumulator)."""
    total = None
    for start in range(0, len(idx), chunk):
        part = reader(idx[start:start + chunk]).astype(np.float64).sum(0)
        total = part if total is None else total + part
    return total / len(idx)
