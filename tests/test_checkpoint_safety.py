"""Every torch file scFATE reads goes through one safe loader (scfate.utils.checkpoint): an empty, truncated,
corrupt or pickle-carrying file is a CheckpointError naming the problem and the fix, never torch's
``weights_only=False`` advice; and the offline hints give an `hf` command that the installed CLI parses."""

import ast
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from scfate.errors import CheckpointError, DataError
from scfate.utils.checkpoint import safe_torch_load


class _Payload:
    """Unpickling this would create the marker file: the test checks it never exists."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"format": "x", "w": torch.ones(3)}, good)
    raw = good.read_bytes()
    out = {"good": good, "marker": tmp_path / "PAYLOAD_RAN"}
    for name, data in {"empty": b"", "truncated": raw[: len(raw) // 2], "head": raw[:10],
                       "text": b"hello, not a checkpoint", "noise": os.urandom(400)}.items():
        (tmp_path / f"{name}.pt").write_bytes(data)
        out[name] = tmp_path / f"{name}.pt"
    out["payload"] = tmp_path / "payload.pt"
    torch.save({"format": "scfate.flow_head", "x": _Payload(out["marker"])}, out["payload"])
    return out


def _no_torch_advice(exc: BaseException):
    msg = str(exc)
    assert "weights_only" not in msg and "PytorchStreamReader" not in msg
    # raised from None: a traceback does not repeat torch's own text either
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


@pytest.mark.parametrize("name,msg", [
    ("empty", r"empty.pt \(scFATE checkpoint\) is empty \(0 bytes\).*Re-download or re-export it"),
    ("truncated", r"truncated.pt \(\d+ bytes\) is not a readable scFATE checkpoint: it is truncated"),
    ("head", r"head.pt \(10 bytes\) is not a readable scFATE checkpoint: it is truncated"),
    ("text", r"text.pt \(\d+ bytes\) is not a readable scFATE checkpoint: it is (corrupt|truncated)"),
    ("noise", r"noise.pt \(400 bytes\) is not a readable scFATE checkpoint"),
])
def test_empty_truncated_and_corrupt_files_are_checkpoint_errors(files, name, msg):
    with pytest.raises(CheckpointError, match=msg) as err:
        safe_torch_load(files[name])
    _no_torch_advice(err.value)
    assert safe_torch_load(files["good"])["format"] == "x"


def test_a_pickle_payload_is_refused_unread_and_never_runs(files):
    with pytest.raises(CheckpointError, match=r"payload.pt is not a safe scFATE checkpoint: it asks to load the "
                                              r"Python object '(builtins|io).open'.*refused unread") as err:
        safe_torch_load(files["payload"])
    _no_torch_advice(err.value)
    assert not files["marker"].exists()


def test_scfate_load_of_a_bad_flow_checkpoint_says_so(tmp_path):
    """Truncated, empty, pickle-carrying or not-a-flow-head files behind scfate.load and load_backbone."""
    import scfate
    from scfate.models.export import load_backbone

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "scfate.flow_head", "v_net_state_dict": {"w": torch.randn(20_000)}}, run / "flow_best.pt")
    raw = (run / "flow_best.pt").read_bytes()
    marker = tmp_path / "PAYLOAD_RAN"
    # cut at the end (torch: OSError "Invalid argument") and in the middle (RuntimeError "central directory")
    cases = {b"": r"\(scFATE flow-head checkpoint\) is empty \(0 bytes\)",
             raw[: len(raw) - 100]: r"is not a readable scFATE flow-head checkpoint: it is truncated.*Train one with",
             raw[: len(raw) // 2]: r"is not a readable scFATE flow-head checkpoint: it is truncated"}
    for data, msg in cases.items():
        (run / "flow_best.pt").write_bytes(data)
        with pytest.raises(CheckpointError, match=msg) as err:
            scfate.load(run)
        _no_torch_advice(err.value)
    torch.save({"format": "scfate.flow_head", "genes": _Payload(marker)}, run / "flow_best.pt")
    with pytest.raises(CheckpointError, match=r"is not a safe scFATE flow-head checkpoint") as err:
        scfate.load(run)
    _no_torch_advice(err.value)
    assert not marker.exists()
    torch.save({"format": "scfate.backbone", "genes": ["A"]}, tmp_path / "backbone.pt")
    with pytest.raises(CheckpointError, match=r"format='scfate.backbone', expected 'scfate.flow_head'"):
        scfate.load(tmp_path / "backbone.pt")  # a backbone given where a flow head is expected
    torch.save([1, 2], run / "flow_best.pt")
    with pytest.raises(CheckpointError, match=r"format='list'"):
        scfate.load(run)
    (tmp_path / "backbone.pt").write_bytes(raw[:500])
    with pytest.raises(CheckpointError, match=r"not a readable scFATE backbone checkpoint: it is truncated"):
        load_backbone(tmp_path / "backbone.pt")


def test_every_torch_load_goes_through_the_safe_loader():
    """No call of torch.load in the package but the safe loader's own (docstrings and the card may quote it)."""
    root = Path(__file__).resolve().parents[1] / "scfate"
    direct = [f"{p.relative_to(root)}:{node.lineno}" for p in root.rglob("*.py")
              for node in ast.walk(ast.parse(p.read_text()))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"]
    assert direct == ["utils/checkpoint.py:" + str(_line_of("torch.load(", root / "utils" / "checkpoint.py"))]


def _line_of(text: str, path: Path) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line and "``" not in line)


def test_other_torch_files_use_the_safe_loader(files, tmp_path):
    """Couplings (reflow), user embeddings (features.user) and the hub's manifest (with its CLI's exit code)."""
    from scfate.data.features.genes import load_user_embedding
    from scfate.flow.reflow import Couplings
    from scfate.hub.__main__ import main as hub_main
    from scfate.hub.manifest import describe_run

    with pytest.raises(CheckpointError, match=r"is not a readable couplings file.*Generate it again with reflow"):
        Couplings.load(files["truncated"])
    emb = tmp_path / "emb.pt"
    torch.save({"A": _Payload(files["marker"])}, emb)
    with pytest.raises(CheckpointError, match=r"emb.pt is not a safe features.user embedding file") as err:
        load_user_embedding(emb)
    _no_torch_advice(err.value)
    tree = tmp_path / "artifacts"
    (tree / "flow_heads" / "x" / "seed1").mkdir(parents=True)
    (tree / "flow_heads" / "x" / "seed1" / "flow_best.pt").write_bytes(files["truncated"].read_bytes())
    with pytest.raises(CheckpointError, match=r"flow_best.pt \(\d+ bytes\) is not a readable.*Copy the run"):
        describe_run(tree, "flow_heads/x/seed1")
    assert hub_main(["manifest", str(tree)]) == 2
    assert not files["marker"].exists()


def _run_hf_cli(command: str, monkeypatch) -> dict:
    """Parse ``command`` with the installed `hf` CLI, the download itself replaced by a recorder."""
    import huggingface_hub.cli.download as dl
    from huggingface_hub.cli.hf import main

    calls = []
    monkeypatch.setattr(dl, "snapshot_download", lambda **kw: calls.append(kw) or "/nowhere")
    monkeypatch.setattr(dl, "hf_hub_download", lambda **kw: calls.append(kw) or "/nowhere")
    monkeypatch.setattr(sys, "argv", shlex.split(command))
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None) and len(calls) == 1
    return calls[0]


def test_offline_hints_give_an_hf_command_the_installed_cli_runs(tmp_path, monkeypatch):
    from scfate.data.load import resolve_data_file
    from scfate.hub import resolve_checkpoint

    with pytest.raises(DataError) as err:  # offline, nothing cached (conftest)
        resolve_checkpoint("hf://owner/scfate@v2/flow_heads/norman/seed3")
    cmd = re.search(r"`(hf download [^`]+)`", str(err.value)).group(1)
    assert "huggingface-cli" not in str(err.value)
    call = _run_hf_cli(cmd, monkeypatch)
    assert call["repo_id"] == "owner/scfate" and call["revision"] == "v2"
    assert call["allow_patterns"] == ["flow_heads/norman/seed3/*", "backbones/norman/*"]  # both, not one
    with pytest.raises(DataError) as err:
        resolve_data_file(str(tmp_path / "d" / "x.h5ad"), "Owner/ds", "x.h5ad")
    cmd = re.search(r"\n  (hf download [^\n]+)\n", str(err.value)).group(1)
    call = _run_hf_cli(cmd, monkeypatch)
    assert (call["repo_id"], call["filename"], call["repo_type"]) == ("Owner/ds", "x.h5ad", "dataset")
    assert call["local_dir"] == str(tmp_path / "d")


def test_pull_offline_names_hf_auth_login(tmp_path):
    from scfate.hub.publish import pull

    with pytest.raises(DataError, match=r"`hf auth login` for a private repo") as err:
        pull("owner/private", ["flow_heads/*"], local_dir=tmp_path / "out")  # offline, nothing cached
    assert "huggingface-cli" not in str(err.value)
