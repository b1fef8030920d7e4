"""The card's artifact tree: find run folders and their eval JSONs, and assemble ``results/`` (``collect``).

Layout (the published card): backbones/<dataset>/, flow_heads/<dataset>/seed{N}/, flow_heads/k562/{base,reflow_K2_s1}/,
sciplex3_path_b/teachers/{priorkrr,priornone}/s{N}/, sciplex3_path_b/students/mixed18_K16/s{N}/,
results/table1_inputs/, REPRODUCE.md, MANIFEST.json. A run folder is any folder holding a checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from scfate.errors import DataError
from scfate.utils.io import atomic_path, atomic_write_text

CHECKPOINTS = ("flow_best.pt", "backbone.pt")
INPUTS = Path("results") / "table1_inputs"
TABLE1 = Path("results") / "table1.md"
# generated from the tree itself (MANIFEST.json, README.md card), or not part of a release: Lightning resume
# state under checkpoints/, lock and hidden files, caches
GENERATED = ("MANIFEST.json", "README.md")
SKIP_DIRS = ("checkpoints", "__pycache__")
PROJECT_REPRODUCE = Path(__file__).resolve().parents[2] / "REPRODUCE.md"


def check_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give the artifact tree (default artifacts/), the folder holding "
                        "backbones/, flow_heads/, ...")
    return root


def tree_files(root: Path) -> list[str]:
    """Every file that belongs to the release, as sorted posix paths relative to ``root``."""
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if rel.parts[0] in SKIP_DIRS or any(part in SKIP_DIRS[1:] for part in rel.parts):
            continue
        if rel.as_posix() in GENERATED:
            continue
        out.append(rel.as_posix())
    return sorted(out)


def run_folders(root: Path, files: list[str] | None = None) -> list[str]:
    """Folders (relative posix paths) that hold a checkpoint."""
    files = tree_files(root) if files is None else files
    return sorted({f.rsplit("/", 1)[0] for f in files if "/" in f and f.rsplit("/", 1)[1] in CHECKPOINTS})


def owner_run(path: str, runs: list[str]) -> str | None:
    """The nearest run folder holding ``path`` (runs may nest: a run's subfolder belongs to it)."""
    best = None
    for r in runs:
        if path.startswith(r + "/") and (best is None or len(r) > len(best)):
            best = r
    return best


def read_eval(path: Path) -> dict | None:
    """The eval JSON at ``path``, or None when the file is some other JSON (config.json, data_summary.json)."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) and "schema_version" in obj and "metrics" in obj else None


def eval_jsons(root: Path, run: str) -> dict[str, dict]:
    """{relative path: eval JSON} directly in a run folder."""
    out = {}
    for p in sorted((root / run).glob("*.json")):
        if (ev := read_eval(p)) is not None:
            out[f"{run}/{p.name}"] = ev
    return out


def is_table1_eval(ev: dict) -> bool:
    # Table 1 reports zero-shot scores on held-out perturbations; the backbone's oracle check is scored in-sample
    # on training perturbations (split.scored == "train") and stays beside its backbone only
    return (ev.get("split") or {}).get("scored", "test") == "test"


def flat_name(rel: str) -> str:
    """flow_heads/k562/seed1/eval_k562_seed1.json -> flow_heads__k562__seed1__eval_k562_seed1.json (unique)."""
    return rel.replace("/", "__")


def table1_sources(root: Path) -> dict[str, str]:
    """{results/table1_inputs/<flat name>: source eval JSON} for every run's zero-shot eval JSON."""
    files = tree_files(root)
    out = {}
    for run in run_folders(root, files):
        for rel, ev in eval_jsons(root, run).items():
            if is_table1_eval(ev):
                out[(INPUTS / flat_name(rel)).as_posix()] = rel
    return out


def render_table1(root: Path) -> str:
    """results/table1.md from exactly the JSONs in results/table1_inputs/ (scfate.eval.report's table1)."""
    from scfate.eval.report import table1, to_markdown

    inputs = sorted((root / INPUTS).glob("*.json"))
    if not inputs:
        raise DataError(f"No eval JSON in {root / INPUTS}: run `python -m scfate.hub collect {root}` after the "
                        "runs have finished (each run folder holds its eval_*.json).")
    return ("# Table 1 (from results/table1_inputs/)\n\nRegenerate the table below with "
            "`python -m scfate.report table1 results/table1_inputs`.\n\n" + to_markdown(table1(inputs)))


def collect(root: str | Path, reproduce: str | Path | None = PROJECT_REPRODUCE) -> dict[str, str]:
    """Copy every run's zero-shot eval JSON into results/table1_inputs/, write results/table1.md and REPRODUCE.md."""
    root = check_dir(root)
    sources = table1_sources(root)
    if not sources:
        raise DataError(f"No run folder under {root} holds a zero-shot eval JSON (eval_*.json beside flow_best.pt): "
                        "train or evaluate runs into the tree first.")
    inputs = root / INPUTS
    for stale in inputs.glob("*.json") if inputs.is_dir() else []:
        if (INPUTS / stale.name).as_posix() not in sources:  # table 1 comes from exactly the current runs
            stale.unlink()
    for dst, src in sources.items():
        with atomic_path(root / dst) as tmp:
            shutil.copyfile(root / src, tmp)
    atomic_write_text(root / TABLE1, render_table1(root))
    if reproduce is not None and Path(reproduce).is_file():
        atomic_write_text(root / "REPRODUCE.md", Path(reproduce).read_text())
    return sources
