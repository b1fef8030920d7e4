"""Reflow and mixed-teacher distillation: the straight-coupling math on an analytic teacher, teacher mixtures,
bad input, and tiny `reflow.py` runs end to end (reflow, reflow of the student, mixed distillation)."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import PROJECT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from scfate.data.prepare import prepare
from scfate.errors import DataError
from scfate.flow import TorusPath, integrate
from scfate.flow.reflow import Couplings, draw_teachers, mixture_weights, reflow_loss, teacher_endpoints
from scfate.pipelines.config import CONF_DIR, instantiate_spec, split_seed_of
from scfate.pipelines.reflow import check_k
from scfate.pipelines.teachers import check_against_data, check_teachers, teacher_refs


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is fastest, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_student_on_straight_couplings_reproduces_an_analytic_teacher_in_one_step(one_thread):
    """Teacher field v = -theta: its ODE solution is theta0 / e, but one Euler step of it lands on 0. A student fit on
    the teacher's couplings with the reflow loss lands on theta0 / e in one step."""
    torch.manual_seed(0)
    path = TorusPath(2, sigma=0.0)

    def teacher(theta, t):
        return -theta

    theta0 = torch.rand(2048, 2) * 2 - 1  # inside (-pi, pi]: no wrapping on the way, the closed form holds
    theta1 = teacher_endpoints(path, teacher, theta0, 256)
    assert torch.allclose(theta1, theta0 / math.e, atol=2e-3)
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))

    def student(theta, t):
        return net(torch.cat([theta, t.reshape(-1, 1)], -1))

    # full-batch L-BFGS on fixed times: a deterministic, converged fit in a few seconds on a CPU
    t = torch.rand(len(theta0))
    opt = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = reflow_loss(path, student, theta0, theta1, t)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    test = torch.rand(512, 2) * 2 - 1
    with torch.no_grad():
        student_err = (integrate(path, student, test, 1) - test / math.e).abs()
        teacher_err = (integrate(path, teacher, test, 1) - test / math.e).abs()
    assert student_err.max() < 0.03 and student_err.mean() < 0.01 and teacher_err.mean() > 0.1


def test_a_student_of_another_size_starts_fresh_one_of_the_same_size_takes_the_teachers_weights():
    from scfate.models.backbone import RotationAE
    from scfate.models.flow_head import FlowHead
    from scfate.models.reflow import student_from_teacher

    torch.manual_seed(0)
    bb = RotationAE(n_genes=12, n_contexts=2, perturbations=["A", "B"], atlas_perturbations=["A", "B"], theta_dim=4)
    teacher = FlowHead(bb, torch.randn(2, 5), torch.zeros(2, 4), n_contexts=2, d_embed=16, d_hidden=32, n_blocks=3)
    same = student_from_teacher(teacher, 2, overrides={"lr": 3e-4})
    assert same.hparams.n_steps == 2 and same.hparams.lr == 3e-4
    assert all(torch.equal(a, b) for a, b in zip(same.v_net.state_dict().values(), teacher.v_net.state_dict().values()))
    small = student_from_teacher(teacher, 2, overrides={"d_hidden": 8, "n_blocks": 1})
    assert (small.hparams.d_hidden, small.hparams.n_blocks) == (8, 1) and len(small.v_net.blocks) == 1
    assert small.v_net.inp.out_features == 8 and torch.equal(small.prior_mu, teacher.prior_mu)
    theta, t, z = torch.zeros(3, 4), torch.tensor(0.5), torch.randn(3, bb.group.latent_dim)
    e_p = small.v_net.embed(torch.tensor([[0, -1]]), torch.zeros(1))
    assert small.v_net(theta, t, e_p, z, torch.tensor(0)).shape == (3, 4)


def test_reflow_loss_targets_the_short_way_round_the_seam():
    path = TorusPath(1, sigma=0.0)
    theta0, theta1 = torch.tensor([[3.0]]), torch.tensor([[-3.0]])
    target = 2 * math.pi - 6.0  # +0.28 across pi, not -6

    def v_fn(theta, t):
        return torch.full_like(theta, target)

    assert reflow_loss(path, v_fn, theta0, theta1, t=torch.tensor([0.5])) < 1e-10


def test_mixture_draws_every_teacher_in_proportion_to_its_weight():
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    counts = torch.bincount(draw_teachers(n, mixture_weights(None, 3), gen), minlength=3)
    assert (counts > 0).all() and (counts - n / 3).abs().max() < 4 * math.sqrt(n / 3)
    w = mixture_weights([1, 3, 0, 4], 4)
    assert torch.allclose(w, torch.tensor([0.125, 0.375, 0.0, 0.5], dtype=torch.float64))
    counts = torch.bincount(draw_teachers(n, w, gen), minlength=4).double()
    assert counts[2] == 0 and (counts / n - w).abs().max() < 0.01
    with pytest.raises(ValueError, match="3 values for 2 teachers"):
        mixture_weights([1, 2, 3], 2)
    with pytest.raises(ValueError, match="non-negative"):
        mixture_weights([1, -1], 2)


def test_couplings_batch_by_index_and_round_trip(tmp_path):
    n, k = 5, 3
    c = Couplings(torch.randn(n, k), torch.randn(n, k), torch.randn(n, 2 * k), torch.arange(n), torch.zeros(n, dtype=torch.long),
                  torch.ones(n, dtype=torch.long), torch.full((n, 2), -1), torch.zeros(n), torch.zeros(n, dtype=torch.long))
    batch = c[[4, 0]]
    assert batch["theta0"].shape == (2, k) and batch["ctrl_index"].tolist() == [4, 0]
    back = Couplings.load(c.save(tmp_path / "c.pt"))
    assert len(back) == n and torch.equal(back.theta1, c.theta1)


def test_coupling_batches_are_keyed_by_seed_and_epoch_alone():
    """The order of an epoch does not depend on the epochs iterated before it (a resumed run iterates none), and
    the epoch is read at the first batch (Lightning makes a resumed run's first iterator before set_epoch)."""
    from scfate.models.couplings import EpochBatches

    def epoch(sampler, e):
        it = iter(sampler)
        sampler.set_epoch(e)
        return list(it)

    walked = EpochBatches(10, 4, seed=7)
    orders = [epoch(walked, e) for e in range(3)]
    assert epoch(EpochBatches(10, 4, seed=7), 2) == orders[2]  # a fresh sampler straight at epoch 2
    assert orders[0] != orders[1] and epoch(EpochBatches(10, 4, seed=8), 0) != orders[0]
    assert len(walked) == 2 and all(len(b) == 4 and len(set(b)) == 4 for b in orders[0])  # drop_last
    assert epoch(EpochBatches(10, 4, seed=7, shuffle=False), 5) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert epoch(EpochBatches(3, 4, seed=7), 0)[0] in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0])


def test_a_resumed_reflow_is_the_uninterrupted_one(teacher):
    """A student killed after its first epoch and resumed with ckpt_path=last is the uninterrupted student, bit for
    bit: weights, metrics history and eval JSON (in-process runs on the teacher's data)."""
    from test_run_identity import compose_config

    import scfate.models.reflow as rf
    from scfate.cli import run_reflow

    tmp, t_dir = teacher
    tiny = [o for o in TINY_REFLOW if not o.startswith("trainer.max_epochs")]

    def reflow(name, *extra):
        return run_reflow(compose_config("reflow", [
            f"teacher={t_dir}", "K=2", *tiny, "trainer.max_epochs=null", "epochs=3", f"paths.data_dir={tmp / 'data'}",
            f"paths.artifacts_dir={tmp / 'resume'}", f"run_dir={tmp / 'resume' / name / 'det'}", *extra], tmp / "out"))

    def killed(self):  # as kill -9 would: epoch 0 is checkpointed, epoch 1 never starts
        if self.current_epoch == 1:
            raise RuntimeError("killed")

    ev_a = reflow("a")
    mp = pytest.MonkeyPatch()
    mp.setattr(rf.ReflowStudent, "on_train_epoch_start", killed, raising=False)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            reflow("b")
    finally:
        mp.undo()
    ev_b = reflow("b", "ckpt_path=last")
    a, b = (tmp / "resume" / n / "det" for n in "ab")
    assert ev_b["metrics"] == ev_a["metrics"] and ev_b["baselines"] == ev_a["baselines"]
    assert (b / "flow_metrics.jsonl").read_text() == (a / "flow_metrics.jsonl").read_text()
    heads = [torch.load(d / "flow_best.pt", weights_only=True)["v_net_state_dict"] for d in (a, b)]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_bad_k_and_a_glob_that_matches_nothing(tmp_path):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DataError, match="K=.*integer >= 1"):
            check_k(bad)
    glob = str(tmp_path / "teachers" / "*" / "s*")
    cfg = OmegaConf.create({"teacher": None, "teachers": [glob]})
    with pytest.raises(DataError, match=f"the glob '{re.escape(glob)}' matches nothing"):
        teacher_refs(cfg)
    with pytest.raises(DataError, match="exactly one of teacher="):
        teacher_refs(OmegaConf.create({"teacher": "a", "teachers": "b"}))


# ---- end to end on the built-in synthetic data: one tiny teacher, shared by the tests below ----

TINY = ["trainer.max_epochs=1", "datamodule.steps_per_epoch=5", "datamodule.val_steps=2", "eval_n_cells=30",
        "eval_baselines=[no_change]"]
TINY_REFLOW = [*TINY, "n_couplings=256", "teacher_steps=8", "batch_size=64", "coupling_chunk=128"]


def run(args, tmp, job, expect=0):
    """An entry point as a user runs it; every run of a test shares ``tmp/data`` (prepared once)."""
    cmd = [sys.executable, *args, f"hydra.run.dir={tmp / job}", f"paths.data_dir={tmp / 'data'}"]
    # one thread: tiny matrices gain nothing from more, and on a busy machine spinning OpenMP threads are 10x slower
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny flow head trained by train.py (KRR prior in angle space: no slow lift), under
    tmp/artifacts/flow_heads/synthetic/seed1."""
    tmp = tmp_path_factory.mktemp("reflow")
    run(["train.py", *TINY, "prior.space=angle", f"paths.artifacts_dir={tmp / 'artifacts'}"], tmp, "train")
    return tmp, tmp / "artifacts" / "flow_heads" / "synthetic" / "seed1"


def test_teachers_of_other_datasets_or_genes_are_named(teacher):
    tmp, t_dir = teacher
    ckpt = torch.load(t_dir / "flow_best.pt", weights_only=True)
    check_teachers(["a", "b"], [ckpt, dict(ckpt)])  # identical teachers pass
    with pytest.raises(DataError, match=r"share their dataset.*first teacher a: b \('synthetic' \(first\) vs "
                                        r"'norman' \(other\)\)"):
        check_teachers(["a", "b"], [ckpt, {**ckpt, "dataset": "norman"}])
    genes = list(ckpt["genes"])
    with pytest.raises(DataError, match=r"share their genes.*: c \(1 only in the first \['" + genes[0]
                       + r"'\], 1 only in the other \['XIST'\]\)"):
        check_teachers(["a", "b", "c"], [ckpt, ckpt, {**ckpt, "genes": ["XIST", *genes[1:]]}])
    # against the prepared data: the same split passes, another split is named
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("reflow", overrides=[f"paths.data_dir={tmp / 'data'}"])
    data = prepare(instantiate_spec(cfg, split_seed_of(cfg, ckpt["split"]["seed"])), cfg.paths.data_dir)
    check_against_data(["t"], [ckpt], data)
    moved = {**ckpt, "split": {**ckpt["split"], "seed": 2, "test": ckpt["split"]["test"][1:]}}
    with pytest.raises(DataError, match=r"Teacher t was trained on another split.*seed: 2 \(teacher\) vs 1 \(data\); "
                                        r"test: 1 only in the data \['" + re.escape(ckpt["split"]["test"][0])):
        check_against_data(["t"], [moved], data)
    # through the entry point: a mismatch fails before any data is prepared or model trained
    bad = tmp / "bad" / "flow_best.pt"
    bad.parent.mkdir()
    torch.save({**ckpt, "dataset": "norman"}, bad)
    art = f"paths.artifacts_dir={tmp / 'artifacts'}"
    proc = run(["reflow.py", f"teachers=[{t_dir},{bad.parent}]", art], tmp, "e1", expect=2)
    assert f"{bad.parent} ('synthetic' (first) vs 'norman' (other))" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(["reflow.py", f"teacher={t_dir}", "dataset=norman_devel", art], tmp, "e2", expect=2)
    assert "teacher trained on synthetic: add dataset=synthetic" in proc.stderr


def test_reflow_end_to_end_then_reflow_of_the_student_then_mixed_distillation(teacher):
    from scfate.models.flow_export import load_flow

    tmp, t_dir = teacher
    art = tmp / "artifacts"
    run(["reflow.py", f"teacher={t_dir}", "K=2", *TINY_REFLOW, f"paths.artifacts_dir={art}"], tmp, "r1")
    s_dir = art / "flow_heads" / "synthetic" / "reflow_K2_s1"
    assert {"flow_best.pt", "config.json", "flow_metrics.jsonl", "reproduce.sh", "eval_synthetic_seed1.json"} <= {
        p.name for p in s_dir.iterdir()}
    ckpt = torch.load(s_dir / "flow_best.pt", weights_only=True)
    # the teacher by its place in the artifacts tree (the same path on the Hub)
    assert ckpt["teacher"] == "flow_heads/synthetic/seed1" and "teachers" not in ckpt
    assert ckpt["K"] == 2 and ckpt["n_steps"] == 2 and ckpt["reflow_round"] == 1
    assert ckpt["teacher_steps"] == 8 and len(ckpt["teacher_sha256"]) == 64 and ckpt["prior"] == "krr"
    head, _ = load_flow(s_dir / "flow_best.pt")
    assert head.hparams.n_steps == 2  # loading the student predicts at K steps
    ev = json.loads((s_dir / "eval_synthetic_seed1.json").read_text())
    assert ev["model"] == "scfate:synthetic_reflow_K2"
    assert {"no_change", "teacher_20steps", "krr_prior"} == set(ev["baselines"])
    assert "reflow.py" in (s_dir / "reproduce.sh").read_text()

    # the student as the next teacher: round 2, its own folder
    run(["reflow.py", f"teacher={s_dir}", "K=1", "eval_teacher=false", *TINY_REFLOW, f"paths.artifacts_dir={art}"],
        tmp, "r2")
    ckpt2 = torch.load(art / "flow_heads" / "synthetic" / "reflow2_K1_s1" / "flow_best.pt", weights_only=True)
    assert ckpt2["reflow_round"] == 2 and ckpt2["n_steps"] == 1 and ckpt2["teacher"] == "flow_heads/synthetic/reflow_K2_s1"

    # mixed distillation over a glob (the seed-1 teacher and both students), weighted
    glob = str(art / "flow_heads" / "synthetic" / "*")
    run(["reflow.py", f"teachers='{glob}'", "K=4", "seed=3", "teacher_weights=[2,1,1]", "eval_teacher=false",
         *TINY_REFLOW, f"paths.artifacts_dir={art}"], tmp, "m")
    m_dir = art / "synthetic_path_b" / "students" / "mixed3_K4" / "s3"
    ckpt3 = torch.load(m_dir / "flow_best.pt", weights_only=True)
    assert ckpt3["teachers"] == [f"flow_heads/synthetic/{r}" for r in ("reflow2_K1_s1", "reflow_K2_s1", "seed1")]
    assert ckpt3["teacher_weights"] == [0.5, 0.25, 0.25] and all(c > 0 for c in ckpt3["teacher_counts"])
    assert ckpt3["n_steps"] == 4 and ckpt3["reflow_round"] == 3 and "teacher" not in ckpt3
    assert (m_dir / "eval_synthetic_seed3.json").is_file()
