"""Hub checkpoints: local / hf:// resolution against a Hub cache built in tmp_path (offline), `evaluate.py ckpt=hf://`
end to end, the card's quickstart with weights_only=True, collect + MANIFEST.json + verify, and push up to the upload."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROJECT

from scfate.data import DataError
from scfate.hub import parse_hf, resolve_backbone_ref, resolve_checkpoint

REPO, SHA, SHA_V1 = "owner/scfate", "a" * 40, "b" * 40
RUN = "flow_heads/synthetic/seed1"
RUNS = ["flow_heads/synthetic/reflow_K2_s1", RUN]  # sorted, as in MANIFEST.json
# a smaller simulated screen than the default (same dataset name), so that preparing and scoring it stays quick
SMALL = ["+data.synthetic.n_genes=80", "+data.synthetic.n_background_genes=40", "+data.synthetic.n_perturbed_genes=24",
         "+data.synthetic.n_combos=16", "+data.synthetic.cells_per_condition=20", "+data.synthetic.n_control_cells=100"]


def _export_tree(tmp: Path, snap: Path):
    """A tiny real tree (untrained weights, real formats) on the default synthetic dataset, as evaluate.py prepares it."""
    from hydra import compose, initialize_config_dir

    from scfate.data.datamodule import PerturbationDataModule
    from scfate.models.backbone import RotationAE
    from scfate.models.export import export_backbone
    from scfate.models.flow_export import export_flow
    from scfate.models.flow_head import FlowHead
    from scfate.pipelines.config import CONF_DIR, instantiate_spec
    from scfate.utils.reproduce import write_reproduce

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"paths.data_dir={tmp / 'data'}", *SMALL])
    dm = PerturbationDataModule(instantiate_spec(cfg), tmp / "data", batch_size=16, steps_per_epoch=2, val_steps=1,
                                seed=1, val_mode="perturbations")
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    bb = RotationAE(n_genes=dm.n_genes, n_contexts=len(dm.contexts), perturbations=dm.perturbations,
                    atlas_perturbations=list(dm.data.split.train), theta_dim=4, enc_hidden=[32], dec_hidden=[32]).eval()
    bb_path = export_backbone(bb, dm.data, snap / "backbones" / "synthetic" / "backbone.pt", extra={"seed": 1})
    write_reproduce(bb_path.parent, "train.py", ["stage=backbone"])
    feats = torch.as_tensor(dm.data.features.matrix, dtype=torch.float32)
    head = FlowHead(bb, feats, torch.zeros(len(dm.perturbations), 4), len(dm.contexts), d_embed=8, d_hidden=16,
                    n_blocks=1, n_steps=2)
    prior = {"prior": "none", "krr_gamma": None, "krr_alpha": None}
    for run, extra in ((RUN, {"seed": 1}), ("flow_heads/synthetic/reflow_K2_s1", {"seed": 1, "teacher": RUN, "K": 2})):
        export_flow(head, dm.data, snap / run / "flow_best.pt", bb_path, prior, extra=extra)
        (snap / run / "flow_metrics.jsonl").write_text('{"epoch": 0, "val/delta_cos": 0.1}\n')
        write_reproduce(snap / run, "train.py", ["seed=1", f"run_dir=artifacts/{run}"])
    (snap.parent.parent / "refs").mkdir(parents=True, exist_ok=True)
    (snap.parent.parent / "refs" / "main").write_text(snap.name)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A Hub cache: models--owner--scfate with snapshot SHA at refs/main and a copy SHA_V1 at refs/v1.0."""
    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "hub"
    snap = cache / "models--owner--scfate" / "snapshots" / SHA
    _export_tree(tmp, snap)
    shutil.copytree(snap, snap.parent / SHA_V1)
    (cache / "models--owner--scfate" / "refs" / "v1.0").write_text(SHA_V1)
    return {"tmp": tmp, "cache": cache, "snap": snap}


@pytest.fixture(autouse=True)
def _cache(request, monkeypatch):
    """Point huggingface_hub (read at call time from its constants) and subprocesses at the tmp cache."""
    if "hub" not in request.fixturenames:
        return
    import huggingface_hub.constants as C

    cache = request.getfixturevalue("hub")["cache"]
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(cache))


@pytest.fixture(scope="module")
def evaluated(hub):
    """`python evaluate.py ckpt=hf://owner/scfate/flow_heads/synthetic/seed1` offline, from the cache only."""
    out = hub["tmp"] / "eval.json"
    env = {**os.environ, "HF_HUB_CACHE": str(hub["cache"]), "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "evaluate.py", f"ckpt=hf://{REPO}/{RUN}", "eval_n_cells=30", "eval_baselines=[no_change,additive]", *SMALL,
           f"paths.data_dir={hub['tmp'] / 'data'}", f"hydra.run.dir={hub['tmp'] / 'run'}", f"out={out}"]
    proc = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out


def test_local_file_folder_and_bad_paths(hub, tmp_path):
    run = hub["snap"] / RUN
    assert resolve_checkpoint(run / "flow_best.pt") == run / "flow_best.pt"
    assert resolve_checkpoint(str(run)) == run / "flow_best.pt"
    assert resolve_backbone_ref(hub["snap"] / "backbones" / "synthetic") == hub["snap"] / "backbones/synthetic/backbone.pt"
    with pytest.raises(DataError, match=r"No flow-head checkpoint at '.*nowhere'.*hf://OWNER/REPO\[@REVISION\]"):
        resolve_checkpoint(tmp_path / "nowhere")
    with pytest.raises(DataError, match="has no flow_best.pt"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(DataError, match="Bad Hub reference 'hf://owner'"):
        resolve_checkpoint("hf://owner")
    assert parse_hf("hf://o/r@v2/a/b/").sub == "a/b" and parse_hf("hf://o/r@v2/a/b").revision == "v2"


def test_hf_refs_resolve_from_the_cache_with_their_backbone(hub):
    from scfate.models.flow_export import load_flow

    path = resolve_checkpoint(f"hf://{REPO}/{RUN}")
    assert path == hub["snap"] / RUN / "flow_best.pt"
    head, ckpt = load_flow(path)  # the backbone was found at its relative path in the same snapshot
    assert ckpt["dataset"] == "synthetic" and head.backbone is not None
    for rev in ("v1.0", SHA_V1):  # a tag and a commit: the file and its backbone come from that snapshot
        assert resolve_checkpoint(f"hf://{REPO}@{rev}/{RUN}/flow_best.pt") == hub["snap"].parent / SHA_V1 / RUN / "flow_best.pt"
    assert resolve_backbone_ref(f"hf://{REPO}/backbones/synthetic").parent.name == "synthetic"


def test_uncached_hf_refs_say_what_to_fetch(hub):
    with pytest.raises(DataError, match=r"flow_heads/norman/seed3/flow_best.pt.*owner/scfate at revision main.*"
                       r"offline.*`hf download owner/scfate --include 'flow_heads/norman/seed3/\*' "
                       r"--include 'backbones/norman/\*'`"):
        resolve_checkpoint(f"hf://{REPO}/flow_heads/norman/seed3")
    with pytest.raises(DataError, match=r"other/repo at revision v9.*hf download other/repo --revision v9 --include"):
        resolve_checkpoint("hf://other/repo@v9/flow_heads/k562/base")
    # the card's headline run: a scfate.load of it offline says exactly what to download
    import scfate

    with pytest.raises(DataError, match=r"hf download owner/scfate --include 'flow_heads/k562/reflow_K2_s1/\*'"):
        scfate.load(f"hf://{REPO}/flow_heads/k562/reflow_K2_s1")


def test_card_quickstart_with_weights_only(hub):
    """The published card's snippet, with weights_only=True, on our checkpoint (offline, from the cache)."""
    from huggingface_hub import snapshot_download

    ckpt_dir = snapshot_download(REPO, allow_patterns=f"{RUN}/*")
    ckpt = torch.load(f"{ckpt_dir}/{RUN}/flow_best.pt", map_location="cpu", weights_only=True)
    hp = {k: v for k, v in ckpt.items() if not k.endswith("_state_dict") and not k.startswith("_")}
    assert hp["n_steps"] == 2 and hp["dataset"] == "synthetic" and isinstance(ckpt["v_net_state_dict"], dict)


def test_evaluate_py_ckpt_hf_offline(hub, evaluated):
    proc, out = evaluated
    ev = json.loads(out.read_text())
    assert ev["model"] == "scfate:synthetic" and set(ev["baselines"]) == {"no_change", "additive"}
    assert ev["provenance"]["checkpoint"] == str(hub["snap"] / RUN / "flow_best.pt")
    assert ev["provenance"]["checkpoint_ref"] == f"hf://{REPO}/{RUN}" and ev["provenance"]["n_steps"] == 2
    assert ev["provenance"]["checkpoint_sha256"] and "scfate:synthetic" in proc.stdout


def test_evaluate_ckpt_refuses_another_dataset_or_split(hub):
    from test_run_identity import compose_config

    from scfate.cli import run_evaluate

    # composed as evaluate.py composes it (its hydra node set: the entry point checks its output folder first)
    cfg = compose_config("evaluate", [f"ckpt=hf://{REPO}/{RUN}", "dataset=synthetic_drugs",
                                      f"paths.data_dir={hub['tmp'] / 'data'}"], hub["tmp"] / "refused")
    with pytest.raises(DataError, match="checkpoint trained on synthetic: run with dataset=synthetic"):
        run_evaluate(cfg)  # refused before any data is prepared
    assert not list((hub["tmp"] / "data" / "prepared").glob("synthetic_drugs-*"))
    from scfate.models.split_guard import check_split

    split = torch.load(hub["snap"] / RUN / "flow_best.pt", weights_only=True)["split"]
    with pytest.raises(DataError, match=r"seed differs: checkpoint 1, data 2.*run with split_seed=1"):
        check_split(split, {**split, "seed": 2}, "x.pt")
    with pytest.raises(DataError, match=r"test differs: only in the checkpoint's test: \['ZZZ'\]"):
        check_split({**split, "test": [*split["test"], "ZZZ"]}, split, "x.pt")


def _tree(hub, evaluated, tmp_path) -> Path:
    """A release tree: the snapshot plus each run's eval JSON (the reflow one relabelled), collected + manifested."""
    from scfate.hub import tree
    from scfate.hub.manifest import write_manifest

    root = tmp_path / "artifacts"
    shutil.copytree(hub["snap"], root)
    (root / "checkpoints" / "x").mkdir(parents=True)
    (root / "checkpoints" / "x" / "last.ckpt").write_text("resume state, not released")
    ev = json.loads(evaluated[1].read_text())
    (root / RUN / "eval_synthetic_seed1.json").write_text(json.dumps(ev))
    (root / "flow_heads/synthetic/reflow_K2_s1/eval_synthetic_seed1.json").write_text(
        json.dumps({**ev, "model": "scfate:reflow_K2"}))
    reproduce = tmp_path / "REPRODUCE.md"
    reproduce.write_text("# Reproducing scFATE\n")
    tree.collect(root, reproduce)
    write_manifest(root)
    return root


def test_collect_manifest_verify(hub, evaluated, tmp_path):
    from scfate.hub.__main__ import main
    from scfate.hub.manifest import verify

    root = _tree(hub, evaluated, tmp_path)
    inputs = sorted(p.name for p in (root / "results" / "table1_inputs").iterdir())
    assert inputs == ["flow_heads__synthetic__reflow_K2_s1__eval_synthetic_seed1.json",
                      "flow_heads__synthetic__seed1__eval_synthetic_seed1.json"]
    t1 = (root / "results" / "table1.md").read_text()
    assert "scfate:reflow_K2" in t1 and "scfate:synthetic" in t1 and "baseline:additive" in t1
    man = json.loads((root / "MANIFEST.json").read_text())
    runs = {r["path"]: r for r in man["runs"]}
    assert set(runs) == {"backbones/synthetic", RUN, "flow_heads/synthetic/reflow_K2_s1"}
    assert [runs[p]["kind"] for p in sorted(runs)] == ["backbone", "reflow_student", "flow_head"]
    flow = runs[RUN]
    assert flow["seed"] == 1 and flow["prior"] == "none" and flow["K"] is None and runs[
        "flow_heads/synthetic/reflow_K2_s1"]["K"] == 2
    assert flow["hyperparameters"]["n_steps"] == 2 and not {"genes", "format"} & set(flow["hyperparameters"])
    assert flow["backbone"]["path"] == "backbones/synthetic/backbone.pt" and flow["format"] == "scfate.flow_head"
    assert set(flow["metrics"]["eval_synthetic_seed1.json"]) >= {"da", "cos", "pde"}
    assert "seed=1" in flow["command"] and {f["path"] for f in flow["files"]} == {
        "flow_best.pt", "config.json", "flow_metrics.jsonl", "reproduce.sh", "eval_synthetic_seed1.json"}
    assert {f["source"] for f in man["table1_inputs"]} == {f"{RUN}/eval_synthetic_seed1.json",
                                                          "flow_heads/synthetic/reflow_K2_s1/eval_synthetic_seed1.json"}
    assert {f["path"] for f in man["files"]} == {"REPRODUCE.md", "results/table1.md"}
    assert not any("checkpoints/" in f["path"] for f in man["files"])  # resume state is not released
    assert verify(root) == [] and main(["verify", str(root)]) == 0


def test_verify_reports_tampering_and_missing_inputs(hub, evaluated, tmp_path, capsys):
    from scfate.hub import tree
    from scfate.hub.__main__ import main
    from scfate.hub.manifest import verify, write_manifest

    root = _tree(hub, evaluated, tmp_path)
    bb = json.loads((root / "MANIFEST.json").read_text())["runs"][1]["backbone"]["sha256"]
    with open(root / RUN / "flow_best.pt", "ab") as f:
        f.write(b"\0")
    (root / "results" / "table1_inputs" / "flow_heads__synthetic__seed1__eval_synthetic_seed1.json").unlink()
    (root / "flow_heads" / "synthetic" / "extra.txt").write_text("stray")
    problems = verify(root)
    assert any(p.startswith(f"{RUN}/flow_best.pt: sha256") for p in problems)
    assert any("seed1__eval_synthetic_seed1.json: listed in MANIFEST.json but missing" in p for p in problems)
    assert any("Table 1 input of flow_heads/synthetic/seed1/eval_synthetic_seed1.json is missing" in p for p in problems)
    assert any("does not regenerate identically" in p for p in problems)
    assert any("extra.txt: in the tree but not in MANIFEST.json" in p for p in problems)
    assert main(["verify", str(root)]) == 1 and "verify FAILED" in capsys.readouterr().err
    shutil.rmtree(root / "backbones")  # a re-manifested tree without the backbones its heads need
    tree.collect(root, None)
    write_manifest(root)
    assert verify(root) == [f"{r}: its backbone backbones/synthetic/backbone.pt (sha256 {bb[:12]}…) is not in the tree: "
                            "a head without the backbone it was trained with cannot be loaded" for r in RUNS]


def test_push_dry_run_stages_the_card_and_upload_is_called(hub, evaluated, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    from scfate.hub.__main__ import main

    root = _tree(hub, evaluated, tmp_path)
    assert main(["push", str(root), "--repo", "me/scfate-test", "--dry-run"]) == 0
    staged = root / ".hub-staging"
    assert f"staged folder: {staged}" in capsys.readouterr().out
    readme = (staged / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: scfate\nlicense: mit\ntags:\n")
    assert 'snapshot_download("me/scfate-test", allow_patterns="flow_heads/synthetic/' in readme
    assert "weights_only=True" in readme and "| backbone |" in readme and "## Table 1" in readme
    assert (staged / "MANIFEST.json").is_file() and (staged / RUN / "flow_best.pt").is_file()
    assert not (staged / "checkpoints").exists() and not (staged / ".hub-staging").exists()
    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("create", (repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.setdefault("upload", kw) and "commit-url")
    assert main(["push", str(root), "--repo", "me/scfate-test", "--private"]) == 0
    assert calls["create"] == ("me/scfate-test", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls["upload"]["repo_id"] == "me/scfate-test" and calls["upload"]["folder_path"] == str(staged)
    (root / RUN / "config.json").write_text("{}")  # a tree that fails verify is never uploaded
    calls.clear()
    assert main(["push", str(root), "--repo", "me/scfate-test"]) == 2 and not calls
    assert "Refusing to push" in capsys.readouterr().err
