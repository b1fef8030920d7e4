"""The maximal torus T^k of SO(2k): independent rotations of k planes (DESIGN §2.1), all in closed form.

Latent layout: ``z: [B, 2k]`` is read as k planes with *interleaved* coordinates, plane ``j`` being
``(z[..., 2j], z[..., 2j+1])`` = ``(Re z_j, Im z_j)`` with ``z_j = r_j exp(i phi_j)``. Equivalently
``z.view(B, k, 2)``. Algebra: angles ``theta: [B, k]``. Group element: ``exp(theta) = (cos, sin): [B, k, 2]``
(the unit complex numbers; ``matrix`` gives the block-diagonal ``[B, 2k, 2k]`` form for tests).

Angle convention: canonical angles lie in ``(-pi, pi]``; ``wrap(pi) = wrap(-pi) = pi``.
"""

from __future__ import annotations

import math

import torch

from scfate.errors import UsageError
from scfate.lie.base import LieGroup, as_time, float32_ops


@float32_ops
def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    """Any angles ``[...]`` -> the same angles mod 2 pi in ``(-pi, pi]`` (pi and -pi both map to pi).

    ``theta - 2 pi round(theta / 2 pi)`` is exact for ``|theta| < pi`` (small angles keep full precision, unlike
    ``pi - remainder(pi - theta, 2 pi)``), and not ``atan2(sin, cos)``: in float32 ``sin(float32(pi)) < 0`` and
    atan2 would send pi to -pi. Round-half-to-even and rounding can land on ``-pi`` or just above ``pi``; the
    two ``where`` fold those back. Gradient is 1 almost everywhere.
    """
    pi = math.pi
    out = theta - 2 * pi * torch.round(theta / (2 * pi))
    out = torch.where(out <= -pi, out + 2 * pi, out)
    return torch.where(out > pi, out - 2 * pi, out)


@float32_ops
def circular_mean(theta: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Mean direction of angles along ``dim``: ``atan2(mean sin, mean cos)`` (the arithmetic mean of angles near
    +-pi would point the wrong way)."""
    return torch.atan2(theta.sin().mean(dim), theta.cos().mean(dim))


class Torus(LieGroup):
    """``Torus(k)``: ``algebra_dim = k``, ``latent_dim = 2k``. Abelian, so ``R(a) R(b) = R(a + b)`` exactly."""

    def __init__(self, k: int):
        if int(k) < 1:
            raise UsageError(f"Torus needs k >= 1 planes, got k={k!r}")
        self.k = int(k)
        self.algebra_dim = self.k
        self.latent_dim = 2 * self.k

    # --- group structure -------------------------------------------------------------------------------
    @float32_ops
    def exp(self, theta: torch.Tensor) -> torch.Tensor:
        """``[B, k]`` -> ``(cos, sin): [B, k, 2]``."""
        return torch.stack((torch.cos(theta), torch.sin(theta)), dim=-1)

    @float32_ops
    def log(self, g: torch.Tensor) -> torch.Tensor:
        """``(cos, sin): [B, k, 2]`` -> angles ``[B, k]`` in ``(-pi, pi]`` (g need not be exactly unit)."""
        return wrap_angle(torch.atan2(g[..., 1], g[..., 0]))

    @float32_ops
    def matrix(self, theta: torch.Tensor) -> torch.Tensor:
        """``[B, k]`` -> block-diagonal rotation ``[B, 2k, 2k]`` with blocks ``[[c, -s], [s, c]]``."""
        c, s = torch.cos(theta), torch.sin(theta)
        blocks = torch.stack((torch.stack((c, -s), -1), torch.stack((s, c), -1)), -2)  # [B, k, 2, 2]
        out = theta.new_zeros(*theta.shape[:-1], self.latent_dim, self.latent_dim)
        for j in range(self.k):  # k small; a loop keeps the layout obvious (tests only)
            out[..., 2 * j:2 * j + 2, 2 * j:2 * j + 2] = blocks[..., j, :, :]
        return out

    @float32_ops
    def act(self, theta_or_g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Rotate each plane: angles ``[B, k]`` or ``(cos, sin) [B, k, 2]`` (one more dim than z), ``z: [B, 2k]``.

        Returns ``[B, 2k]``; plane amplitudes ``r_j`` are preserved, phases shift by ``theta_j``.
        """
        g = theta_or_g if theta_or_g.dim() == z.dim() + 1 else self.exp(theta_or_g)
        c, s = g[..., 0], g[..., 1]
        p = z.unflatten(-1, (self.k, 2))
        x, y = p[..., 0], p[..., 1]
        return torch.stack((c * x - s * y, s * x + c * y), dim=-1).flatten(-2)

    def compose(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Angles ``[B, k]`` x ``[B, k]`` -> ``wrap(a + b)``: exact, because the torus is abelian."""
        return wrap_angle(a + b)

    def wrap(self, theta: torch.Tensor) -> torch.Tensor:
        """``[B, k]`` -> ``(-pi, pi]^k``; see :func:`wrap_angle`."""
        return wrap_angle(theta)

    @float32_ops
    def geodesic(self, theta0: torch.Tensor, theta1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Shortest path ``theta0 + t * wrap(theta1 - theta0)`` (DESIGN §2.2); ``t``: float, ``[B]`` or ``[B, 1]``.

        Not wrapped, so the path is smooth in t and its velocity is the constant ``wrap(theta1 - theta0)``;
        at t = 1 it equals ``theta1`` mod 2 pi. Wrap the result where canonical angles are needed.
        """
        return theta0 + as_time(t, theta0) * wrap_angle(theta1 - theta0)

    # --- polar coordinates of latents ------------------------------------------------------------------
    @float32_ops
    def polar(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z: [B, 2k]`` -> ``(r, phi)``, each ``[B, k]``, ``phi`` in ``(-pi, pi]``.

        At ``r = 0`` the phase is arbitrary and the gradients of ``r`` and ``phi`` are undefined.
        """
        p = z.unflatten(-1, (self.k, 2))
        return torch.hypot(p[..., 0], p[..., 1]), wrap_angle(torch.atan2(p[..., 1], p[..., 0]))

    @float32_ops
    def from_polar(self, r: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """``(r, phi)``, each ``[B, k]`` -> ``z: [B, 2k]`` (interleaved layout)."""
        return torch.stack((r * torch.cos(phi), r * torch.sin(phi)), dim=-1).flatten(-2)

    @float32_ops
    def relative_angle(self, z_from: torch.Tensor, z_to: torch.Tensor) -> torch.Tensor:
        """The rotation taking each plane of ``z_from`` to that of ``z_to``: ``wrap(phi_to - phi_from)``, ``[B, k]``.

        This is the flow target ``theta_1`` of DESIGN §2.2. Computed as ``arg(conj(z_from) * z_to)`` (one
        atan2 of the complex product) rather than a difference of two atan2, so no seam is crossed inside.
        """
        a, b = z_from.unflatten(-1, (self.k, 2)), z_to.unflatten(-1, (self.k, 2))
        dot = a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]
        cross = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
        return wrap_angle(torch.atan2(cross, dot))

    def __repr__(self) -> str:
        return f"Torus(k={self.k})"
