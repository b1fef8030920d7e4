"""The scale benchmark's synthetic screens (benchmarks/scale_data.py): written in chunks, read back whole."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import scale_data  # noqa: E402


def test_screen_written_in_chunks_reads_back_as_one_csr(tmp_path, monkeypatch):
    import anndata as ad

    monkeypatch.setattr(scale_data, "CHUNK_CELLS", 700)  # 5 chunks, the last one short
    info = scale_data.write_screen(tmp_path / "s.h5ad", 3000, n_genes=50, n_perts=6, seed=3)
    a = ad.read_h5ad(tmp_path / "s.h5ad")
    assert a.shape == (3000, 50) and a.X.format == "csr" and a.X.nnz == info["nnz"] > 0
    assert set(a.obs["condition"].astype(str)) == {"ctrl", *[f"G{i:05d}" for i in range(6)]}
    assert 0.1 < (a.obs["condition"] == "ctrl").mean() < 0.3
    assert np.array_equal(a.X.data, np.round(a.X.data))  # raw counts
    # the knocked-down gene is lower in its own cells than in controls
    ctrl = a.X[(a.obs["condition"] == "ctrl").to_numpy()].toarray().mean(0)
    kd = a.X[(a.obs["condition"] == "G00002").to_numpy()].toarray().mean(0)
    assert kd[2] < 0.5 * ctrl[2]
    rows = np.array([5, 1, 2999, 1])
    np.testing.assert_array_equal(scale_data.H5pyRows(tmp_path / "s.h5ad")(rows), a.X[rows].toarray())
    assert scale_data.sequential_read(tmp_path / "s.h5ad")["cells_per_s"] > 0
    assert not (tmp_path / "s.h5ad.tmp").exists()
