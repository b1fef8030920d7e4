"""Lightning DataModule: paired batches of control cells and cells of one condition from the same context.

Rows are read per batch from CSR in memory or from a backed h5ad, so memory is bounded by the batch, never by the
dataset. A training item is one step: ``x_ctrl`` [B, G] and ``x_pert`` [B, G] (float32, log1p), the condition's
perturbation index, its member units (genes or drug) as indices into the feature table padded with -1, its context
index and log10 dose (0 for genes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from scfate.data import schema
from scfate.data.load import stored_layers
from scfate.data.rows import RowReader, mean_rows
from scfate.data.spec import DataSpec
from scfate.data.splits import UNIT_SEP, has_context_units
from scfate.errors import DataError, UsageError


@dataclass
class ConditionGroup:
    context: str
    condition: str
    perturbation: str
    cells: np.ndarray  # row indices


def condition_groups(obs, perturbations: set[str]) -> list[ConditionGroup]:
    """All (context, condition) groups in the split set ``perturbations`` (perturbations, or context units
    ``CONTEXT::PERTURBATION``: scfate.data.splits), in a fixed order. Vectorised over cells (a genome-wide screen
    has millions): per-category tests, then one sort of the cells' (context, condition, perturbation) codes."""
    pert, pert_names = schema.category_codes(obs[schema.PERT])
    wanted = list(perturbations)
    mask = np.isin(pert_names, wanted)[pert]
    if has_context_units(perturbations):
        units, unit_of = schema.group_codes(obs, [schema.CONTEXT, schema.PERT])
        mask |= np.isin([f"{c}{UNIT_SEP}{p}" for c, p in units], wanted)[unit_of]
    rows = np.flatnonzero(mask)
    if not len(rows):
        return []
    keys, codes = schema.group_codes(obs, [schema.CONTEXT, schema.CONDITION, schema.PERT], rows)
    order = np.argsort(codes, kind="stable")  # each group's cells in increasing row order
    parts = np.split(rows[order], np.cumsum(np.bincount(codes, minlength=len(keys)))[:-1])
    return [ConditionGroup(*key, cells=cells) for key, cells in zip(keys, parts)]


class _StepSampler(Sampler):
    """Yields ``steps`` integer tokens per epoch; each token seeds one batch, so runs are reproducible.

    Lightning calls ``set_epoch`` on train and validation samplers every epoch, so each training epoch draws fresh
    batches; a ``fixed`` (validation) sampler ignores it and repeats the same draws, keeping scores comparable
    across epochs. (Counting ``__iter__`` calls instead breaks with persistent workers, which call it twice.)
    """

    def __init__(self, steps: int, fixed: bool = False):
        self.steps, self.fixed, self.epoch = steps, fixed, 0

    def set_epoch(self, epoch: int) -> None:
        if not self.fixed:
            self.epoch = int(epoch)

    def __iter__(self):
        # a generator: the epoch is read at the first batch, not when the iterator is made. Lightning makes the
        # first epoch's iterator before it calls set_epoch, so a resumed run would replay epoch 0's batches
        yield from range(self.epoch * self.steps, (self.epoch + 1) * self.steps)

    def __len__(self):
        return self.steps


class PairedBatches(Dataset):
    """Item ``token`` -> one batch of controls and perturbed cells of one randomly drawn group (same context)."""

    def __init__(self, reader: RowReader, groups: list[ConditionGroup], controls: dict[str, np.ndarray],
                 encode: dict, batch_size: int, seed: int, counts: RowReader | None = None):
        if not groups:
            raise ValueError("No condition groups to draw batches from.")
        self.reader, self.groups, self.controls = reader, groups, controls
        self.encode, self.batch_size, self.seed, self.counts = encode, batch_size, seed, counts

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, token: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(token)])
        g = self.groups[rng.integers(len(self.groups))]
        ctrl = self.controls[g.context]
        b = self.batch_size
        ctrl_idx = rng.choice(ctrl, b, replace=len(ctrl) < b)
        pert_idx = rng.choice(g.cells, b, replace=len(g.cells) < b)
        batch = {"x_ctrl": torch.from_numpy(self.reader(ctrl_idx)), "x_pert": torch.from_numpy(self.reader(pert_idx)),
                 "rows_ctrl": torch.from_numpy(ctrl_idx), "rows_pert": torch.from_numpy(pert_idx),
                 **self.encode[(g.context, g.condition)]}
        if self.counts is not None:  # raw counts of the same cells, for a negative-binomial decoder
            batch["c_ctrl"] = torch.from_numpy(self.counts(ctrl_idx))
            batch["c_pert"] = torch.from_numpy(self.counts(pert_idx))
        return batch


def holdout(cells: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split cell indices into (kept, held out); at least one held out when there are 5 cells or more."""
    n_out = int(round(len(cells) * fraction))
    if fraction > 0 and len(cells) >= 5:
        n_out = max(n_out, 1)
    out = np.zeros(len(cells), bool)
    out[rng.choice(len(cells), n_out, replace=False)] = True
    return cells[~out], cells[out]


class PerturbationDataModule(pl.LightningDataModule):
    """Prepares the dataset (cached) in ``prepare_data`` and builds paired loaders in ``setup``.

    ``holdout_fraction`` of the control cells of each context and of the cells of each training condition never
    reach training. Validation (``val_mode``) draws either the validation *perturbations* (zero-shot model
    selection, for the flow head) or those held-out *cells* of training perturbations (for the backbone, whose
    rotation atlas only knows training perturbations); both use held-out controls.
    """

    VAL_MODES = ("perturbations", "heldout_cells")

    def __init__(self, spec: DataSpec | None = None, data_dir: str | Path | None = None, batch_size: int = 64,
                 steps_per_epoch: int = 100, val_steps: int = 20, num_workers: int = 0, seed: int = 0,
                 holdout_fraction: float = 0.1, val_mode: str = "perturbations", with_counts: bool = False,
                 data=None):
        """Either ``spec`` and ``data_dir`` (prepared in ``prepare_data``) or ``data``, a PreparedData that the
        pipeline prepared once for the whole run (then nothing is prepared or hashed again here)."""
        super().__init__()
        if val_mode not in self.VAL_MODES:
            raise UsageError(f"val_mode={val_mode!r}; valid: {list(self.VAL_MODES)}.")
        if (data is None) == (spec is None):
            raise ValueError("PerturbationDataModule needs exactly one of `spec` (with `data_dir`) or `data`.")
        self.prepared = data
        self.spec = data.spec if data is not None else spec
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.batch_size, self.steps_per_epoch, self.val_steps = batch_size, steps_per_epoch, val_steps
        self.num_workers, self.seed, self.holdout_fraction = num_workers, seed, holdout_fraction
        self.val_mode, self.with_counts = val_mode, with_counts
        self.data = None

    def prepare_data(self):
        if self.prepared is None:
            from scfate.data.prepare import prepare

            prepare(self.spec, self.data_dir)

    def setup(self, stage: str | None = None):
        if self.data is not None:
            return
        if self.prepared is None:
            from scfate.data.prepare import prepare

            self.prepared = prepare(self.spec, self.data_dir)
        self.data = data = self.prepared
        obs = data.adata.obs
        path = data.cache_dir / "prepared.h5ad"
        self.reader = RowReader(path=path) if self.spec.backed else RowReader(matrix=data.adata.X)
        self.counts = None
        if self.with_counts:
            if "counts" not in stored_layers(data.adata):
                raise DataError(f"with_counts=True but {data.spec.name} has no raw counts (input was "
                                f"{data.meta['input_type']}): the negative-binomial decoder needs them. Use "
                                "model.likelihood=mse (the default) on log-normalised data.")
            self.counts = (RowReader(path=path, key="layers/counts") if self.spec.backed
                           else RowReader(matrix=data.adata.layers["counts"]))
        self.contexts = data.meta["contexts"]
        self.perturbations = data.perturbations
        rng = np.random.default_rng([self.seed, 7])
        ctx = obs[schema.CONTEXT].astype(str).to_numpy()
        is_ctrl = obs[schema.IS_CONTROL].to_numpy()
        split = {c: holdout(np.flatnonzero(is_ctrl & (ctx == c)), self.holdout_fraction, rng) for c in self.contexts}
        self.controls = {c: kept for c, (kept, _) in split.items()}
        self.heldout_controls = {c: out if len(out) else kept for c, (kept, out) in split.items()}
        self.groups = {name: condition_groups(obs, set(getattr(data.split, name))) for name in ("train", "val", "test")}
        kept_held = [holdout(g.cells, self.holdout_fraction, rng) for g in self.groups["train"]]
        self.groups["heldout"] = [replace(g, cells=out) for g, (_, out) in zip(self.groups["train"], kept_held) if len(out)]
        self.groups["train"] = [replace(g, cells=kept) for g, (kept, _) in zip(self.groups["train"], kept_held)]
        self._heldout_cells = {(g.context, g.condition): g.cells for g in self.groups["heldout"]}
        self.encode = {(g.context, g.condition): self.encode_condition(g.context, g.perturbation, obs, g.cells[0])
                       for groups in self.groups.values() for g in groups}

    def pseudobulk_mean(self, g: ConditionGroup) -> np.ndarray:
        """Mean expression of ``g``'s cells from preparation's group sums: a whole group's as stored, a training
        group's kept cells as its sums less those of its held-out cells (the only rows read)."""
        sums, key = self.data.group_sums, (g.context, g.condition)
        if len(g.cells) == sums.n_of(*key):
            return sums.mean(*key, len(g.cells))
        left = self._heldout_cells.get(key, g.cells)
        if len(left) + len(g.cells) != sums.n_of(*key) or np.intersect1d(left, g.cells).size:
            return mean_rows(self.reader, g.cells)  # some other subset (the held-out cells themselves): read it
        return sums.mean_without(*key, left, self.reader)

    def control_mean(self, context: str) -> np.ndarray:
        """Mean expression of all of a context's control cells (kept and held out), from the group sums."""
        return self.data.group_sums.mean(context, schema.CONTROL)

    @property
    def n_genes(self) -> int:
        return int(self.data.adata.n_vars)

    @property
    def max_members(self) -> int:
        return max(len(self.data.members(p)) for p in self.perturbations)

    def encode_condition(self, context: str, perturbation: str, obs, row: int) -> dict[str, torch.Tensor]:
        units = self.data.features.index()
        member_idx = [units[m] for m in self.data.members(perturbation)]
        member_idx += [-1] * (self.max_members - len(member_idx))
        dose = float(obs[schema.DOSE].iloc[row])
        return {"perturbation": torch.tensor(self.perturbations.index(perturbation)),
                "members": torch.tensor(member_idx, dtype=torch.long),
                "context": torch.tensor(self.contexts.index(context)),
                "log10_dose": torch.tensor(np.log10(dose) if np.isfinite(dose) else 0.0, dtype=torch.float32)}

    def _loader(self, groups: str, controls: dict, steps: int, seed: int, fixed: bool) -> DataLoader:
        dataset = PairedBatches(self.reader, self.groups[groups], controls, self.encode, self.batch_size, seed,
                                self.counts)
        return DataLoader(dataset, batch_size=None, sampler=_StepSampler(steps, fixed), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.controls, self.steps_per_epoch, self.seed, fixed=False)

    def val_dataloader(self) -> DataLoader:
        # a stream distinct from training, the same draws at every validation pass
        groups = "val" if self.val_mode == "perturbations" else "heldout"
        return self._loader(groups, self.heldout_controls, self.val_steps, self.seed + 10_000, fixed=True)
