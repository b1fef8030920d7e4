"""Reflow and distillation on Lie groups (DESIGN §2.5), pure torch.

A teacher's ODE maps a source sample ``theta_0`` to ``theta_1 = ODE_teacher(theta_0)``. Re-training on these
*deterministic* pairs with the usual flow-matching loss straightens the flow: the student's regression target along a
pair is the constant algebra element ``wrap(theta_1 - theta_0)``, so where pairs do not cross, one Euler step from
``theta_0`` lands on ``theta_1``, and K steps suffice where the teacher needs many.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from scfate.errors import UsageError
from scfate.flow.paths import FlowPath
from scfate.flow.samplers import integrate

Tensor = torch.Tensor


@torch.no_grad()
def teacher_endpoints(path: FlowPath, v_fn: Callable[[Tensor, Tensor], Tensor], theta0: Tensor, n_steps: int,
                      method: str = "euler") -> Tensor:
    """``theta_1 = ODE_teacher(theta0)``: the teacher's sampler from ``theta0: [B, k]`` -> ``[B, k]`` (no gradients)."""
    return integrate(path, v_fn, theta0, n_steps, method=method)


def reflow_loss(path: FlowPath, v_fn: Callable[[Tensor, Tensor], Tensor], theta0: Tensor, theta1: Tensor,
                t: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Flow-matching loss on straight couplings: ``theta_t = theta0 + t wrap(theta1 - theta0) + sigma eps``,
    target ``wrap(theta1 - theta0)`` (the path's own ``sample``). ``v_fn(theta_t, t) -> [B, k]``; returns a scalar."""
    if t is None:
        t = torch.rand(theta0.shape[0], generator=generator, device=theta0.device)
    theta_t, u = path.sample(theta0, theta1, t, generator=generator)
    return ((v_fn(theta_t, t).float() - u) ** 2).mean()


def mixture_weights(weights: Sequence[float] | None, n_teachers: int) -> Tensor:
    """Probabilities of drawing each of ``n_teachers`` (uniform when ``weights`` is None). ``[N]``, sums to 1."""
    if n_teachers < 1:
        raise UsageError("mixed distillation needs at least one teacher")
    if weights is None:
        return torch.full((n_teachers,), 1.0 / n_teachers, dtype=torch.float64)
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    if w.dim() != 1 or len(w) != n_teachers:
        raise UsageError(f"teacher_weights has {len(w)} values for {n_teachers} teachers: give one per teacher "
                         "(in the teachers' sorted order) or none for uniform.")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise UsageError(f"teacher_weights={list(weights)} must be finite, non-negative and not all zero.")
    return w / w.sum()


def draw_teachers(n: int, probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Teacher index of each of ``n`` couplings, i.i.d. from ``probs: [N]`` -> LongTensor ``[n]``."""
    return torch.multinomial(probs.float(), n, replacement=True, generator=generator)


@dataclass
class Couplings:
    """Straight pairs and what they were conditioned on; row i of every field is one coupling.

    ``theta0, theta1: [n, k]`` (source and teacher endpoint), ``z_ctrl: [n, 2k]`` (control latent),
    ``ctrl_index: [n]`` (its row in the prepared data), ``perturbation, context: [n]``, ``members: [n, M]``
    (unit indices, -1 padding), ``log10_dose: [n]``, ``teacher: [n]`` (index into the teacher list).
    """

    theta0: Tensor
    theta1: Tensor
    z_ctrl: Tensor
    ctrl_index: Tensor
    perturbation: Tensor
    context: Tensor
    members: Tensor
    log10_dose: Tensor
    teacher: Tensor

    def __len__(self) -> int:
        return int(self.theta0.shape[0])

    def __getitem__(self, i) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name)[i] for f in fields(self)}

    @classmethod
    def cat(cls, parts: Sequence[Couplings]) -> Couplings:
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def save(self, path: str | Path) -> Path:
        from scfate.utils.io import atomic_path

        with atomic_path(path) as tmp:
            torch.save({f.name: getattr(self, f.name) for f in fields(self)}, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Couplings:
        from scfate.utils.checkpoint import safe_torch_load

        return cls(**safe_torch_load(path, "couplings file", "Generate it again with reflow.py."))
