"""Teachers: the flow heads a reflow student is distilled from (``reflow.py``) or a router mixes
(``evaluate.py router=default``). One place expands their references (paths, globs, hf://), reads their
checkpoints and checks that they, and the prepared data, agree on what they must share."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from scfate.errors import DataError

# what every teacher of one student shares: the student reuses one backbone, vocabulary and feature table
SHARED_BY_STUDENT = ("dataset", "genes", "perturbations", "units", "backbone_sha256", "split")
STUDENT_FIX = ("Distil teachers trained by train.py on one dataset and split with backbone=auto (e.g. "
               "`python train.py dataset=D split_seed=S seed=1,2,3 -m`).")
# the prior's description at the top level of a flow checkpoint (what fit_prior returns, less its tensors)
PRIOR_PREFIXES = ("prior", "krr_", "lift_")
EXAMPLE_GLOB = "artifacts/<dataset>_path_b/teachers/*/s*"
HOW_TO_MAKE = "Give a flow_best.pt or the run folder of train.py / reflow.py that holds it."


@dataclass
class Teacher:
    name: str  # short and unique among the teachers of one run (e.g. 'priorkrr/s1')
    ref: str  # as the user gave it (the first ref naming this checkpoint)
    path: Path  # the resolved checkpoint file
    ckpt: dict


def expand_teachers(teachers, who: str = "this run") -> list[str]:
    """``teachers`` (a string or a list; local globs expanded, hf:// refs kept) -> refs in order, without repeats.
    ``who`` names the command that needs them in the error for an empty value."""
    if teachers is None or (not isinstance(teachers, str) and len(teachers) == 0):
        raise DataError(f"{who} needs teachers=GLOB_OR_LIST, e.g. teachers='{EXAMPLE_GLOB}' (run folders or "
                        "flow_best.pt files of flow heads trained on one dataset and split).")
    items = [teachers] if isinstance(teachers, str) else [str(t) for t in teachers]
    refs: list[str] = []
    for item in items:
        if item.startswith("hf://") or not glob.has_magic(item):
            refs.append(item)
            continue
        hits = sorted(glob.glob(os.path.expanduser(item)))
        if not hits:
            raise DataError(f"teachers=: the glob {item!r} matches nothing (relative to {Path.cwd()}). Point it at "
                            f"flow-head run folders or flow_best.pt files, e.g. teachers='{EXAMPLE_GLOB}'.")
        refs += hits
    return list(dict.fromkeys(refs))


def teacher_refs(cfg: DictConfig) -> tuple[list[str], bool]:
    """reflow.py: (teacher refs, mixed?) from ``teacher=`` (reflow) or ``teachers=`` (mixed distillation)."""
    one, many = cfg.get("teacher"), cfg.get("teachers")
    if (one is None) == (many is None):
        raise DataError("reflow.py needs exactly one of teacher=PATH_OR_HF (reflow) or teachers=GLOB_OR_LIST (mixed "
                        f"distillation); got teacher={one!r}, teachers={many!r}.")
    if one is not None:
        return [str(one)], False
    return expand_teachers(many, "mixed distillation (reflow.py teachers=...)"), True


def teacher_names(paths: list[Path]) -> list[str]:
    """Short unique names: each run folder relative to the folders' common parent (e.g. 'priorkrr/s1')."""
    dirs = [p.resolve().parent for p in paths]
    if len(dirs) == 1:
        return [dirs[0].name]
    common = Path(os.path.commonpath(dirs))
    names = [str(d.relative_to(common)) for d in dirs]
    return names if len(set(names)) == len(names) and "." not in names else [str(p) for p in paths]


def read_teachers(refs: list[str]) -> list[Teacher]:
    """Resolve (hf:// refs are downloaded) and read each teacher's flow-head checkpoint. A run folder and its
    flow_best.pt name one teacher: it is read once, under the first ref that names it."""
    from scfate.hub import resolve_checkpoint

    by_path: dict[Path, str] = {}
    for r in refs:  # a wrong ref is named before the model layers (and Lightning) load
        by_path.setdefault(Path(resolve_checkpoint(r, filename="flow_best.pt")).resolve(), r)
    from scfate.models.export import read_checkpoint
    from scfate.models.flow_export import FORMAT

    paths = list(by_path)
    return [Teacher(n, by_path[p], p, read_checkpoint(p, FORMAT, "Flow-head", HOW_TO_MAKE))
            for n, p in zip(teacher_names(paths), paths)]


def _plain(x):
    return json.loads(json.dumps(x, default=list))


def difference(a, b, names: tuple[str, str] = ("first", "second")) -> str:
    """What differs between two checkpoint values (lists of names, split dicts, scalars), briefly."""
    a, b = _plain(a), _plain(b)
    if isinstance(a, list) and isinstance(b, list):
        sa, sb = set(map(str, a)), set(map(str, b))
        if sa == sb:
            return f"the same {len(sa)} items in another order"
        only = [(n, sorted(x - y)) for n, x, y in ((names[0], sa, sb), (names[1], sb, sa))]
        return ", ".join(f"{len(o)} only in the {n} {o[:5]}{'…' if len(o) > 5 else ''}" for n, o in only if o)
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return "; ".join(f"{k}: {difference(a.get(k), b.get(k), names)}" for k in keys)
    return f"{a!r} ({names[0]}) vs {b!r} ({names[1]})"


def check_teachers(labels: list[str], ckpts: list[dict], keys: tuple[str, ...] = SHARED_BY_STUDENT,
                   fix: str = STUDENT_FIX) -> None:
    """Every teacher shares each of ``keys`` with the first; raise naming the key, the teachers that differ
    (by ``labels``), what differs, and ``fix``."""
    for key in keys:
        bad = [(r, c) for r, c in zip(labels[1:], ckpts[1:]) if _plain(c.get(key)) != _plain(ckpts[0].get(key))]
        if bad:
            named = "; ".join(f"{r} ({difference(ckpts[0].get(key), c.get(key), ('first', 'other'))})"
                              for r, c in bad)
            raise DataError(f"Teachers must share their {key}, but these differ in {key} from the first teacher "
                            f"{labels[0]}: {named}. {fix}")


def check_against_data(refs: list[str], ckpts: list[dict], data) -> None:
    """The prepared data must be the teachers' (genes, split, vocabulary, feature units); name the difference."""
    from scfate.data.schema import check_same_genes

    ref, ckpt = refs[0], ckpts[0]
    check_same_genes(list(data.adata.var_names), ckpt["genes"], f"Teacher {ref}",
                     f"Prepare the data the teacher was trained on (dataset={ckpt['dataset']} and its data.* options).")
    ours = {"split": data.split.to_dict(), "perturbations": list(data.perturbations), "units": list(data.features.units)}
    for key, value in ours.items():
        if _plain(value) != _plain(ckpt[key]):
            raise DataError(f"Teacher {ref} was trained on another {key} than the prepared {data.spec.name} data: "
                            f"{difference(ckpt[key], value, ('teacher', 'data'))}. Pass the teacher's data options "
                            f"(split_seed={ckpt['split'].get('seed')}, data.split.*) or retrain the teacher.")


def prior_of(ckpt: dict) -> dict:
    """The ``prior_info`` that export_flow expects, rebuilt from a teacher checkpoint (the student keeps its prior)."""
    tensors = ("prior_mu", "prior_state", "prior_offset", "prior_delta")
    info = {k: v for k, v in ckpt.items() if k.startswith(PRIOR_PREFIXES) and k not in tensors}
    return {**info, "state": dict(ckpt.get("prior_state", {}))}


def tree_ref(ref: str, artifacts_dir) -> str:
    """A teacher reference as the student's checkpoint records it: a run inside the artifacts tree by its path in
    the tree (``flow_heads/k562/base``, the same on the Hub), anything else (hf://, another folder) as given."""
    path, art = Path(ref).resolve(), Path(artifacts_dir).resolve()
    if ref.startswith("hf://") or not path.is_relative_to(art):
        return ref
    return (path.parent if path.name == "flow_best.pt" else path).relative_to(art).as_posix()


def student_backbone(path: Path, ckpt: dict, artifacts_dir) -> Path:
    """The backbone the student's checkpoint points to: this tree's copy under ``backbones/<dataset>/`` when it is
    the teacher's (same sha256; e.g. a Hub teacher whose backbone was also pulled here), else the teacher's own."""
    from scfate.utils.io import sha256_file

    for local in sorted((Path(artifacts_dir) / "backbones" / ckpt["dataset"]).rglob("backbone.pt")):
        if sha256_file(local) == ckpt["backbone_sha256"]:
            return local
    return (path.parent / ckpt["backbone_path"]).resolve()
