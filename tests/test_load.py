"""Finding and reading dataset files: local paths, the Hub dataset repo (from a local cache, offline), bad files."""

import pytest
from conftest import make_adata

from scfate.data import DataError
from scfate.data.load import parse_hf_uri, read_h5ad, resolve_data_file

REPO, FILE = "Angione-Lab/scFATE-datasets", "CRISPRa-norman/norman2019_gears_split.h5ad"


def _hub_cache(root, repo: str, filename: str, adata) -> None:
    """Lay out a huggingface_hub cache (refs + snapshots) holding one file of a dataset repo."""
    commit = "0" * 40
    repo_dir = root / f"datasets--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    target = repo_dir / "snapshots" / commit / filename
    target.parent.mkdir(parents=True)
    adata.write_h5ad(target)


def test_local_path_is_used_as_is(tmp_path):
    path = tmp_path / "x.h5ad"
    make_adata().write_h5ad(path)
    assert resolve_data_file(str(path), REPO, FILE) == path


def test_missing_file_without_hub_reference(tmp_path):
    with pytest.raises(DataError, match=r"Dataset file not found: .*nope.h5ad. Check data.path"):
        resolve_data_file(str(tmp_path / "nope.h5ad"))


def test_offline_hub_fetch_says_what_to_download_and_where(tmp_path):
    dest = tmp_path / "scFATE-datasets" / FILE
    with pytest.raises(DataError) as err:
        resolve_data_file(str(dest), REPO, FILE)
    msg = str(err.value)
    assert "offline or unreachable" in msg
    assert f"hf download {REPO} {FILE} --repo-type dataset --local-dir {tmp_path / 'scFATE-datasets'}" in msg


def test_path_must_match_hub_file(tmp_path):
    with pytest.raises(DataError, match="must end with data.hf_file"):
        resolve_data_file(str(tmp_path / "other.h5ad"), REPO, FILE)


def test_hf_uri_resolves_from_local_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    _hub_cache(tmp_path / "hub", REPO, FILE, make_adata())
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = resolve_data_file(f"hf://datasets/{REPO}/{FILE}")
    assert path.is_file() and path.name == "norman2019_gears_split.h5ad"
    assert read_h5ad(path).n_obs == make_adata().n_obs


def test_parse_hf_uri():
    assert parse_hf_uri(f"hf://datasets/{REPO}/{FILE}") == (REPO, FILE)
    assert parse_hf_uri(f"hf://{REPO}/sciplex3/sciplex3.h5ad") == (REPO, "sciplex3/sciplex3.h5ad")
    with pytest.raises(DataError, match="not a Hub file reference"):
        parse_hf_uri("hf://datasets/only-owner")


def test_unreadable_h5ad(tmp_path):
    bad = tmp_path / "broken.h5ad"
    bad.write_bytes(b"this is not an HDF5 file")
    with pytest.raises(DataError, match=r"Cannot read .*broken.h5ad as an .h5ad file"):
        read_h5ad(bad)
    good = tmp_path / "good.h5ad"
    make_adata().write_h5ad(good)
    good.write_bytes(good.read_bytes()[:2000])  # truncated download
    with pytest.raises(DataError, match="Re-download"):
        read_h5ad(good)
