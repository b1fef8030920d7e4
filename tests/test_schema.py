import numpy as np
import pytest
import scipy.sparse as sp
from conftest import make_adata

from scfate.data import DataError, DataSpec
from scfate.data import schema as S

CTRL = {"control", "ctrl", "non-targeting"}


@pytest.mark.parametrize("label,expected", [
    ("ctrl", "control"), ("control", "control"), ("Non-Targeting", "control"), ("CTRL", "control"),
    ("KLF1+ctrl", "KLF1"), ("ctrl+KLF1", "KLF1"), ("KLF1", "KLF1"),
    ("MAP2K6+KLF1", "KLF1+MAP2K6"), ("KLF1+MAP2K6", "KLF1+MAP2K6"), (" SET + KLF1 ", "KLF1+SET"),
    ("ctrl+ctrl", "control"),
])
def test_canonical_perturbation(label, expected):
    assert S.canonical_perturbation(label, CTRL, "+") == expected


def test_combinations_are_order_invariant_and_drugs_unsplit():
    assert S.canonical_perturbation("B+A", CTRL, "+") == S.canonical_perturbation("A+B", CTRL, "+")
    assert S.canonical_perturbation("(+)-JQ1", CTRL, None) == "(+)-JQ1"
    assert S.members("A+B", "gene") == ["A", "B"] and S.members("(+)-JQ1", "drug") == ["(+)-JQ1"]


def _spec(**kw):
    return DataSpec(**{"name": "t", "path": "x.h5ad", **kw})


def test_normalise_obs_adds_canonical_columns():
    a = make_adata()
    S.normalise_obs(a, _spec(control_values=["ctrl"]))
    perts = set(a.obs[S.PERT].astype(str))
    assert perts == {"control", "A", "B", "C", "A+B", "B+C", "A+D"}
    assert a.obs[S.IS_CONTROL].sum() == 2 * 12
    assert set(a.obs[S.CONTEXT].astype(str)) == {"c1", "c2"}


def test_missing_column_lists_available_columns():
    a = make_adata()
    with pytest.raises(DataError, match=r"'perturbation'.*Available obs columns: \['condition', 'cell_type'\]"):
        S.normalise_obs(a, _spec(perturbation_key="perturbation"))
    with pytest.raises(DataError, match="context_key"):
        S.normalise_obs(a, _spec(context_key="celltype"))


def test_no_controls_lists_labels_seen():
    a = make_adata(perts=("A", "B"))
    with pytest.raises(DataError, match=r"No control cells.*'A': 24"):
        S.normalise_obs(a, _spec())


def test_drug_doses_become_conditions():
    a = make_adata(perts=("ctrl", "drugX"))
    a.obs["dose"] = [0.0 if p == "ctrl" else d for p, d in zip(a.obs.condition, np.tile([10, 100], a.n_obs // 2))]
    S.normalise_obs(a, _spec(perturbation_type="drug", dose_key="dose", control_values=["ctrl"], combo_separator=None))
    assert set(a.obs[S.CONDITION].astype(str)) == {"control", "drugX@10", "drugX@100"}
    a.obs["dose"] = a.obs["dose"].astype(object)
    a.obs.loc[~a.obs[S.IS_CONTROL], "dose"] = "high"
    with pytest.raises(DataError, match="non-numeric doses"):
        S.normalise_obs(a, _spec(perturbation_type="drug", dose_key="dose", control_values=["ctrl"]))


def test_counts_detected_and_normalised_with_counts_layer():
    a = make_adata(counts=True)
    raw = a.X.copy()
    assert S.normalise_expression(a, "auto") == "counts"
    assert (a.layers["counts"] != raw).nnz == 0
    # log1p(normalize_total to 1e4): expm1 of each row sums to 1e4
    np.testing.assert_allclose(np.expm1(a.X.toarray()).sum(1), 1e4, rtol=1e-3)


def test_log_normalised_input_used_as_is():
    a = make_adata(counts=False)
    before = a.X.toarray()
    assert S.normalise_expression(a, "auto") == "log1p"
    np.testing.assert_array_equal(a.X.toarray(), before)
    assert "counts" not in a.layers


@pytest.mark.parametrize("bad,msg", [(np.nan, "NaN/Inf"), (np.inf, "NaN/Inf"), (-1.0, "negative values")])
def test_bad_values_rejected(bad, msg):
    X = sp.random(10, 5, density=0.5, format="csr", random_state=0)
    X.data[0] = bad
    with pytest.raises(DataError, match=msg):
        S.check_values(X)


def test_unlogged_normalised_values_rejected():
    X = sp.csr_matrix(np.array([[100.5, 0.0], [2.5, 300.25]]))
    with pytest.raises(DataError, match="not log-transformed"):
        S.detect_input_type(X)


def test_duplicate_gene_names_rejected():
    import pandas as pd

    with pytest.raises(DataError, match=r"duplicate gene name.*\['TP53'\]"):
        S.check_gene_names(pd.Index(["TP53", "MYC", "TP53"]))


def test_data_spec_validates_keys():
    with pytest.raises(DataError, match="split.mode='gears'"):
        _spec(split={"mode": "gears"})
    with pytest.raises(DataError, match=r"Unknown key\(s\) \['sed'\]"):
        _spec(split={"sed": 1})
    with pytest.raises(DataError, match="no source"):
        DataSpec(name="x")
    assert _spec(control_value="NTC").control_values[-1] == "NTC"
