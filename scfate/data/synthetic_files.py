"""File writers of the synthetic dataset: gene-feature tables and a compounds table in exactly the formats of the
real files in ``shared/data`` (same headers, gzip TSV / CSV), so the featurisers read both the same way.

The annotations are generated from the simulator's hidden module memberships ``F``: that is what makes zero-shot
prediction from GO / PROGENy features possible, as with real biology where annotation tracks function.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from scfate.utils.io import atomic_path

# a module's GO-like terms span the three ontologies, mostly BP as in real GO
ONTOLOGY_CYCLE = ("BP", "BP", "BP", "MF", "MF", "CC")
TERM_PATTERNS = {"BP": ("synthetic process {k}", "regulation of synthetic process {k}",
                        "positive regulation of synthetic process {k}"),
                 "MF": ("synthetic factor {k} binding", "synthetic enzyme {k} activity"),
                 "CC": ("synthetic complex {k}",)}
EVIDENCE = ("IEA", "IDA", "IBA", "TAS", "IMP", "ISS")
N_GENERIC_TERMS = 10  # unspecific terms (housekeeping-like annotations) shared at random across genes
GO_ROOT = ("GO:0008150", "BP", "biological_process")  # real files give unannotated genes the root with ND
PROGENY_PATHWAYS = ("Androgen", "EGFR", "Estrogen", "Hypoxia", "JAK-STAT", "MAPK", "NFkB", "PI3K", "TGFb",
                    "TNFa", "Trail", "VEGF", "WNT", "p53")
COMPOUND_COLUMNS = ("catalog_number", "name", "CAS.Number", "M.w.", "SMILES", "Product.Name", "Target", "Pathway",
                    "smiles_clean", "rdkit_ok", "canonical_smiles")

# Real, well-known compounds (name, SMILES, target). Listed so that the first dozen span distinct chemotypes.
DRUGS = (
    ("Aspirin", "CC(=O)OC1=CC=CC=C1C(=O)O", "COX"),
    ("Caffeine", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "Adenosine Receptor"),
    ("Imatinib", "CC1=C(C=C(C=C1)NC(=O)C2=CC=C(C=C2)CN3CCN(CC3)C)NC4=NC=CC(=N4)C5=CN=CC=C5", "Bcr-Abl,c-Kit,PDGFR"),
    ("Dexamethasone", "CC1CC2C3CCC4=CC(=O)C=CC4(C3(C(CC2(C1(C(=O)CO)O)C)O)F)C", "Glucocorticoid Receptor"),
    ("Vorinostat", "C1=CC=C(C=C1)NC(=O)CCCCCCC(=O)NO", "HDAC"),
    ("Ibuprofen", "CC(C)CC1=CC=C(C=C1)C(C)C(=O)O", "COX"),
    ("Methotrexate", "CN(CC1=CN=C2C(=N1)C(=NC(=N2)N)N)C3=CC=C(C=C3)C(=O)NC(CCC(=O)O)C(=O)O", "DHFR"),
    ("Gefitinib", "COC1=C(C=C2C(=C1)N=CN=C2NC3=CC(=C(C=C3)F)Cl)OCCCN4CCOCC4", "EGFR"),
    ("Tamoxifen", "CCC(=C(C1=CC=CC=C1)C2=CC=C(C=C2)OCCN(C)C)C3=CC=CC=C3", "Estrogen Receptor"),
    ("Fluorouracil", "C1=C(C(=O)NC(=O)N1)F", "Thymidylate Synthase"),
    ("Olaparib", "C1CC1C(=O)N2CCN(CC2)C(=O)C3=C(C=CC(=C3)CC4=NNC(=O)C5=CC=CC=C54)F", "PARP"),
    ("Metformin", "CN(C)C(=N)N=C(N)N", "AMPK"),
    ("Panobinostat", "CC1=C(C2=CC=CC=C2N1)CCNCC3=CC=C(C=C3)C=CC(=O)NO", "HDAC"),
    ("Erlotinib", "COCCOC1=C(C=C2C(=C1)C(=NC=N2)NC3=CC=CC(=C3)C#C)OCCOC", "EGFR"),
    ("Dasatinib", "CC1=C(C(=CC=C1)Cl)NC(=O)C2=CN=C(S2)NC3=CC(=NC(=N3)C)N4CCN(CC4)CCO", "Src,Bcr-Abl"),
    ("Celecoxib", "CC1=CC=C(C=C1)C2=CC(=NN2C3=CC=C(C=C3)S(=O)(=O)N)C(F)(F)F", "COX-2"),
    ("Paracetamol", "CC(=O)NC1=CC=C(C=C1)O", "COX"),
    ("Nocodazole", "COC(=O)NC1=NC2=C(N1)C=C(C=C2)C(=O)C3=CC=CS3", "Microtubule"),
    ("JQ1", "CC1=C(SC2=C1C(=NC(C3=NN=C(N32)C)CC(=O)OC(C)(C)C)C4=CC=C(C=C4)Cl)C", "BRD4"),
    ("Doxorubicin", "CC1C(C(CC(O1)OC2CC(CC3=C2C(=C4C(=C3O)C(=O)C5=C(C4=O)C(=CC=C5)OC)O)(C(=O)CO)O)N)O",
     "Topoisomerase"),
)


def write_tsv_gz(path: Path, df: pd.DataFrame, sep: str = "\t") -> Path:
    """gzip with mtime=0 and no file name in the header, so identical tables give byte-identical files."""
    text = df.to_csv(sep=sep, index=False, na_rep="", lineterminator="\n")
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(text.encode())
    return path


def write_gene_features(out: Path, symbols: list[str], F: np.ndarray, aliases: dict[str, list[str]],
                        p: dict, rng: np.random.Generator) -> dict[str, Path]:
    """Write gene2go, go_terms, symbols, aliases and PROGENy-like tables for ``symbols`` (memberships ``F``)."""
    n, k = F.shape
    entrez = 900001 + np.arange(n)  # outside the range of real Entrez ids, so no clash with real tables
    terms, term_module = [], []
    for m in range(k):
        for j in range(p["go_terms_per_module"]):
            ont = ONTOLOGY_CYCLE[j % len(ONTOLOGY_CYCLE)]
            pats = TERM_PATTERNS[ont]
            name = pats[j % len(pats)].format(k=m + 1) + ("" if j < len(ONTOLOGY_CYCLE) else f" {j + 1}")
            terms.append((f"GO:{9000001 + len(terms):07d}", ont, name))
            term_module.append(m)
    for j in range(N_GENERIC_TERMS):
        terms.append((f"GO:{9900001 + j:07d}", ONTOLOGY_CYCLE[j % 6], f"generic cellular function {j + 1}"))
    # P(annotated) grows with membership of the term's module; go_noise adds off-module (wrong) annotations
    prob = np.full((n, len(terms)), p["go_noise"])
    prob[:, : len(term_module)] += p["go_signal"] * F[:, term_module]
    prob[:, len(term_module):] = 0.05
    hit = rng.random(prob.shape) < prob
    evidence = rng.integers(0, len(EVIDENCE), hit.shape)
    rows = [(entrez[g], symbols[g], terms[t][1], terms[t][0], EVIDENCE[evidence[g, t]])
            for g, t in zip(*np.nonzero(hit))]
    rows += [(entrez[g], symbols[g], GO_ROOT[1], GO_ROOT[0], "ND") for g in np.flatnonzero(~hit.any(1))]
    gene2go = pd.DataFrame(rows, columns=["entrez", "symbol", "ontology", "go_id", "evidence"])
    gene2go = gene2go.sort_values(["entrez", "go_id"], kind="stable")
    go_terms = pd.DataFrame(sorted([GO_ROOT, *terms]), columns=["go_id", "ontology", "term"])

    sym = pd.DataFrame({"entrez": entrez, "symbol": symbols,
                        "gene_name": [f"synthetic gene {s}" for s in symbols],
                        "ensembl_id": [f"ENSG{90000000000 + i:011d}" for i in range(n)]})
    alias_rows = [(entrez[i], s, a) for i, s in enumerate(symbols) for a in aliases.get(s, [])]
    alias = pd.DataFrame(alias_rows, columns=["entrez", "symbol", "alias_symbol"])

    # PROGENy-like: pathway responsiveness is a noisy linear read-out of module membership, with some gaps
    P = rng.normal(0.0, 1.0, (k, len(PROGENY_PATHWAYS))) * (rng.random((k, len(PROGENY_PATHWAYS))) < 0.5)
    weights = F @ P + rng.normal(0.0, p["progeny_noise"], (n, len(PROGENY_PATHWAYS)))
    weights[rng.random(weights.shape) < 0.05] = np.nan
    progeny = pd.DataFrame(np.round(weights, 4), columns=list(PROGENY_PATHWAYS))
    progeny.insert(0, "gene", symbols)
    progeny = progeny.sort_values("gene", kind="stable")

    return {"gene2go": write_tsv_gz(out / "gene2go.tsv.gz", gene2go),
            "go_terms": write_tsv_gz(out / "go_terms.tsv.gz", go_terms),
            "symbols": write_tsv_gz(out / "symbols.tsv.gz", sym),
            "aliases": write_tsv_gz(out / "aliases.tsv.gz", alias),
            "progeny": write_tsv_gz(out / "progeny.tsv.gz", progeny)}


def drug_fingerprints(smiles: list[str], n_bits: int = 2048) -> np.ndarray:
    """Morgan fingerprints (radius 2) as a 0/1 matrix, the structure the drug effects are a function of."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=n_bits)
    return np.stack([gen.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)).astype(float) for s in smiles])


def write_compounds(path: Path, drugs: list[tuple[str, str, str]], pathways: list[str]) -> Path:
    """Compounds table with the SciPlex3 columns; ``Pathway`` is the synthetic mechanism (dominant module)."""
    from rdkit import Chem
    from rdkit.Chem import Descriptors

    rows = []
    for i, ((name, smi, target), pathway) in enumerate(zip(drugs, pathways)):
        mol = Chem.MolFromSmiles(smi)
        rows.append((f"SYN{1001 + i}", name, "", round(Descriptors.MolWt(mol), 2), smi, name, target, pathway,
                     smi, True, Chem.MolToSmiles(mol)))
    df = pd.DataFrame(rows, columns=list(COMPOUND_COLUMNS))
    with atomic_path(path) as tmp:
        tmp.write_bytes(df.to_csv(index=False, lineterminator="\n").encode())
    return path

