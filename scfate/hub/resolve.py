"""Resolve a checkpoint reference to a local file: a file, a run folder, or ``hf://OWNER/REPO[@REVISION]/SUBPATH``.

Hub references download only the named subfolder (and the backbone folder a flow checkpoint points to) into the
standard huggingface_hub cache, so a second call, or an offline one (``HF_HUB_OFFLINE=1``), reads the cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from scfate.errors import DataError

FORMS = ("a checkpoint file (flow_best.pt / backbone.pt)", "a run folder holding one",
         "hf://OWNER/REPO[@REVISION]/SUBPATH (SUBPATH a run folder or a file in the repo)")


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str | None
    sub: str  # a folder or a file inside the repo, posix, no leading slash

    @property
    def is_file(self) -> bool:
        # run folders (seed1, reflow_K2_s1, mixed18_K16) carry no suffix; checkpoint and result files do
        return PurePosixPath(self.sub).suffix != ""

    def __str__(self) -> str:
        return f"hf://{self.repo}{'@' + self.revision if self.revision else ''}/{self.sub}"


def parse_hf(ref: str) -> HubRef:
    m = re.fullmatch(r"hf://([^/@\s]+)/([^/@\s]+)(?:@([^/\s]+))?(?:/(.*))?", ref.strip())
    if not m or not (m.group(4) or "").strip("/"):
        raise DataError(f"Bad Hub reference {ref!r}: expected hf://OWNER/REPO[@REVISION]/SUBPATH, e.g. "
                        "hf://Angione-Lab/scFATE/flow_heads/k562/reflow_K2_s1 or hf://Angione-Lab/scFATE@v1.0/"
                        "backbones/norman/backbone.pt.")
    return HubRef(f"{m.group(1)}/{m.group(2)}", m.group(3), m.group(4).strip("/"))


def join_repo_path(folder: str, rel: str) -> str:
    """Join a repo folder with a relative path that may climb out of it ('../../../backbones/x/backbone.pt')."""
    parts = [p for p in folder.split("/") if p]
    for piece in rel.split("/"):
        if piece == "..":
            if not parts:
                raise DataError(f"Relative path {rel!r} climbs above the repo root from {folder!r}.")
            parts.pop()
        elif piece not in ("", "."):
            parts.append(piece)
    return "/".join(parts)


def _fetch_command(h: HubRef, includes: list[str]) -> str:
    """The `hf` CLI command (huggingface_hub >= 1.0 no longer ships `huggingface-cli`) that fills the cache. Each
    pattern needs its own --include: a second bare pattern would be read as a file name and the include dropped."""
    rev = f" --revision {h.revision}" if h.revision else ""
    return f"hf download {h.repo}{rev} " + " ".join(f"--include '{p}'" for p in includes)


def _guess_backbone_pattern(sub: str) -> str:
    """The backbone folder a Hub path most likely needs, for the error message (flow_heads/<d>/... -> backbones/<d>)."""
    parts = sub.split("/")
    if parts[0] == "flow_heads" and len(parts) > 1:
        return f"backbones/{parts[1]}/*"
    if parts[0].endswith("_path_b"):
        return f"backbones/{parts[0].split('_')[0]}/*"
    return "backbones/*"


def _snapshot(h: HubRef, patterns: list[str], revision: str | None, wanted: str, hint: list[str]) -> tuple[Path, Path]:
    """snapshot_download restricted to ``patterns``; returns (snapshot folder, local path of ``wanted``)."""
    from huggingface_hub import errors as E
    from huggingface_hub import snapshot_download

    where = f"{wanted!r} in Hub repo {h.repo} at revision {h.revision or 'main'}"
    fetch = f"Fetch it with `{_fetch_command(h, hint)}`"
    try:
        snap = Path(snapshot_download(h.repo, revision=revision, allow_patterns=patterns))
    except E.RevisionNotFoundError as exc:
        raise DataError(f"Cannot get {where}: revision {h.revision!r} does not exist in {h.repo}. Use a branch, "
                        "tag or commit of the repo (hf://OWNER/REPO@REVISION/...).") from exc
    except (E.RepositoryNotFoundError, E.GatedRepoError) as exc:
        raise DataError(f"Cannot get {where}: the repo does not exist or is private/gated ({type(exc).__name__}). "
                        "Check OWNER/REPO, or log in with `hf auth login`.") from exc
    except E.HFValidationError as exc:
        raise DataError(f"Bad Hub reference {str(h)!r}: {exc}") from exc
    except (E.LocalEntryNotFoundError, getattr(E, "IncompleteSnapshotError", E.LocalEntryNotFoundError),
            E.HfHubHTTPError, OSError) as exc:
        raise DataError(f"Cannot get {where}: not in the local Hub cache and the Hub is offline or unreachable "
                        f"({type(exc).__name__}). {fetch} when online (or unset HF_HUB_OFFLINE), or pass a local "
                        "path.") from exc
    path = snap / wanted
    if not path.exists():
        from huggingface_hub import constants

        # offline, snapshot_download returns a cached snapshot even when the pattern matched nothing
        why = (f"not in the cached snapshot {snap} and the Hub is offline or unreachable (HF_HUB_OFFLINE=1)"
               if constants.HF_HUB_OFFLINE else "not in the repo at that revision (a wrong path?)")
        raise DataError(f"Cannot get {where}: {why}. {fetch}, or check the path against the repo's tree.")
    return snap, path


def _resolve_hf(ref: str, filename: str) -> Path:
    h = parse_hf(ref)
    folder = str(PurePosixPath(h.sub).parent) if h.is_file else h.sub
    folder = "" if folder == "." else folder
    wanted = h.sub if h.is_file else f"{h.sub}/{filename}"
    pattern = h.sub if h.is_file else f"{h.sub}/*"
    hint = [pattern] if filename == "backbone.pt" else [pattern, _guess_backbone_pattern(h.sub)]
    snap, path = _snapshot(h, [pattern], h.revision, wanted, hint)
    # the backbone a flow head points to lives elsewhere in the tree: fetch its folder from the same commit
    backbone_rel = _read_backbone_path(path)
    if backbone_rel is not None:
        bb = join_repo_path(folder, backbone_rel)
        bb_folder = str(PurePosixPath(bb).parent)
        # the snapshot folder is named by its commit hash: pin the backbone to the very commit of the flow head
        _snapshot(h, [f"{bb_folder}/*"], snap.name, bb, [pattern, f"{bb_folder}/*"])
    return path


def _read_backbone_path(path: Path) -> str | None:
    if path.suffix != ".pt":
        return None
    from scfate.utils.checkpoint import safe_torch_load

    ckpt = safe_torch_load(path, fix=f"Fetch it again (delete it from the Hub cache, {path}, first).")
    rel = ckpt.get("backbone_path") if isinstance(ckpt, dict) else None
    return str(rel) if rel else None


def resolve_checkpoint(ref: str | Path, filename: str = "flow_best.pt") -> Path:
    """A local path to the checkpoint ``ref`` names (a file, a run folder holding ``filename``, or an hf:// ref).

    Hub refs are fetched into the huggingface_hub cache together with the backbone a flow checkpoint points to, so
    ``scfate.models.flow_export.load_flow`` finds it at its relative ``backbone_path``."""
    ref_s = str(ref)
    if ref_s.startswith("hf://"):
        return _resolve_hf(ref_s, filename)
    path = Path(ref_s).expanduser()
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise DataError(f"Run folder {path} has no {filename} (it holds: "
                        f"{sorted(p.name for p in path.iterdir())[:10]}). Give the folder of a finished run, "
                        f"or the checkpoint file itself.")
    if path.is_file():
        return path
    what = {"flow_best.pt": "flow-head ", "backbone.pt": "backbone "}.get(filename, "")
    raise DataError(f"No {what}checkpoint at {ref_s!r}: the path does not exist. Accepted forms: "
                    + "; ".join(FORMS) + ".")


def resolve_backbone_ref(ref: str | Path) -> Path:
    """Like resolve_checkpoint for ``backbone.pt`` (a file, its folder, or hf://OWNER/REPO/backbones/<dataset>)."""
    return resolve_checkpoint(ref, filename="backbone.pt")
