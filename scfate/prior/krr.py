"""Kernel ridge regression (KRR) prior: perturbation features -> the backbone's mean angles (DESIGN §2.4).

For an unseen perturbation the prior predicts the mean rotation ``theta_bar_p``; the flow starts there and learns the
residual. Pure torch: the solve runs in float64 (kernel matrices of near-duplicate perturbations are badly
conditioned), predictions come back as float32. The fitted prior is a dict of tensors and plain values
(:meth:`KRRPrior.to_state`), so it lives inside a checkpoint loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from scfate.errors import UsageError

KERNELS = ("rbf", "tanimoto")


def wrap_to_pi(x: Tensor) -> Tensor:
    """Wrap angles into ``(-pi, pi]`` (any shape)."""
    return math.pi - torch.remainder(math.pi - x, 2 * math.pi)


def unwrap_around_mean(theta: Tensor) -> Tensor:
    """Unwrap angles ``[n, k]`` around their per-dimension circular mean; returns ``[n, k]``.

    The circular mean ``atan2(mean sin, mean cos)`` is used (not the arithmetic one) so that angles clustered near
    ``±pi`` stay together: each value becomes ``mean + wrap(theta - mean)``, within ``pi`` of the mean. Regressing
    these unwrapped values is then a plain Euclidean problem around the mean.
    """
    mu = torch.atan2(torch.sin(theta).mean(0, keepdim=True), torch.cos(theta).mean(0, keepdim=True))
    return mu + wrap_to_pi(theta - mu)


def _rbf(a: Tensor, b: Tensor, gamma: float) -> Tensor:
    """``exp(-gamma |a_i - b_j|^2)`` for ``a [n, d]``, ``b [m, d]`` -> ``[n, m]``."""
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return torch.exp(-gamma * sq.clamp_min(0.0))  # clamp: rounding can make self-distances slightly negative


def _tanimoto(a: Tensor, b: Tensor) -> Tensor:
    """``<a,b> / (|a|^2 + |b|^2 - <a,b>)`` for non-negative ``a [n, d]``, ``b [m, d]`` -> ``[n, m]``; 1 for two zeros."""
    dot = a @ b.T
    den = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - dot
    # for non-negative inputs den >= (|a|^2 + |b|^2) / 2, so it is zero only when both vectors are zero
    return torch.where(den > 0, dot / den.clamp_min(1e-300), torch.ones_like(dot))


class KRRPrior:
    """Kernel ridge regression ``F [n, d] -> Y [n, k]`` with an RBF or Tanimoto kernel.

    ``Y`` should be the atlas mean angles unwrapped around their circular mean (:func:`unwrap_around_mean`), since
    angles are periodic and a mean near ``±pi`` would otherwise be torn apart. Predictions are in the same unwrapped
    coordinates; wrap them with :func:`wrap_to_pi` if needed.

    With ``center=True`` the regression targets are ``Y - mean(Y)`` and the mean training effect is added back, so a
    heavily regularised prior falls back to the mean effect (most of a perturbation's shift is shared) rather than
    to zero. ``standardize=True`` (RBF only) rescales features with the training mean / sd (zero sd -> 1).
    """

    def __init__(
        self,
        kernel: str = "rbf",
        gamma: float | None = 0.01,
        alpha: float = 1.0,
        center: bool = True,
        standardize: bool = False,
    ):
        if kernel not in KERNELS:
            raise UsageError(f"unknown kernel {kernel!r}; choose from {KERNELS}")
        if kernel == "tanimoto" and standardize:
            raise UsageError(
                "standardize=True would make fingerprints negative; the Tanimoto kernel needs them >= 0"
            )
        if alpha <= 0:
            raise UsageError(f"alpha must be > 0, got {alpha}")
        self.kernel, self.alpha = kernel, float(alpha)
        self.gamma = float("nan") if gamma is None else float(gamma)  # None: unused (Tanimoto)
        self.center, self.standardize = bool(center), bool(standardize)
        self.train_x: Tensor | None = None  # [n, d] float64, already standardised
        self.dual_coef: Tensor | None = None  # [n, k] float64
        self.y_mean: Tensor | None = None  # [k] float64 (zeros when center=False)
        self.x_mean: Tensor | None = None  # [d] float64 (zeros when standardize=False)
        self.x_sd: Tensor | None = None  # [d] float64 (ones when standardize=False)

    @property
    def fitted(self) -> bool:
        return self.dual_coef is not None

    def _prep(self, f: Tensor) -> Tensor:
        # the prior's tensors set the device; callers move the float32 prediction where they need it
        f = torch.as_tensor(f).detach().to(device=self.x_mean.device, dtype=torch.float64)
        return (f - self.x_mean) / self.x_sd

    def _k(self, a: Tensor, b: Tensor) -> Tensor:
        return _rbf(a, b, self.gamma) if self.kernel == "rbf" else _tanimoto(a, b)

    def fit(self, F: Tensor, Y: Tensor) -> KRRPrior:
        """Fit on features ``F [n, d]`` and (unwrapped) mean angles ``Y [n, k]``; returns ``self``."""
        f = torch.as_tensor(F).to(torch.float64)
        y = torch.as_tensor(Y).to(torch.float64)
        if f.ndim != 2 or y.ndim != 2 or f.shape[0] != y.shape[0] or f.shape[0] == 0:
            raise ValueError(
                f"need F [n, d] and Y [n, k] with the same n >= 1, got {tuple(f.shape)}, {tuple(y.shape)}"
            )
        if self.standardize:
            self.x_mean = f.mean(0)
            sd = f.std(0, unbiased=False)
            # constant features: leave unscaled rather than divide by zero
            self.x_sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        else:
            self.x_mean = torch.zeros(f.shape[1], dtype=torch.float64)
            self.x_sd = torch.ones(f.shape[1], dtype=torch.float64)
        self.train_x = self._prep(f)
        self.y_mean = y.mean(0) if self.center else torch.zeros(y.shape[1], dtype=torch.float64)
        K = self._k(self.train_x, self.train_x)
        K.diagonal().add_(self.alpha)
        self.dual_coef = torch.linalg.solve(K, y - self.y_mean)  # (K + alpha I) A = Y - mean
        return self

    def predict(self, F_new: Tensor) -> Tensor:
        """Predicted (unwrapped) mean angles ``[m, k]`` float32 for features ``F_new [m, d]``."""
        if not self.fitted:
            raise RuntimeError(
                "KRRPrior.predict called before fit(): no training perturbations (call fit or from_state)"
            )
        f = torch.as_tensor(F_new)
        if f.ndim != 2 or f.shape[1] != self.train_x.shape[1]:
            raise ValueError(f"F_new must be [m, {self.train_x.shape[1]}], got {tuple(f.shape)}")
        x = self._prep(f)
        return (self._k(x, self.train_x) @ self.dual_coef + self.y_mean).to(torch.float32)

    def to_state(self) -> dict[str, Tensor | float | str | bool]:
        """Tensors and plain values only, so the state survives ``torch.load(weights_only=True)`` (no pickle)."""
        if not self.fitted:
            raise RuntimeError("KRRPrior.to_state called before fit()")
        return {
            "kernel": self.kernel,
            "gamma": self.gamma,
            "alpha": self.alpha,
            "center": self.center,
            "standardize": self.standardize,
            "train_x": self.train_x,
            "dual_coef": self.dual_coef,
            "y_mean": self.y_mean,
            "x_mean": self.x_mean,
            "x_sd": self.x_sd,
        }

    @classmethod
    def from_state(cls, state: dict) -> KRRPrior:
        """Rebuild a fitted prior from :meth:`to_state` output."""
        prior = cls(
            kernel=str(state["kernel"]),
            gamma=float(state["gamma"]),
            alpha=float(state["alpha"]),
            center=bool(state["center"]),
            standardize=bool(state["standardize"]),
        )
        for name in ("train_x", "dual_coef", "y_mean", "x_mean", "x_sd"):
            setattr(prior, name, torch.as_tensor(state[name]).to(torch.float64))
        return prior

    @classmethod
    def select(cls, F: Tensor, Y: Tensor, F_val: Tensor, Y_val: Tensor, **kwargs) -> dict:
        """Classmethod alias of :func:`select_krr`."""
        return select_krr(F, Y, F_val, Y_val, **kwargs)


def select_krr(
    F: Tensor,
    Y: Tensor,
    F_val: Tensor,
    Y_val: Tensor,
    kernel: str = "rbf",
    alphas: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0),
    gammas: Sequence[float] | None = None,
    center: bool = True,
    standardize: bool = False,
) -> dict:
    """Choose ``alpha`` (and ``gamma`` for RBF) by validation MSE on held-out perturbations.

    ``F [n, d]``, ``Y [n, k]`` train; ``F_val [m, d]``, ``Y_val [m, k]`` validation. RBF ``gammas`` default to
    ``(0.1, 1, 10) / d``; Tanimoto ignores gamma (reported as None). Returns ``{"alpha", "gamma", "val_mse", "val_mse_mean_only",
    "grid"}``: ``val_mse_mean_only`` is the MSE of predicting the training mean effect, reported next to the prior
    because an under-regularised prior can be worse than it (DESIGN §2.4); ``grid`` maps ``(alpha, gamma)`` to MSE.
    """
    y_val = torch.as_tensor(Y_val).to(torch.float32)
    d = torch.as_tensor(F).shape[1]
    if kernel == "tanimoto":
        gammas = (None,)  # unused by the kernel; one pass per alpha
    elif gammas is None:
        gammas = tuple(s / d for s in (0.1, 1.0, 10.0))
    grid = {}
    for g in gammas:
        for a in alphas:
            prior = KRRPrior(kernel, gamma=g, alpha=a, center=center, standardize=standardize).fit(F, Y)
            mse = float(((prior.predict(F_val) - y_val) ** 2).mean())
            grid[(float(a), g if g is None else float(g))] = mse
    (alpha, gamma), best = min(grid.items(), key=lambda kv: kv[1])
    mean_only = torch.as_tensor(Y).to(torch.float32).mean(0, keepdim=True)
    return {
        "alpha": alpha,
        "gamma": gamma,
        "val_mse": best,
        "val_mse_mean_only": float(((mean_only - y_val) ** 2).mean()),
        "grid": grid,
    }
