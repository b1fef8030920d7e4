"""Encoder and decoder MLPs conditioned on the context (cell line / cell type) through a learned embedding."""

from __future__ import annotations

import torch
from torch import nn

from scfate.errors import UsageError


class MLP(nn.Sequential):
    """Linear -> LayerNorm -> SiLU (-> Dropout) blocks, then a final Linear. [B, d_in] -> [B, d_out]."""

    def __init__(self, d_in: int, hidden: list[int], d_out: int, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(d_in, h), nn.LayerNorm(h), nn.SiLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d_in = h
        layers.append(nn.Linear(d_in, d_out))
        super().__init__(*layers)


class Encoder(nn.Module):
    """log1p expression x [B, G] and context index c [B] -> latent z [B, latent_dim]."""

    def __init__(self, n_genes: int, latent_dim: int, n_contexts: int, hidden: list[int], d_context: int = 16,
                 dropout: float = 0.0):
        super().__init__()
        self.context = nn.Embedding(n_contexts, d_context)
        self.net = MLP(n_genes + d_context, hidden, latent_dim, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, self.context(context)], dim=-1))


class Decoder(nn.Module):
    """Latent z [B, latent_dim] and context [B] -> expression.

    ``likelihood="mse"``: predicted log1p expression [B, G]. ``likelihood="nb"``: logits of the expression
    proportions [B, G] (the NB mean is library size x softmax(logits)) and a learned per-gene inverse dispersion.
    """

    def __init__(self, n_genes: int, latent_dim: int, n_contexts: int, hidden: list[int], d_context: int = 16,
                 likelihood: str = "mse", dropout: float = 0.0):
        super().__init__()
        if likelihood not in ("mse", "nb"):
            raise UsageError(f"likelihood={likelihood!r}; valid: ['mse', 'nb'].")
        self.likelihood = likelihood
        self.context = nn.Embedding(n_contexts, d_context)
        self.net = MLP(latent_dim + d_context, hidden, n_genes, dropout)
        if likelihood == "nb":
            self.log_theta = nn.Parameter(torch.zeros(n_genes))

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.context(context)], dim=-1))

    def expression(self, out: torch.Tensor, library: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output -> predicted log1p-normalised expression (what evaluation compares)."""
        if self.likelihood == "mse":
            return out
        # normalize_total(1e4) + log1p of the NB mean, matching the data layer's normalisation
        return torch.log1p(1e4 * torch.softmax(out.float(), dim=-1))
