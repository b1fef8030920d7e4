"""Perturbation features: container round trip, gene views and alias resolution, drug structure features."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from scfate.data.features import (
    PerturbationFeatures,
    build_drug_features,
    build_gene_features,
    log10_dose,
    tanimoto_matrix,
)
from scfate.data.features import genes as genes_mod
from scfate.errors import DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GF = DATA / "gene_features"
NORMAN = ("BPGM SAMD1 CBL CNN1 CEBPE RUNX1T1 FOXL2 HOXB9 FOXO4 HK2 IER5L KLF1 MAP2K6 TGFBR2 KMT2A MAP2K3 SLC38A2 "
          "MAP3K21 MAP4K3 MAP4K5 MAPK1 MIDN NIT1 PLK4 PTPN12 PTPN9 SET SGK1 TBX3 TMSB4X ZBTB10").split()


def need(path):
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (the shared data folder is not on this machine)")
    return path


def tsv(path, header, rows):
    path.write_text("\n".join(["\t".join(header)] + ["\t".join(map(str, r)) for r in rows]) + "\n")
    return path


@pytest.fixture
def tiny(tmp_path):
    """Hand-made symbol, alias, gene2go and PROGENy files: GENEA..GENEE; GENEE only has a rare GO term."""
    go_rows = [(i, g, "BP", t, "IDA") for i, (g, t) in enumerate(
        [("GENEA", "GO:1"), ("GENEB", "GO:1"), ("GENEC", "GO:1"), ("GENEA", "GO:2"), ("GENEB", "GO:2"),
         ("GENEC", "GO:3"), ("GENED", "GO:3"), ("GENEA", "GO:3"), ("GENED", "GO:2"), ("GENEE", "GO:9")])]
    go_rows.append((1, "GENEA", "BP", "GO:1", "IEA"))  # same pair, second evidence code
    cfg = {
        "symbols": tsv(tmp_path / "sym.tsv", ["entrez", "symbol", "gene_name", "ensembl_id"],
                       [(1, "GENEA", "a", "ENSG01"), (2, "GENEB", "b", "ENSG02"), (3, "GENEC", "c", "ENSG03"),
                        (4, "GENED", "d", "ENSG04"), (5, "GENEE", "e", "")]),
        "aliases": tsv(tmp_path / "alias.tsv", ["entrez", "symbol", "alias_symbol"],
                       [(1, "GENEA", "OLDA"), (2, "GENEB", "AMB"), (3, "GENEC", "AMB"), (2, "GENEB", "TIE"),
                        (4, "GENED", "TIE"), (1, "GENEA", "RETA")]),
        "go": {"annotations": tsv(tmp_path / "gene2go.tsv", ["entrez", "symbol", "ontology", "go_id", "evidence"],
                                  go_rows), "n_components": 4, "min_genes_per_term": 2},
        # PROGENy keeps the retired name RETA for GENEA; GENEC is there too (so AMB -> GENEC wins on views)
        "progeny": {"weights": tsv(tmp_path / "prog.tsv", ["gene", "P1", "P2"],
                                   [("RETA", 1.0, ""), ("GENEC", "", 2.0)])},
    }
    return cfg


def test_roundtrip_without_pickle(tmp_path):
    f = PerturbationFeatures("gene", ["A", "B"], np.arange(6).reshape(2, 3), [{"name": "go", "start": 0, "stop": 3}],
                             np.array([[True], [False]]), {"A": "A", "B": "B1"})
    for name in ("f.npz", "f_no_suffix"):
        g = PerturbationFeatures.load(f.save(tmp_path / name))
        assert (g.kind, g.units, g.views, g.resolved) == (f.kind, f.units, f.views, f.resolved)
        assert g.matrix.dtype == np.float32 and np.array_equal(g.matrix, f.matrix)
        assert np.array_equal(g.present, f.present) and g.index() == {"A": 0, "B": 1}
        with np.load(tmp_path / name, allow_pickle=False) as z:  # every array loads with pickle off
            assert all(z[k].dtype != object for k in z.files)
    assert list(tmp_path.iterdir()) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_alias_resolution_tiny(tiny):
    f = build_gene_features(["genea", "OLDA", "AMB", "TIE", "ENSG04.7", "GENEB"], tiny)
    assert f.resolved == {"genea": "GENEA", "OLDA": "GENEA", "AMB": "GENEC", "TIE": "GENEB",
                          "ENSG04.7": "GENED", "GENEB": "GENEB"}
    i = f.index()
    assert np.array_equal(f.matrix[i["genea"]], f.matrix[i["OLDA"]])
    # PROGENy lists GENEA under its retired name RETA: found through the alias table
    assert f.present[i["genea"]].tolist() == [True, True]
    assert f.view("progeny")[i["genea"]].tolist() == [1.0, 0.0]


def test_go_view_tiny(tiny, tmp_path, monkeypatch):
    f = build_gene_features(["GENEA", "GENED", "GENEC"], tiny, cache_dir=tmp_path / "cache")
    assert f.matrix.shape == (3, 4 + 2) and f.views[0] == {"name": "go", "start": 0, "stop": 4}
    assert f.present[:, 0].all() and np.abs(f.view("go")).sum(1).min() > 0
    # the cache is reused (no refit) and gives the same numbers
    monkeypatch.setattr(genes_mod, "_tfidf_svd", lambda *a: pytest.fail("GO SVD refit despite cache"))
    g = build_gene_features(["GENEA", "GENED", "GENEC"], tiny, cache_dir=tmp_path / "cache")
    assert np.array_equal(f.matrix, g.matrix)
    monkeypatch.undo()
    assert np.array_equal(f.matrix, build_gene_features(["GENEA", "GENED", "GENEC"], tiny).matrix)  # deterministic


def test_no_features_error_names_genes(tiny):
    # GENEE's only GO term has one gene (< min_genes_per_term), so it has no features at all
    with pytest.raises(DataError, match=r"NOPE1.*GENEE|GENEE.*NOPE1") as exc:
        build_gene_features(["GENEA", "NOPE1", "GENEE"], tiny)
    assert "features.user" in str(exc.value) and "GENEA" not in str(exc.value).split("gene(s):")[1]


def test_missing_file_names_key(tiny, tmp_path):
    tiny["progeny"] = {"weights": tmp_path / "nope.tsv"}
    with pytest.raises(DataError, match=r"features\.progeny\.weights.*nope\.tsv"):
        build_gene_features(["GENEA"], tiny)


def test_user_embeddings_and_expression(tmp_path):
    (tmp_path / "emb_csv.csv").write_text("symbol,d0,d1\nG1,1,2\nG2,3,4\n")
    (tmp_path / "emb_tsv.tsv").write_text("G1\t5\t6\n")  # no header
    np.savez(tmp_path / "emb_npz.npz", symbols=np.array(["G2"]), vectors=np.array([[7.0]]))
    torch.save({"G1": torch.tensor([8.0, 9.0])}, tmp_path / "emb_pt.pt")
    torch.save({"symbols": ["G2"], "vectors": torch.tensor([[1.5]])}, tmp_path / "emb_pt2.pt")
    files = [tmp_path / n for n in ("emb_csv.csv", "emb_tsv.tsv", "emb_npz.npz", "emb_pt.pt", "emb_pt2.pt")]
    loadings = pd.DataFrame([[0.5, 0.25, 9.0]], index=["G2"])
    f = build_gene_features(["G1", "G2"], {"user": files, "expression": {"n_components": 2}}, loadings)
    assert [v["name"] for v in f.views] == ["expression", "user:emb_csv", "user:emb_tsv", "user:emb_npz",
                                            "user:emb_pt", "user:emb_pt2"]
    assert f.matrix.tolist() == [[0, 0, 1, 2, 5, 6, 0, 8, 9, 0], [0.5, 0.25, 3, 4, 0, 0, 7, 0, 0, 1.5]]
    assert f.present.tolist() == [[False, True, True, False, True, False], [True, True, False, True, False, True]]


def test_real_aliases_resolve(tmp_path):
    sym = need(GF / "human_symbol_entrez_ensembl_orgHsEgDb_3.16.tsv.gz")
    (tmp_path / "mek.csv").write_text("symbol,x\nMAP2K3,1.0\n")  # MAP2K3 is not in PROGENy
    cfg = {"symbols": sym, "aliases": need(GF / "human_symbol_aliases_orgHsEgDb_3.16.tsv.gz"),
           "progeny": {"weights": need(GF / "progeny_human_weights_wide.tsv.gz")}, "user": [tmp_path / "mek.csv"]}
    # org.Hs.eg.db 3.16 lists MLK4 (not KIAA1804) as a previous symbol of MAP3K21; PROGENy still uses MLK4
    f = build_gene_features(["MLK4", "map3k21", "MAP3K21", "ENSG00000143674", "SAPKK2", "TP53"], cfg)
    assert f.resolved == {"MLK4": "MLK4", "map3k21": "MAP3K21", "MAP3K21": "MAP3K21",
                          "ENSG00000143674": "MAP3K21", "SAPKK2": "MAP2K3", "TP53": "TP53"}
    i = f.index()
    assert np.array_equal(f.matrix[i["MAP3K21"]], f.matrix[i["MLK4"]]) and f.present[i["MAP3K21"], 0]


def test_real_norman_genes_go_progeny(tmp_path_factory):
    cfg = {"symbols": need(GF / "human_symbol_entrez_ensembl_orgHsEgDb_3.16.tsv.gz"),
           "aliases": need(GF / "human_symbol_aliases_orgHsEgDb_3.16.tsv.gz"),
           "go": {"annotations": need(GF / "human_gene2go_orgHsEgDb_3.16.tsv.gz"), "n_components": 64},
           "progeny": {"weights": need(GF / "progeny_human_weights_wide.tsv.gz")}}
    cache = tmp_path_factory.mktemp("go_cache")
    t0 = time.perf_counter()
    f = build_gene_features(NORMAN, cfg, cache_dir=cache)
    fit_s = time.perf_counter() - t0
    assert fit_s < 30, f"real GO build took {fit_s:.1f}s"
    assert f.matrix.shape == (31, 64 + 14) and np.isfinite(f.matrix).all()
    # IER5L has no annotation at all in org.Hs.eg.db 3.16 gene2go, so it rests on PROGENy alone
    assert [g for g, p in zip(NORMAN, f.present[:, 0]) if not p] == ["IER5L"]
    assert f.present.any(1).all() and f.present[NORMAN.index("MAP3K21")].all()  # PROGENy via MLK4
    assert np.array_equal(build_gene_features(NORMAN, cfg, cache_dir=cache).matrix, f.matrix)


def test_real_drugs_fingerprints_descriptors():
    cfg = {"compounds": need(DATA / "sciplex3_compounds.csv")}
    drugs = ["Dasatinib", "abt-737", "S1001", "Navitoclax (ABT-263)", " dasatinib "]
    with pytest.raises(DataError, match="duplicate"):
        build_drug_features(["Dasatinib", "Dasatinib"], cfg)
    f = build_drug_features(drugs, cfg)
    fp, desc = f.view("morgan"), f.view("descriptors")
    assert fp.shape == (5, 2048) and set(np.unique(fp)) <= {0.0, 1.0} and fp.sum(1).min() > 10
    assert desc.shape[0] == 5 and np.isfinite(desc).all() and np.abs(desc).max() <= 10 and desc.std() > 0.1
    assert np.array_equal(f.matrix[2], f.matrix[3]) and np.array_equal(f.matrix[0], f.matrix[4])
    assert f.resolved["Dasatinib"].startswith("Cc1nc(Nc2ncc(C(=O)Nc3c(C)cccc3Cl)s2)")
    # descriptor scaling is fitted on the whole table: a drug's row does not depend on the others requested
    assert np.allclose(build_drug_features(["S1001"], cfg).matrix, f.matrix[2])


def test_tanimoto_and_dose():
    bits = np.random.default_rng(0).integers(0, 2, size=(4, 64))
    bits[3] = 0
    s = tanimoto_matrix(bits, bits)
    assert np.allclose(np.diag(s), 1) and np.allclose(s, s.T) and ((s >= 0) & (s <= 1)).all()
    assert tanimoto_matrix(bits[:2], bits).shape == (2, 4)
    assert np.allclose(log10_dose(np.array([1.0, 10.0, 1e4])), [0, 1, 4])
    with pytest.raises(DataError):
        log10_dose(np.array([0.0]))


def test_drug_errors():
    with pytest.raises(DataError, match=r"'bad'.*C1CC\(") as exc:
        build_drug_features(["ok", "bad"], {}, smiles={"ok": "CCO", "bad": "C1CC("})
    assert "RDKit" in str(exc.value)
    f = build_drug_features(["ok", "benzene"], {}, smiles={"ok": "OCC", "benzene": "c1ccccc1"})
    assert f.resolved["ok"] == "CCO" and np.isfinite(f.matrix).all()
    cfg = {"compounds": need(DATA / "sciplex3_compounds.csv")}
    with pytest.raises(DataError, match=r"'Dasatinb'.*Dasatinib"):
        build_drug_features(["Dasatinb"], cfg)
