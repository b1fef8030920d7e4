"""Out-of-core preparation: the raw matrix read in row chunks, never whole, from memory or from the h5ad on disk.

Both preparation paths run the code below; they differ only in where rows come from (``RawMatrix``), so a dataset
prepared in memory and from disk gives the same prepared file, genes and DE lists. Passes over the kept rows:
0. a strided sample of the stored values (only when ``data.input_type=auto``) to tell counts from log1p, exactly the
   sample ``schema.detect_input_type`` takes of an in-memory matrix;
1. moments of ``expm1(log1p X)`` per batch for the seurat HVG dispersions (skipped when every gene is kept);
2. normalise + log1p each chunk again, keep the selected genes and append it (and the counts) to the prepared file,
   accumulating per-(context, condition) moments for DE and pseudobulk.
Memory is bounded by a chunk (``CHUNK_VALUES`` cells x genes) plus the K x G moments, whatever the number of cells.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from scfate.data import schema
from scfate.data.load import h5ad_in_memory_bytes, read_h5ad
from scfate.data.stats import GroupMoments
from scfate.errors import DataError
from scfate.utils.memory import available_memory_bytes, gib, release_free_memory

log = logging.getLogger(__name__)

CHUNK_VALUES = 1 << 24  # cells x genes per chunk: 64 MiB of float32 even for a dense raw matrix
# above this many cells x genes preparation always reads from disk (e.g. 125k cells x 8k genes, 500k x 2k): the
# in-memory path only saves re-reading the file, and the whole raw matrix in memory stops being cheap there
CHUNKED_ABOVE = 1_000_000_000
# the in-memory path holds every array of the raw file, plus chunk temporaries and the moments
PREP_MEMORY_FACTOR = 1.5
SAMPLE_VALUES = 2_000_000  # schema._values_sample's default: the same sample, so the same counts/log1p call


def chunk_rows(n_vars: int) -> int:
    return max(1, CHUNK_VALUES // max(int(n_vars), 1))


class RawMatrix:
    """Rows of the raw expression matrix (``X``, or another key such as ``layers/counts``): an in-memory matrix,
    or a CSR / dense dataset of an h5ad opened read-only, so that preparing never modifies the raw file."""

    def __init__(self, X, shape: tuple[int, int], indptr: np.ndarray | None):
        self.X, self.shape, self._indptr = X, shape, indptr

    @classmethod
    def in_memory(cls, X) -> RawMatrix:
        if sp.issparse(X) and X.format != "csr":
            X = sp.csr_matrix(X)  # rows are what every pass reads
        X = X if sp.issparse(X) else np.asarray(X)
        return cls(X, X.shape, X.indptr if sp.issparse(X) else None)

    @classmethod
    def on_disk(cls, f, key: str, path: Path) -> RawMatrix:
        from anndata.io import sparse_dataset

        elem = f[key]
        encoding = elem.attrs.get("encoding-type", "array")
        if encoding == "csr_matrix":
            return cls(sparse_dataset(elem), tuple(elem.attrs["shape"]), elem["indptr"][:])
        if encoding == "csc_matrix":
            raise DataError(f"{path} stores {key} column-major (CSC), which cannot be read a few rows at a time. "
                            "Convert it once: a = anndata.read_h5ad(path); a.X = a.X.tocsr(); a.write_h5ad(path) "
                            "(or prepare it in memory: data.backed=false, if it fits).")
        return cls(elem, tuple(elem.shape), None)

    def rows(self, idx: np.ndarray):
        """Raw rows ``idx`` (increasing): CSR or a dense array, as stored."""
        if len(idx) and idx[-1] - idx[0] == len(idx) - 1:
            part = self.X[int(idx[0]):int(idx[-1]) + 1]  # a contiguous run: one slice read
        else:
            part = self.X[idx]
        return sp.csr_matrix(part) if sp.issparse(part) else np.asarray(part)

    def n_values(self, rows: np.ndarray) -> int:
        """Values ``schema.detect_input_type`` would sample from these rows: stored entries of CSR, all of dense."""
        if self._indptr is None:
            return len(rows) * self.shape[1]
        return int((self._indptr[rows + 1] - self._indptr[rows]).sum())

    def chunks(self, rows: np.ndarray):
        """``(start, raw chunk)`` over the kept ``rows``, ``chunk_rows`` at a time; ``start`` indexes ``rows``."""
        size = chunk_rows(self.shape[1])
        for start in range(0, len(rows), size):
            yield start, self.rows(rows[start:start + size])
        release_free_memory()  # the pass's chunk temporaries, freed, back to the OS before the next pass


@dataclass
class RawFile:
    """What preparation reads of a raw h5ad: obs and var in memory, X (and a counts layer) as ``RawMatrix``."""

    X: RawMatrix
    counts: RawMatrix | None
    obs: object  # pandas DataFrame
    var: object
    log1p_base: float | None  # uns['log1p']['base'] (scanpy's mark of a log of another base)


@contextlib.contextmanager
def open_raw(path: Path, backed: bool) -> Iterator[RawFile]:
    """The raw file in memory, or opened read-only on disk for the duration of the block."""
    if not backed:
        adata = read_h5ad(path)
        if adata.X is None:
            raise _no_x(path)
        layer = adata.layers["counts"] if "counts" in adata.layers else None
        yield RawFile(RawMatrix.in_memory(adata.X), None if layer is None else RawMatrix.in_memory(layer),
                      adata.obs, adata.var, adata.uns.get("log1p", {}).get("base"))
        return
    import h5py
    from anndata.io import read_elem

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    try:
        try:
            obs, var = read_elem(f["obs"]), read_elem(f["var"])
        except Exception:  # a file of an old anndata version: its own reader converts it
            legacy = read_h5ad(path, backed=True)
            obs, var = legacy.obs, legacy.var
            legacy.file.close()
        base = read_elem(f["uns/log1p/base"]) if "uns/log1p/base" in f else None
        if "X" not in f:
            raise _no_x(path)
        counts = None
        if "layers/counts" in f and f["layers/counts"].attrs.get("encoding-type") != "csc_matrix":
            counts = RawMatrix.on_disk(f, "layers/counts", path)
        elif "layers/counts" in f:  # only log1p input carries it along, and CSC cannot be read by rows
            log.warning("%s: layers['counts'] is stored CSC and is not carried into the prepared file", path)
        raw = RawFile(RawMatrix.on_disk(f, "X", path), counts, obs, var, base)
        del obs, var  # the caller may drop raw.obs once it has its own copy: no reference left here
        yield raw
    finally:
        f.close()


def _unreadable(path: Path, exc: Exception) -> DataError:
    return DataError(f"Cannot read {path} as an .h5ad file ({type(exc).__name__}: {exc}). Is it a complete "
                     "AnnData file? Re-download it or re-export it with adata.write_h5ad().")


def _no_x(path: Path) -> DataError:
    return DataError(f"{path} has no expression matrix X: scFATE reads counts or log1p values from adata.X.")


def plan(path: Path, backed: bool) -> str | None:
    """Why preparation should read ``path`` from disk, or None to read it into memory first."""
    if backed:
        return "data.backed=true"
    n_obs, n_vars = raw_shape(path)
    if n_obs * n_vars > CHUNKED_ABOVE:
        return f"{n_obs} cells x {n_vars} genes = {n_obs * n_vars:.2g} cells x genes, above {CHUNKED_ABOVE:.0e}"
    need, avail = PREP_MEMORY_FACTOR * h5ad_in_memory_bytes(path), available_memory_bytes()
    if avail is not None and need > avail:
        return f"reading it into memory needs about {gib(need)}, {gib(avail)} are available"
    return None


def raw_shape(path: Path) -> tuple[int, int]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "X" not in f:
                raise _no_x(path)
            X = f["X"]
            return tuple(int(n) for n in (X.attrs["shape"] if isinstance(X, h5py.Group) else X.shape))
    except (OSError, KeyError) as exc:
        raise _unreadable(path, exc) from exc


def normalised(X, kind: str):
    """A chunk as prepare stores it: float32 CSR log1p in ``.X``, the counts in ``.layers['counts']`` for counts
    input. ``schema.normalise_expression`` works row by row, so chunks give the rows of the whole matrix exactly."""
    import anndata as ad

    chunk = ad.AnnData(X=X)
    schema.normalise_expression(chunk, kind)
    return chunk


def input_type(raw: RawMatrix, rows: np.ndarray, declared: str) -> str:
    """Pass 0: check every value and tell counts from log1p on ``schema._values_sample``'s strided sample."""
    if declared != "auto":
        return declared
    step = raw.n_values(rows) // SAMPLE_VALUES + 1
    parts, offset = [], 0
    for _, X in raw.chunks(rows):
        schema.check_values(X)
        values = X.data if sp.issparse(X) else X.ravel()
        # the entries at global positions 0, step, 2*step, ...; a copy: a view would keep every chunk alive
        parts.append(values[(-offset) % step::step].copy())
        offset += values.size
    return schema.detect_input_type(np.concatenate(parts) if parts else np.zeros(0), declared)


def hvg_moments(raw: RawMatrix, rows: np.ndarray, kind: str, batch: np.ndarray, n_batches: int,
                log1p_base: float | None = None) -> GroupMoments:
    """Pass 1: moments of ``expm1`` of the log1p values per batch (what scanpy's seurat flavour measures)."""
    moments = GroupMoments(n_batches, raw.shape[1])
    for start, X in raw.chunks(rows):
        L = normalised(X, kind).X
        data = L.data
        if log1p_base is not None:  # scanpy undoes a log1p of another base the same way (float64, then float32)
            data = (data.astype(np.float64) * np.log(log1p_base)).astype(np.float32)
        moments.add(sp.csr_matrix((np.expm1(data), L.indices, L.indptr), shape=L.shape),
                    batch[start:start + L.shape[0]])
    return moments


def _append(f, key: str, X) -> None:
    from anndata.io import sparse_dataset, write_elem

    if key in f:
        sparse_dataset(f[key]).append(X)
    else:  # anndata writes sparse arrays resizable, so later chunks append in place
        parent, _, name = key.rpartition("/")
        write_elem(f[parent] if parent else f, name, X)


def write_prepared(path: Path, raw: RawMatrix, rows: np.ndarray, kind: str, genes: np.ndarray, obs, var,
                   groups: np.ndarray, n_groups: int, counts: RawMatrix | None = None) -> GroupMoments:
    """Pass 2: write the prepared h5ad chunk by chunk (X: log1p float32 CSR of the selected genes; layers/counts)
    and return the per-group moments of X. ``counts``: a raw counts layer to carry along for log1p input."""
    import anndata as ad
    import h5py

    ad.AnnData(obs=obs, var=var).write_h5ad(path)  # obs, var and the empty groups; X is appended below
    moments = GroupMoments(n_groups, len(genes))
    extra = counts.chunks(rows) if counts is not None and kind != "counts" else None
    with h5py.File(path, "a") as f:
        for start, X in raw.chunks(rows):
            chunk = normalised(X, kind)
            x = chunk.X[:, genes]
            _append(f, "X", x)
            if kind == "counts":
                _append(f, "layers/counts", chunk.layers["counts"][:, genes])
            elif extra is not None:
                _append(f, "layers/counts", sp.csr_matrix(next(extra)[1])[:, genes])
            moments.add(x, groups[start:start + x.shape[0]])
    return moments


def too_large_for_memory(path: Path) -> str | None:
    """A message if reading ``path`` whole would not fit in the memory available now, else None."""
    need, avail = h5ad_in_memory_bytes(path), available_memory_bytes()
    if avail is None or need <= avail:
        return None
    return (f"{path} is too large for memory: reading it needs about {gib(need)}, only {gib(avail)} are available. "
            "Set data.backed=true to train from the file on disk (batches are read as they are needed).")
