"""The entry points as a user runs them: quickstart, dataset CLI on a custom file, bad input, unimplemented stages."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import PROJECT, make_adata
from test_prepare import user_embedding
from test_run_identity import QUICK as TINY_RUN
from test_run_identity import SMALL


def run(args, tmp_path, expect=0):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, *args, f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}"]
    proc = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


QUICK = ["trainer.max_epochs=1", "datamodule.steps_per_epoch=5", "datamodule.val_steps=2", "eval_n_cells=50"]
# what the run-identity tests check needs no full-size data, networks or prior (the quickstart test runs those)
TINY = [*TINY_RUN, *SMALL]
# another split of the TINY data: too few pairs there to hold out one with no member seen
OTHER_SPLIT = ["seed=3", "split_seed=3", "data.split.require_nonempty=[unseen_single,combo_seen1]"]


def test_quickstart_runs_the_whole_pipeline(tmp_path):
    """`python train.py` (tiny epochs): prepare -> backbone (auto) -> flow head -> zero-shot evaluation table."""
    proc = run(["train.py", *QUICK, f"paths.artifacts_dir={tmp_path / 'artifacts'}"], tmp_path)
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    assert summary["dataset"] == "synthetic" and summary["input_type"] == "counts"
    groups = {r["subgroup"]: r["perturbations"] for r in summary["split"]["rows"] if r["set"] == "test"}
    assert all(groups[g] > 0 for g in ("unseen_single", "combo_seen0", "combo_seen1", "combo_seen2"))
    (bb,) = (tmp_path / "artifacts" / "backbones" / "synthetic").iterdir()  # one folder per split
    assert bb.name.startswith("simulation_seed1_")
    assert {"backbone.pt", "split.json", "config.json", "oracle_eval.json"} <= {p.name for p in bb.iterdir()}
    oracle = json.loads((bb / "oracle_eval.json").read_text())
    assert oracle["model"] == "oracle:backbone" and oracle["split"]["scored"] == "train"
    run_dir = tmp_path / "artifacts" / "flow_heads" / "synthetic" / "seed1"
    assert {"flow_best.pt", "config.json", "flow_metrics.jsonl", "eval_synthetic_seed1.json"} <= {
        p.name for p in run_dir.iterdir()}
    ev = json.loads((run_dir / "eval_synthetic_seed1.json").read_text())
    assert ev["model"] == "scfate:synthetic" and ev["split"]["scored"] == "test"
    assert set(ev["baselines"]) == {"no_change", "train_mean", "additive", "linear", "feature_ridge", "knn",
                                  "krr_prior"}
    assert set(ev["metrics"]["by_subgroup"]) == {"unseen_single", "combo_seen0", "combo_seen1", "combo_seen2"}
    ckpt = torch.load(run_dir / "flow_best.pt", weights_only=True)
    assert ckpt["prior"] == "krr" and ckpt["n_steps"] == 20 and "v_net_state_dict" in ckpt
    # the terminal gets the 5-line summary (also summary.md); the wide table is written beside the eval JSON
    assert "scfate:synthetic on synthetic | split simulation_seed1_" in proc.stdout
    assert "baseline:feature_ridge" in (run_dir / "eval_synthetic_seed1.table.txt").read_text()
    assert (run_dir / "summary.md").is_file() and (run_dir / "plots" / "eval_synthetic_seed1" / "shift_scatter.png").is_file()


def _backbone_of(run_dir):
    ckpt = torch.load(run_dir / "flow_best.pt", weights_only=True)
    bb = torch.load((run_dir / ckpt["backbone_path"]).resolve(), weights_only=True)
    return ckpt, bb, (run_dir / ckpt["backbone_path"]).resolve()


def test_multirun_seeds_of_one_split_share_a_backbone_and_no_head_sits_on_a_leaky_one(tmp_path):
    """seed=1,2,3 split_seed=1 train the split's backbone once and give Table 1 mean ± sd over n=3 runs for the
    model and every baseline; a run of another split gets its own backbone, never one trained on its test
    perturbations; an explicit backbone of another split that saw them is refused."""
    from scfate.eval.report import table1

    art = tmp_path / "artifacts"
    args = ["-m", "seed=1,2,3", "split_seed=1", *TINY, f"paths.artifacts_dir={art}",
            f"hydra.sweep.dir={tmp_path / 'mr'}", f"paths.data_dir={tmp_path / 'data'}"]
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=PROJECT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("backbone exported to") == 1  # trained once by the first job, reused by the others
    heads_dir = art / "flow_heads" / "synthetic"
    table = table1([heads_dir / f"seed{s}" / f"eval_synthetic_seed{s}.json" for s in (1, 2, 3)])
    assert not table["notes"]  # three runs, not one seed whose runs disagree
    for row in table["rows"]:  # the model and every baseline: n = 3 runs (split 1, training seeds 1-3)
        assert row["cells"]["da"]["n"] == 3 and row["cells"]["da"]["seeds"] == [1, "split1/seed2", "split1/seed3"]
    model = next(r for r in table["rows"] if r["model"] == "scfate:synthetic")
    assert model["cells"]["cos"]["sd"] is not None
    other = art / "flow_heads" / "synthetic" / "split3"
    run(["train.py", *OTHER_SPLIT, f"run_dir={other}", *TINY, f"paths.artifacts_dir={art}"], tmp_path)
    heads = {s: _backbone_of(heads_dir / f"seed{s}") for s in (1, 2, 3)}
    heads["other"] = _backbone_of(other)
    assert heads[1][2] == heads[2][2] == heads[3][2] != heads["other"][2]
    for ckpt, bb, _ in heads.values():
        assert bb["split"]["train"] == ckpt["split"]["train"]
        assert not set(bb["atlas_perturbations"]) & set(ckpt["split"]["test"] + ckpt["split"]["val"])
    split1, split3 = heads[1][0]["split"], heads["other"][0]["split"]
    assert split1["seed"] == 1 and split3["seed"] == 3
    assert set(split1["train"]) & set(split3["test"])  # so split 1's backbone would leak into split 3's scores
    # (a folder of its own: `other` holds a finished run, which run_dir= refuses to overwrite before any check)
    proc = run(["train.py", *OTHER_SPLIT, f"run_dir={other}_leaky", f"backbone={heads[1][2]}", *TINY,
                f"paths.artifacts_dir={art}"], tmp_path, expect=2)
    assert "that this run holds out (test: [" in proc.stderr and "Traceback" not in proc.stderr


def test_backbone_resumes_from_last(tmp_path):
    art = f"paths.artifacts_dir={tmp_path / 'artifacts'}"
    run(["train.py", "stage=backbone", *TINY, art], tmp_path)
    (last,) = (tmp_path / "artifacts" / "checkpoints" / "backbones" / "synthetic").glob("*/seed1/last.ckpt")
    proc = run(["train.py", "stage=backbone", *TINY[1:], "trainer.max_epochs=2", "ckpt_path=last", art], tmp_path)
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
    # a run folder of its own: the default one may hold a finished run, which is refused first (issue 15)
    proc = run(["train.py", "backbone=/nowhere/backbone.pt", f"run_dir={tmp_path / 'bad_backbone'}"], tmp_path,
               expect=2)
    assert "backbone=/nowhere/backbone.pt does not exist" in proc.stderr
    proc = run(["train.py", "stage=decoder"], tmp_path, expect=2)
    assert "stage='decoder' is not a stage; valid: ['prepare', 'backbone', 'flow']" in proc.stderr


@pytest.mark.parametrize("args", [["reflow.py", "teacher=x"], ["evaluate.py", "ckpt=x"]])
def test_a_missing_checkpoint_is_named_and_nothing_is_produced(args, tmp_path):
    proc = run(args, tmp_path, expect=2)
    assert "No flow-head checkpoint at 'x'" in proc.stderr and "Traceback" not in proc.stderr
    made = {p.name for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert not {m for m in made if m.endswith((".pt", ".ckpt")) or m.startswith("eval_")}, made  # no eval JSON
