"""Evaluate predictions made elsewhere (another model, another package): an AnnData of predicted cells."""

from __future__ import annotations

import numpy as np

from scfate.data.schema import check_same_genes
from scfate.errors import DataError
from scfate.models.predictor import Condition, NotPredictable, Prediction, Predictor


class AnnDataPredictions(Predictor):
    """Predicted cells from an h5ad whose obs[condition_key] holds canonical condition names (and obs[context_key]
    the context, when the dataset has several). Its genes must be the prepared dataset's genes."""

    def __init__(self, path, genes: list[str], condition_key: str = "condition", context_key: str | None = None):
        from scfate.data.load import read_h5ad

        self.name = f"predictions:{path}"
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

    def predict(self, cond: Condition, ctrl_cells: np.ndarray) -> Prediction:
        mask = self.cond == cond.condition
        if self.ctx is not None:
            mask &= self.ctx == cond.context
        if not mask.any():
            raise NotPredictable(f"no predicted cells for {cond.condition!r} in context {cond.context!r}")
        X = self.adata.X[np.flatnonzero(mask)]
        X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
        return Prediction(X.mean(0), X)
