"""Results a person can see: plots beside the eval JSON (and redrawn by ``python -m scfate.report plots``), the
5-line summary (summary.md) with the wide table in a file, epoch and progress lines a log file keeps, one split tag
everywhere, split files from other tools, and ``train.py --help`` / ``+preset=quick``. One tiny in-process run."""

import contextlib
import io
import json
import logging
import shutil
import subprocess
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import PROJECT
from test_report import make_eval, write
from test_run_identity import compose_train

from scfate.errors import DataError

KINDS = ("shift_scatter", "subgroup_bars", "pca_cells", "training_curves")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``train.py +preset=quick`` (with the tests' tinier sizes on top), its log records and its stdout."""
    import scfate.utils.progress as progress
    from scfate.cli import run_train

    tmp = tmp_path_factory.mktemp("plots")
    logger, handler, mp = logging.getLogger("scfate"), _Records(), pytest.MonkeyPatch()
    mp.setattr(progress, "MIN_SECONDS", 0.0)  # every 10th condition, however fast this tiny run scores
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    out = io.StringIO()
    try:
        cfg = compose_train(tmp, "+preset=quick")
        with contextlib.redirect_stdout(out):
            ev = run_train(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        mp.undo()
    return SimpleNamespace(tmp=tmp, ev=ev, log=handler.lines, stdout=out.getvalue(), run_dir=ev.path.parent, cfg=cfg)


def test_a_run_ends_with_plots_summary_md_and_the_table_in_a_file(run):
    import matplotlib.image

    from scfate.eval.summary import best_baseline

    assert run.run_dir == run.tmp / "artifacts" / "quick" / "synthetic" / "seed1"  # the preset's own folder
    stem = "eval_synthetic_seed1"
    plots = run.run_dir / "plots" / stem
    for kind in KINDS:
        png = matplotlib.image.imread(plots / f"{kind}.png")
        assert png.ndim == 3 and min(png.shape[:2]) > 100 and png.std() > 0, kind  # a picture, not a blank
        pdf = (plots / f"{kind}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"%%EOF" in pdf[-32:], kind
    table = (run.run_dir / f"{stem}.table.txt").read_text()
    assert "mse_top20_de_normalized" in table and "baseline:train_mean" in table and "unseen_single" in table
    assert "mse_top20_de_normalized" not in run.stdout  # the wide table is not on the terminal
    lines = run.stdout.rstrip("\n").splitlines()[-5:]  # the headline closes the run
    assert lines[0].startswith("scfate:synthetic on synthetic | split simulation_seed1_")
    name, value = best_baseline(run.ev, "cos")
    assert lines[2].split()[:2] == ["cos", f"{run.ev['metrics']['overall']['cos']['mean']:.3f}"]
    assert f"vs {value:.3f} best baseline {name}" in lines[2]
    assert f"plots {plots}/" in lines[4] and "flow_best.pt" in lines[4] and f"{stem}.table.txt" in lines[4]
    md = (run.run_dir / "summary.md").read_text()
    assert md.startswith(f"# {lines[0]}") and lines[2] in md and f"- checkpoint {run.run_dir / 'flow_best.pt'}" in md


def test_the_log_shows_epochs_and_evaluation_progress(run):
    epochs = [m for m in run.log if m.startswith("epoch ")]
    # the backbone (trained first by backbone=auto) and the flow head: one line each per epoch, loss and metric
    assert any(m.startswith("epoch 1/1: train/loss") and "val/loss" in m for m in epochs), epochs
    assert any(m.startswith("epoch 1/1: train/fm_loss") and "val/fm_loss" in m and "(best " in m for m in epochs)
    n = len(run.ev["metrics"]["per_perturbation"])
    # the model and its baselines in one pass, on the same cells
    label = "scoring scfate:synthetic, baseline:no_change, baseline:train_mean"
    assert f"{label}: 10/{n} conditions" in " ".join(run.log)
    assert any(m.startswith(f"{label}: {n}/{n} conditions") for m in run.log)


def test_one_split_tag_in_the_log_the_split_file_the_backbone_folder_and_the_eval_json(run):
    summary = json.loads((run.tmp / "out" / "data_summary.json").read_text())
    tag = summary["split"]["tag"]
    assert run.ev["split"]["tag"] == tag and f"split {tag}:" in run.stdout  # the printed split table
    from pathlib import Path

    assert Path(summary["split"]["file"]).stem == tag
    (backbone,) = (run.tmp / "artifacts" / "backbones" / "synthetic").iterdir()
    assert backbone.name.startswith(f"{tag}-")


def test_report_plots_redraws_the_same_files_and_the_seed_spread(run, tmp_path):
    from scfate.report import main

    plots = run.run_dir / "plots" / "eval_synthetic_seed1"
    before = (plots / "shift_scatter.png").read_bytes()
    shutil.rmtree(run.run_dir / "plots")
    assert main(["plots", str(run.run_dir)]) == 0
    assert (plots / "shift_scatter.png").read_bytes() == before  # from saved files alone, the same picture
    assert {p.name for p in plots.iterdir()} == {f"{k}.{e}" for k in KINDS for e in ("png", "pdf")}
    # two seeds of one model (hand-made from the real one): their bars with the spread, in their folder's plots/
    for seed, shift in ((1, 0.0), (2, 0.1)):
        ev = json.loads(run.ev.path.read_text())
        ev["seed"] = seed
        for group in [ev["metrics"]["overall"], *ev["metrics"]["by_subgroup"].values()]:
            group["cos"]["mean"] += shift
        write(tmp_path / f"seed{seed}" / "eval.json", ev)
    assert main(["plots", str(tmp_path)]) == 0
    assert (tmp_path / "plots" / "subgroup_bars_synthetic_scfate-synthetic.png").stat().st_size > 1000
    copied = {p.name for p in (tmp_path / "seed2" / "plots" / "eval").iterdir()}
    # no plot data beside the copy: no scatter, no cells; the curves come from its checkpoint's folder
    assert {"subgroup_bars.pdf", "training_curves.png"} <= copied and "shift_scatter.png" not in copied
    (tmp_path / "other.json").write_text("{}")
    assert main(["plots", str(tmp_path / "other.json")]) == 2


def test_plots_of_a_hand_made_eval_json_skip_what_it_lacks_and_the_headline_has_five_lines(tmp_path):
    from scfate.eval.plots import plot_eval
    from scfate.eval.summary import headline

    ev = make_eval(model="scfate:toy", means={"da": 0.7, "cos": 0.4, "pde": None},
                   baselines={"additive": {"da": 0.8, "cos": 0.3, "pde": 0.5}, "knn": {"da": 0.6, "cos": 0.35}},
                   subgroups={"combo_seen1": {"da": 0.6, "cos": 0.3, "pde": 0.2}})
    path = write(tmp_path / "eval.json", ev)
    done = plot_eval(path)
    assert {p.name for p in done["written"]} == {"subgroup_bars.png", "subgroup_bars.pdf"}
    assert set(done["skipped"]) == {"shift_scatter", "pca_cells", "training_curves"}
    lines = headline(ev, path)
    assert len(lines) == 5 and "split simulation seed 1" in lines[0]
    assert "0.700   vs 0.800 best baseline additive  (-0.100" in lines[1]
    assert "0.400   vs 0.350 best baseline knn  (+0.050" in lines[2]
    assert lines[3].split()[:2] == ["pde", "n/d"] and "checkpoint none" in lines[4]


def test_predict_and_the_epoch_bar(run, caplog, monkeypatch):
    import pytorch_lightning as pl

    import scfate
    import scfate.pipelines.progress as pp
    import scfate.utils.progress as progress
    from scfate.data.prepare import prepare
    from scfate.pipelines.config import instantiate_spec

    monkeypatch.setattr(progress, "MIN_SECONDS", 0.0)
    monkeypatch.setattr(progress, "EVERY", 1)
    data = prepare(instantiate_spec(run.cfg), run.cfg.paths.data_dir)
    obs = data.adata.obs
    ctx = data.meta["contexts"][0]
    ctrl = data.adata[(obs["scfate_is_control"] & (obs["scfate_context"] == ctx)).to_numpy()]
    ctrl = ctrl.to_memory() if ctrl.isbacked else ctrl.copy()
    model = scfate.load(run.run_dir)
    with caplog.at_level(logging.INFO, logger="scfate"):
        model.predict(ctrl, model.perturbations[:3], n_cells=4, context=ctx)
    assert f"predict (4 cells each, context {ctx}): 2/3 perturbations" in caplog.text
    # the rich bar only on a terminal; the epoch lines everywhere
    for tty in (False, True):
        monkeypatch.setattr(pp, "stderr_is_terminal", lambda tty=tty: tty)
        trainer = pl.Trainer(callbacks=[pp.EpochLog()], logger=False, enable_checkpointing=False)
        next(cb for cb in trainer.callbacks if isinstance(cb, pp.EpochLog)).setup(trainer, None, "fit")
        assert trainer.progress_bar_callback.is_disabled is not tty
    assert pp.epoch_line(2, 15, {"train/fm_loss": 0.01234, "val/delta_cos": 0.5}, ("val/delta_cos", 0.6), 4.12) == \
        "epoch 3/15: train/fm_loss 0.01234 | val/delta_cos 0.5 (best 0.6) | 4.1 s"


def test_plots_go_to_wandb_offline_and_wandb_failing_is_a_warning(run, monkeypatch, caplog):
    from scfate.pipelines.outputs import log_to_wandb

    calls = {}
    fake = types.SimpleNamespace(run=None, Image=lambda p: ("image", p))

    class Run:
        name = "quick_synthetic_seed1_plots"

        def log(self, d):
            calls["log"] = d

        def finish(self):
            calls["finished"] = True

    def init(**kw):
        calls["init"] = kw
        return Run()

    def offline(**kw):
        raise RuntimeError("no network")

    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = compose_train(run.tmp, "+preset=quick", "logger=wandb")
    plots = {"dir": run.run_dir / "plots", "written": sorted((run.run_dir / "plots").rglob("*.p*"))}
    log_to_wandb(cfg, plots)
    assert calls["init"]["mode"] == "offline" and calls["init"]["group"] == "quick_synthetic"
    assert set(calls["log"]) == {f"plots/{k}" for k in KINDS} and calls["finished"]
    fake.init = offline
    with caplog.at_level(logging.WARNING, logger="scfate"):
        log_to_wandb(cfg, plots)
    assert "plots not logged to W&B (RuntimeError: no network)" in caplog.text
    calls.clear()
    log_to_wandb(compose_train(run.tmp), plots)  # the csv logger: nothing to W&B
    assert not calls


def test_split_files_from_other_tools(tmp_path):
    from scfate.data.splits import load_split

    perts = ["A", "B", "C", "D", "A+B", "C+D", "B+C"]
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["A", "B", "C", "B+A"], "val": ["D+ctrl"], "test": ["D+C", "C+B", "B+C"],
                                "subgroups": {"test": {"combo_seen1": ["D+C"], "combo_seen2": ["C+B"]}}}))
    s = load_split(path, perts)
    assert s.train == ["A", "A+B", "B", "C"] and s.val == ["D"] and s.test == ["B+C", "C+D"]
    assert s.subgroups["test"] == {"combo_seen1": ["C+D"], "combo_seen2": ["B+C"]}
    path.write_text(json.dumps({"train": ["A", "B", "C", "A+B"], "val": ["D"], "test": ["C+D", "B+C"],
                                "subgroup": {"test": {"x": ["C+D"]}}}))
    with pytest.raises(DataError, match=r"unknown key\(s\) 'subgroup' \(did you mean 'subgroups'\?\)\. Known keys: "
                                         r"schema_version, mode, seed, params, train, val, test, subgroups"):
        load_split(path, perts)
    path.write_text(json.dumps({"train": ["A", "B", "C", "A+B"], "val": ["D", "ctrl"], "test": ["C+D", "B+C"]}))
    with pytest.raises(DataError, match=r"val lists the control \['ctrl'\]"):
        load_split(path, perts)
    path.write_text(json.dumps({"train": ["(+)-JQ1"], "val": ["B+A"], "test": ["C"]}))  # drugs: names kept as given
    assert load_split(path, ["(+)-JQ1", "B+A", "C"], separator=None).val == ["B+A"]


def test_help_names_the_quick_preset_keys():
    proc = subprocess.run([sys.executable, "train.py", "--help"], cwd=PROJECT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "python train.py +preset=quick" in proc.stdout, proc.stderr[-2000:]
    help_text = " ".join(proc.stdout.split())

    def flat(d, prefix=""):
        for k, v in d.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]

    preset = dict(flat(yaml.safe_load((PROJECT / "conf" / "preset" / "quick.yaml").read_text())))
    for key, value in preset.items():
        if key == "run_group":
            continue
        shown = "artifacts/quick/<dataset>/seed<N>" if key == "run_dir" else \
            json.dumps(value).replace(" ", "") if isinstance(value, list) else value
        assert f"{key}={shown}" in help_text, key
    assert np.all([k in help_text for k in ("preset: quick", "summary.md", "python -m scfate.report plots")])
