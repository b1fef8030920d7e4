"""Resume is the same run, and only this run's: an interrupted-then-resumed run reaches the eval JSON metrics and
the whole metrics history of an uninterrupted one; checkpoints are keyed by the run folder and refused for another
config; a run folder is locked, never silently overwritten, and marked COMPLETE only when the run finished.
In-process runs on the built-in data, tiny epochs (the kill is an exception after epoch 0's checkpoint)."""

import json
import shutil

import pytest
import torch
from test_run_identity import compose_train

from scfate.errors import UsageError

EPOCHS = ["trainer.max_epochs=null", "epochs.backbone=1", "epochs.flow=3"]


def train(tmp, *overrides):
    from scfate.cli import run_train

    return run_train(compose_train(tmp, *EPOCHS, *overrides))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``a/det`` uninterrupted; ``b/det`` (same last name) killed after epoch 0, then resumed with ckpt_path=last."""
    import scfate.models.flow_head as fh

    tmp = tmp_path_factory.mktemp("resume")
    ev_a = train(tmp, f"run_dir={tmp / 'a' / 'det'}")

    def killed(self):  # as kill -9 would: epoch 0 is checkpointed, epoch 1 never starts
        if self.current_epoch == 1:
            raise RuntimeError("killed")

    mp = pytest.MonkeyPatch()
    mp.setattr(fh.FlowHead, "on_train_epoch_start", killed, raising=False)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            train(tmp, f"run_dir={tmp / 'b' / 'det'}")
    finally:
        mp.undo()
    left = sorted(p.name for p in (tmp / "b" / "det").iterdir())
    ev_b = train(tmp, f"run_dir={tmp / 'b' / 'det'}", "ckpt_path=last")
    return tmp, ev_a, ev_b, left


def test_a_resumed_run_is_the_uninterrupted_run(runs):
    from scfate.pipelines.training import checkpoint_dir

    tmp, ev_a, ev_b, _ = runs
    assert ev_b["metrics"] == ev_a["metrics"] and ev_b["baselines"] == ev_a["baselines"]
    a, b = tmp / "a" / "det", tmp / "b" / "det"
    history = [json.loads(line) for line in (b / "flow_metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1, 2]  # epoch 0 came from before the kill
    assert (b / "flow_metrics.jsonl").read_text() == (a / "flow_metrics.jsonl").read_text()
    heads = [torch.load(d / "flow_best.pt", weights_only=True)["v_net_state_dict"] for d in (a, b)]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    ckpts = checkpoint_dir(compose_train(tmp, f"run_dir={b}"), b)
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]  # no last-v1.ckpt beside
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 9  # the final state: 3 epochs of 3 steps


def test_checkpoints_are_keyed_by_the_run_folder_and_carry_its_identity(runs, tmp_path):
    from scfate.pipelines.training import checkpoint_dir

    tmp = runs[0]
    dirs = [checkpoint_dir(compose_train(tmp, f"run_dir={tmp / p / 'det'}"), tmp / p / "det") for p in "ab"]
    assert dirs[0] != dirs[1] and all(d.name.startswith("det-") and (d / "last.ckpt").is_file() for d in dirs)
    inside = tmp / "artifacts" / "flow_heads" / "synthetic" / "seed1"  # inside the artifacts tree: its path there
    assert checkpoint_dir(compose_train(tmp), inside) == tmp / "artifacts" / "checkpoints" / "flow_heads" / \
        "synthetic" / "seed1"
    identity = torch.load(dirs[1] / "last.ckpt", weights_only=True)["scfate_run_identity"]
    assert identity["dataset"] == "synthetic" and identity["split"].startswith("simulation_seed1_")


def test_a_resume_with_another_config_or_nothing_to_resume_is_refused(runs):
    tmp = runs[0]
    with pytest.raises(UsageError, match=r"another run.*flow\.head\.d_hidden: 32 vs 48.*checkpoint's vs this run's"):
        train(tmp, f"run_dir={tmp / 'a' / 'det'}", "ckpt_path=last", "flow.head.d_hidden=48")
    with pytest.raises(UsageError, match=r"backbone\.epochs: 1 vs 2.*raise epochs\.flow instead"):
        train(tmp, f"run_dir={tmp / 'a' / 'det'}", "ckpt_path=last", "trainer.max_epochs=2")
    with pytest.raises(UsageError, match=r"ckpt_path=last: there is no checkpoint.*nothing to resume"):
        train(tmp, f"run_dir={tmp / 'c' / 'det'}", "ckpt_path=last")
    assert (tmp / "a" / "det" / "COMPLETE").is_file()  # a refused resume leaves the finished run as it was


def test_only_a_finished_run_is_marked_complete(runs):
    from scfate.utils.io import sha256_file

    tmp, _, _, left = runs
    assert "COMPLETE" not in left  # what the kill left: marked incomplete by the marker's absence
    for run in ("a", "b"):
        marker = json.loads((tmp / run / "det" / "COMPLETE").read_text())
        assert marker["complete"] and {"flow_best.pt", "flow_metrics.jsonl", "eval_synthetic_seed1.json"} <= set(
            marker["files"])
        assert marker["files"]["flow_best.pt"]["sha256"] == sha256_file(tmp / run / "det" / "flow_best.pt")
    assert json.loads((tmp / "b" / "det" / "COMPLETE").read_text())["resumed_from"] == "last"


def test_a_run_dir_with_a_previous_run_is_refused_unless_overwrite(runs, tmp_path):
    from scfate.pipelines.run_folder import run_folder

    tmp = runs[0]
    a = tmp / "a" / "det"
    before = (a / "flow_best.pt").stat().st_mtime_ns
    with pytest.raises(UsageError, match=r"holds the outputs of a complete run.*ckpt_path=last.*overwrite=true"):
        train(tmp, f"run_dir={a}")
    assert (a / "flow_best.pt").stat().st_mtime_ns == before and (a / "COMPLETE").is_file()  # nothing touched
    old = tmp_path / "old"
    shutil.copytree(a, old)
    (old / "notes.txt").write_text("mine")
    with run_folder(compose_train(tmp_path, f"run_dir={old}", "overwrite=true")):
        assert sorted(p.name for p in old.iterdir() if not p.name.startswith(".")) == ["notes.txt"]
        (old / "flow_best.pt").write_bytes(b"new")
    assert set(json.loads((old / "COMPLETE").read_text())["files"]) == {"flow_best.pt", "notes.txt"}
    with pytest.raises(UsageError, match="pass one of them"):
        with run_folder(compose_train(tmp_path, f"run_dir={old}", "overwrite=true", "ckpt_path=last")):
            pass


def test_a_run_dir_in_use_is_refused_naming_the_other_run(tmp_path):
    from scfate.pipelines.run_folder import run_folder

    rd = tmp_path / "run"
    with run_folder(compose_train(tmp_path / "first", f"run_dir={rd}")):
        with pytest.raises(UsageError, match=rf"run_dir={rd} is in use by another run \(pid \d+ .*its output "
                                             rf"folder {tmp_path / 'first' / 'out'}\)"):
            with run_folder(compose_train(tmp_path / "second", f"run_dir={rd}")):
                pass
    with run_folder(compose_train(tmp_path / "second", f"run_dir={rd}", "overwrite=true")):
        pass  # released when the first run ended


def test_last_ckpt_is_the_latest_epoch_even_when_the_best_is_older(tmp_path):
    """Lightning's ModelCheckpoint saves last.ckpt only with a new best, so a kill resumed from an older epoch."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from scfate.pipelines.resume import RunCheckpoint

    class Worse(pl.LightningModule):  # its validation score only falls after epoch 0
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w - 1).pow(2).sum()

        def validation_step(self, batch, batch_idx):
            self.log("score", -float(self.current_epoch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=1)
    ckpt = RunCheckpoint(dirpath=tmp_path, filename="best", monitor="score", mode="max", save_last=True)
    pl.Trainer(max_epochs=3, accelerator="cpu", callbacks=[ckpt], logger=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=tmp_path).fit(Worse(), loader, loader)
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == 0
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 2


def test_the_sampler_reads_its_epoch_when_iterated():
    """Lightning makes a resumed run's first iterator before set_epoch: the tokens must be the epoch's own."""
    from scfate.data.datamodule import _StepSampler

    sampler = _StepSampler(3)
    it = iter(sampler)
    sampler.set_epoch(2)
    assert list(it) == [6, 7, 8]


def test_the_history_keeps_every_epoch_once(tmp_path):
    from scfate.pipelines.resume import write_history

    path = tmp_path / "flow_metrics.jsonl"
    path.write_text("".join(json.dumps({"epoch": e, "v": "old"}) + "\n" for e in range(6)) + '{"epoch": 6, "v"')
    write_history(path, [{"epoch": e, "v": "new"} for e in range(2, 4)])  # resumed at 2 from an older checkpoint
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["epoch"], r["v"]) for r in rows] == [(0, "old"), (1, "old"), (2, "new"), (3, "new")]


def test_seed_stream_reseeds_every_global_rng_without_lazy_device_calls():
    import random

    import numpy as np

    from scfate.pipelines.resume import seed_stream

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    lazy = torch.cuda._lazy_seed_tracker.manual_seed_all_cb
    seed_stream(3, 1, 2)
    first = draws()
    for epoch in range(50):
        seed_stream(3, 0, epoch)
    seed_stream(3, 1, 2)
    assert draws() == first
    seed_stream(3, 1, 3)
    assert draws() != first
    if not torch.cuda.is_available():  # torch.manual_seed queues a lazy seed (and a formatted stack) every call
        assert torch.cuda._lazy_seed_tracker.manual_seed_all_cb is lazy
