"""Raw h5ad (or the simulator) -> prepared, split, featurised data, cached on disk.

Cache layout under ``<data_dir>/prepared/<name>-<key>/`` where ``key`` hashes the input file's sha256 and every
preparation setting, so changing either prepares afresh and never reuses a stale result:
``prepared.h5ad`` (selected genes, log1p float32 CSR, canonical obs columns), ``de.json``, ``features.npz``,
``meta.json`` (written last: its presence marks a complete cache), and ``splits/<split tag>.json``.
Every file is written atomically, so concurrent multirun jobs preparing the same dataset are safe.

The raw file is read in row chunks (scfate.data.chunked): from memory when it fits, from disk (opened read-only)
with ``data.backed=true``, above ``chunked.CHUNKED_ABOVE`` cells x genes, or when memory would not hold it. Both ways
run the same code and give the same prepared data, so ``backed`` is not part of the cache key.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scfate._version import __version__
from scfate.data import chunked, preprocess, schema, stats
from scfate.data.features import PerturbationFeatures, build_drug_features, build_gene_features
from scfate.data.load import read_h5ad, resolve_data_file
from scfate.data.pseudobulk import GroupSums
from scfate.data.rows import RowReader
from scfate.data.spec import DataSpec
from scfate.data.splits import Split, load_split, make_split, save_split
from scfate.errors import DataError
from scfate.utils.io import atomic_path, atomic_write_json, sha256_file_cached, sha256_json
from scfate.utils.memory import release_free_memory

log = logging.getLogger(__name__)
PREP_VERSION = 2  # bump when preparation changes, to invalidate old caches (2: the groups' sums are kept; the
# chunked preparation gives the same X, genes and DE lists as the scanpy pipeline it replaced, tests/test_out_of_core.py)


@dataclass
class PreparedData:
    spec: DataSpec
    adata: object  # AnnData, in memory or backed
    de: dict
    features: PerturbationFeatures
    split: Split
    meta: dict
    cache_dir: Path
    split_path: Path
    group_sums: GroupSums  # cells and expression sums of every (context, condition): the pseudobulk means

    @property
    def perturbations(self) -> list[str]:
        return self.meta["perturbations"]

    def members(self, perturbation: str) -> list[str]:
        return schema.members(perturbation, self.spec.perturbation_type)


def _source(spec: DataSpec, data_dir: Path) -> tuple[Path, DataSpec]:
    """The h5ad to read; for the synthetic dataset, simulate it first and point the feature views at its files."""
    if spec.synthetic is None:
        return resolve_data_file(spec.path, spec.hf_repo, spec.hf_file), spec
    from scfate.data.synthetic import simulate

    files = simulate(spec.synthetic, data_dir / "synthetic" / sha256_json(spec.synthetic)[:12])
    feats = json.loads(json.dumps(spec.features))  # deep copy
    # fill only the paths the config leaves empty, so a user can still swap in a file of their own
    fill = {"symbols": files.get("symbols"), "aliases": files.get("aliases"), "compounds": files.get("compounds")}
    for key, value in fill.items():
        if feats.get(key, "absent") is None and value is not None:
            feats[key] = str(value)
    for view, key, file_key in (("go", "annotations", "gene2go"), ("progeny", "weights", "progeny")):
        if feats.get(view) is not None and feats[view].get(key) is None:
            feats[view][key] = str(files[file_key])
    spec = DataSpec(**{**spec.to_dict(), "features": feats})
    return files["h5ad"], spec


def _expression_loadings(adata, n_components: int):
    """Gene loadings of a PCA on (up to 20k) control cells: a feature view for perturbed genes that are measured."""
    import pandas as pd
    from sklearn.decomposition import PCA

    ctrl = np.flatnonzero(adata.obs[schema.IS_CONTROL].to_numpy())
    ctrl = ctrl[np.linspace(0, len(ctrl) - 1, min(len(ctrl), 20000)).astype(int)]
    # backed: rows read by offset (scfate.data.rows); anndata's fancy indexing of a backed X reads all of it
    X = RowReader(path=adata.filename)(ctrl) if adata.isbacked else adata.X[ctrl].toarray()
    k = min(n_components, *X.shape)
    pca = PCA(n_components=k, random_state=0).fit(X)
    return pd.DataFrame(pca.components_.T, index=adata.var_names, columns=[f"pc{i}" for i in range(k)])


def _featurise(adata, spec: DataSpec, perts: list[str], cache_dir: Path) -> PerturbationFeatures:
    units = sorted({m for p in perts for m in schema.members(p, spec.perturbation_type)})
    if spec.perturbation_type == "drug":
        smiles = None
        if spec.smiles_key:
            obs = adata.obs[~adata.obs[schema.IS_CONTROL]]
            smiles = dict(zip(obs[schema.PERT].astype(str), obs[spec.smiles_key].astype(str)))
        return build_drug_features(units, spec.features, smiles=smiles)
    expr_cfg = spec.features.get("expression")
    loadings = _expression_loadings(adata, int(expr_cfg["n_components"])) if expr_cfg else None
    return build_gene_features(units, spec.features, expression_loadings=loadings,
                               cache_dir=cache_dir.parent.parent / "feature_cache")


def _build(raw_path: Path, spec: DataSpec, cache_dir: Path, data_sha: str) -> None:
    import anndata as ad

    reason = chunked.plan(raw_path, spec.backed)
    if reason:
        log.info("Preparing %s in chunks read from disk (%s)", raw_path, reason)
    with chunked.open_raw(raw_path, backed=reason is not None) as raw:
        lite = ad.AnnData(obs=raw.obs, var=raw.var)  # obs and var only: the matrix stays in `raw`
        raw.obs = None  # lite holds its own copy; one copy of a million cells' obs at a time
        if lite.n_obs == 0 or lite.n_vars == 0:
            raise DataError(f"{raw_path} holds {lite.n_obs} cells x {lite.n_vars} genes: nothing to prepare. Point "
                            "data.path at the screen's h5ad (cells in rows, genes in columns).")
        rows = np.arange(lite.n_obs)
        for col, values in spec.obs_filter.items():
            if col not in lite.obs.columns:
                raise DataError(f"data.obs_filter names obs column {col!r}, which is missing. Available: "
                                f"{list(lite.obs.columns)}.")
            keep = lite.obs[col].astype(str).isin([str(v) for v in values]).to_numpy()
            lite, rows = lite[keep].copy(), rows[keep]
            if lite.n_obs == 0:
                raise DataError(f"data.obs_filter {col} in {values} keeps no cells.")
        schema.check_gene_names(lite.var_names)
        schema.normalise_obs(lite, spec)
        schema.warn_odd_cells(lite)
        input_type = chunked.input_type(raw.X, rows, spec.input_type)
        obs = lite.obs
        perts = sorted(str(p) for p in obs[schema.PERT].cat.categories if p != schema.CONTROL)  # all present
        if not perts:
            raise DataError("The dataset has control cells only: no perturbed cells to learn from.")
        preprocess.require_controls(obs)  # before the passes over the data, not after them

        gene_members = sorted({m for p in perts for m in schema.members(p, "gene")}) if spec.perturbation_type == "gene" else []
        measured = preprocess.match_measured(gene_members, lite.var_names)
        base = raw.log1p_base if input_type == "log1p" else None  # counts are logged here, in base e
        genes = preprocess.choose_genes(raw.X, rows, input_type, obs, lite.var_names, spec.n_hvg,
                                        list(measured.values()), spec.batch_key, base)
        var = lite.var.iloc[genes]
        keys, groups = preprocess.condition_codes(obs)
        cache_dir.mkdir(parents=True, exist_ok=True)
        # written under a temporary name and renamed when complete: an interrupted run leaves no prepared file
        with atomic_path(cache_dir / "prepared.h5ad") as tmp:
            moments = chunked.write_prepared(tmp, raw.X, rows, input_type, genes, obs, var, groups, len(keys),
                                             counts=raw.counts)
            cells = {"n_cells": int(len(obs)), "n_genes": int(len(var)),
                     "n_control_cells": int(obs[schema.IS_CONTROL].sum()),
                     "contexts": sorted(str(c) for c in obs[schema.CONTEXT].cat.categories)}
            del lite, obs, groups  # the prepared file's obs is read next: never two copies of it in memory
            release_free_memory()
            prepared = read_h5ad(tmp, backed=True)
            try:
                features = _featurise(prepared, spec, perts, cache_dir)
            finally:
                prepared.file.close()
    de = stats.de_from_moments(moments, keys, var.index, schema.CONTROL, spec.n_de_genes)
    GroupSums.from_moments(moments, keys).save(cache_dir)  # every pseudobulk mean, without another pass

    meta = {"prep_version": PREP_VERSION, "scfate_version": __version__, "dataset": spec.name,
            "source": str(raw_path), "data_sha256": data_sha, "input_type": input_type,
            **cells, "perturbations": perts, "measured_perturbed_genes": measured, "spec": spec.to_dict()}
    atomic_write_json(cache_dir / "de.json", de)
    features.save(cache_dir / "features.npz")
    atomic_write_json(cache_dir / "meta.json", meta)  # last: marks the cache complete


def _strata(spec: DataSpec, adata, perts: list[str]) -> dict[str, str] | None:
    col = spec.split.stratify_by
    if col is None:
        return None
    if col in adata.obs.columns:
        obs = adata.obs[~adata.obs[schema.IS_CONTROL]]
        return dict(zip(obs[schema.PERT].astype(str), obs[col].astype(str)))
    from scfate.data.features.drugs import compound_annotations

    return compound_annotations(perts, spec.features, col)


def prepare(spec: DataSpec, data_dir: str | Path, rebuild: bool = False) -> PreparedData:
    """Prepare (or load from cache) the dataset described by ``spec`` and compute its split."""
    data_dir = Path(data_dir)
    raw_path, spec = _source(spec, data_dir)
    data_sha = sha256_file_cached(raw_path, data_dir / "file_hashes")
    prep_keys = {k: v for k, v in spec.to_dict().items() if k not in ("split", "backed", "name")}
    key = sha256_json({"data": data_sha, "spec": prep_keys, "v": PREP_VERSION})[:12]
    cache_dir = data_dir / "prepared" / f"{spec.name}-{key}"
    if rebuild or not (cache_dir / "meta.json").is_file():
        log.info("Preparing %s from %s into %s", spec.name, raw_path, cache_dir)
        _build(raw_path, spec, cache_dir, data_sha)
    meta = json.loads((cache_dir / "meta.json").read_text())
    if not spec.backed and (too_large := chunked.too_large_for_memory(cache_dir / "prepared.h5ad")):
        raise DataError(too_large)
    adata = read_h5ad(cache_dir / "prepared.h5ad", backed=spec.backed)
    de = json.loads((cache_dir / "de.json").read_text())
    features = PerturbationFeatures.load(cache_dir / "features.npz")

    perts = meta["perturbations"]
    if spec.split.mode == "file":
        split_path = Path(spec.split.file)
        # a file from another tool may name A+B as B+A: read with the data's own canonical rule
        split = load_split(split_path, perts, spec.control_values, spec.combo_separator)
    else:
        split = make_split(perts, spec.split, _strata(spec, adata, perts))
        # named by its tag (mode, seed, hash of its lists): the name the log prints, that of its backbone folder
        # (backbones/<dataset>/<tag>-<config>) and of the eval JSON's split.tag, so one name finds all three;
        # settings that give other lists give another name, so a run never overwrites another's split
        split_path = cache_dir / "splits" / f"{split.tag}.json"
        if not split_path.is_file():  # the tag hashes the lists: a file of that name holds this very split
            save_split(split, split_path)
    return PreparedData(spec, adata, de, features, split, meta, cache_dir, split_path, GroupSums.load(cache_dir))
