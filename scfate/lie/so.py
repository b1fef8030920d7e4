"""SO(n) with low-rank skew-symmetric generators (the ablation of DESIGN §2.1), plus plane rotations on spheres.

Algebra coordinates ``xi: [B, 2 n r]`` hold ``U, V: [B, n, r]`` (``xi = cat(U.flatten(), V.flatten())``) and give
the generator ``A = U V^T - V U^T`` (rank <= 2r, skew). Group elements are rotation matrices ``R: [B, n, n]``.

Low rank makes both maps cheap. With ``W = [U V]: [B, n, 2r]``, ``M = [[0, I], [-I, 0]]`` (so ``A = W M W^T``) and
``G = W^T W``, every map is ``R = I + W C W^T`` with a 2r x 2r core ``C``:
* matrix_exp: ``C = phi(M G) M``, ``phi(X) = (e^X - I) X^{-1}``, read off the top-right block of
  ``exp([[X, I], [0, 0]])`` (a 4r x 4r ``matrix_exp``; no inverse, fine at singular X);
* Cayley ``(I - A/2)^{-1} (I + A/2)``: ``C = (I - M G / 2)^{-1} M`` (push-through identity; always solvable,
  the nonzero eigenvalues of ``A`` being imaginary).
``act`` then costs O(B n r + B r^3) and never forms an n x n matrix; ``exp`` costs O(B n^2 r). ``exp_dense`` is
the textbook O(B n^3) route, kept as the reference the tests compare against.
"""

from __future__ import annotations

import torch

from scfate.errors import UsageError
from scfate.lie.base import LieGroup, as_time, float32_ops

METHODS = ("matrix_exp", "cayley")


def _plane(u: torch.Tensor, v: torch.Tensor, eps: float = 1e-6):
    """Unit ``u``, unit ``w`` orthogonal to u in span(u, v) and the angle ``a`` from u to v; all batched.

    For ``v`` (anti)parallel to ``u`` the plane is undetermined: ``w`` is then the unit projection of the
    coordinate axis least aligned with ``u`` (any choice gives the identity for a = 0; for a = pi it fixes
    which half-turn is returned).
    """
    u = u / u.norm(dim=-1, keepdim=True)
    v = v / v.norm(dim=-1, keepdim=True)
    c = (u * v).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    w = v - c * u
    w = w - (w * u).sum(-1, keepdim=True) * u  # re-project: near u ~ -v the cancellation leaves a u-component
    s = w.norm(dim=-1, keepdim=True)
    axis = torch.nn.functional.one_hot(u.abs().argmin(-1), u.shape[-1]).to(u.dtype)
    w_fb = axis - (axis * u).sum(-1, keepdim=True) * u
    w_fb = w_fb / w_fb.norm(dim=-1, keepdim=True)
    w = torch.where(s > eps, w / s.clamp_min(eps), w_fb)
    return u, w, torch.atan2(s, c)  # atan2 is accurate near 0 and pi where arccos(c) is not


@float32_ops
def plane_rotation(u: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Minimal rotation ``[B, n, n]`` in the plane of ``u, v: [B, n]`` taking u/|u| to v/|v| (fraction ``t`` of it).

    Rodrigues in the plane: ``R = I + sin(ta) (w u^T - u w^T) + (cos(ta) - 1) (u u^T + w w^T)``; identity on the
    orthogonal complement. ``u ~ v`` gives the identity; ``u ~ -v`` a half-turn in a documented plane (``_plane``).
    """
    u, w, a = _plane(u, v)
    ta = as_time(t, a) * a
    uu, ww = u.unsqueeze(-1), w.unsqueeze(-1)
    eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
    outer = lambda x, y: x @ y.transpose(-1, -2)  # noqa: E731
    return (eye + torch.sin(ta).unsqueeze(-1) * (outer(ww, uu) - outer(uu, ww))
            + (torch.cos(ta) - 1).unsqueeze(-1) * (outer(uu, uu) + outer(ww, ww)))


@float32_ops
def geodesic_on_sphere(u: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Great-circle point ``[B, n]`` from u/|u| (t=0) to v/|v| (t=1): ``plane_rotation(u, v, t) @ u``, in O(n)."""
    u, w, a = _plane(u, v)
    ta = as_time(t, a) * a
    return torch.cos(ta) * u + torch.sin(ta) * w


class SO(LieGroup):
    """``SO(n, rank=r, method="matrix_exp"|"cayley")``: ``algebra_dim = 2 n r``, ``latent_dim = n``.

    Cayley is a rotation too but not the exponential map (``cay(A) = exp(A) + O(|A|^3)``); ``log`` always
    inverts ``matrix_exp``. ``wrap`` is the identity: these coordinates have no periodicity to remove.
    """

    def __init__(self, n: int, rank: int = 1, method: str = "matrix_exp"):
        if method not in METHODS:
            raise UsageError(f"unknown SO method {method!r}; valid: {', '.join(METHODS)}")
        if int(n) < 2 or int(rank) < 1:
            raise UsageError(f"SO needs n >= 2 and rank >= 1, got n={n!r}, rank={rank!r}")
        self.n, self.rank, self.method = int(n), int(rank), method
        self.algebra_dim = 2 * self.n * self.rank  # never equals n, which lets act/geodesic tell xi from R
        self.latent_dim = self.n

    def _factors(self, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``xi: [B, 2nr]`` -> ``W: [B, n, 2r]``, ``M: [2r, 2r]``."""
        nr = self.n * self.rank
        u = xi[..., :nr].unflatten(-1, (self.n, self.rank))
        v = xi[..., nr:].unflatten(-1, (self.n, self.rank))
        eye, zero = torch.eye(self.rank, dtype=xi.dtype, device=xi.device), xi.new_zeros(self.rank, self.rank)
        m = torch.cat((torch.cat((zero, eye), 1), torch.cat((-eye, zero), 1)), 0)
        return torch.cat((u, v), -1), m

    def _is_matrix(self, x: torch.Tensor) -> bool:
        return x.shape[-1] == self.n and x.dim() >= 2 and x.shape[-2] == self.n

    @float32_ops
    def generator(self, xi: torch.Tensor) -> torch.Tensor:
        """``[B, 2nr]`` -> skew-symmetric ``A = U V^T - V U^T: [B, n, n]``."""
        nr = self.n * self.rank
        b = xi[..., :nr].unflatten(-1, (self.n, self.rank)) @ xi[..., nr:].unflatten(-1, (self.n, self.rank)).transpose(-1, -2)
        return b - b.transpose(-1, -2)  # exactly skew, unlike W M W^T in floating point

    def _core(self, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``xi: [B, 2nr]`` -> ``W: [B, n, 2r]`` and the core ``C: [B, 2r, 2r]`` with ``exp(xi) = I + W C W^T``."""
        w, m = self._factors(xi)
        mg = m @ (w.transpose(-1, -2) @ w)
        p = mg.shape[-1]
        eye = torch.eye(p, dtype=mg.dtype, device=mg.device)
        if self.method == "matrix_exp":
            block = mg.new_zeros(*mg.shape[:-2], 2 * p, 2 * p)  # [[MG, I], [0, 0]]
            block[..., :p, :p] = mg
            block[..., :p, p:] = eye
            return w, torch.linalg.matrix_exp(block)[..., :p, p:] @ m
        return w, torch.linalg.solve(eye - mg / 2, m.expand_as(mg))

    @float32_ops
    def exp(self, xi: torch.Tensor) -> torch.Tensor:
        """``[B, 2nr]`` -> rotation ``I + W C W^T: [B, n, n]`` (matrix_exp or Cayley per ``method``; module doc)."""
        w, core = self._core(xi)
        return torch.eye(self.n, dtype=w.dtype, device=w.device) + w @ core @ w.transpose(-1, -2)

    @float32_ops
    def exp_dense(self, xi: torch.Tensor) -> torch.Tensor:
        """Reference ``[B, 2nr] -> [B, n, n]``: ``matrix_exp(A)`` or ``solve(I - A/2, I + A/2)`` on the full A.

        O(B n^3). Beware: in this project's CPU torch 2.13 build, batched ``linalg.solve``/``lu_factor`` on
        n >~ 200 with more than one thread returns garbage pivots (solve raises), so prefer ``exp``.
        """
        a = self.generator(xi)
        if self.method == "matrix_exp":
            return torch.linalg.matrix_exp(a)
        eye = torch.eye(self.n, dtype=a.dtype, device=a.device)
        return torch.linalg.solve(eye - a / 2, eye + a / 2)

    @float32_ops
    def log(self, r: torch.Tensor) -> torch.Tensor:
        """Principal log of a rotation ``[B, n, n]`` -> skew generator ``[B, n, n]``, for rotation angles < pi.

        With ``S = (R + R^T)/2`` and ``K = (R - R^T)/2`` (they commute; on a plane rotated by a, S = cos a,
        K = sin a J), ``log R = g(S) K`` with ``g(cos a) = a / sin a``, evaluated by ``eigh`` of the symmetric S,
        which is stable for the repeated eigenvalue 1 of low-rank rotations. Returns the generator, not ``xi``:
        the factors U, V of a generator are not unique. Accuracy degrades as an angle approaches pi (where
        the log is not unique); gradients through ``eigh`` are undefined at repeated eigenvalues.
        """
        s, k = (r + r.transpose(-1, -2)) / 2, (r - r.transpose(-1, -2)) / 2
        lam, q = torch.linalg.eigh(s)
        c = lam.clamp(-1.0, 1.0)
        u = 1 - c
        small = u < 1e-3
        c_safe = torch.where(small, torch.zeros_like(c), c)  # keeps the unused branch finite
        exact = torch.arccos(c_safe) / torch.sqrt(1 - c_safe ** 2)
        g = torch.where(small, 1 + u / 3 + 2 * u ** 2 / 15, exact)  # series of a/sin a in u = 1 - cos a
        return (q * g.unsqueeze(-2)) @ q.transpose(-1, -2) @ k

    @float32_ops
    def act(self, xi_or_r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``xi: [B, 2nr]`` or ``R: [B, n, n]``, with ``z: [B, n]`` -> ``[B, n]``; from xi as ``z + W (C (W^T z))``."""
        if self._is_matrix(xi_or_r):
            return (xi_or_r @ z.unsqueeze(-1)).squeeze(-1)
        w, core = self._core(xi_or_r)
        return z + (w @ (core @ (w.transpose(-1, -2) @ z.unsqueeze(-1)))).squeeze(-1)

    def _as_matrix(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._is_matrix(x) else self.exp(x)

    @float32_ops
    def compose(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``R1 @ R2`` (``b`` acts first); each argument a rotation ``[B, n, n]`` or coefficients ``[B, 2nr]``."""
        return self._as_matrix(a) @ self._as_matrix(b)

    def wrap(self, xi: torch.Tensor) -> torch.Tensor:
        """Identity (no periodic coordinates in the low-rank chart)."""
        return xi

    @float32_ops
    def geodesic(self, xi0: torch.Tensor, xi1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Rotation ``R0 exp(t log(R0^T R1)): [B, n, n]`` on the geodesic from ``R0`` to ``R1``.

        Inputs are coefficients ``[B, 2nr]`` or rotations ``[B, n, n]``; ``t``: float, ``[B]`` or ``[B, 1]``.
        Needs the relative rotation's angles < pi (see ``log``). The low-rank coefficients are not closed under
        this path, so it returns the group element, not ``xi``.
        """
        r0, r1 = self._as_matrix(xi0), self._as_matrix(xi1)
        delta = self.log(r0.transpose(-1, -2) @ r1)
        tt = torch.as_tensor(t, dtype=delta.dtype, device=delta.device)
        tt = tt.reshape(*delta.shape[:-2], 1, 1) if tt.dim() else tt  # [B] or [B, 1] -> [B, 1, 1]
        return r0 @ torch.linalg.matrix_exp(tt * delta)

    plane_rotation = staticmethod(plane_rotation)  # group-free helpers, reachable from the group too
    geodesic_on_sphere = staticmethod(geodesic_on_sphere)

    def __repr__(self) -> str:
        return f"SO(n={self.n}, rank={self.rank}, method={self.method!r})"
