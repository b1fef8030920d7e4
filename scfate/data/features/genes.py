"""Gene perturbation features from sources outside the expression matrix (GO, PROGENy, user embeddings).

Zero-shot prediction needs a vector for genes never perturbed in training, and most perturbed genes are not
among the measured HVGs, so each gene gets one block per view; a view that lacks the gene is zeros with
``present=False``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from scfate.data.features.base import PerturbationFeatures, assemble, need_file
from scfate.errors import DataError, ScfateError
from scfate.utils.io import atomic_path, sha256_file, sha256_json

GO_DEFAULTS = {"n_components": 64, "ontologies": ["BP", "MF", "CC"], "min_genes_per_term": 3, "seed": 0}


def _read_table(key: str, path, columns: list[str]) -> pd.DataFrame:
    p = need_file(key, path)
    df = pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"features.{key} ({p}) lacks columns {missing}; it has {list(df.columns)}.")
    return df[columns]


def go_embedding(path, n_components: int = 64, ontologies=("BP", "MF", "CC"), min_genes_per_term: int = 3,
                 seed: int = 0, cache_dir=None) -> pd.DataFrame:
    """TF-IDF + truncated SVD of the gene x GO-term incidence matrix over every gene in the file.

    Returns float32 DataFrame [n_annotated_genes, n_components] indexed by symbol. Fitting on the whole
    annotation file (not the dataset's genes) makes the embedding the same for every dataset, so it is cached
    in ``cache_dir`` keyed by the file's sha256 and the parameters.
    """
    from sklearn import __version__ as sk_version

    p = need_file("go.annotations", path)
    onts = sorted({str(o).upper() for o in ontologies})
    key = sha256_json({"file": sha256_file(p), "n": int(n_components), "ont": onts, "min": int(min_genes_per_term),
                       "seed": int(seed), "sklearn": sk_version, "v": 1})
    cache = Path(cache_dir) / f"go_svd_{key[:20]}.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return pd.DataFrame(z["embedding"], index=pd.Index(z["symbols"].astype(str)))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt, not fatal

    df = _read_table("go.annotations", p, ["symbol", "ontology", "go_id"])
    df = df[df["ontology"].str.upper().isin(onts) & (df["symbol"] != "")]
    df = df.drop_duplicates(["symbol", "go_id"])  # several evidence codes for one pair count once
    df = df[df["go_id"].map(df["go_id"].value_counts()) >= int(min_genes_per_term)]
    emb = _tfidf_svd(df, int(n_components), int(seed))
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, symbols=np.array(emb.index, dtype=np.str_), embedding=emb.to_numpy())
    return emb


def _tfidf_svd(pairs: pd.DataFrame, n_components: int, seed: int) -> pd.DataFrame:
    """pairs: unique (symbol, go_id) rows -> float32 [n_genes, n_components]."""
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer

    rows, genes = pd.factorize(pairs["symbol"], sort=True)  # sorted: row order must not depend on file order
    cols, terms = pd.factorize(pairs["go_id"], sort=True)
    out = np.zeros((len(genes), n_components), np.float32)
    # SVD needs k < min(shape); tiny files get fewer real components and zero padding so the width is fixed.
    k = min(n_components, len(genes) - 1, len(terms) - 1)
    if k >= 1:
        x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(genes), len(terms)))
        x = TfidfTransformer().fit_transform(x)
        out[:, :k] = TruncatedSVD(k, random_state=seed).fit_transform(x)
    return pd.DataFrame(out, index=pd.Index(genes.astype(str)))


def progeny_weights(path) -> pd.DataFrame:
    """Wide PROGENy table (first column gene, one column per pathway) -> float32 [n_genes, n_pathways]."""
    p = need_file("progeny.weights", path)
    # keep_default_na=False: gene symbols such as "NA" must stay names; only the weight cells may be missing.
    df = pd.read_csv(p, sep="\t", index_col=0, dtype=str, keep_default_na=False)
    try:  # empty cell = weight 0 in PROGENy
        values = df.apply(lambda c: pd.to_numeric(c.mask(c.isin(["", "NA", "NaN", "nan"])))).fillna(0.0)
    except ValueError as exc:
        raise DataError(f"features.progeny.weights ({p}) has a non-numeric weight: {exc}") from exc
    return values.astype(np.float32)


def load_user_embedding(path) -> pd.DataFrame:
    """symbol -> vector file (.csv/.tsv[.gz] with optional header, .npz {symbols, vectors}, .pt) -> [n, d]."""
    p = need_file("user", path)
    name = p.name.lower().removesuffix(".gz")
    try:
        if name.endswith((".csv", ".tsv", ".txt")):
            raw = pd.read_csv(p, sep="," if name.endswith(".csv") else "\t", header=None, dtype=str,
                              keep_default_na=False)
            if pd.to_numeric(raw.iloc[0, 1:], errors="coerce").isna().any():
                raw = raw.iloc[1:]  # first row is a header
            symbols, vectors = raw.iloc[:, 0].tolist(), raw.iloc[:, 1:].astype(np.float64).to_numpy()
        elif name.endswith(".npz"):
            with np.load(p, allow_pickle=False) as z:
                symbols, vectors = z["symbols"].astype(str).tolist(), z["vectors"]
        elif name.endswith((".pt", ".pth")):
            symbols, vectors = _read_torch(p)
        else:
            raise DataError(f"features.user: {p} has an unsupported type; use .csv, .tsv, .npz or .pt.")
    except (ValueError, KeyError, IndexError, TypeError, RuntimeError, pickle.UnpicklingError) as exc:
        if isinstance(exc, ScfateError):  # already says what is wrong (e.g. an unsafe .pt, scfate.utils.checkpoint)
            raise
        raise DataError(f"features.user: cannot read {p} as symbol -> numeric vector ({exc}).") from exc
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(symbols):
        raise DataError(f"features.user: {p} holds {len(symbols)} symbols but vectors of shape {vectors.shape}.")
    if not np.isfinite(vectors).all():
        raise DataError(f"features.user: {p} contains NaN or Inf values; fill or drop those genes.")
    df = pd.DataFrame(vectors, index=pd.Index([str(s) for s in symbols]))
    return df[~df.index.duplicated()]


def _read_torch(p: Path):
    import torch

    from scfate.utils.checkpoint import safe_torch_load

    obj = safe_torch_load(p, "features.user embedding file")  # never unpickles arbitrary code
    if not isinstance(obj, dict):
        raise DataError(f"features.user: {p} must hold a dict symbol -> 1-D tensor or {{symbols, vectors}}.")
    if set(obj) == {"symbols", "vectors"}:
        return [str(s) for s in obj["symbols"]], torch.as_tensor(obj["vectors"]).float().numpy()
    vecs = [torch.as_tensor(v).float().reshape(-1).numpy() for v in obj.values()]
    if len({v.shape for v in vecs}) > 1:
        raise DataError(f"features.user: vectors in {p} have different lengths.")
    return [str(s) for s in obj], np.stack(vecs) if vecs else np.zeros((0, 0))


def _user_view_name(path) -> str:
    name = Path(path).name
    return "user:" + Path(name.removesuffix(".gz")).stem


def _resolve(genes, official: set[str], views: dict[str, pd.DataFrame], alias_df, symbol_df):
    """Requested name -> official symbol: exact, case-insensitive, alias, then Ensembl id; else unchanged.

    Also returns, per gene, the names to try in each view: as given, resolved, then unambiguous alias links.
    Sources use different symbol vintages (PROGENy still has MLK4 for MAP3K21), so a view is searched under
    every name that unambiguously means the same gene.
    """
    def pick(cands) -> str:  # most views present, then alphabetical: deterministic for ambiguous aliases
        return min(sorted(set(cands)), key=lambda c: -sum(c in v.index for v in views.values()))

    by_upper: dict[str, list[str]] = {}
    for s in official:
        by_upper.setdefault(s.upper(), []).append(s)
    targets: dict[str, set[str]] = {}  # ALIAS (upper) -> official symbols
    olds: dict[str, list[str]] = {}  # official symbol -> its aliases that mean only it
    # Only retired names link genes across views: a current symbol of another gene is that other gene.
    current = set(symbol_df["symbol"]) if symbol_df is not None else set()
    if alias_df is not None:
        pairs = list(zip(alias_df["alias_symbol"], alias_df["symbol"]))
        current = current or set(alias_df["symbol"])
        for a, s in pairs:
            targets.setdefault(a.upper(), set()).add(s)
        for a, s in pairs:
            if targets[a.upper()] == {s} and a not in current:
                olds.setdefault(s, []).append(a)
    ensg = dict(zip(symbol_df["ensembl_id"].str.upper(), symbol_df["symbol"])) if symbol_df is not None else {}
    resolved, names = {}, {}
    for g in genes:
        up = g.upper()
        if g in official:
            r = g
        elif up in by_upper:
            r = pick(by_upper[up])
        elif up in targets:
            r = pick(targets[up])
        elif up.startswith("ENSG") and up.split(".")[0] in ensg:
            r = ensg[up.split(".")[0]]
        else:
            r = g
        resolved[g] = r
        tg = targets.get(up, set()) if g not in current else set()
        names[g] = list(dict.fromkeys([g, r, *(tg if len(tg) == 1 else []), *olds.get(r, [])]))
    return resolved, names


def build_gene_features(genes: list[str], cfg: dict | None, expression_loadings: pd.DataFrame | None = None,
                        cache_dir=None) -> PerturbationFeatures:
    """Features for perturbed genes: float32 [len(genes), sum of view widths], views in the order
    go, progeny, expression, user:<stem>... (each only if enabled in ``cfg``; see the module docstring)."""
    cfg = dict(cfg or {})
    genes = [str(g) for g in genes]
    if len(set(genes)) != len(genes):
        raise DataError(f"build_gene_features got duplicate genes: {sorted({g for g in genes if genes.count(g) > 1})}")
    views: dict[str, pd.DataFrame] = {}
    if cfg.get("go") is not None:
        go = {**GO_DEFAULTS, **cfg["go"]}
        views["go"] = go_embedding(go.get("annotations"), go["n_components"], go["ontologies"],
                                   go["min_genes_per_term"], go["seed"], cache_dir)
    if cfg.get("progeny") is not None:
        views["progeny"] = progeny_weights(cfg["progeny"].get("weights"))
    user: dict[str, pd.DataFrame] = {}
    for path in cfg.get("user") or []:
        name = _user_view_name(path)
        if name in user:
            raise DataError(f"features.user: two files give the view name {name!r}; rename one of them.")
        user[name] = load_user_embedding(path)
    views.update(user)

    symbol_df = _read_table("symbols", cfg["symbols"], ["symbol", "ensembl_id"]) if cfg.get("symbols") else None
    alias_df = _read_table("aliases", cfg["aliases"], ["symbol", "alias_symbol"]) if cfg.get("aliases") else None
    official = set().union(*(v.index for v in views.values()))
    if symbol_df is not None:
        official |= set(symbol_df["symbol"])
    resolved, names = _resolve(genes, official, views, alias_df, symbol_df)

    # The expression view is keyed by the dataset's own gene names, so it joins the views only after resolution
    # (its names are not an authority on official symbols).
    if cfg.get("expression") is not None:
        views = {k: v for k, v in views.items() if k not in user}
        views["expression"] = _expression_view(expression_loadings, cfg["expression"])
        views.update(user)  # keep the documented column order: go, progeny, expression, user

    blocks = []
    for name, table in views.items():
        pos = {s: i for i, s in enumerate(table.index)}
        rows = [next((pos[n] for n in names[g] if n in pos), -1) for g in genes]
        rows = np.array(rows, dtype=np.int64)
        present = rows >= 0
        mat = table.to_numpy(np.float32)[np.maximum(rows, 0)] if len(table) else np.zeros((len(genes), table.shape[1]))
        blocks.append((name, mat, present))
    feats = assemble("gene", genes, blocks, resolved)
    none = [g for g, p in zip(genes, feats.present) if not p.any()]
    if none:
        shown = ", ".join(f"{g}" + (f" (resolved to {resolved[g]})" if resolved[g] != g else "") for g in none)
        raise DataError(f"No features in any view ({', '.join(views) or 'no views enabled'}) for {len(none)} "
                        f"gene(s): {shown}. Fix: add a user embedding file covering them via features.user "
                        "(.csv/.tsv/.npz/.pt mapping symbol -> vector), or check the symbol spelling and the "
                        "alias table (features.aliases / features.symbols).")
    return feats


def _expression_view(loadings: pd.DataFrame | None, ecfg: dict) -> pd.DataFrame:
    """Caller-supplied loadings [n_measured_genes, n_components] indexed by the data's gene symbols."""
    if loadings is None:
        raise DataError("features.expression is enabled but no expression_loadings were passed; "
                        "compute them from the training data or set features.expression to null.")
    n = (ecfg or {}).get("n_components")
    if n is not None and loadings.shape[1] < int(n):
        raise DataError(f"expression_loadings has {loadings.shape[1]} columns, features.expression.n_components "
                        f"asks for {n}.")
    table = loadings.iloc[:, : int(n)] if n is not None else loadings
    table = table.set_axis(table.index.astype(str), axis=0)
    return table[~table.index.duplicated()].astype(np.float32)
