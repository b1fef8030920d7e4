"""The built-in simulator: deterministic, raw integer counts, GEARS-style labels, real-file formats, and a hidden
structure that features can learn (the point of the default dataset)."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scfate.data.synthetic import DEFAULTS, simulate
from scfate.errors import DataError

SMALL = dict(n_genes=60, n_modules=4, n_perturbed_genes=20, n_background_genes=20, n_combos=10,
             cells_per_condition=10, n_control_cells=30)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_FEATURES = {"gene2go": "human_gene2go_orgHsEgDb_3.16.tsv.gz", "go_terms": "go_terms_GOdb_3.16.tsv.gz",
                 "symbols": "human_symbol_entrez_ensembl_orgHsEgDb_3.16.tsv.gz",
                 "aliases": "human_symbol_aliases_orgHsEgDb_3.16.tsv.gz",
                 "progeny": "progeny_human_weights_wide.tsv.gz"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return simulate(SMALL, tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def drugs(tmp_path_factory):
    params = dict(SMALL, n_perturbed_genes=0, n_combos=0, n_drugs=8)
    return simulate(params, tmp_path_factory.mktemp("drugs"))


def _truth_rows(paths, context=0):
    truth = np.load(paths["truth"])
    return truth, {c: truth["true_effect"][context, i] for i, c in enumerate(truth["conditions"])}


def _first_line(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return f.readline().rstrip("\n")


def test_deterministic_across_directories(small, tmp_path):
    again = simulate(SMALL, tmp_path / "again")
    a, b = ad.read_h5ad(small["h5ad"]), ad.read_h5ad(again["h5ad"])
    assert (a.X != b.X).nnz == 0 and a.X.dtype == b.X.dtype
    pd.testing.assert_frame_equal(a.obs, b.obs)
    for key in ("gene2go", "go_terms", "symbols", "aliases", "progeny"):
        assert small[key].read_bytes() == again[key].read_bytes(), key
    other = ad.read_h5ad(simulate(dict(SMALL, seed=1), tmp_path / "seed1")["h5ad"])
    assert (a.X != other.X).nnz > 0


def test_cached_when_params_match(small):
    before = {k: p.stat().st_mtime_ns for k, p in small.items()}
    assert simulate(SMALL, small["h5ad"].parent) == small
    assert {k: p.stat().st_mtime_ns for k, p in small.items()} == before


def test_raw_integer_counts(small):
    a = ad.read_h5ad(small["h5ad"])
    assert a.X.format == "csr" and a.X.dtype == np.float32
    assert (a.X.data >= 0).all() and np.array_equal(a.X.data, np.round(a.X.data))
    assert 2000 < np.median(np.asarray(a.X.sum(1))) < 12000  # ~5000 UMI per cell
    assert list(a.var_names[:2]) == ["SYN0001", "SYN0002"]


def test_labels_follow_gears_conventions(small):
    obs = ad.read_h5ad(small["h5ad"]).obs
    labels = obs["condition"].astype(str)
    singles, doubles = labels[labels.str.endswith("+ctrl")], labels[~labels.str.contains("ctrl")]
    assert (labels == "ctrl").sum() == SMALL["n_control_cells"] * DEFAULTS["n_contexts"]
    assert singles.nunique() == SMALL["n_perturbed_genes"] and doubles.nunique() == SMALL["n_combos"]
    assert all(len(d.split("+")) == 2 for d in doubles.unique())
    assert set(obs["cell_type"]) == {"SYNCL1", "SYNCL2"} and set(obs["perturbation_type"]) == {"CRISPRi"}
    assert (labels.value_counts().drop("ctrl") == SMALL["cells_per_condition"] * 2).all()
    # about half the targets are measured genes, the rest (SYNP...) are not, as in real screens
    targets = {s.removesuffix("+ctrl") for s in singles.unique()}
    measured = targets & set(ad.read_h5ad(small["h5ad"]).var_names)
    assert 0 < len(measured) < len(targets)


def test_measured_target_is_knocked_down(small):
    a = ad.read_h5ad(small["h5ad"])
    norm = a.X.toarray() / a.X.sum(1).A
    labels = a.obs["condition"].astype(str).to_numpy()
    gene = next(g for g in a.var_names if f"{g}+ctrl" in set(labels))
    j = list(a.var_names).index(gene)
    assert norm[labels == f"{gene}+ctrl", j].mean() < 0.5 * norm[labels == "ctrl", j].mean()


@pytest.mark.parametrize("epistasis", [0.0, 0.3])
def test_double_effect_additivity(tmp_path, epistasis):
    paths = simulate(dict(SMALL, epistasis=epistasis), tmp_path)
    truth, eff = _truth_rows(paths)
    doubles = [c for c in truth["conditions"] if "+" in c]
    assert len(doubles) == SMALL["n_combos"]
    gap = max(np.abs(eff[d] - eff[d.split("+")[0]] - eff[d.split("+")[1]]).max() for d in doubles)
    assert gap < 1e-10 if epistasis == 0 else gap > 0.05


def test_feature_files_have_real_headers(small):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not present (only in the development checkout)")
    for key, real in REAL_FEATURES.items():
        assert _first_line(small[key]) == _first_line(SHARED_DATA / "gene_features" / real), key


def test_feature_files_cover_measured_and_perturbed_genes(small):
    gene2go = pd.read_csv(small["gene2go"], sep="\t")
    truth = np.load(small["truth"])
    needed = set(truth["genes"]) | set(truth["perturbed_genes"])
    assert needed <= set(gene2go["symbol"]) and set(gene2go["ontology"]) == {"BP", "MF", "CC"}
    assert gene2go["go_id"].str.fullmatch(r"GO:\d{7}").all()
    assert set(gene2go["go_id"]) <= set(pd.read_csv(small["go_terms"], sep="\t")["go_id"])
    progeny = pd.read_csv(small["progeny"], sep="\t")
    assert needed <= set(progeny["gene"]) and progeny.shape[1] == 15
    symbols = pd.read_csv(small["symbols"], sep="\t")
    assert symbols["ensembl_id"].str.match(r"ENSG\d{11}$").all()


def test_renamed_target_is_an_alias(tmp_path):
    paths = simulate(dict(SMALL, renamed_targets=1), tmp_path)
    truth = np.load(paths["truth"])
    renamed = [(s, lab) for s, lab in zip(truth["perturbed_genes"], truth["perturbed_labels"]) if s != lab]
    aliases = pd.read_csv(paths["aliases"], sep="\t")
    assert len(renamed) == 1
    assert ((aliases["symbol"] == renamed[0][0]) & (aliases["alias_symbol"] == renamed[0][1])).any()


def test_drugs(drugs):
    from rdkit import Chem

    compounds = pd.read_csv(drugs["compounds"])
    assert len(compounds) == 8 and compounds["Pathway"].notna().all()
    assert all(Chem.MolFromSmiles(s) is not None for s in compounds["canonical_smiles"])
    if (SHARED_DATA / "sciplex3_compounds.csv").is_file():
        assert _first_line(drugs["compounds"]) == _first_line(SHARED_DATA / "sciplex3_compounds.csv")
    obs = ad.read_h5ad(drugs["h5ad"]).obs
    treated = obs[obs["condition"] != "ctrl"]
    assert set(treated["condition"]) == set(compounds["name"]) and set(obs["perturbation_type"]) == {"drug"}
    assert set(treated["dose"]) == set(DEFAULTS["drug_doses"])
    # dose response: the effect grows in magnitude, never changes sign, as the dose increases
    truth, eff = _truth_rows(drugs)
    for name in compounds["name"]:
        curve = np.stack([eff[f"{name}@{d:g}"] for d in sorted(DEFAULTS["drug_doses"])])
        assert (np.diff(np.abs(curve), axis=0) >= 0).all() and (np.sign(curve) == np.sign(curve[-1])).all()


def test_bad_params_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="Valid keys"):
        simulate({"n_gens": 10}, tmp_path)
    with pytest.raises(DataError, match="n_genes"):
        simulate({"n_genes": "many"}, tmp_path)
    with pytest.raises(DataError, match="n_combos"):
        simulate(dict(SMALL, n_combos=10_000), tmp_path)


def test_effects_are_learnable_from_hidden_modules(tmp_path):
    """Zero-shot sanity: a ridge from module membership fitted on half the targets predicts the other half."""
    from sklearn.linear_model import Ridge

    paths = simulate(dict(SMALL, n_perturbed_genes=40, n_combos=0), tmp_path)
    truth, eff = _truth_rows(paths)
    Y = np.stack([eff[label] for label in truth["perturbed_labels"]])
    genes = list(truth["genes"])
    train = np.arange(len(Y)) % 2 == 0
    pred = Ridge(alpha=1.0).fit(truth["gene_modules"][train], Y[train]).predict(truth["gene_modules"][~train])
    target = Y[~train]
    for i, gene in enumerate(truth["perturbed_genes"][~train]):  # a target's own knockdown is not a module effect
        if gene in genes:
            pred[i, genes.index(gene)] = target[i, genes.index(gene)]
    r2 = 1 - ((target - pred) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()
    assert r2 > 0.5, r2
