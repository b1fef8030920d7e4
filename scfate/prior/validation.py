"""What the prior is selected and lifted on: validation perturbations' measured angles and shifts, and held-out
control latents. Inputs are a frozen backbone and a set-up ``PerturbationDataModule`` (its held-out control cells
never reach training)."""

from __future__ import annotations

import numpy as np
import torch

from scfate.data.rows import mean_rows
from scfate.lie import circular_mean


@torch.no_grad()
def empirical_angles(backbone, dm, groups, n: int = 128) -> dict[str, torch.Tensor]:
    """Mean rotation of a perturbation measured in the latent (circular mean of pair angles), for validation."""
    out: dict[str, list] = {}
    rng = np.random.default_rng(0)
    for g in groups:
        ctx = torch.tensor(dm.contexts.index(g.context))
        ctrl = dm.heldout_controls[g.context]
        xc = torch.from_numpy(dm.reader(rng.choice(ctrl, n, replace=len(ctrl) < n)))
        xp = torch.from_numpy(dm.reader(rng.choice(g.cells, n, replace=len(g.cells) < n)))
        rel = backbone.group.relative_angle(backbone.encode(xc, ctx), backbone.encode(xp, ctx))
        out.setdefault(g.perturbation, []).append(circular_mean(rel))
    return {p: circular_mean(torch.stack(v)) for p, v in out.items()}


@torch.no_grad()
def validation_cos(backbone, dm, prior_mu: torch.Tensor, decode: str, n: int = 128,
                   offset: torch.Tensor | None = None) -> float:
    """Mean cosine between the validation conditions' true shift and the shift of held-out controls rotated by the
    prior's angle (the prior alone as a predictor), ``decode`` as in FlowHead.decode_rotated."""
    rng, cos, ctrl_means = np.random.default_rng(0), [], {}
    for g in dm.groups["val"]:
        ctx = torch.tensor(dm.contexts.index(g.context))
        ctrl = dm.heldout_controls[g.context]
        x = torch.from_numpy(dm.reader(np.sort(rng.choice(ctrl, min(n, len(ctrl)), replace=False))))
        z = backbone.encode(x, ctx).float()
        theta = prior_mu[dm.perturbations.index(g.perturbation)].expand(len(z), -1)
        out = backbone.decode(backbone.group.act(theta, z), ctx)
        if decode == "residual":
            out = x + out - backbone.decode(z, ctx)
            if offset is not None:  # the expression prior's shift its angle does not decode to (lift_residual)
                out = out + offset[dm.perturbations.index(g.perturbation), int(ctx)]
        if g.context not in ctrl_means:  # the held-out controls' own mean (the cells rotated above)
            ctrl_means[g.context] = torch.as_tensor(mean_rows(dm.reader, ctrl), dtype=torch.float32)
        ctrl_mean = ctrl_means[g.context]
        true = torch.as_tensor(dm.pseudobulk_mean(g), dtype=torch.float32) - ctrl_mean
        cos.append(float(torch.nn.functional.cosine_similarity(out.mean(0) - ctrl_mean, true, dim=0)))
    return float(np.mean(cos))


def control_latents(backbone, dm, n: int = 64, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``n`` held-out control latents per context (the lift's reference cells), and the context indices."""
    rng = np.random.default_rng(seed)
    z, ctxs = [], []
    for i, c in enumerate(dm.contexts):
        ctrl = dm.heldout_controls[c]
        ctx = torch.tensor(i)
        with torch.no_grad():
            z.append(backbone.encode(torch.from_numpy(dm.reader(np.sort(rng.choice(ctrl, min(n, len(ctrl)),
                                                                                   replace=False)))), ctx).float())
        ctxs.append(ctx)
    return z, ctxs


def perturbation_deltas(dm, split: str) -> dict[str, dict[str, torch.Tensor]]:
    """Pseudobulk shift of each perturbation of ``split`` vs its context's controls, averaged over its conditions
    (doses): {context: {perturbation: [G]}}."""
    ctrl = {c: dm.control_mean(c) for c in dm.contexts}  # all of them, kept and held out
    out: dict[str, dict[str, list]] = {c: {} for c in dm.contexts}
    for g in dm.groups[split]:
        out[g.context].setdefault(g.perturbation, []).append(dm.pseudobulk_mean(g) - ctrl[g.context])
    return {c: {p: torch.as_tensor(np.mean(v, 0), dtype=torch.float32) for p, v in d.items()} for c, d in out.items()}
