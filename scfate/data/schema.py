"""Schema normalisation: configurable obs columns -> canonical perturbation / context / dose / condition columns,
and detection of raw counts versus log-normalised values."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfate.data.spec import DataSpec
from scfate.errors import DataError

log = logging.getLogger(__name__)

CONTROL = "control"
# canonical columns added to obs; the original columns are kept untouched
PERT = "scfate_perturbation"  # "control", "A", "A+B" (members sorted), or a drug name
CONTEXT = "scfate_context"  # cell line / cell type ("all" when the dataset has no context column)
DOSE = "scfate_dose"  # float dose (NaN for gene perturbations)
CONDITION = "scfate_condition"  # evaluation unit within a context: perturbation, plus "@dose" for drugs
IS_CONTROL = "scfate_is_control"


def canonical_perturbation(label: object, control_values: set[str], separator: str | None) -> str:
    """Map a raw label to its canonical form: ``control`` or the member set joined by "+" in sorted order.

    GEARS-style ``A+ctrl`` / ``ctrl+A`` become ``A``; ``B+A`` becomes ``A+B`` so combinations are order invariant.
    Matching of control labels is case-insensitive.
    """
    text = str(label).strip()
    if text.lower() in control_values:
        return CONTROL
    if separator is None:
        return text
    members = {t.strip() for t in text.split(separator)} - {""}
    members = {m for m in members if m.lower() not in control_values}
    return CONTROL if not members else "+".join(sorted(members))


def members(perturbation: str, perturbation_type: str) -> list[str]:
    """Member genes of a canonical gene perturbation (``A+B`` -> [A, B]); a drug is its own single member."""
    if perturbation == CONTROL:
        return []
    return perturbation.split("+") if perturbation_type == "gene" else [perturbation]


def _require_column(obs: pd.DataFrame, key: str | None, role: str) -> None:
    if key is not None and key not in obs.columns:
        raise DataError(f"obs column {key!r} (data.{role}) is missing. Available obs columns: "
                        f"{list(obs.columns)}. Set data.{role}=<one of them>.")


def normalise_obs(adata, spec: DataSpec) -> None:
    """Add the canonical columns to ``adata.obs`` in place; raise DataError on missing columns or no controls."""
    obs = adata.obs
    _require_column(obs, spec.perturbation_key, "perturbation_key")
    for key, role in ((spec.context_key, "context_key"), (spec.dose_key, "dose_key"),
                      (spec.smiles_key, "smiles_key"), (spec.batch_key, "batch_key")):
        _require_column(obs, key, role)

    controls = {v.lower() for v in spec.control_values}
    raw = _as_str_categorical(obs[spec.perturbation_key])
    # one canonical name per label, not per cell: a genome-wide screen has millions of cells, a few thousand labels
    pert = _recode(raw, lambda lab: canonical_perturbation(lab, controls, spec.combo_separator))
    if not (pert == CONTROL).any():
        seen = {k: int(v) for k, v in pd.Series(raw).value_counts().head(20).items()}
        raise DataError(f"No control cells: none of the labels in obs[{spec.perturbation_key!r}] matches "
                        f"data.control_values={spec.control_values}. Most frequent labels seen: "
                        f"{seen}. Set data.control_values=[<your control label>].")
    obs[PERT] = pert
    obs[IS_CONTROL] = np.asarray(pert == CONTROL)  # a Categorical, not a Series: no hash table of the cell names
    obs[CONTEXT] = (_as_str_categorical(obs[spec.context_key]) if spec.context_key
                    else pd.Categorical.from_codes(np.zeros(len(obs), int), categories=["all"]))

    if spec.dose_key is not None and spec.perturbation_type == "drug":
        dose = pd.to_numeric(obs[spec.dose_key], errors="coerce")
        bad = dose.isna() & ~obs[IS_CONTROL]
        if bad.any():
            raise DataError(f"obs[{spec.dose_key!r}] has {int(bad.sum())} non-numeric doses on treated cells "
                            f"(e.g. {obs.loc[bad, spec.dose_key].astype(str).unique()[:5].tolist()}). "
                            "Doses must be numbers (e.g. nM).")
        if (dose[~obs[IS_CONTROL]] <= 0).any():
            raise DataError(f"obs[{spec.dose_key!r}] has non-positive doses on treated cells; doses enter the "
                            "model as log10(dose) and must be > 0.")
        obs[DOSE] = dose.where(~obs[IS_CONTROL]).astype(float)
        names = pd.Series(np.asarray(pert, dtype=object), index=obs.index)
        cond = np.where(obs[IS_CONTROL], CONTROL, names + "@" + obs[DOSE].map("{:g}".format))
    else:
        obs[DOSE] = np.nan
        cond = pert
    obs[CONDITION] = pd.Categorical(cond)


def _duplicated_names(names: pd.Index) -> pd.Index:
    """Names that occur more than once. Found through 8-byte hashes, not pandas' hash table of the strings
    themselves (a few hundred MB at millions of cells); names whose hashes collide are then compared as strings."""
    h = np.fromiter((hash(n) for n in names), np.int64, len(names))  # Python caches a str's hash in the str
    order = np.argsort(h, kind="stable")
    same = h[order[1:]] == h[order[:-1]]
    if not same.any():
        return names[:0]
    candidates = names[np.unique(np.concatenate([order[1:][same], order[:-1][same]]))]
    return candidates[candidates.duplicated(keep=False)]


def category_codes(series) -> tuple[np.ndarray, np.ndarray]:
    """(code per cell, category names as str) of an obs column: a categorical's own codes, so that no string per
    cell is made. A missing value (code -1) indexes the "nan" appended last, the name ``astype(str)`` gives it."""
    cat = series if isinstance(series.dtype, pd.CategoricalDtype) else series.astype("category")
    return cat.cat.codes.to_numpy(), np.append(np.asarray(cat.cat.categories.astype(str), dtype=object), "nan")


def group_codes(obs, columns: list[str], rows: np.ndarray | None = None) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The distinct name tuples of obs ``columns`` among ``rows`` (all cells if None), sorted by name, and each of
    those cells' index into them: a group-by on categorical codes, with no string per cell."""
    coded = [category_codes(obs[c]) for c in columns]
    stacked = np.stack([codes if rows is None else codes[rows] for codes, _ in coded], 1)
    combos, inverse = np.unique(stacked, axis=0, return_inverse=True)
    keys = [tuple(str(names[i]) for (_, names), i in zip(coded, combo)) for combo in combos]
    order = sorted(range(len(keys)), key=keys.__getitem__)  # by name, whatever order the categories are in
    rank = np.empty(len(keys), np.int64)
    rank[order] = np.arange(len(keys))
    return [keys[i] for i in order], rank[inverse.ravel()]


def _as_str_categorical(values) -> pd.Categorical:
    """``pd.Categorical(values.astype(str))`` without a string per cell: a categorical column's categories are
    converted (and merged where two become one name, e.g. 1 and "1"); other columns are factorised first."""
    cat = pd.Categorical(values) if not isinstance(values.dtype, pd.CategoricalDtype) else values.array
    return _recode(cat, str)


def _recode(cat, name) -> pd.Categorical:
    """The categorical with every category renamed by ``name(str(category))``; a missing value becomes "nan", as
    ``astype(str)`` writes it. Categories that get the same name merge; the result's categories are sorted."""
    cat = pd.Categorical(cat)
    labels = [name(str(c)) for c in cat.categories] + [name("nan")]  # code -1 (missing) indexes the last
    names, index = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    out = pd.Categorical.from_codes(index.ravel()[np.asarray(cat.codes)], categories=names)
    return out.remove_unused_categories()  # "nan", and labels no cell carries


def warn_odd_cells(adata) -> None:
    """Warn (not fail: both can be deliberate) about duplicate cell names, often the same cells loaded twice, and
    about perturbations with a single cell in a context, whose "mean" is one cell's noise. Needs normalise_obs."""
    names = adata.obs_names
    dup = _duplicated_names(names)
    if len(dup):
        log.warning("%d cell names (obs_names) occur more than once (%d cells), e.g. %s: the same cells loaded "
                    "twice? If they are different cells, make the names unique (adata.obs_names_make_unique()).",
                    dup.nunique(), len(dup), list(dup.unique()[:5]))
    keys, codes = group_codes(adata.obs, [CONTEXT, CONDITION], np.flatnonzero(~adata.obs[IS_CONTROL].to_numpy()))
    counts = np.bincount(codes, minlength=len(keys))
    single = [cond if ctx == "all" else f"{cond} ({ctx})" for (ctx, cond), n in zip(keys, counts) if n == 1]
    if single:
        log.warning("%d perturbation(s) have a single cell in their context, e.g. %s: their mean effect and "
                    "distribution metrics rest on one cell; consider dropping them (data.obs_filter) or pooling.",
                    len(single), single[:5])


def _values_sample(X, max_values: int = 2_000_000) -> np.ndarray:
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if data.size > max_values:  # a strided sample is enough to tell counts from logs, and is deterministic
        data = data[:: data.size // max_values + 1]
    return np.asarray(data)


def check_values(X, what: str = "The expression matrix",
                 expects: str = "counts or log1p-normalised values") -> None:
    """NaN/Inf or negative expression values cannot be modelled: fail with what was found and what to do.
    ``what`` / ``expects`` name the matrix and the scale its reader wants (prepare: counts or log1p)."""
    data = X.data if sp.issparse(X) else np.asarray(X)
    n_bad = int(np.size(data) - np.isfinite(data).sum())
    if n_bad:
        raise DataError(f"{what} has {n_bad} NaN/Inf values. Remove or impute them (e.g. "
                        f"np.nan_to_num) before loading; scFATE expects {expects}.")
    if np.size(data) and data.min() < 0:
        raise DataError(f"{what} has negative values (min {data.min():.3g}): it looks scaled or "
                        f"z-scored. Provide {expects} (e.g. from adata.raw or a counts layer).")


def detect_input_type(X, declared: str = "auto", what: str = "The expression matrix",
                      fix: str = "Apply sc.pp.log1p, or set data.input_type=log1p if they already are.") -> str:
    """'counts' when every value is a non-negative integer, 'log1p' for log-normalised values.

    Non-integer values with a maximum above 30 are neither (log1p of 1e4-normalised data stays below ~10), so
    they raise instead of being silently mis-modelled.
    """
    if declared != "auto":
        return declared
    values = _values_sample(X)
    if values.size == 0:
        raise DataError(f"{what} is empty (no non-zero values).")
    if np.all(values == np.round(values)):
        return "counts"
    if values.max() > 30:
        raise DataError(f"{what} has non-integer values with max {values.max():.3g}: normalised but apparently "
                        f"not log-transformed. {fix}")
    return "log1p"


# how prepare puts counts on the scale a trained model reads (normalise_expression below)
LOG1P_RECIPE = "sc.pp.normalize_total(adata, target_sum=1e4); sc.pp.log1p(adata) on all measured genes"


def check_log1p(X, what: str) -> None:
    """Values a trained model reads (``predict``'s control cells): prepare's log1p scale, no NaN/Inf, no negative
    values, no raw counts. Detected as prepare detects them, so both doors accept and refuse the same matrices."""
    check_values(X, what, f"log1p-normalised values ({LOG1P_RECIPE})")
    kind = detect_input_type(X, "auto", what, f"Normalise them as prepare does: {LOG1P_RECIPE}.")
    if kind == "counts":
        raise DataError(f"{what} looks like raw counts (every value is a whole number), but the model reads "
                        f"log1p-normalised values, as prepare writes them. Normalise them as prepare does: "
                        f"{LOG1P_RECIPE}.")


def normalise_expression(adata, input_type: str) -> str:
    """Counts -> normalize_total + log1p with the counts kept in ``layers['counts']``; log1p used as is.

    Returns the detected input type. The result is float32 CSR so that row batches are cheap to read.
    """
    import scanpy as sc

    check_values(adata.X)
    kind = detect_input_type(adata.X, input_type)
    X = adata.X if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    adata.X = sp.csr_matrix(X, dtype=np.float32)
    if kind == "counts":
        adata.layers["counts"] = adata.X.copy()
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    return kind


def check_gene_names(var_names: pd.Index) -> None:
    dup = var_names[var_names.duplicated()].unique()
    if len(dup):
        raise DataError(f"{len(dup)} duplicate gene name(s) in var_names, e.g. {list(dup[:10])}. Make them unique "
                        "(adata.var_names_make_unique()) or aggregate the duplicates before loading.")


def check_same_genes(expected: list[str], got: list[str], what: str, fix: str) -> None:
    """Raise DataError naming the genes ``got`` lacks and the extra ones, unless the lists are identical."""
    if list(expected) == list(got):
        return
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shown = lambda genes: f"{genes[:20]}{'…' if len(genes) > 20 else ''} ({len(genes)})"  # noqa: E731
    order = " (same genes, different order)" if not missing and not extra else ""
    raise DataError(f"{what} has other genes than expected{order}: missing {shown(missing)}, extra "
                    f"{shown(extra)}. {fix}")
