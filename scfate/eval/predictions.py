"""Evaluate predictions made elsewhere (another model, another package): an AnnData of predicted cells."""

from __future__ import annotations

import numpy as np

from scfate.data.schema import check_same_genes
from scfate.errors import DataError
from scfate.models.predictor import Condition, NotPredictable, Prediction, Predictor

CHUNK_ROWS = 8192  # the finite-value check reads this many rows at a time, so a big file is never densified whole


class AnnDataPredictions(Predictor):
    """Predicted cells from an h5ad whose obs[condition_key] holds canonical condition names (and obs[context_key]
    the context, when the dataset has several). Its genes must be the prepared dataset's genes."""

    def __init__(self, path, genes: list[str], condition_key: str = "condition", context_key: str | None = None):
        from scfate.data.load import read_h5ad

        self.name = f"predictions:{path}"
        self.path = path
        self.adata = read_h5ad(path)
        check_same_genes(genes, list(self.adata.var_names), f"Prediction file {path}",
                         "Subset/reorder it with pred[:, genes] to the genes of the prepared dataset "
                         "(data/prepared/<dataset>/prepared.h5ad).")
        obs = self.adata.obs
        for key in (condition_key, context_key):
            if key is not None and key not in obs.columns:
                raise DataError(f"Prediction file {path} lacks obs column {key!r}; it has {list(obs.columns)}.")
        self.cond = obs[condition_key].astype(str).to_numpy()
        self.ctx = obs[context_key].astype(str).to_numpy() if context_key else None
        self._check_finite()

    def _check_finite(self) -> None:
        """NaN/Inf would reach sklearn's PCA as a bare ValueError mid-evaluation: name the file and conditions."""
        import scipy.sparse as sp

        X = self.adata.X
        if sp.issparse(X):  # only stored values can be NaN/Inf; their rows come from the CSR row pointer
            X = sp.csr_matrix(X)
            rows = np.unique(np.searchsorted(X.indptr, np.flatnonzero(~np.isfinite(X.data)), side="right") - 1)
        else:
            rows = np.concatenate([start + np.flatnonzero(~np.isfinite(np.asarray(X[start:start + CHUNK_ROWS])).all(1))
                                   for start in range(0, self.adata.n_obs, CHUNK_ROWS)] or [np.array([], int)])
        if not len(rows):
            return
        names = sorted({self.cond[r] if self.ctx is None else f"{self.ctx[r]}/{self.cond[r]}" for r in rows})
        raise DataError(f"Prediction file {self.path} has NaN/Inf values in {len(rows)} predicted cell(s) of "
                        f"{len(names)} perturbation(s): {names[:10]}{' …' if len(names) > 10 else ''}. Fix or drop "
                        "those cells (e.g. np.nan_to_num, or pred[np.isfinite(pred.X).all(1)]) and evaluate again.")

    def covered(self, contexts: list[str]) -> set[tuple[str, str]]:
        """The (context, condition) pairs this file has cells for; without a context column, every context."""
        if self.ctx is None:
            return {(c, cond) for c in contexts for cond in set(self.cond.tolist())}
        return set(zip(self.ctx.tolist(), self.cond.tolist()))

    def predict(self, cond: Condition, ctrl_cells: np.ndarray) -> Prediction:
        mask = self.cond == cond.condition
        if self.ctx is not None:
            mask &= self.ctx == cond.context
        if not mask.any():
            raise NotPredictable(f"no predicted cells for {cond.condition!r} in context {cond.context!r}")
        X = self.adata.X[np.flatnonzero(mask)]
        X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
        return Prediction(X.mean(0), X)
