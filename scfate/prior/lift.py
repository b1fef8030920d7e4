"""Lift an expression-space prior onto the rotation algebra (DESIGN §2.4, ``prior.space=expression``).

The atlas angles of a rotation autoencoder are identified only up to what the decoder can see, so angle-space KRR
can find no feature signal even where expression-space ridge finds plenty (the built-in simulator: a val MSE no
better than the mean effect). The expression prior regresses the pseudobulk shift ``delta_p [G]`` on the features
instead, then pulls it back through the frozen decoder: ``theta_p = argmin_theta sum_c |mean_i D(R(theta) z_ci, c) -
(ctrl_mean_c + delta_p)|^2``, a k-dimensional smooth problem per perturbation, solved jointly for all of them.
Pure torch; the backbone enters only through ``act`` and ``decode``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def decoded_means(act: Callable, decode: Callable, theta: Tensor, z_ctrl: Tensor, context: Tensor) -> Tensor:
    """Mean decoded expression of the control latents ``z_ctrl [n, 2k]`` rotated by each ``theta [P, k]``: [P, G]."""
    p, n = theta.shape[0], z_ctrl.shape[0]
    z = act(theta.repeat_interleave(n, 0), z_ctrl.repeat(p, 1))
    return decode(z, context).reshape(p, n, -1).mean(1)


def lift_to_angles(act: Callable, decode: Callable, targets: Tensor, z_ctrl: Sequence[Tensor],
                   contexts: Sequence[Tensor], theta_init: Tensor, steps: int = 300, lr: float = 0.05,
                   chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Angles whose decoded mean matches ``targets [C, P, G]`` (one row per context ``contexts[c]`` with its control
    latents ``z_ctrl[c]``), from ``theta_init [P, k]`` by Adam. Returns (theta [P, k], final MSE per perturbation [P]).

    Perturbations are independent problems, so they are solved in chunks of ``chunk`` to bound memory.
    """
    out, errs = [], []
    for start in range(0, theta_init.shape[0], chunk):
        theta = theta_init[start:start + chunk].detach().clone().float().requires_grad_(True)
        tgt = targets[:, start:start + chunk].float()
        opt = torch.optim.Adam([theta], lr=lr)
        with torch.enable_grad():  # an optimisation, also when called under no_grad (a predictor's predict)
            for _ in range(steps):
                opt.zero_grad()
                err = sum(((decoded_means(act, decode, theta, z, c) - tgt[i]) ** 2).mean(-1)
                          for i, (z, c) in enumerate(zip(z_ctrl, contexts)))
                err.sum().backward()
                opt.step()
        with torch.no_grad():
            err = sum(((decoded_means(act, decode, theta, z, c) - tgt[i]) ** 2).mean(-1)
                      for i, (z, c) in enumerate(zip(z_ctrl, contexts)))
        out.append(theta.detach())
        errs.append(err / len(z_ctrl))
    return torch.cat(out), torch.cat(errs)


@torch.no_grad()
def lift_residual(act: Callable, decode: Callable, theta: Tensor, delta: Tensor, z_ctrl: Tensor, context: Tensor,
                  chunk: int = 32) -> Tensor:
    """What the lifted angles ``theta [P, k]`` leave out of the target shifts ``delta [P, G]`` on the control latents
    ``z_ctrl`` of one context: ``delta - (mean D(R(theta) z) - mean D(z))`` [P, G]. A decoder of a few dozen
    planes cannot express every shift, and on CRISPR screens the part it misses is most of what the additive
    baseline gets right; adding it back (``prior.lift_residual``) makes the prior alone predict ``delta`` exactly
    while the flow keeps every cell's own rotation response."""
    base = decoded_means(act, decode, torch.zeros(1, theta.shape[1]), z_ctrl, context)
    return torch.cat([delta[i:i + chunk] - (decoded_means(act, decode, theta[i:i + chunk], z_ctrl, context) - base)
                      for i in range(0, theta.shape[0], chunk)])


def lift_shifts(act: Callable, decode: Callable, deltas: Sequence[Tensor], z_ctrl: Sequence[Tensor],
                contexts: Sequence[Tensor], theta_init: Tensor, steps: int, lr: float) -> tuple[Tensor, Tensor]:
    """Angles ``[P, k]`` whose decoded change on each context's control latents matches the expression shifts
    ``deltas[c] [P, G]``: the target of a residual-decoded prediction is ``mean D(z) + delta`` (what it adds to its
    control cells), lifted by ``lift_to_angles``. Training (scfate.prior.expression) and ``scfate.load(...).predict``
    both lift through this one function, so a prediction's prior is the one the model was trained with."""
    with torch.no_grad():
        zero = torch.zeros(1, theta_init.shape[1])
        targets = [d + decoded_means(act, decode, zero, z, c)[0] for d, z, c in zip(deltas, z_ctrl, contexts)]
    return lift_to_angles(act, decode, torch.stack(targets), z_ctrl, contexts, theta_init, steps=steps, lr=lr)
