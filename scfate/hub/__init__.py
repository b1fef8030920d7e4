"""Checkpoints on the Hugging Face Hub: resolve local or hf:// references, the card's artifact tree (collect),
MANIFEST.json (manifest / verify) and publishing (push / pull). CLI: ``python -m scfate.hub --help``."""

from scfate.hub.resolve import parse_hf, resolve_backbone_ref, resolve_checkpoint

__all__ = ["parse_hf", "resolve_backbone_ref", "resolve_checkpoint"]
