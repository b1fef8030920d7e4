"""Test setup: no network, caches under a temp folder, and helpers for the real data in ../shared/data."""

import os
import tempfile
from pathlib import Path

# huggingface_hub and wandb read these at import time, so they are set before anything imports them
_CACHE = Path(tempfile.mkdtemp(prefix="scfate-test-cache-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_CACHE / "hf")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_DIR"] = str(_CACHE / "wandb")
os.environ["WANDB_SILENT"] = "true"
os.environ["NUMBA_CACHE_DIR"] = str(_CACHE / "numba")
os.environ["MPLCONFIGDIR"] = str(_CACHE / "mpl")
# pytest-xdist runs one worker per core (pyproject addopts): one thread each, or the workers' torch thread pools
# contend for the same cores; torch reads this at import, and the runs a test starts inherit it
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The team's real data folder; tests using it skip (with the reason) where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the checkout as ../shared/data)")
    return SHARED_DATA


def make_adata(n_per: int = 12, perts=("ctrl", "A+ctrl", "B+ctrl", "C", "A+B", "B+C", "D+A"), contexts=("c1", "c2"),
               n_genes: int = 30, counts: bool = True, seed: int = 0):
    """A tiny Perturb-seq-like AnnData with GEARS-style labels; genes A and C are measured."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    rows = [(p, c) for c in contexts for p in perts for _ in range(n_per)]
    obs = pd.DataFrame(rows, columns=["condition", "cell_type"], index=[f"cell{i}" for i in range(len(rows))])
    genes = ["A", "C"] + [f"G{i}" for i in range(n_genes - 2)]
    mean = rng.gamma(2.0, 2.0, size=n_genes)
    shift = {p: rng.normal(0, 1, n_genes) for p in perts}
    lam = np.stack([mean * np.exp(0.5 * shift[p] if p != "ctrl" else 0) for p, _ in rows])
    X = rng.poisson(lam).astype(np.float32)
    if not counts:
        X = np.log1p(X / X.sum(1, keepdims=True).clip(1) * 1e4).astype(np.float32)
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=genes))
