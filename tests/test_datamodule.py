"""DataModule batches: shapes, pairing (controls and perturbed cells of one condition, same context), determinism,
backed reading identical to in-memory, and batch-bounded reads."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from test_prepare import tiny_spec

from scfate.data import schema
from scfate.data.datamodule import PerturbationDataModule
from scfate.data.rows import RowReader


def _dm(tmp_path, **kw) -> PerturbationDataModule:
    dm = PerturbationDataModule(tiny_spec(tmp_path, backed=kw.pop("backed", False)), tmp_path / "data",
                                batch_size=8, steps_per_epoch=5, val_steps=3, seed=kw.pop("seed", 0), **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


class RecordingReader(RowReader):
    """Returns each row's index in column 0, so a test can see which cells a batch holds."""

    def __init__(self, n_rows):
        super().__init__(matrix=sp.csr_matrix(np.arange(n_rows, dtype=np.float32)[:, None]))
        self.sizes = []

    def __call__(self, idx):
        self.sizes.append(len(idx))
        return super().__call__(idx)


def test_batches_pair_controls_and_one_condition_from_one_context(tmp_path):
    dm = _dm(tmp_path)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x_ctrl"].shape == batch["x_pert"].shape == (8, dm.n_genes)
    assert batch["x_ctrl"].dtype == torch.float32 and batch["members"].shape == (dm.max_members,)

    dm.reader = RecordingReader(dm.data.adata.n_obs)
    obs = dm.data.adata.obs
    for batch in dm.train_dataloader():
        ctrl = batch["x_ctrl"][:, 0].long().numpy()
        pert = batch["x_pert"][:, 0].long().numpy()
        assert obs[schema.IS_CONTROL].to_numpy()[ctrl].all()
        contexts = set(obs[schema.CONTEXT].astype(str).to_numpy()[np.r_[ctrl, pert]])
        assert contexts == {dm.contexts[int(batch["context"])]}
        perts = set(obs[schema.PERT].astype(str).to_numpy()[pert])
        name = dm.perturbations[int(batch["perturbation"])]
        assert perts == {name} and name in dm.data.split.train
        members = [dm.data.features.units[i] for i in batch["members"].tolist() if i >= 0]
        assert members == name.split("+")
    assert set(dm.reader.sizes) == {8}  # memory is bounded by the batch: never more rows than a batch


def test_validation_draws_only_validation_perturbations_and_repeat(tmp_path):
    dm = _dm(tmp_path)
    val = [dm.perturbations[int(b["perturbation"])] for b in dm.val_dataloader()]
    assert set(val) <= set(dm.data.split.val)
    loader = dm.val_dataloader()
    first = [b["x_pert"] for b in loader]
    loader.sampler.set_epoch(4)  # Lightning does this before each validation pass too
    second = [b["x_pert"] for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_same_seed_same_batches_new_epoch_new_batches(tmp_path):
    a, b = _dm(tmp_path, seed=3), _dm(tmp_path, seed=3)
    la, lb = a.train_dataloader(), b.train_dataloader()
    epoch_a = [x["x_pert"] for x in la]
    assert all(torch.equal(x, y["x_pert"]) for x, y in zip(epoch_a, lb))
    la.sampler.set_epoch(1)  # what Lightning does before each training epoch
    assert not all(torch.equal(x, y["x_pert"]) for x, y in zip(epoch_a, la))


def test_backed_reading_matches_memory(tmp_path):
    mem, backed = _dm(tmp_path, seed=1), _dm(tmp_path, seed=1, backed=True)
    assert backed.data.adata.isbacked and not mem.data.adata.isbacked
    for x, y in zip(mem.train_dataloader(), backed.train_dataloader()):
        assert torch.equal(x["x_ctrl"], y["x_ctrl"]) and torch.equal(x["x_pert"], y["x_pert"])


def test_backed_reading_in_worker_processes(tmp_path):
    mem, backed = _dm(tmp_path, seed=2), _dm(tmp_path, seed=2, backed=True, num_workers=2)
    xs = [b["x_pert"] for b in mem.train_dataloader()]
    ys = [b["x_pert"] for b in backed.train_dataloader()]
    assert len(xs) == len(ys) == 5 and all(torch.equal(x, y) for x, y in zip(xs, ys))


def test_row_reader_keeps_requested_order():
    X = sp.random(50, 7, density=0.3, format="csr", random_state=0, dtype=np.float32)
    idx = np.array([40, 3, 3, 17])
    np.testing.assert_array_equal(RowReader(matrix=X)(idx), X.toarray()[idx])
    with pytest.raises(ValueError):
        RowReader()


def test_pseudobulk_means_from_group_sums_equal_the_cells_means(tmp_path):
    """The prior's and evaluation's pseudobulks come from preparation's group sums (a training group's kept cells:
    its sums less the held-out ones'); they must equal the mean of the very rows, read one by one."""
    from scfate.data.rows import mean_rows

    dm = _dm(tmp_path, holdout_fraction=0.25)
    assert dm.groups["heldout"], "the fixture holds out no training cells: the subtraction is not exercised"
    for name in ("train", "val", "test", "heldout"):
        for g in dm.groups[name]:
            np.testing.assert_allclose(dm.pseudobulk_mean(g), mean_rows(dm.reader, g.cells), rtol=1e-12, atol=1e-12)
    for c in dm.contexts:
        every = np.unique(np.concatenate([dm.controls[c], dm.heldout_controls[c]]))
        np.testing.assert_allclose(dm.control_mean(c), mean_rows(dm.reader, every), rtol=1e-12, atol=1e-12)
