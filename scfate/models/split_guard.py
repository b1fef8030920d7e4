"""A backbone is part of the model: a flow head must never sit on a backbone that was trained on the perturbations
the head is validated or tested on. Its encoder and decoder have seen their cells and its rotation atlas (which
the angle prior regresses on) holds their learned angles, so every zero-shot score would be contaminated."""

from __future__ import annotations

import logging

from scfate.data.splits import has_context_units, shared_entries
from scfate.errors import DataError

log = logging.getLogger("scfate")
SETS = ("train", "val", "test")


def seen_by_backbone(bb_ckpt: dict) -> set[str]:
    """The split entries whose cells trained the backbone: the training set of its split (perturbations, or context
    units when it was trained for a cross-context fold); its atlas (those perturbations) for older checkpoints."""
    train = (bb_ckpt.get("split") or {}).get("train") or []
    # the atlas names whole perturbations: a cross-context backbone's atlas holds the perturbations it saw in
    # *some* context, so there only its split's context units say which cells it saw
    return set(train) if has_context_units(train) else set(bb_ckpt["atlas_perturbations"])


def backbone_leak(bb_ckpt: dict, split: dict) -> dict[str, list[str]]:
    """{"val": [...], "test": [...]}: the run's held-out entries whose cells the backbone was trained on."""
    seen = seen_by_backbone(bb_ckpt)
    return {name: shared_entries(set(split.get(name) or []), seen) for name in ("val", "test")}


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
            f"on the backbone's split (split_seed={bb_split.get('seed')} with its settings, or "
            "data.split.mode=file data.split.file=<the split.json beside the backbone>).")
    if not same_split(bb_ckpt.get("split") or {}, split):
        log.warning("%s was trained on another split than this run's (no held-out perturbation of this run among its "
                    "%d training perturbations): scored zero-shot, but its atlas covers fewer perturbations than "
                    "this run trains on", where, len(seen_by_backbone(bb_ckpt)))


def check_split(ckpt_split: dict, data_split: dict, ckpt_path) -> None:
    """Raise naming the first difference between a checkpoint's split and the prepared data's."""
    for key in ("mode", "seed", "params", "train", "val", "test"):
        a, b = ckpt_split.get(key), data_split.get(key)
        if a == b:
            continue
        if key in ("train", "val", "test"):
            only_c, only_d = sorted(set(a or []) - set(b or [])), sorted(set(b or []) - set(a or []))
            detail = f"only in the checkpoint's {key}: {only_c[:10]}, only in the data's: {only_d[:10]}"
        else:
            detail = f"checkpoint {a!r}, data {b!r}"
        fix = f"run with split_seed={a}" if key == "seed" else "prepare the data with the checkpoint's split settings"
        raise DataError(f"{ckpt_path} was trained on another split than the prepared data ({key} differs: {detail}). "
                        f"Evaluate on its own split: {fix}.")
