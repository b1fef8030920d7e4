"""Lie groups acting on the autoencoder latent (DESIGN §2.1-2.2): the torus (the model) and SO(n) (ablation).

Pure torch, no Lightning. Every group operation runs in float32 even under autocast (:func:`float32_ops`).
"""

from scfate.errors import UsageError
from scfate.lie.base import LieGroup, autocast_disabled, float32_ops
from scfate.lie.so import SO, geodesic_on_sphere, plane_rotation
from scfate.lie.torus import Torus, circular_mean, wrap_angle

GROUPS = ("torus", "so")


def build_group(name: str, latent_dim: int, **kwargs) -> LieGroup:
    """The group acting on latents of size ``latent_dim``: ``"torus"`` (``latent_dim = 2k``) or ``"so"``
    (``SO(latent_dim, rank=..., method=...)``)."""
    if name == "torus":
        if latent_dim % 2:
            raise UsageError(f"the torus needs an even latent_dim (k planes of 2), got {latent_dim}")
        return Torus(latent_dim // 2, **kwargs)
    if name == "so":
        return SO(latent_dim, **kwargs)
    raise UsageError(f"unknown group {name!r}; valid: {', '.join(GROUPS)}")


__all__ = ["GROUPS", "SO", "LieGroup", "Torus", "autocast_disabled", "build_group", "circular_mean", "float32_ops",
           "geodesic_on_sphere", "plane_rotation", "wrap_angle"]
