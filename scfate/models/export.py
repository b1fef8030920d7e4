"""Self-describing backbone checkpoints: plain hyperparameters at the top level, state dicts beside them, the gene
list, perturbation vocabulary, rotation atlas, split and data sha256. Loadable with ``weights_only=True``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scfate._version import __version__
from scfate.data.schema import check_same_genes
from scfate.errors import CheckpointError, DataError
from scfate.utils.checkpoint import safe_torch_load
from scfate.utils.io import atomic_path, atomic_write_json

FORMAT = "scfate.backbone"
FORMAT_VERSION = 1
HPARAMS = ("n_genes", "n_contexts", "theta_dim", "group", "enc_hidden", "dec_hidden", "d_context", "dropout",
           "likelihood", "lr", "atlas_lr", "weight_decay", "loss_weights", "so_rank", "so_method")


def _plain(value):
    """Hyperparameters as plain JSON types (tuples -> lists, OmegaConf containers -> dicts)."""
    return json.loads(json.dumps(value, default=list))


def export_backbone(model, data, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``backbone.pt`` (atomically) and ``config.json`` beside it; return the .pt path."""
    hp = {k: _plain(model.hparams[k]) for k in HPARAMS}
    ckpt = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "scfate_version": __version__,
        **hp,
        "dataset": data.spec.name,
        "encoder_state_dict": model.encoder.state_dict(),
        "decoder_state_dict": model.decoder.state_dict(),
        "atlas": model.atlas.detach().cpu().float().clone(),
        "atlas_perturbations": list(model.hparams.atlas_perturbations),
        "perturbations": list(model.hparams.perturbations),
        "contexts": list(data.meta["contexts"]),
        "genes": list(data.adata.var_names),
        "split": data.split.to_dict(),
        "data_sha256": data.meta["data_sha256"],
        **(extra or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    config = {k: v for k, v in ckpt.items() if not k.endswith("_state_dict") and k not in ("atlas", "split", "genes")}
    config.update({"n_genes": len(ckpt["genes"]), "n_atlas": len(ckpt["atlas_perturbations"]),
                   "split_mode": data.split.mode, "split_seed": data.split.seed})
    atomic_write_json(path.parent / "config.json", config)
    return path


def read_checkpoint(path: str | Path, fmt: str, what: str, how_to_make: str) -> dict:
    """An scFATE checkpoint read safely (scfate.utils.checkpoint), checking it exists and has format ``fmt``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} checkpoint not found: {path}. {how_to_make}")
    ckpt = safe_torch_load(path, f"scFATE {what.lower()} checkpoint", how_to_make)
    found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
    if found != fmt:
        raise CheckpointError(f"{path} is not an scFATE {what.lower()} checkpoint (format={found!r}, expected "
                              f"{fmt!r}). {how_to_make}")
    return ckpt


def read_backbone_checkpoint(path: str | Path) -> dict:
    return read_checkpoint(path, FORMAT, "Backbone", "Train one with `python train.py stage=backbone`.")


def load_backbone(path: str | Path, genes: list[str] | None = None):
    """Rebuild a `RotationAE` from ``backbone.pt`` (``weights_only=True``); check the gene list if given."""
    from scfate.models.backbone import RotationAE

    ckpt = read_backbone_checkpoint(path)
    if genes is not None:
        check_same_genes(genes, ckpt["genes"], f"Backbone {path}",
                         "Use the dataset (and data.n_hvg) it was trained on, or train a backbone for this dataset.")
    model = RotationAE(perturbations=ckpt["perturbations"], atlas_perturbations=ckpt["atlas_perturbations"],
                       **{k: ckpt[k] for k in HPARAMS})
    model.encoder.load_state_dict(ckpt["encoder_state_dict"])
    model.decoder.load_state_dict(ckpt["decoder_state_dict"])
    with torch.no_grad():
        model.atlas.copy_(ckpt["atlas"])
    return model.eval(), ckpt
