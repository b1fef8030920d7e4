"""Drug perturbation features from structure (Morgan fingerprint bits + standardised RDKit 2D descriptors).

Structure-only features let the model place an unseen compound next to similar training compounds.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import warnings

import numpy as np
import pandas as pd

from scfate.data.features.base import PerturbationFeatures, assemble, need_file
from scfate.errors import DataError

DEFAULTS = {"compounds": None, "name_columns": ["name", "Product.Name", "catalog_number"],
            "smiles_column": "canonical_smiles", "morgan_radius": 2, "morgan_bits": 2048, "descriptors": True}
CLIP = 10.0


@contextlib.contextmanager
def _quiet_rdkit():
    """RDKit prints parse errors to stderr; we raise DataError with the drug name instead."""
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        yield
    finally:
        RDLogger.EnableLog("rdApp.*")


def _mol(smiles: str):
    from rdkit import Chem

    with _quiet_rdkit():
        return Chem.MolFromSmiles(smiles) if smiles else None


def log10_dose(dose: np.ndarray) -> np.ndarray:
    """log10(dose) as in DESIGN §2.3 (doses span decades, e.g. 10 nM - 10 uM): float32, same shape."""
    dose = np.asarray(dose, dtype=np.float64)
    if not np.isfinite(dose).all() or (dose <= 0).any():
        raise DataError("Doses must be finite and > 0 to take log10(dose); found NaN, Inf, zero or negative values.")
    return np.log10(dose).astype(np.float32)


def tanimoto_matrix(a_bits: np.ndarray, b_bits: np.ndarray) -> np.ndarray:
    """Tanimoto similarity of binary fingerprints: a [n, d], b [m, d] (0/1 or bool) -> float32 [n, m].

    Two all-zero fingerprints count as identical (1.0), so every fingerprint has similarity 1 with itself.
    """
    a = np.atleast_2d(np.asarray(a_bits))
    b = np.atleast_2d(np.asarray(b_bits))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"fingerprint lengths differ: {a.shape[1]} vs {b.shape[1]}")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("tanimoto_matrix expects binary (0/1) fingerprints")
    a, b = a.astype(np.float32), b.astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return sim.astype(np.float32)


def morgan_bits(mol, radius: int = 2, n_bits: int = 2048) -> np.ndarray:
    """uint8 [n_bits] Morgan fingerprint bits."""
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=int(radius), fpSize=int(n_bits))
    return gen.GetFingerprintAsNumPy(mol).astype(np.uint8)


def raw_descriptors(mol) -> np.ndarray:
    """float64 [len(Descriptors.descList)]; a descriptor RDKit cannot compute is NaN."""
    from rdkit.Chem import Descriptors

    out = np.full(len(Descriptors.descList), np.nan)
    with _quiet_rdkit():
        for i, (_, fn) in enumerate(Descriptors.descList):
            try:
                out[i] = fn(mol)
            except Exception:  # RDKit raises assorted errors on odd molecules; treat as missing
                pass
    return out


@functools.lru_cache(maxsize=8)
def _descriptor_stats(smiles: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd per descriptor over the reference compounds (cached: ~1.5 s for 188 compounds)."""
    mols = [m for m in (_mol(s) for s in smiles) if m is not None]
    x = np.stack([raw_descriptors(m) for m in mols]) if mols else np.zeros((0, len(raw_descriptors(_mol("C")))))
    x[~np.isfinite(x)] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are expected (set to 0 later)
        return np.nanmean(x, axis=0), np.nanstd(x, axis=0)


def standardise_descriptors(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """z-score [n, n_desc] -> float32, NaN/Inf -> 0, clipped to [-10, 10]; constant/undefined columns -> 0."""
    ok = np.isfinite(mean) & np.isfinite(sd) & (sd > 1e-12)
    with np.errstate(all="ignore"):
        z = np.where(ok, (x - np.where(ok, mean, 0.0)) / np.where(ok, sd, 1.0), 0.0)
    z[~np.isfinite(z)] = 0.0
    return np.clip(z, -CLIP, CLIP).astype(np.float32)


def _read_compounds(path, name_columns: list[str], smiles_column: str) -> pd.DataFrame:
    p = need_file("compounds", path)
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    if smiles_column not in df.columns:
        raise DataError(f"features.compounds ({p}) has no SMILES column {smiles_column!r} "
                        f"(features.smiles_column); columns are {list(df.columns)}.")
    if not [c for c in name_columns if c in df.columns]:
        raise DataError(f"features.compounds ({p}) has none of the name columns {name_columns} "
                        f"(features.name_columns); columns are {list(df.columns)}.")
    return df


def _lookup(drug: str, df: pd.DataFrame, name_columns: list[str], smiles_column: str) -> str:
    """Drug name -> SMILES (see `_row`)."""
    return df[smiles_column].iloc[_row(drug, df, name_columns)]


def compound_annotations(drugs: list[str], cfg: dict | None, column: str) -> dict[str, str]:
    """Drug name -> value of a compounds-table column (e.g. Pathway or Target), for MoA-stratified splits."""
    cfg = {**DEFAULTS, **(cfg or {})}
    df = _read_compounds(cfg["compounds"], list(cfg["name_columns"]), cfg["smiles_column"])
    if column not in df.columns:
        raise DataError(f"split.stratify_by={column!r} is not a column of features.compounds "
                        f"({cfg['compounds']}); columns are {list(df.columns)}.")
    return {d: str(df[column].iloc[_row(d, df, list(cfg["name_columns"]))]) for d in drugs}


def _row(drug: str, df: pd.DataFrame, name_columns: list[str]) -> int:
    """Drug name -> table row: exact match in any name column, then case-insensitive; else DataError."""
    cols = [c for c in name_columns if c in df.columns]
    for fold in (False, True):
        key = drug.strip().casefold() if fold else drug
        for c in cols:
            vals = df[c].str.strip().str.casefold() if fold else df[c]
            hit = np.flatnonzero((vals == key).to_numpy())
            if hit.size:
                return int(hit[0])
    names = sorted({v for c in cols for v in df[c] if v})
    close = difflib.get_close_matches(drug, names, n=5, cutoff=0.5)
    close += [n for n in names if drug.casefold() in n.casefold() and n not in close][:5]
    raise DataError(f"Drug {drug!r} is not in the compounds table (columns {cols}). "
                    f"Close names: {close or 'none'}. Fix the name, or give its SMILES.")


def build_drug_features(drugs: list[str], cfg: dict | None, smiles: dict[str, str] | None = None
                        ) -> PerturbationFeatures:
    """Features for drugs: views morgan float32 [n, morgan_bits] (0/1) and descriptors [n, len(descList)]
    (217 in RDKit 2026.09; if enabled). ``smiles`` (name -> SMILES) overrides or replaces the compounds table."""
    cfg = {**DEFAULTS, **(cfg or {})}
    drugs = [str(d) for d in drugs]
    if len(set(drugs)) != len(drugs):
        raise DataError(f"build_drug_features got duplicate drugs: {sorted({d for d in drugs if drugs.count(d) > 1})}")
    smiles = dict(smiles or {})
    df = None
    if cfg["compounds"] is not None:
        df = _read_compounds(cfg["compounds"], list(cfg["name_columns"]), cfg["smiles_column"])
    elif not smiles:
        raise DataError("Drug features need a compounds table (features.compounds) or a name -> SMILES dict.")

    from rdkit import Chem

    mols, resolved = [], {}
    for d in drugs:
        if d in smiles:
            smi = smiles[d]
        elif df is not None:
            smi = _lookup(d, df, list(cfg["name_columns"]), cfg["smiles_column"])
        else:
            raise DataError(f"Drug {d!r} has no SMILES: it is not in the given smiles dict and no "
                            "compounds table (features.compounds) is set.")
        mol = _mol(smi)
        if mol is None:
            raise DataError(f"RDKit cannot parse the SMILES of drug {d!r}: {smi!r}. Fix the SMILES.")
        mols.append(mol)
        resolved[d] = Chem.MolToSmiles(mol)

    n = len(drugs)
    fps = np.stack([morgan_bits(m, cfg["morgan_radius"], cfg["morgan_bits"]) for m in mols]) if n else \
        np.zeros((0, int(cfg["morgan_bits"])), np.uint8)
    blocks = [("morgan", fps.astype(np.float32), np.ones(n, bool))]
    if cfg["descriptors"]:
        # Fit the scaling on the whole table so a drug's features do not depend on which drugs are requested.
        ref = tuple(df[cfg["smiles_column"]]) if df is not None else tuple(resolved.values())
        mean, sd = _descriptor_stats(ref)
        raw = np.stack([raw_descriptors(m) for m in mols]) if n else np.zeros((0, mean.shape[0]))
        blocks.append(("descriptors", standardise_descriptors(raw, mean, sd), np.ones(n, bool)))
    return assemble("drug", drugs, blocks, resolved)
