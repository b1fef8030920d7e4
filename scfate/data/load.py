"""Find a dataset file (local path or the Hugging Face dataset repo) and read it with clear errors."""

from __future__ import annotations

from pathlib import Path

from scfate.errors import DataError

HF_DATASETS_REPO = "Angione-Lab/scFATE-datasets"


def _download_hint(repo: str, filename: str, dest: Path) -> str:
    # the `hf` CLI: huggingface_hub >= 1.0 no longer ships `huggingface-cli`
    return (f"Download it with\n  hf download {repo} {filename} --repo-type dataset "
            f"--local-dir {dest}\nor point data.path at your local copy.")


def parse_hf_uri(uri: str) -> tuple[str, str]:
    """``hf://datasets/OWNER/NAME/path/in/repo`` (or ``hf://OWNER/NAME/path``) -> (repo_id, filename)."""
    rest = uri.removeprefix("hf://").removeprefix("datasets/")
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise DataError(f"{uri!r} is not a Hub file reference; expected hf://datasets/OWNER/NAME/path/to/file.h5ad")
    return "/".join(parts[:2]), "/".join(parts[2:])


def fetch_from_hub(repo_id: str, filename: str, local_dir: Path | None) -> Path:
    """Fetch one file of a Hub *dataset* repo through huggingface_hub; offline or missing -> DataError."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    dest = local_dir if local_dir is not None else Path("data")
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset",
                                    local_dir=str(local_dir) if local_dir is not None else None))
    except LocalEntryNotFoundError as exc:  # offline (HF_HUB_OFFLINE=1) or no network
        raise DataError(f"Cannot fetch {filename!r} from the Hub dataset {repo_id!r}: offline or unreachable "
                        f"({type(exc).__name__}). " + _download_hint(repo_id, filename, dest)) from exc
    except (EntryNotFoundError, RepositoryNotFoundError) as exc:
        raise DataError(f"{filename!r} is not in the Hub dataset {repo_id!r} ({type(exc).__name__}). "
                        "Check data.hf_file / data.hf_repo.") from exc
    except OSError as exc:  # network errors surface as OSError subclasses (requests/httpx)
        raise DataError(f"Fetching {filename!r} from {repo_id!r} failed: {exc}. "
                        + _download_hint(repo_id, filename, dest)) from exc


def resolve_data_file(path: str | None, hf_repo: str | None = None, hf_file: str | None = None) -> Path:
    """Return a local path to the dataset file, fetching it from the Hub only when asked for.

    - ``path`` exists: used as is (no network).
    - ``path`` is ``hf://datasets/OWNER/NAME/FILE``: fetched into the huggingface_hub cache.
    - ``path`` missing and ``hf_file`` set: fetched from ``hf_repo`` into ``path``'s place, so the next run
      finds it locally.
    """
    if path is not None and str(path).startswith("hf://"):
        repo_id, filename = parse_hf_uri(str(path))
        return fetch_from_hub(repo_id, filename, None)
    if path is not None and Path(path).is_file():
        return Path(path)
    if hf_file:
        repo_id = hf_repo or HF_DATASETS_REPO
        local_dir = None
        if path is not None:
            # place the file exactly at `path`: local_dir + filename must equal path
            p = Path(path)
            if p.as_posix().endswith(hf_file):
                local_dir = Path(p.as_posix()[: -len(hf_file)] or ".")
            else:
                raise DataError(f"data.path={path} must end with data.hf_file={hf_file} so the fetched file "
                                "lands there; fix one of them.")
        return fetch_from_hub(repo_id, hf_file, local_dir)
    if path is None:
        raise DataError("No dataset file given: set data.path=FILE.h5ad.")
    if Path(path).exists():
        raise DataError(f"data.path={path} is a directory, not an .h5ad file.")
    raise DataError(f"Dataset file not found: {path}. Check data.path (relative paths are taken from the "
                    f"directory you run in: {Path.cwd()}).")


def read_h5ad(path: str | Path, backed: bool = False):
    """Read an h5ad; a missing or corrupt file raises DataError naming the file."""
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise DataError(f"Dataset file not found: {path}.")
    try:
        return _read_backed(path) if backed else ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for truncated or non-h5ad files
        raise DataError(f"Cannot read {path} as an .h5ad file ({type(exc).__name__}: {exc}). Is it a complete "
                        "AnnData file? Re-download it or re-export it with adata.write_h5ad().") from exc


def _read_backed(path: Path):
    """``path`` opened read-only with X left on disk, and the layers too: anndata's own backed mode reads every
    layer into memory, and a prepared screen's ``layers/counts`` is as large as X (a GB at a million cells). Read
    layers through ``scfate.data.rows.RowReader(path=..., key="layers/<name>")``; ``stored_layers`` lists them."""
    import anndata as ad
    import h5py
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        if "encoding-type" not in f.attrs:  # a file of an old anndata version: its own reader converts it
            return ad.read_h5ad(path, backed="r")
        parts = {k: read_elem(f[k]) for k in ("obs", "var", "uns", "obsm", "varm", "obsp", "varp") if k in f}
    return ad.AnnData(filename=path, filemode="r", **parts)


def stored_layers(adata) -> set[str]:
    """Names of ``adata``'s layers: in memory, or on disk for a file ``read_h5ad(..., backed=True)`` opened."""
    if not adata.isbacked:
        return set(adata.layers.keys())
    import h5py

    with h5py.File(adata.filename, "r") as f:
        return set(f["layers"].keys()) if "layers" in f else set()


def h5ad_in_memory_bytes(path: str | Path) -> int:
    """Bytes the arrays of an h5ad take once read into memory, from the file's metadata (nothing is read): the sum
    over its datasets of elements x item size. Compression makes the file smaller than this, never larger."""
    import h5py

    total = 0

    def add(_name, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            # strings (names, categories) become Python objects: ~64 bytes each is closer than their stored width
            total += obj.size * (obj.dtype.itemsize if obj.dtype.kind in "biufc" else 64)

    try:
        with h5py.File(path, "r") as f:
            f.visititems(add)
    except OSError as exc:
        raise DataError(f"Cannot read {path} as an .h5ad file ({type(exc).__name__}: {exc}). Is it a complete "
                        "AnnData file? Re-download it or re-export it with adata.write_h5ad().") from exc
    return total
