"""Plain-dataclass view of the `data` config: what to load, how to read its columns, how to split and featurise.

Hydra instantiates `conf/dataset/*.yaml` into a `DataSpec` (``_target_: scfate.data.spec.DataSpec``), so a typo in a
key fails at start-up with the list of valid keys instead of deep inside preparation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from scfate.errors import DataError

SPLIT_MODES = ("simulation", "unseen_perturbation", "unseen_drug", "file")
PERTURBATION_TYPES = ("gene", "drug")
INPUT_TYPES = ("auto", "counts", "log1p")
# the labels that mark control cells unless a dataset says otherwise (also what predict refuses as a perturbation)
CONTROL_VALUES = ("control", "ctrl", "non-targeting")


def _from_dict(cls, values: dict[str, Any] | None, where: str):
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DataError(f"Unknown key(s) {unknown} in `{where}`. Valid keys: {sorted(known)}.")
    return cls(**values)


@dataclass
class SplitSpec:
    """How perturbations are divided into train / val / test (see `scfate.data.splits`)."""

    mode: str = "simulation"
    seed: int = 1
    # simulation (GEARS): fraction of perturbed genes held out entirely, and of all-seen combos held out
    test_gene_fraction: float = 0.15
    combo_seen2_test_fraction: float = 0.15
    # validation is carved from training perturbations with the same procedure and these fractions
    val_gene_fraction: float = 0.1
    val_combo_seen2_fraction: float = 0.1
    # unseen_perturbation / unseen_drug: fraction of perturbations (drugs) held out
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    # unseen_drug: stratify held-out drugs by this annotation (a compounds-table column such as Pathway, or an obs column)
    stratify_by: str | None = None
    # file: a split JSON written by `scfate.data.splits.save_split` or by hand ({"train": [...], "val": [...], "test": [...]})
    file: str | None = None
    # subgroups that must not be empty; None means every subgroup the data can populate
    require_nonempty: list[str] | None = None

    def __post_init__(self):
        if self.mode not in SPLIT_MODES:
            raise DataError(f"split.mode={self.mode!r} is not a split mode. Valid: {list(SPLIT_MODES)}.")
        if self.mode == "file" and not self.file:
            raise DataError("split.mode=file needs split.file=PATH to a split JSON.")
        for name in ("test_gene_fraction", "combo_seen2_test_fraction", "val_gene_fraction",
                     "val_combo_seen2_fraction", "test_fraction", "val_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise DataError(f"split.{name}={value} must be in [0, 1).")


@dataclass
class DataSpec:
    """Everything the data layer needs to turn one h5ad into prepared, split, featurised data."""

    name: str
    # local file; if it does not exist and `hf_file` is set, the file is fetched into this exact place
    path: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    perturbation_type: str = "gene"
    # obs column names (None = the dataset has no such column)
    perturbation_key: str = "condition"
    context_key: str | None = "cell_type"
    dose_key: str | None = None
    smiles_key: str | None = None
    batch_key: str | None = None
    control_values: list[str] = field(default_factory=lambda: list(CONTROL_VALUES))
    # shorthand for one extra control label (data.control_value=NTC); appended to control_values
    control_value: str | None = None
    # separator of combination labels ("A+B"); None for drugs, whose names may contain "+" ("(+)-JQ1")
    combo_separator: str | None = "+"
    # keep only rows whose obs[column] is in the listed values, e.g. {dataset: [norman19]}
    obs_filter: dict[str, list] = field(default_factory=dict)
    input_type: str = "auto"
    n_hvg: int = 2000
    n_de_genes: int = 20
    # large datasets: prepare from the raw h5ad read in row chunks (scfate.data.chunked; also done without asking
    # above chunked.CHUNKED_ABOVE cells x genes or when memory is short) and read training batches from the
    # prepared h5ad on disk instead of memory. The prepared data are the same either way.
    backed: bool = False
    split: SplitSpec = field(default_factory=SplitSpec)
    features: dict[str, Any] = field(default_factory=dict)
    # parameters of the built-in simulator; set only for the synthetic dataset
    synthetic: dict[str, Any] | None = None

    def __post_init__(self):
        if isinstance(self.split, dict) or not isinstance(self.split, SplitSpec):
            self.split = _from_dict(SplitSpec, dict(self.split), "data.split")
        self.control_values = [str(v) for v in (self.control_values or [])]
        if self.control_value is not None and str(self.control_value) not in self.control_values:
            self.control_values.append(str(self.control_value))
        self.obs_filter = {str(k): list(v) for k, v in dict(self.obs_filter or {}).items()}
        self.features = dict(self.features or {})
        if self.perturbation_type not in PERTURBATION_TYPES:
            raise DataError(f"data.perturbation_type={self.perturbation_type!r}; valid: {list(PERTURBATION_TYPES)}.")
        if self.input_type not in INPUT_TYPES:
            raise DataError(f"data.input_type={self.input_type!r}; valid: {list(INPUT_TYPES)}.")
        if not self.control_values:
            raise DataError("data.control_values is empty: list the label(s) that mark control cells.")
        if self.path is None and self.hf_file is None and self.synthetic is None:
            raise DataError(f"Dataset {self.name!r} has no source: set data.path=FILE.h5ad "
                            "(or data.hf_repo + data.hf_file for a file on the Hugging Face Hub).")
        if self.n_de_genes < 1 or self.n_hvg < 1:
            raise DataError("data.n_de_genes and data.n_hvg must be positive.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
