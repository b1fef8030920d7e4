"""A backbone is part of the model: a flow head must never sit on a backbone that was trained on the perturbations
the head is validated or tested on. Its encoder and decoder have seen their cells and its rotation atlas (which
the angle prior regresses on) holds their learned angles, so every zero-shot score would be contaminated."""

from __future__ import annotations

import logging

from scfate.data.errors import DataError

log = logging.getLogger("scfate")
SETS = ("train", "val", "test")


def seen_by_backbone(bb_ckpt: dict) -> set[str]:
    """The perturbations whose cells trained the backbone (its atlas: the training set of its split)."""
    return set(bb_ckpt["atlas_perturbations"])


def backbone_leak(bb_ckpt: dict, split: dict) -> dict[str, list[str]]:
    """{"val": [...], "test": [...]}: the run's held-out perturbations that the backbone was trained on."""
    seen = seen_by_backbone(bb_ckpt)
    return {name: sorted(seen & set(split.get(name) or [])) for name in ("val", "test")}


def same_split(a: dict, b: dict) -> bool:
    return all(sorted(a.get(k) or []) == sorted(b.get(k) or []) for k in SETS)


def check_backbone_split(bb_ckpt: dict, split: dict, where: str) -> None:
    """Raise if the backbone saw any of the run's validation or test perturbations; warn if it was trained on
    another (leak-free) split, since the prior then regresses on fewer training perturbations than the run has."""
    leak = backbone_leak(bb_ckpt, split)
    if any(leak.values()):
        bb_split = bb_ckpt.get("split") or {}
        raise DataError(
            f"{where} was trained on {sum(map(len, leak.values()))} perturbation(s) that this run holds out "
            f"(test: {leak['test'][:10]}, val: {leak['val'][:10]}): its encoder, decoder and rotation atlas have "
            f"seen their cells, so zero-shot scores would be contaminated. The backbone's split is "
            f"{bb_split.get('mode')!r} seed {bb_split.get('seed')!r}; this run's is {split.get('mode')!r} seed "
            f"{split.get('seed')!r}. Use backbone=auto (reuses or trains the backbone of this run's split), or run "
            f"on the backbone's split (data.split.seed={bb_split.get('seed')} with its settings, or "
            "data.split.mode=file data.split.file=<the split.json beside the backbone>).")
    if not same_split(bb_ckpt.get("split") or {}, split):
        log.warning("%s was trained on another split than this run's (no held-out perturbation of this run among its "
                    "%d training perturbations): scored zero-shot, but its atlas covers fewer perturbations than "
                    "this run trains on", where, len(seen_by_backbone(bb_ckpt)))
