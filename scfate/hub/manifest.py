"""MANIFEST.json (machine-readable run inventory) and ``verify`` (every byte and every Table 1 cell accounted for)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from scfate._version import __version__
from scfate.errors import CheckpointError
from scfate.hub import tree
from scfate.utils.io import atomic_write_json, sha256_file

SCHEMA = "scfate.manifest"
HEADLINE = ("da", "cos", "pde")
# per-run lists that are data, not hyperparameters (they stay in the checkpoint), and provenance kept apart
BULKY = {"genes", "units", "perturbations", "contexts", "atlas_perturbations", "feature_views", "split", "teachers"}
PROVENANCE = ("format", "format_version", "scfate_version", "dataset", "data_sha256", "backbone_path", "backbone_sha256")


def _plain(value) -> bool:
    """A scalar, or a small JSON container of scalars (tensors and long lists are weights or data)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    try:
        return isinstance(value, (list, dict)) and len(json.dumps(value)) <= 200
    except TypeError:
        return False


def _kind(ckpt: dict, run: str) -> str:
    fmt = str(ckpt.get("format", ""))
    if fmt.endswith("backbone"):
        return "backbone"
    if "teachers" in ckpt or "mixed" in fmt or "/students/mixed" in f"/{run}":
        return "mixed_student"
    if "teacher" in ckpt or "K" in ckpt or "reflow" in fmt or "reflow_" in run:
        return "reflow_student"
    return "backbone" if run.startswith("backbones/") and not fmt else "flow_head"


def _from_path(run: str, pattern: str, cast=str):
    m = re.search(pattern, run)
    return cast(m.group(1)) if m else None


def describe_run(root: Path, run: str) -> dict:
    from scfate.utils.checkpoint import safe_torch_load

    name = next(n for n in tree.CHECKPOINTS if (root / run / n).is_file())
    ckpt = safe_torch_load(root / run / name, fix="Copy the run's checkpoint again before collecting.")
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{root / run / name} is not an scFATE checkpoint (it holds a "
                              f"{type(ckpt).__name__}, not a dict).")
    config_path = root / run / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    hp = {k: v for k, v in {**ckpt, **config}.items()
          if k not in BULKY and k not in PROVENANCE and not k.endswith("_state_dict") and _plain(v)}
    seed = ckpt.get("seed", _from_path(run, r"(?:^|/)(?:seed|s)(\d+)(?:/|$)", int))
    prior = ckpt.get("prior", _from_path(run, r"prior(krr|none)"))
    K = ckpt.get("K", _from_path(run, r"_K(\d+)", int))
    metrics = {}
    for rel, ev in tree.eval_jsons(root, run).items():
        overall = (ev.get("metrics") or {}).get("overall") or {}
        metrics[rel.rsplit("/", 1)[1]] = {"model": ev.get("model"), "scored": (ev.get("split") or {}).get("scored"),
                                          **{m: (overall.get(m) or {}).get("mean") for m in HEADLINE}}
    reproduce = root / run / "reproduce.sh"
    backbone = None
    if ckpt.get("backbone_path"):  # where the head's backbone sits in this tree, and the sha256 it was trained on
        from scfate.hub.resolve import join_repo_path

        backbone = {"path": join_repo_path(run, str(ckpt["backbone_path"])), "sha256": ckpt.get("backbone_sha256")}
    return {"path": run, "checkpoint": name, "kind": _kind(ckpt, run), "format": ckpt.get("format"),
            "dataset": ckpt.get("dataset"), "seed": seed, "prior": prior, "K": K,
            "data_sha256": ckpt.get("data_sha256"), "backbone": backbone, "hyperparameters": hp, "metrics": metrics,
            "command": reproduce.read_text() if reproduce.is_file() else None, "files": []}


def _entry(root: Path, rel: str) -> dict:
    p = root / rel
    return {"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)}


def build_manifest(root: str | Path) -> dict:
    root = tree.check_dir(root)
    files = tree.tree_files(root)
    runs = {r: describe_run(root, r) for r in tree.run_folders(root, files)}
    sources = tree.table1_sources(root)
    other, inputs = [], []
    for rel in files:
        if rel.startswith(tree.INPUTS.as_posix() + "/"):
            inputs.append({**_entry(root, rel), "source": sources.get(rel)})
        elif (run := tree.owner_run(rel, list(runs))) is not None:
            runs[run]["files"].append({**_entry(root, rel), "path": rel[len(run) + 1:]})
        else:
            other.append(_entry(root, rel))
    return {"schema": SCHEMA, "schema_version": 1, "scfate_version": __version__,
            "runs": list(runs.values()), "table1_inputs": inputs, "table1": tree.TABLE1.as_posix(), "files": other}


def write_manifest(root: str | Path) -> Path:
    return atomic_write_json(Path(root) / "MANIFEST.json", build_manifest(root))


def verify(root: str | Path) -> list[str]:
    """Every problem of the tree against its MANIFEST.json (an empty list: the tree verifies)."""
    root = tree.check_dir(root)
    mpath = root / "MANIFEST.json"
    if not mpath.is_file():
        return [f"{mpath} is missing: run `python -m scfate.hub manifest {root}`"]
    man = json.loads(mpath.read_text())
    listed: dict[str, dict] = {}
    for run in man.get("runs", []):
        listed.update({f"{run['path']}/{f['path']}": f for f in run["files"]})
    listed.update({f["path"]: f for f in man.get("table1_inputs", []) + man.get("files", [])})
    problems = []
    for rel, f in sorted(listed.items()):
        p = root / rel
        if not p.is_file():
            problems.append(f"{rel}: listed in MANIFEST.json but missing")
        elif p.stat().st_size != f["size"] or sha256_file(p) != f["sha256"]:
            problems.append(f"{rel}: sha256/size differs from MANIFEST.json (modified after the manifest)")
    problems += [f"{rel}: in the tree but not in MANIFEST.json (rerun `manifest`)"
                 for rel in tree.tree_files(root) if rel not in listed]
    for run in man.get("runs", []):
        bb = run.get("backbone")
        if bb and (bb["path"] not in listed or listed[bb["path"]]["sha256"] != bb["sha256"]):
            problems.append(f"{run['path']}: its backbone {bb['path']} (sha256 {str(bb['sha256'])[:12]}…) is not in "
                            "the tree: a head without the backbone it was trained with cannot be loaded")
    expected = tree.table1_sources(root)
    for f in man.get("table1_inputs", []):
        src = f.get("source")
        if src is None or src not in listed:
            problems.append(f"{f['path']}: Table 1 input traces to no run's eval JSON (source {src!r})")
        elif listed[src]["sha256"] != f["sha256"]:
            problems.append(f"{f['path']}: differs from its source {src} (rerun `collect`)")
    have = {f["path"] for f in man.get("table1_inputs", [])}
    problems += [f"{dst}: Table 1 input of {src} is missing (rerun `collect`, then `manifest`)"
                 for dst, src in expected.items() if dst not in have or not (root / dst).is_file()]
    t1 = root / tree.TABLE1
    if not t1.is_file():
        problems.append(f"{tree.TABLE1}: missing (run `python -m scfate.hub collect {root}`)")
    elif have:
        try:
            if tree.render_table1(root) != t1.read_text():
                problems.append(f"{tree.TABLE1}: does not regenerate identically from {tree.INPUTS}/")
        except Exception as exc:  # a corrupt input must be reported, not crash verify
            problems.append(f"{tree.TABLE1}: cannot regenerate from {tree.INPUTS}/ ({exc})")
    return problems
