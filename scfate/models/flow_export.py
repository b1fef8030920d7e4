"""Self-describing flow-head checkpoints in the model card's format (``flow_best.pt``): every hyperparameter at the
top level, the velocity network at ``v_net_state_dict``, prior tensors, gene list, perturbation vocabulary, feature
table, split, and the backbone reference with its sha256. Loadable with ``weights_only=True``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from scfate._version import __version__
from scfate.errors import DataError
from scfate.models.split_guard import check_backbone_split
from scfate.utils.io import atomic_path, atomic_write_json, sha256_file

log = logging.getLogger("scfate")
FORMAT = "scfate.flow_head"
HPARAMS = ("use_dose", "d_embed", "d_hidden", "n_blocks", "d_context", "dropout", "sigma", "source_std", "n_steps",
           "sampler", "lr", "weight_decay", "coupling", "target", "decode", "anchor", "spread")


def upgrade_checkpoint(ckpt: dict) -> dict:
    """A flow-head checkpoint of an earlier release, in today's layout: a head written before ``decode`` and
    ``anchor`` were stored decoded directly and did not anchor (not today's behaviour), and one written before
    ``spread`` kept the flow's whole spread; each must predict as it did when it was trained and scored. Applied
    once, on reading; a current checkpoint is returned unchanged."""
    return {"decode": "direct", "anchor": "none", "spread": 1.0, **ckpt}


def export_flow(head, data, path: str | Path, backbone_path: str | Path, prior_info: dict, extra: dict | None = None):
    path, backbone_path = Path(path), Path(backbone_path)
    bb = head.backbone.hparams
    ckpt = {
        "format": FORMAT, "format_version": 1, "scfate_version": __version__,
        "theta_dim": int(bb.theta_dim), "n_contexts": int(bb.n_contexts),
        **{k: head.hparams[k] for k in HPARAMS},
        **{k: v for k, v in prior_info.items() if not isinstance(v, torch.Tensor)},
        "dataset": data.spec.name, "perturbation_type": data.spec.perturbation_type,
        "v_net_state_dict": head.v_net.state_dict(),
        "prior_mu": head.prior_mu.detach().cpu().clone(),
        "prior_offset": head.prior_offset.detach().cpu().clone(),
        "prior_delta": head.prior_delta.detach().cpu().clone(),
        "prior_state": {k: v for k, v in prior_info.get("state", {}).items()},
        "perturbations": list(data.perturbations), "contexts": list(data.meta["contexts"]),
        "genes": list(data.adata.var_names), "units": list(data.features.units),
        "feature_views": [dict(v) for v in data.features.views], "split": data.split.to_dict(),
        "data_sha256": data.meta["data_sha256"],
        # relative first: the layout (flow_heads/<d>/seedN/ beside backbones/<d>/) survives a move or a Hub pull
        "backbone_path": os.path.relpath(backbone_path.resolve(), path.parent.resolve()),
        "backbone_sha256": sha256_file(backbone_path),
        **(extra or {}),
    }
    ckpt.pop("state", None)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    config = {k: v for k, v in ckpt.items() if not isinstance(v, (dict, torch.Tensor)) and k not in ("genes", "units")}
    config["n_genes"], config["n_units"] = len(ckpt["genes"]), len(ckpt["units"])
    atomic_write_json(path.parent / "config.json", config)
    return path


def load_flow(path: str | Path, zero_shot: bool = True):
    """Rebuild a FlowHead (with its backbone) from ``flow_best.pt``; returns (head, ckpt).

    ``zero_shot``: refuse a head whose backbone was trained on the head's own validation or test perturbations
    (its scores would not be zero-shot); False (prediction only) logs a warning instead."""
    from scfate.models.export import load_backbone, read_checkpoint
    from scfate.models.flow_head import FlowHead

    path = Path(path)
    ckpt = upgrade_checkpoint(read_checkpoint(path, FORMAT, "Flow-head", "Train one with `python train.py dataset=NAME`."))
    bb_path = (path.parent / ckpt["backbone_path"]).resolve()
    if not bb_path.is_file():
        raise DataError(f"The backbone of {path} is missing: expected {bb_path} (backbone_path="
                        f"{ckpt['backbone_path']!r}). Fetch or place backbones/{ckpt['dataset']}/backbone.pt there.")
    if sha256_file(bb_path) != ckpt["backbone_sha256"]:
        raise DataError(f"{bb_path} is not the backbone {path} was trained with (sha256 differs); retrain the flow "
                        "head or restore that backbone.")
    backbone, bb_ckpt = load_backbone(bb_path, genes=ckpt["genes"])
    try:
        check_backbone_split(bb_ckpt, ckpt["split"], f"The backbone {bb_path} of {path}")
    except DataError:
        if zero_shot:
            raise
        log.warning("the backbone of %s saw some of the head's held-out perturbations: do not report its scores on "
                    "them as zero-shot", path)
    unit_features = ckpt["v_net_state_dict"]["embed.unit_features"]
    hp = {k: ckpt[k] for k in HPARAMS if k in ckpt}
    offset, delta = ckpt.get("prior_offset"), ckpt.get("prior_delta")
    head = FlowHead(backbone, unit_features, ckpt["prior_mu"], ckpt["n_contexts"],
                    prior_offset=offset if offset is not None and offset.numel() else None,
                    prior_delta=delta if delta is not None and delta.numel() else None, **hp)
    head.v_net.load_state_dict(ckpt["v_net_state_dict"])
    return head.eval(), ckpt
