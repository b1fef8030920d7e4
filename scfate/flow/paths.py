"""Probability paths on Lie groups for conditional flow matching (DESIGN §2.2).

Both paths follow exponential curves ``x_t = x_0 exp(t u)`` with a constant *left-trivialised* velocity ``u`` in the
Lie algebra (the body-frame velocity ``x_t^{-1} dx_t/dt``), so training is simulation-free: the regression target
does not depend on t. The same ``sample`` / ``step`` API serves the torus (the model) and SO(n) (the ablation);
samplers only ever call ``step``. All group math runs in float32 even under autocast (:func:`float32_ops`).
"""

from __future__ import annotations

import abc

import torch

from scfate.errors import UsageError
from scfate.lie import SO, Torus, float32_ops, wrap_angle
from scfate.lie.base import as_time

Tensor = torch.Tensor


class FlowPath(abc.ABC):
    """A conditional path between two group elements plus the group's exponential update."""

    sigma: float

    @abc.abstractmethod
    def sample(self, x0: Tensor, x1: Tensor, t: Tensor | float, noise: Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Point ``x_t`` on the (noised) path and the target algebra velocity ``u``."""

    @abc.abstractmethod
    def step(self, x: Tensor, v: Tensor, h: Tensor | float) -> Tensor:
        """Lie–Euler update ``x exp(h v)`` (the group's exponential map, left-trivialised)."""


class TorusPath(FlowPath):
    """Geodesics of ``T^k``: state = angles ``theta: [B, k]``, algebra = ``R^k``.

    The torus is abelian, so left and right trivialisations coincide and ``exp`` is plain addition mod 2 pi.
    """

    def __init__(self, k: int, sigma: float = 0.0):
        if int(k) < 1 or sigma < 0:
            raise UsageError(f"TorusPath needs k >= 1 and sigma >= 0, got k={k!r}, sigma={sigma!r}")
        self.k, self.sigma = int(k), float(sigma)
        self.group = Torus(self.k)

    @float32_ops
    def sample(self, theta0: Tensor, theta1: Tensor, t: Tensor | float, noise: Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``theta0, theta1: [B, k]``, ``t``: float, ``[B]`` or ``[B, 1]`` in [0, 1].

        Returns ``theta_t = wrap(theta0 + t u + sigma eps): [B, k]`` and ``u = wrap(theta1 - theta0): [B, k]``.
        ``eps ~ N(0, I)`` unless ``noise: [B, k]`` is given. ``u`` is the shortest way round each circle, so
        the path never takes the long way across the +-pi seam; wrapping ``theta_t`` does not move the point.
        """
        u = wrap_angle(theta1 - theta0)
        theta_t = theta0 + as_time(t, theta0) * u
        if self.sigma > 0:
            if noise is None:
                noise = torch.randn(theta0.shape, generator=generator, dtype=theta0.dtype,
                                    device=theta0.device)
            theta_t = theta_t + self.sigma * noise
        return wrap_angle(theta_t), u

    @float32_ops
    def step(self, theta: Tensor, v: Tensor, h: Tensor | float) -> Tensor:
        """``theta, v: [B, k]``, ``h``: float or ``[B]`` -> ``wrap(theta + h v): [B, k]``."""
        return wrap_angle(theta + as_time(h, theta) * v)

    def target_angle(self, z_ctrl: Tensor, z_pert: Tensor) -> Tensor:
        """Pair target ``theta_1 = wrap(phi(z_pert) - phi(z_ctrl)): [B, k]`` from latents ``[B, 2k]``."""
        return self.group.relative_angle(z_ctrl, z_pert)

    def __repr__(self) -> str:
        return f"TorusPath(k={self.k}, sigma={self.sigma})"


def _time_matrix(t: Tensor | float, like: Tensor) -> Tensor:
    """float, ``[]``, ``[B]`` or ``[B, 1]`` -> a tensor broadcasting against ``like: [B, n, n]``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(*like.shape[:-2], 1, 1) if t.dim() else t


class SOPath(FlowPath):
    """Geodesics of ``SO(n)``: state = rotations ``R: [B, n, n]``, algebra = skew matrices ``[B, n, n]``.

    Left trivialisation: a velocity ``V`` is expressed in the body frame, ``dR/dt = R V``, so the geodesic from
    ``R0`` to ``R1`` is ``R0 exp(t U)`` with the constant ``U = log(R0^T R1)``, and an Euler step is ``R exp(h V)``.
    Needs the relative rotation ``R0^T R1`` to have all angles < pi (the principal log, :meth:`SO.log`).
    """

    def __init__(self, n: int, sigma: float = 0.0):
        if int(n) < 2 or sigma < 0:
            raise UsageError(f"SOPath needs n >= 2 and sigma >= 0, got n={n!r}, sigma={sigma!r}")
        self.n, self.sigma = int(n), float(sigma)
        self.group = SO(self.n, rank=1)  # only its dense log is used; the rank is irrelevant here

    @float32_ops
    def sample(self, r0: Tensor, r1: Tensor, t: Tensor | float, noise: Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``r0, r1: [B, n, n]``, ``t``: float, ``[B]`` or ``[B, 1]`` -> ``(R_t, U)``, both ``[B, n, n]``.

        ``U = log(R0^T R1)`` (skew), ``R_t = R0 exp(t U) exp(sigma E)``. ``E`` is a skew matrix with N(0, 1)
        off-diagonal entries, or ``noise: [B, n, n]`` (skew-symmetrised); noising on the right keeps R_t on
        the group.
        """
        u = self.group.log(r0.transpose(-1, -2) @ r1)
        u = (u - u.transpose(-1, -2)) / 2  # exactly skew: the target must lie in the algebra
        r_t = r0 @ torch.linalg.matrix_exp(_time_matrix(t, u) * u)
        if self.sigma > 0:
            if noise is None:
                g = torch.randn(r0.shape, generator=generator, dtype=r0.dtype, device=r0.device)
                noise = (g - g.transpose(-1, -2)) / 2 ** 0.5  # off-diagonal entries ~ N(0, 1)
            else:
                noise = (noise - noise.transpose(-1, -2)) / 2
            r_t = r_t @ torch.linalg.matrix_exp(self.sigma * noise)
        return r_t, u

    @float32_ops
    def step(self, r: Tensor, v: Tensor, h: Tensor | float) -> Tensor:
        """``r: [B, n, n]``, skew ``v: [B, n, n]``, ``h``: float or ``[B]`` -> ``R exp(h V): [B, n, n]``."""
        return r @ torch.linalg.matrix_exp(_time_matrix(h, v) * v)

    def __repr__(self) -> str:
        return f"SOPath(n={self.n}, sigma={self.sigma})"
