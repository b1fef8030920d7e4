"""A flow head never uses a backbone trained on its own held-out perturbations; old checkpoints load as they were."""

import logging
import re

import pytest
import torch
from test_backbone import dm, make_model  # noqa: F401 - fixtures

from scfate.data import DataError
from scfate.data.splits import Split
from scfate.models.export import export_backbone
from scfate.models.flow_export import export_flow, load_flow
from scfate.models.flow_head import FlowHead
from scfate.models.split_guard import backbone_leak, check_backbone_split, same_split

SPLIT = {"mode": "simulation", "seed": 1, "train": ["A", "B", "A+B"], "val": ["C"], "test": ["D", "C+D"]}


def test_a_backbone_that_trained_on_held_out_perturbations_is_refused_by_name():
    bb = {"atlas_perturbations": ["A", "B", "A+B", "D"], "split": {**SPLIT, "seed": 2}}
    assert backbone_leak(bb, SPLIT) == {"val": [], "test": ["D"]}
    with pytest.raises(DataError, match=r"backbone=x was trained on 1 perturbation\(s\) that this run holds out "
                                        r"\(test: \['D'\], val: \[\]\).*split_seed=2"):
        check_backbone_split(bb, SPLIT, "backbone=x")
    bb["atlas_perturbations"] = ["A", "C"]
    with pytest.raises(DataError, match=r"val: \['C'\]"):
        check_backbone_split(bb, SPLIT, "backbone=x")


def test_a_leak_free_backbone_of_another_split_is_used_with_a_warning(caplog):
    bb = {"atlas_perturbations": ["A", "B"], "split": {**SPLIT, "train": ["A", "B"], "test": ["D", "C+D", "A+B"]}}
    with caplog.at_level(logging.WARNING, logger="scfate"):
        check_backbone_split(bb, SPLIT, "backbone=x")
    assert "another split" in caplog.text
    assert not same_split(bb["split"], SPLIT) and same_split({**SPLIT, "seed": 9}, SPLIT)


def test_split_tag_names_the_content_not_the_settings():
    a = Split("simulation", 1, ["A", "B"], ["C"], ["D"])
    assert a.tag == Split("simulation", 1, ["B", "A"], ["C"], ["D"], params={"x": 1}).tag
    assert a.tag.startswith("simulation_seed1_") and a.tag != Split("simulation", 1, ["A"], ["B", "C"], ["D"]).tag


def _head(dm, backbone):  # noqa: F811
    feats = torch.as_tensor(dm.data.features.matrix, dtype=torch.float32)
    prior = torch.zeros(len(dm.perturbations), backbone.hparams.theta_dim)
    return FlowHead(backbone, feats, prior, len(dm.contexts), d_embed=8, d_hidden=16, n_blocks=1, n_steps=3)


def test_load_flow_refuses_a_head_whose_backbone_saw_its_test_perturbations(dm, tmp_path, caplog):  # noqa: F811
    from scfate.models.backbone import RotationAE

    torch.manual_seed(0)  # a contaminated backbone: trained on one of the split's test perturbations too
    backbone = RotationAE(n_genes=dm.n_genes, n_contexts=len(dm.contexts), perturbations=dm.perturbations,
                          atlas_perturbations=[*dm.data.split.train, dm.data.split.test[0]], theta_dim=4,
                          enc_hidden=[32], dec_hidden=[32]).eval()
    bb = export_backbone(backbone, dm.data, tmp_path / "backbones" / "tiny" / "backbone.pt")
    path = export_flow(_head(dm, backbone), dm.data, tmp_path / "flow_heads" / "tiny" / "seed1" / "flow_best.pt", bb,
                       {"prior": "none", "krr_gamma": None, "krr_alpha": None})
    with pytest.raises(DataError, match=re.escape(f"holds out (test: ['{dm.data.split.test[0]}']")):
        load_flow(path)
    with caplog.at_level(logging.WARNING, logger="scfate"):
        load_flow(path, zero_shot=False)  # prediction only (scfate.load): allowed, with a warning
    assert "do not report its scores" in caplog.text


def test_a_checkpoint_without_decode_or_anchor_loads_as_it_was_trained(dm, tmp_path):  # noqa: F811
    """Heads exported before `decode` / `anchor` existed decoded directly and did not anchor."""
    backbone = make_model(dm)
    bb = export_backbone(backbone, dm.data, tmp_path / "backbones" / "tiny" / "backbone.pt")
    head = _head(dm, backbone)
    assert head.hparams.decode == "residual"  # today's default differs from what an old head meant
    path = export_flow(head, dm.data, tmp_path / "flow_heads" / "tiny" / "seed1" / "flow_best.pt", bb,
                       {"prior": "none", "krr_gamma": None, "krr_alpha": None})
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["decode"] == "residual"
    for key in ("decode", "anchor"):
        del ckpt[key]
    torch.save(ckpt, path)
    old, _ = load_flow(path)
    assert old.hparams.decode == "direct" and old.hparams.anchor == "none"
