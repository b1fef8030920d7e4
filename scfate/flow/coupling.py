"""Minibatch optimal-transport couplings of control and perturbed cells (DESIGN §2.2).

Pairs are chosen on the perturbation-invariant part of the latent (the plane amplitudes on the torus), so the
coupling matches "the same kind of cell" before and after the perturbation and the flow only has to learn the
rotation. Exact solvers (Hungarian / network simplex): minibatches are small, and exactness keeps tests sharp.
"""

from __future__ import annotations

import numpy as np
import ot
import torch
from scipy.optimize import linear_sum_assignment

from scfate.lie import float32_ops

Tensor = torch.Tensor


def sq_cost(x0: Tensor, x1: Tensor) -> np.ndarray:
    """Squared Euclidean cost matrix ``[n, m]`` in float64 on CPU (the solvers are CPU/numpy)."""
    a, b = x0.detach().to("cpu", torch.float64), x1.detach().to("cpu", torch.float64)
    return torch.cdist(a, b).pow(2).numpy()


def ot_pairs(x0: Tensor, x1: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """OT pairing of ``x0: [n, d]`` with ``x1: [m, d]`` -> ``(i, j)``, LongTensors of length ``max(n, m)``.

    ``x0[i[p]]`` is coupled to ``x1[j[p]]``. ``n == m``: the optimal assignment (``i = arange(n)``, ``j`` a
    permutation). ``n != m``: the exact plan ``ot.emd`` with uniform marginals; every row of the larger batch is
    used once and its partner is drawn from the plan's conditional (row of the plan, renormalised), so every pair
    lies in the plan's support and the smaller batch is hit in proportion to its marginal. The draws use
    ``generator`` (a CPU ``torch.Generator``), hence are deterministic given its seed. Results live on
    ``x0.device``.
    """
    if x0.dim() != 2 or x1.dim() != 2 or x0.shape[1] != x1.shape[1]:
        raise ValueError(f"ot_pairs needs [n, d] and [m, d], got {tuple(x0.shape)} and {tuple(x1.shape)}")
    n, m = x0.shape[0], x1.shape[0]
    if n == 0 or m == 0:
        raise ValueError("ot_pairs needs non-empty batches")
    cost = sq_cost(x0, x1)
    if n == m:
        rows, cols = linear_sum_assignment(cost)  # rows come back sorted: rows == arange(n)
        i, j = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
    else:
        plan = ot.emd(np.full(n, 1.0 / n), np.full(m, 1.0 / m), cost)
        plan = torch.as_tensor(np.clip(plan, 0.0, None))
        if n > m:  # each control row draws a partner from its row of the plan
            i, j = torch.arange(n), torch.multinomial(plan, 1, generator=generator).squeeze(1)
        else:  # each perturbed row draws a partner from its column of the plan
            i, j = torch.multinomial(plan.T, 1, generator=generator).squeeze(1), torch.arange(m)
    return i.to(x0.device), j.to(x0.device)


@float32_ops
def torus_features(z: Tensor) -> Tensor:
    """Latent ``z: [B, 2k]`` (interleaved planes) -> plane amplitudes ``r: [B, k]``.

    A torus rotation only shifts phases, so ``r`` is the perturbation-invariant part to couple on.
    """
    if z.shape[-1] % 2:
        raise ValueError(f"torus latents have an even size 2k, got {z.shape[-1]}")
    p = z.unflatten(-1, (z.shape[-1] // 2, 2))
    return torch.hypot(p[..., 0], p[..., 1])
