"""Built-in default dataset: a deterministic simulator of a Perturb-seq-like screen (optionally a drug screen).

Each gene has a hidden sparse membership in functional modules (``F``); a perturbation's direct effect is a fixed
linear read-out ``M f`` of its target's membership (or of a drug's fingerprint), propagated through a sparse signed
gene regulatory network, plus a response shared by all perturbations and a small unpredictable per-perturbation
term. The gene-feature files (GO, PROGENy, ...) are generated from the same ``F``, so zero-shot prediction from
features is possible but not exact. Counts are negative binomial around ``library * softmax(baseline + effect)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from scfate.data.synthetic_files import DRUGS, write_compounds, write_gene_features
from scfate.data.synthetic_model import build_model, softmax
from scfate.errors import DataError
from scfate.utils.io import atomic_path, atomic_write_json

SIM_VERSION = 1  # bump when the model changes, so outputs cached under an old version are recomputed

DEFAULTS: dict = {
    "seed": 0,
    "n_genes": 300,  # measured genes (columns of X)
    "n_modules": 12,  # hidden functional modules
    "n_perturbed_genes": 40,
    "measured_target_fraction": 0.5,  # share of targets among measured genes (the rest are unmeasured, as in real screens)
    "n_background_genes": 200,  # annotated-only genes, so feature tables are larger than the screen
    "n_contexts": 2,  # cell lines SYNCL1..
    "n_combos": 40,  # random target pairs
    "epistasis": 0.3,  # strength of the non-additive part of double effects (0 = exactly additive)
    "knockdown": 2.0,  # log-scale drop of a measured target's own expression (~85% CRISPRi knockdown)
    "effect_scale": 1.0,
    "shared_response": 0.3,  # response common to all perturbations (generic stress / screen effect)
    "idiosyncratic": 0.05,  # sd of the per-perturbation term that no feature can predict
    "grn_regulators": 3,  # regulators per gene in the GRN
    "grn_radius": 0.6,  # spectral radius cap of W (< 1: propagation converges)
    "context_baseline_sd": 0.3,  # cell-line deviation of the baseline log-mean
    "context_gain_sd": 0.15,  # per-gene log-sd of the cell line's gain on effects
    "nb_theta": 10.0,  # negative-binomial dispersion (larger = closer to Poisson)
    "library_median": 5000.0,
    "library_sd": 0.35,  # log-sd of the library size
    "cells_per_condition": 60,  # per perturbation (drug: per dose) per context
    "n_control_cells": 400,  # per context (and per screen type)
    "n_drugs": 0,
    "drug_doses": [10.0, 100.0, 1000.0, 10000.0],  # nM
    "hill": 1.5,  # Hill coefficient of the dose response
    "go_terms_per_module": 6,
    "go_signal": 0.7,  # P(annotated with a module's term) = go_signal * membership + go_noise
    "go_noise": 0.02,
    "progeny_noise": 0.2,
    "renamed_targets": 0,  # unmeasured targets labelled in obs by an old alias (exercises alias resolution)
}
FILES = {"h5ad": "synthetic.h5ad", "truth": "truth.npz", "compounds": "compounds.csv", "params": "params.json"}
FEATURE_FILES = {"gene2go": "gene2go.tsv.gz", "go_terms": "go_terms.tsv.gz", "symbols": "symbols.tsv.gz",
                 "aliases": "aliases.tsv.gz", "progeny": "progeny.tsv.gz"}


def resolve_params(params: dict | None) -> dict:
    """DEFAULTS overridden by ``params``, each value coerced to its default's type and range-checked."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise DataError(f"Unknown synthetic parameter(s) {unknown}. Valid keys: {sorted(DEFAULTS)}.")
    p = {}
    for key, default in DEFAULTS.items():
        value = params.get(key, default)
        try:
            if isinstance(default, int):
                if isinstance(value, bool) or int(value) != value:
                    raise ValueError
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            else:
                value = [float(v) for v in value]
        except (TypeError, ValueError):
            raise DataError(f"synthetic.{key}={value!r} must be of type {type(default).__name__}.") from None
        p[key] = value
    n_pert = p["n_perturbed_genes"]
    checks = [(p["n_genes"] >= 2 and p["n_modules"] >= 1 and p["n_contexts"] >= 1, "n_genes>=2, n_modules>=1, n_contexts>=1"),
              (min(p["n_perturbed_genes"], p["n_background_genes"], p["n_combos"], p["n_drugs"],
                   p["renamed_targets"], p["go_terms_per_module"]) >= 0, "counts must be >= 0"),
              (p["cells_per_condition"] >= 1 and p["n_control_cells"] >= 1, "cells_per_condition, n_control_cells >= 1"),
              (n_pert + p["n_drugs"] > 0, "n_perturbed_genes + n_drugs > 0"),
              (p["n_combos"] <= n_pert * (n_pert - 1) // 2, "n_combos <= number of target pairs"),
              (p["n_drugs"] <= len(DRUGS), f"n_drugs <= {len(DRUGS)} (the built-in compound list)"),
              (all(d > 0 for d in p["drug_doses"]) and (p["drug_doses"] or not p["n_drugs"]), "drug_doses > 0"),
              (0.0 <= p["measured_target_fraction"] <= 1.0, "0 <= measured_target_fraction <= 1"),
              (round(n_pert * p["measured_target_fraction"]) <= p["n_genes"], "measured targets <= n_genes"),
              (p["renamed_targets"] <= n_pert - round(n_pert * p["measured_target_fraction"]),
               "renamed_targets <= number of unmeasured targets"),
              (0.0 <= p["grn_radius"] < 1.0 and 0 <= p["grn_regulators"] < p["n_genes"], "0 <= grn_radius < 1, grn_regulators < n_genes"),
              (p["nb_theta"] > 0 and p["library_median"] > 0 and p["hill"] > 0, "nb_theta, library_median, hill > 0")]
    for ok, rule in checks:
        if not ok:
            raise DataError(f"Invalid synthetic parameters: need {rule}. Got {p}.")
    return p


def _cells(p: dict, m: dict):
    """Sample NB counts for every (context, condition) group; returns (CSR float32 X, obs DataFrame)."""
    import pandas as pd
    import scipy.sparse as sp

    r = np.random.default_rng([p["seed"], 6])
    ptypes = [t for t, n in (("CRISPRi", p["n_perturbed_genes"]), ("drug", p["n_drugs"])) if n]
    blocks, obs = [], []
    for c in range(p["n_contexts"]):
        frac = softmax(m["base"][c][None] + m["effect"][c])
        groups = [(0, "ctrl", t, 0.0 if t == "drug" else np.nan, "", p["n_control_cells"]) for t in ptypes]
        groups += [(i, *cond[1:5], p["cells_per_condition"]) for i, cond in enumerate(m["conds"]) if i > 0]
        for i, label, ptype, dose, smi, n in groups:
            lib = p["library_median"] * np.exp(r.normal(0.0, p["library_sd"], n))
            mu = lib[:, None] * frac[i][None]
            blocks.append(r.poisson(r.gamma(p["nb_theta"], mu / p["nb_theta"])))  # gamma-Poisson = NB
            obs += [(label, f"SYNCL{c + 1}", ptype, dose, smi)] * n
    X = np.concatenate(blocks)
    order = r.permutation(len(X))  # real files are not grouped by condition
    obs = pd.DataFrame([obs[i] for i in order], columns=["condition", "cell_type", "perturbation_type", "dose", "smiles"])
    obs.index = [f"cell{i + 1:06d}" for i in range(len(obs))]
    if not p["n_drugs"]:
        obs = obs.drop(columns=["dose", "smiles"])
    for col in ("condition", "cell_type", "perturbation_type"):
        obs[col] = obs[col].astype("category")
    return sp.csr_matrix(X[order].astype(np.float32)), obs


def simulate(params: dict | None, out_dir: str | Path) -> dict[str, Path]:
    """Write the synthetic dataset into ``out_dir``; reuse it if every file exists and params.json matches.

    truth.npz holds, with C contexts and N conditions (row 0 = control): ``true_effect`` / ``true_log_mean`` /
    ``true_mean_counts_fraction`` [C, N, n_genes], ``conditions`` (canonical names as the data layer writes them:
    ``A``, ``A+B`` sorted, ``drug@dose``), ``labels`` (obs labels), ``contexts``, ``genes``, ``doses``, and the hidden
    ``gene_modules`` [n_perturbed_genes, n_modules] of ``perturbed_genes`` (plus ``drug_modules`` etc. for drugs).
    """
    p = resolve_params(params)
    out = Path(out_dir)
    paths = {k: out / v for k, v in {**FILES, **FEATURE_FILES}.items()}
    if not p["n_drugs"]:
        del paths["compounds"]
    record = {"version": SIM_VERSION, "params": p}
    if all(f.is_file() for f in paths.values()):
        try:
            if json.loads(paths["params"].read_text()) == record:
                return paths
        except (OSError, ValueError):
            pass  # unreadable record: recompute
    import anndata as ad
    import pandas as pd

    paths["params"].unlink(missing_ok=True)  # a crash below must not leave an old, matching record beside new files
    m = build_model(p)
    X, obs = _cells(p, m)
    var = pd.DataFrame(index=pd.Index(m["genes"], name="gene_symbol"))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.uns["synthetic"] = json.dumps({"description": "scFATE synthetic Perturb-seq/drug screen: NB counts around "
                                      "library * softmax(baseline + GRN-propagated module effects); see "
                                      "scfate.data.synthetic", **record})
    with atomic_path(paths["h5ad"]) as tmp:
        adata.write_h5ad(tmp, compression="gzip")  # ~5x smaller, still fast
    write_gene_features(out, m["symbols"], m["F"], m["aliases"], p, np.random.default_rng([p["seed"], 7]))
    if p["n_drugs"]:
        write_compounds(paths["compounds"], m["drugs"], m["pathways"])
    C = p["n_contexts"]
    conds = m["conds"]
    truth = {"contexts": np.array([f"SYNCL{c + 1}" for c in range(C)]), "genes": np.array(m["genes"]),
             "conditions": np.array([c[0] for c in conds]), "labels": np.array([c[1] for c in conds]),
             "perturbation_type": np.array([c[2] for c in conds]), "doses": np.array([c[3] for c in conds]),
             "true_effect": m["effect"], "true_log_mean": m["base"][:, None] + m["effect"],
             "true_mean_counts_fraction": softmax(m["base"][:, None] + m["effect"]), "baseline": m["base"],
             "perturbed_genes": np.array(m["targets"]), "perturbed_labels": np.array(m["names"]),
             "perturbed_measured": np.arange(len(m["targets"])) < m["n_meas"], "gene_modules": m["target_F"]}
    if p["n_drugs"]:
        truth.update(drugs=np.array(m["drug_names"]), drug_modules=m["drug_modules"],
                     drug_ec50=m["drug_ec50"], drug_pathways=np.array(m["pathways"]))
    with atomic_path(paths["truth"]) as tmp:
        np.savez_compressed(tmp, **truth)
    atomic_write_json(paths["params"], record)  # last: its presence marks a complete, matching set of files
    return paths
