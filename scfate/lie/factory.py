"""Groups as the models configure them: ``theta_dim`` k gives a latent of 2k for either group."""

from __future__ import annotations

import torch

from scfate.lie import LieGroup, Torus, build_group


def make_group(name: str, theta_dim: int, so_rank: int = 4, so_method: str = "matrix_exp") -> LieGroup:
    """``torus``: T^k in SO(2k), algebra = k angles. ``so``: SO(2k) with rank-``so_rank`` generators."""
    if name == "so":
        return build_group("so", 2 * theta_dim, rank=so_rank, method=so_method)
    return build_group(name, 2 * theta_dim)


def amplitudes(group: LieGroup, z: torch.Tensor) -> torch.Tensor:
    """What a rotation must leave unchanged: the k plane radii on the torus [B, k], the norm in SO(n) [B, 1]."""
    if isinstance(group, Torus):
        return group.polar(z)[0]
    return z.float().norm(dim=-1, keepdim=True)
