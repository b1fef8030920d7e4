"""The group interface shared by the torus (the model) and SO(n) (the ablation), and the float32 guard.

Shapes: ``B`` is any number of leading batch dimensions (all methods broadcast over them). ``d = algebra_dim``,
``m = latent_dim``. Latents are ``z: [B, m]``.
"""

from __future__ import annotations

import abc
import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _cast_floats(obj, dtype: torch.dtype):
    """Cast every floating tensor inside ``obj`` (a tensor, or a tuple/list/dict of them) to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, tuple):
        items = [_cast_floats(o, dtype) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)  # keep NamedTuples
    if isinstance(obj, list):
        return [_cast_floats(o, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _cast_floats(v, dtype) for k, v in obj.items()}
    return obj


def _upcast(obj):
    """float16/bfloat16 tensors -> float32; float32/float64 untouched (gradcheck runs in float64)."""
    if isinstance(obj, torch.Tensor) and obj.dtype in _LOW_PRECISION:
        return obj.float()
    return obj


def float32_ops(fn: F) -> F:
    """Decorator: run a group operation in (at least) float32, even inside ``torch.autocast``.

    Angle wrapping, atan2, cos/sin of large angles and ``matrix_exp`` lose the group structure in bf16/fp16
    (a bf16 angle near pi has a resolution of ~0.01 rad; a bf16 rotation is orthogonal only to ~1e-2), so
    DESIGN §2.1 keeps them in float32. Inside the wrapped call autocast is disabled for every device the
    tensor arguments live on, half-precision tensor arguments are cast to float32, and floating outputs are
    cast back to the promoted dtype of the floating tensor inputs (``torch.promote_types``, the dtype eager
    torch would give without autocast): bf16 in -> bf16 out, bf16 latent with float32 angles -> float32.
    float64 inputs stay float64.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        floats = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()]
        if not floats:
            return fn(*args, **kwargs)
        out_dtype = functools.reduce(torch.promote_types, (t.dtype for t in floats))
        with autocast_disabled(*{t.device.type for t in floats}):
            out = fn(*[_upcast(a) for a in args], **{k: _upcast(v) for k, v in kwargs.items()})
        return _cast_floats(out, out_dtype)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def autocast_disabled(*device_types: str):
    """Context: autocast off for ``device_types`` (default: cpu, plus cuda when available)."""
    types = set(device_types) or {"cpu", *(("cuda",) if torch.cuda.is_available() else ())}
    with contextlib.ExitStack() as stack:
        for dev in sorted(types):
            stack.enter_context(torch.autocast(device_type=dev, enabled=False))
        yield


class LieGroup(abc.ABC):
    """A matrix Lie group acting linearly on latents ``z: [B, latent_dim]``; plain class, no parameters.

    Algebra elements ``xi: [B, algebra_dim]`` are the coordinates a network predicts. Group elements use each
    group's cheapest faithful representation (see the subclass). ``act`` accepts either.
    """

    algebra_dim: int
    latent_dim: int

    @abc.abstractmethod
    def exp(self, xi: torch.Tensor) -> torch.Tensor:
        """Algebra ``[B, algebra_dim]`` -> group element."""

    @abc.abstractmethod
    def log(self, g: torch.Tensor) -> torch.Tensor:
        """Group element -> algebra element (principal branch, where defined)."""

    @abc.abstractmethod
    def act(self, xi_or_g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Rotate latents: ``[B, algebra_dim]`` or a group element, with ``z: [B, latent_dim]`` -> ``[B, latent_dim]``."""

    @abc.abstractmethod
    def compose(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Group product ``a * b`` (``b`` acts first), in the subclass's composition representation."""

    @abc.abstractmethod
    def wrap(self, xi: torch.Tensor) -> torch.Tensor:
        """Canonical representative of an algebra element modulo the kernel of ``exp``."""

    @abc.abstractmethod
    def geodesic(self, xi0: torch.Tensor, xi1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Point at time ``t`` on the exponential-curve (shortest) path from ``exp(xi0)`` to ``exp(xi1)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(algebra_dim={self.algebra_dim}, latent_dim={self.latent_dim})"


def as_time(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcastable time: a float, ``[]``, ``[B]`` or ``[B, 1]`` -> a tensor that multiplies ``like: [B, d]``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.unsqueeze(-1) if t.dim() == like.dim() - 1 and t.dim() > 0 else t
