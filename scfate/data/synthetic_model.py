"""Hidden model of the synthetic dataset (see `scfate.data.synthetic`): module memberships, GRN, and the exact
effect of every (context, condition) on the log-mean scale. No I/O except the drug fingerprints (RDKit)."""

from __future__ import annotations

import itertools

import numpy as np

from scfate.data.synthetic_files import DRUGS, drug_fingerprints


def _memberships(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse non-negative membership: one primary module, and a weaker second one for ~40% of genes."""
    idx = np.arange(n)
    primary, second = rng.integers(0, k, n), rng.integers(0, k, n)
    w1, w2, has2 = rng.uniform(0.5, 1.0, n), rng.uniform(0.1, 0.5, n), rng.random(n) < 0.4
    F = np.zeros((n, k))
    F[idx, primary] = w1
    keep = has2 & (second != primary)
    F[idx[keep], second[keep]] = w2[keep]
    return F, primary


def _grn(rng: np.random.Generator, primary: np.ndarray, n_reg: int, radius: float) -> np.ndarray:
    """W[i, j] = signed effect of gene j on gene i; regulators prefer the same module (co-regulated programmes)."""
    g = len(primary)
    W = np.zeros((g, g))
    for i in range(g):
        same = np.flatnonzero((primary == primary[i]) & (np.arange(g) != i))
        other = np.flatnonzero(np.arange(g) != i)
        for _ in range(n_reg):
            pool = same if len(same) and rng.random() < 0.6 else other
            W[i, rng.choice(pool)] = rng.normal(0.0, 0.5)
    rho = np.abs(np.linalg.eigvals(W)).max() if n_reg else 0.0
    return W * (radius / rho) if rho > radius else W


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def build_model(p: dict) -> dict:
    """All hidden quantities and the exact effect of every (context, condition) on the log-mean scale."""
    def stream(i):  # independent streams: e.g. adding drugs leaves the gene part unchanged
        return np.random.default_rng([p["seed"], i])

    G, K, P = p["n_genes"], p["n_modules"], p["n_perturbed_genes"]
    n_meas = round(P * p["measured_target_fraction"])
    r = stream(1)
    genes = [f"SYN{i + 1:0{max(4, len(str(G)))}d}" for i in range(G)]
    symbols = genes + [f"SYNP{i + 1:03d}" for i in range(P - n_meas)] + \
        [f"SYNB{i + 1:04d}" for i in range(p["n_background_genes"])]
    F, primary = _memberships(r, len(symbols), K)
    target_rows = np.concatenate([np.sort(r.choice(G, n_meas, replace=False)), np.arange(G, G + P - n_meas)])
    aliased = np.flatnonzero(r.random(len(symbols)) < 0.1)
    renamed = set(r.choice(np.arange(G, G + P - n_meas), p["renamed_targets"], replace=False).tolist())
    aliases = {symbols[i]: [f"KIAA{9000 + i}"] for i in sorted(set(aliased.tolist()) | renamed)}
    names = [aliases[symbols[t]][0] if t in renamed else symbols[t] for t in target_rows]  # labels used in obs

    r = stream(2)
    M = p["effect_scale"] * (-0.8 * F[:G] + r.normal(0.0, 0.3, (G, K)) * (r.random((G, K)) < 0.25))
    W = _grn(r, primary[:G], p["grn_regulators"], p["grn_radius"])
    shared = p["shared_response"] * r.normal(0.0, 1.0, G) * (r.random(G) < 0.15)
    mode = np.where(r.random(G) < 0.75, 1.0, -1.0)  # +1: buffering, -1: synergy for same-sign double effects

    def propagate(U):  # delta = (I + W + W^2) u: direct effect plus two steps through the GRN
        return (U + W @ U + W @ (W @ U)).T

    U = M @ F[target_rows].T + shared[:, None] + p["idiosyncratic"] * r.normal(0.0, 1.0, (G, P))
    U[target_rows[:n_meas], np.arange(n_meas)] -= p["knockdown"]
    single = propagate(U)

    # conditions: (canonical name as the data layer writes it, obs label, type, dose, smiles, context-free delta)
    conds = [("control", "ctrl", "control", np.nan, "", np.zeros(G))]
    conds += [(n, f"{n}+ctrl", "CRISPRi", np.nan, "", single[j]) for j, n in enumerate(names)]
    r = stream(3)
    pairs = list(itertools.combinations(range(P), 2))
    tau = 0.5  # effect scale at which the interaction saturates
    for c in np.sort(r.choice(len(pairs), p["n_combos"], replace=False)) if p["n_combos"] else []:
        a, b = pairs[c]
        da, db = single[a], single[b]
        epi = -p["epistasis"] * mode * np.sign(da + db) * tau * np.tanh(da * db / tau**2)
        first, second = (names[a], names[b]) if r.random() < 0.5 else (names[b], names[a])  # GEARS order varies
        conds.append(("+".join(sorted((first, second))), f"{first}+{second}", "CRISPRi", np.nan, "", da + db + epi))

    drugs, drug_info = list(DRUGS[: p["n_drugs"]]), {}
    if drugs:
        r = stream(5)
        fp = drug_fingerprints([s for _, s, _ in drugs])
        Z = fp @ r.normal(0.0, 1.0, (fp.shape[1], K)) / np.sqrt(fp.sum(1, keepdims=True))
        Ud = M @ Z.T + shared[:, None] + p["idiosyncratic"] * r.normal(0.0, 1.0, (G, len(drugs)))
        dd = propagate(Ud)
        ec50 = 10 ** r.uniform(1.5, 3.5, len(drugs))
        for j, (name, smi, _) in enumerate(drugs):
            for dose in p["drug_doses"]:
                h = dose ** p["hill"] / (dose ** p["hill"] + ec50[j] ** p["hill"])
                conds.append((f"{name}@{dose:g}", name, "drug", dose, smi, h * dd[j]))
        drug_info = {"drug_names": [d[0] for d in drugs], "drug_modules": Z, "drug_ec50": ec50,
                     "pathways": [f"SynPathway{k + 1:02d}" for k in np.abs(Z).argmax(1)]}

    r = stream(4)
    C = p["n_contexts"]
    base = r.normal(0.0, 1.5, G)[None] + r.normal(0.0, p["context_baseline_sd"], (C, G))
    gain = r.uniform(0.7, 1.3, (C, 1)) * np.exp(r.normal(0.0, p["context_gain_sd"], (C, G)))
    delta = np.stack([c[5] for c in conds])
    effect = gain[:, None, :] * delta[None]
    return {"genes": genes, "symbols": symbols, "F": F, "aliases": aliases, "conds": conds,
            "targets": [symbols[t] for t in target_rows], "names": names, "target_F": F[target_rows],
            "n_meas": n_meas, "base": base, "effect": effect, "drugs": drugs, **drug_info}
