"""ODE solvers on Lie groups for the flow head (DESIGN §2.2): Lie–Euler and Heun over ``FlowPath.step``.

Both only use the path's exponential update ``x exp(h v)``, so iterates never leave the group (wrapped angles
on the torus, orthogonal matrices on SO(n)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scfate.errors import UsageError
from scfate.flow.paths import FlowPath

Tensor = torch.Tensor
METHODS = ("euler", "heun")


def integrate(path: FlowPath, v_fn: Callable[[Tensor, Tensor], Tensor], x0: Tensor, n_steps: int,
              method: str = "euler", t0: float = 0.0, t1: float = 1.0,
              return_trajectory: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Integrate ``dx/dt = x v(x, t)`` (left-trivialised) from ``t0`` to ``t1`` in ``n_steps`` equal steps.

    ``x0``: ``[B, ...]`` group state (``[B, k]`` angles or ``[B, n, n]`` rotations); ``v_fn(x, t)`` gets ``t: [B]``
    and returns an algebra element shaped like ``path.step`` expects. ``euler``: ``x <- step(x, v(x, t), h)``.
    ``heun`` (2nd order): predictor ``x' = step(x, v1, h)``, then ``x <- step(x, (v1 + v2) / 2, h)`` with
    ``v2 = v(x', t + h)``; exact for velocities linear in t. Returns ``x(t1)``, or with ``return_trajectory``
    also the stacked states ``[n_steps + 1, B, ...]`` (including ``x0``). Gradients flow unless the caller
    wraps this in ``torch.no_grad``.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise UsageError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    h = (t1 - t0) / n_steps
    b = x0.shape[0]
    # times from linspace, not repeated t += h, so the last step ends exactly at t1
    times = torch.linspace(t0, t1, n_steps + 1, dtype=torch.float32, device=x0.device)
    x, traj = x0, [x0]
    for s in range(n_steps):
        t = times[s].expand(b)
        v1 = v_fn(x, t)
        if method == "euler":
            x = path.step(x, v1, h)
        else:
            x_pred = path.step(x, v1, h)
            v2 = v_fn(x_pred, times[s + 1].expand(b))
            x = path.step(x, (v1 + v2) / 2, h)
        if return_trajectory:
            traj.append(x)
    return (x, torch.stack(traj)) if return_trajectory else x
