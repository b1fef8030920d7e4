"""Publishing the tree: a model card generated from MANIFEST.json and Table 1, ``push`` (verify, stage, upload) and
``pull`` (the card's quickstart, snapshot_download)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from scfate.errors import DataError
from scfate.hub import tree
from scfate.hub.manifest import verify
from scfate.utils.io import atomic_write_text

TAGS = ("single-cell", "perturbation-prediction", "flow-matching", "lie-groups", "pytorch", "scfate")


def _fmt(v) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def model_card(root: Path, repo: str) -> str:
    man = json.loads((root / "MANIFEST.json").read_text())
    runs = man["runs"]
    # the quickstart shows a student when there is one (the card's headline runs are reflow / distilled students)
    rank = {"reflow_student": 0, "mixed_student": 1, "flow_head": 2, "backbone": 3}
    headline = min(runs, key=lambda r: rank.get(r["kind"], 4), default=None)
    sub = headline["path"] if headline else "flow_heads/<dataset>/seed1"
    ckpt_name = headline["checkpoint"] if headline else "flow_best.pt"
    lines = ["---", "library_name: scfate", "license: mit", "tags:", *[f"- {t}" for t in TAGS],
             "pipeline_tag: other", "---", "", "# scFATE checkpoints", "",
             "Lie-algebraic conditional flow matching for zero-shot perturbation prediction in single cells. Every "
             "checkpoint here loads with `torch.load(..., weights_only=True)` (no code runs on load). Datasets: "
             "`Angione-Lab/scFATE-datasets`.", "",
             "## Layout", "", "| run | kind | dataset | seed | prior | K | DA | cos | PDE |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        m = next((v for v in r["metrics"].values() if v.get("scored") == "test"), None) or \
            next(iter(r["metrics"].values()), {})
        lines.append(f"| `{r['path']}/` | {r['kind']} | {_fmt(r['dataset'])} | {_fmt(r['seed'])} | "
                     f"{_fmt(r['prior'])} | {_fmt(r['K'])} | {_fmt(m.get('da'))} | {_fmt(m.get('cos'))} | "
                     f"{_fmt(m.get('pde'))} |")
    lines += ["", "Backbone rows score the in-sample oracle check (training perturbations); all others are zero-shot "
              "on held-out perturbations. `results/table1_inputs/` holds the eval JSONs behind Table 1, "
              "`MANIFEST.json` every file's sha256 and each run's command, `REPRODUCE.md` the full recipe.", "",
              "## Quickstart", "", "```python", "from huggingface_hub import snapshot_download", "import torch", "",
              f'ckpt_dir = snapshot_download("{repo}", allow_patterns="{sub}/*")',
              f'ckpt = torch.load(f"{{ckpt_dir}}/{sub}/{ckpt_name}", map_location="cpu", weights_only=True)',
              "# every hyperparameter is at the top level; the velocity network is ckpt[\"v_net_state_dict\"]",
              'print({k: v for k, v in ckpt.items() if not k.endswith("_state_dict") and not k.startswith("_")})',
              "```", "", "With the scfate package (fetches the backbone the head points to, works offline from the cache):",
              "", "```python", "import scfate", f'model = scfate.load("hf://{repo}/{sub}")',
              'pred = model.predict(adata_ctrl, ["KLF1+MAP2K6"], n_cells=500)', "```", "",
              f"```bash\npython evaluate.py ckpt=hf://{repo}/{sub} dataset={headline['dataset'] if headline else 'NAME'}"
              f"\npython -m scfate.hub verify .   # in a full download: every sha256 and Table 1 cell\n```", ""]
    table1 = root / tree.TABLE1
    if table1.is_file():
        body = table1.read_text().split("\n", 1)[1].lstrip("\n")
        lines += ["## Table 1", "", body.rstrip("\n"), ""]
    return "\n".join(lines)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:  # hard links: staging a multi-GB tree costs no space or time
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage(root: str | Path, repo: str, staging: str | Path | None = None) -> Path:
    """Refuse a tree that fails verify; else a folder with exactly what is uploaded (tree + MANIFEST + README)."""
    root = tree.check_dir(root)
    problems = verify(root)
    if problems:
        raise DataError(f"Refusing to push {root}: verify found {len(problems)} problem(s):\n  - "
                        + "\n  - ".join(problems) + "\nFix them (collect, then manifest), then push again.")
    # inside the tree (hidden, so never part of it): hard links stay on one filesystem
    staged = Path(staging) if staging else root / ".hub-staging"
    if staged.exists():
        shutil.rmtree(staged)
    for rel in [*tree.tree_files(root), "MANIFEST.json"]:
        _link_or_copy(root / rel, staged / rel)
    atomic_write_text(staged / "README.md", model_card(root, repo))
    return staged


def push(root: str | Path, repo: str, private: bool = False, dry_run: bool = False,
         staging: str | Path | None = None, message: str | None = None):
    staged = stage(root, repo, staging)
    if dry_run:
        return staged, None
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(staged), repo_id=repo, repo_type="model",
                             commit_message=message or "scFATE checkpoints (verified tree)")
    return staged, info


def pull(repo: str, include: list[str] | None = None, revision: str | None = None,
         local_dir: str | Path | None = None) -> Path:
    from huggingface_hub import errors as E
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=include or None,
                                      local_dir=str(local_dir) if local_dir else None))
    except (E.LocalEntryNotFoundError, E.HfHubHTTPError, E.HFValidationError, OSError) as exc:
        raise DataError(f"Cannot pull {repo} (revision {revision or 'main'}, include {include or 'everything'}): "
                        f"{type(exc).__name__}: {exc}. Offline, only what is already cached can be pulled; check "
                        "OWNER/NAME and the patterns, or `hf auth login` for a private repo.") from exc
