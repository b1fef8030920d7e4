"""Kernel ridge regression prior from perturbation features to mean angles (DESIGN §2.4)."""

from scfate.prior.krr import KERNELS, KRRPrior, select_krr, unwrap_around_mean, wrap_to_pi

__all__ = ["KERNELS", "KRRPrior", "select_krr", "unwrap_around_mean", "wrap_to_pi"]
