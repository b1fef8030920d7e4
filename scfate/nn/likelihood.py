"""Reconstruction likelihoods: MSE on log-normalised values, negative binomial on raw counts."""

from __future__ import annotations

import torch


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over cells of the per-cell sum of squared errors divided by the number of genes."""
    return ((pred - target) ** 2).mean()


def nb_nll(counts: torch.Tensor, logits: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """Negative-binomial negative log-likelihood, mean over cells and genes.

    counts [B, G]; mean mu = library x softmax(logits) with the observed library size; inverse dispersion
    theta = exp(log_theta) [G]. NB(k; mu, theta) = Gamma(k+theta) / (Gamma(theta) k!) (theta/(theta+mu))^theta
    (mu/(theta+mu))^k. Computed in float32 for stability under mixed precision.
    """
    counts, logits = counts.float(), logits.float()
    library = counts.sum(-1, keepdim=True).clamp_min(1.0)
    log_mu = torch.log(library) + torch.log_softmax(logits, dim=-1)
    theta = log_theta.float().exp()
    log_theta_mu = torch.logaddexp(log_theta.float(), log_mu)  # log(theta + mu)
    ll = (torch.lgamma(counts + theta) - torch.lgamma(theta) - torch.lgamma(counts + 1)
          + theta * (log_theta.float() - log_theta_mu) + counts * (log_mu - log_theta_mu))
    return -ll.mean()
