"""The entry points as a user runs them: quickstart, dataset CLI on a custom file, bad input, unimplemented stages."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import PROJECT, make_adata
from test_prepare import user_embedding


def run(args, tmp_path, expect=0):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, *args, f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}"]
    proc = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


QUICK = ["trainer.max_epochs=1", "datamodule.steps_per_epoch=5", "datamodule.val_steps=2", "eval_n_cells=50"]


def test_quickstart_train_prepares_data_and_trains_the_backbone(tmp_path):
    proc = run(["train.py", *QUICK, f"paths.artifacts_dir={tmp_path / 'artifacts'}"], tmp_path)
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    assert summary["dataset"] == "synthetic" and summary["input_type"] == "counts"
    assert summary["cells"] > 5000 and summary["combinations"] > 0
    groups = {r["subgroup"]: r["perturbations"] for r in summary["split"]["rows"] if r["set"] == "test"}
    assert all(groups[g] > 0 for g in ("unseen_single", "combo_seen0", "combo_seen1", "combo_seen2"))
    assert "combo_seen1" in proc.stdout and (tmp_path / "run" / "resolved_config.yaml").is_file()
    out = tmp_path / "artifacts" / "backbones" / "synthetic"
    assert {"backbone.pt", "config.json", "oracle_eval.json"} <= {p.name for p in out.iterdir()}
    oracle = json.loads((out / "oracle_eval.json").read_text())
    assert oracle["model"] == "oracle:backbone" and oracle["split"]["scored"] == "train"
    assert "oracle:backbone" in proc.stdout and (tmp_path / "run" / "csv").is_dir()


def test_backbone_resumes_from_last(tmp_path):
    art = f"paths.artifacts_dir={tmp_path / 'artifacts'}"
    run(["train.py", *QUICK, art], tmp_path)
    last = tmp_path / "artifacts" / "checkpoints" / "backbones" / "synthetic" / "seed1" / "last.ckpt"
    assert last.is_file()
    proc = run(["train.py", *QUICK[1:], "trainer.max_epochs=2", "ckpt_path=last", art], tmp_path)
    assert "Restoring states from the checkpoint path" in proc.stdout + proc.stderr
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["epoch"] == 1  # the second epoch ran on top of the first


def test_dataset_cli_on_a_custom_h5ad(tmp_path):
    a = make_adata(perts=("NTC", "A", "B", "C", "D", "A+B", "C+D"))
    a.obs = a.obs.rename(columns={"condition": "guide_target", "cell_type": "line"})
    a.write_h5ad(tmp_path / "mine.h5ad")
    emb = user_embedding(tmp_path / "emb.csv")
    proc = run(["-m", "scfate.data", "dataset=custom", f"data.path={tmp_path / 'mine.h5ad'}",
                "data.perturbation_key=guide_target", "data.context_key=line", "data.control_value=NTC",
                "data.features.go=null", "data.features.progeny=null", "data.features.symbols=null",
                "data.features.aliases=null", f"data.features.user=[{emb}]",
                "data.split.test_fraction=0.34"], tmp_path)
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    assert summary["perturbations"] == 6 and summary["contexts"] == ["c1", "c2"]
    split = json.loads(open(summary["split"]["file"]).read())
    assert len(split["test"]) == 2 and "unseen_perturbation" in proc.stdout


def test_bad_input_is_one_clear_message_and_exit_code_2(tmp_path):
    make_adata().write_h5ad(tmp_path / "mine.h5ad")
    proc = run(["-m", "scfate.data", "dataset=custom", f"data.path={tmp_path / 'mine.h5ad'}",
                "data.perturbation_key=target"], tmp_path, expect=2)
    assert "scfate error: obs column 'target' (data.perturbation_key) is missing" in proc.stderr
    assert "Available obs columns: ['condition', 'cell_type']" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(["-m", "scfate.data", "dataset=custom", f"data.path={tmp_path / 'nope.h5ad'}"], tmp_path, expect=2)
    assert "Dataset file not found" in proc.stderr
    proc = run(["train.py", "stage=decoder"], tmp_path, expect=2)
    assert "stage='decoder' is not a stage; valid: ['prepare', 'backbone', 'flow']" in proc.stderr


@pytest.mark.parametrize("args", [["reflow.py", "teacher=x"], ["train.py", "stage=flow"]])
def test_unimplemented_commands_say_so_and_produce_nothing(args, tmp_path):
    proc = run(args, tmp_path, expect=2)
    assert "not implemented" in proc.stderr and "Traceback" not in proc.stderr
    made = {p.name for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert not {m for m in made if m.endswith((".pt", ".ckpt")) or m.startswith("eval")}, made
