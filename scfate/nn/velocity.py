"""Velocity network of the flow head and the permutation-invariant perturbation encoder (DESIGN §2.2-2.3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scfate.nn.autoencoder import MLP


class SetEncoder(nn.Module):
    """Perturbation embedding from its members' feature vectors: rho(sum_m phi(f_m)) (+ log10 dose for drugs).

    Sum pooling makes ``A+B`` == ``B+A`` and gives an unseen pair of unseen genes a representation.
    members [B, M] (unit indices, -1 = padding) -> e [B, d_embed].
    """

    def __init__(self, unit_features: torch.Tensor, d_embed: int, d_hidden: int, use_dose: bool):
        super().__init__()
        self.register_buffer("unit_features", unit_features.float())
        d_feat = unit_features.shape[1]
        self.phi = MLP(d_feat, [d_hidden], d_hidden)
        self.rho = MLP(d_hidden + int(use_dose), [d_hidden], d_embed)
        self.use_dose = use_dose

    def forward(self, members: torch.Tensor, log10_dose: torch.Tensor) -> torch.Tensor:
        mask = (members >= 0).unsqueeze(-1)
        feats = self.unit_features[members.clamp_min(0)]
        pooled = (self.phi(feats) * mask).sum(-2)
        if self.use_dose:
            pooled = torch.cat([pooled, log10_dose.reshape(-1, 1).to(pooled.dtype)], -1)
        return self.rho(pooled)


def time_embedding(t: torch.Tensor, dim: int = 32) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1]: [B] -> [B, dim]."""
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), dim // 2, device=t.device))
    angles = t.reshape(-1, 1).float() * freqs * math.pi
    return torch.cat([angles.sin(), angles.cos()], -1)


class ResidualBlock(nn.Module):
    def __init__(self, d: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.SiLU(), nn.Linear(d, d), nn.Dropout(dropout))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


class VelocityNet(nn.Module):
    """v(theta_t, t, e_p, z_c, c) -> algebra coefficients [B, k].

    Angles enter as (cos, sin) so the network is periodic in theta, as a field on the torus must be.
    """

    def __init__(self, theta_dim: int, latent_dim: int, n_contexts: int, unit_features: torch.Tensor,
                 d_embed: int = 128, d_hidden: int = 256, n_blocks: int = 4, d_context: int = 16,
                 use_dose: bool = False, dropout: float = 0.0):
        super().__init__()
        self.embed = SetEncoder(unit_features, d_embed, d_hidden, use_dose)
        self.context = nn.Embedding(n_contexts, d_context)
        # the input layer's column blocks, in forward's concatenation order: (cos, sin), time, e_p, z_c, context
        self._widths = [2 * theta_dim, 32, d_embed, latent_dim, d_context]
        self.inp = nn.Linear(sum(self._widths), d_hidden)
        self.blocks = nn.Sequential(*[ResidualBlock(d_hidden, dropout) for _ in range(n_blocks)])
        self.out = nn.Sequential(nn.LayerNorm(d_hidden), nn.SiLU(), nn.Linear(d_hidden, theta_dim))

    def forward(self, theta: torch.Tensor, t: torch.Tensor, e_p: torch.Tensor, z_c: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        b = theta.shape[0]
        h = torch.cat([theta.cos(), theta.sin(), time_embedding(t.expand(b) if t.dim() == 0 else t),
                       e_p.expand(b, -1), z_c, self.context(context.expand(b))], -1)
        return self.out(self.blocks(self.inp(h)))

    def condition(self, e_p: torch.Tensor, z_c: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The input layer's part that no ODE step changes, for :meth:`step_velocity`: ``e_p [P, d_embed]`` (one row
        per perturbation), ``z_c [B, latent_dim]`` (shared by every perturbation) or ``[P, B, latent_dim]`` (each
        its own cells) and their context (0-dim or [B]) -> ``[P * B, d_hidden]``, row ``p * B + i`` for
        perturbation p and cell i. Sampling calls the network n_steps times with the same conditioning, and these
        columns are most of the input layer: computed once, not at every step."""
        _, _, w_e, w_z, w_c = self.inp.weight.split(self._widths, dim=1)
        ctx = self.context(context.expand(z_c.shape[-2]) if context.dim() == 0 else context)
        cells = F.linear(z_c, w_z) + F.linear(ctx, w_c, self.inp.bias)  # [B, H] or [P, B, H]
        cells = cells.unsqueeze(0) if z_c.dim() == 2 else cells
        return (cells + F.linear(e_p, w_e).unsqueeze(1)).flatten(0, 1)

    def step_velocity(self, theta: torch.Tensor, t: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """``forward`` with the step-invariant input precomputed by :meth:`condition`: ``theta [P * B, k]``, ``t`` 0-dim
        or ``[P * B]`` -> ``[P * B, k]`` (equal to forward up to float rounding)."""
        w_a, w_t, *_ = self.inp.weight.split(self._widths, dim=1)
        # the samplers pass one time expanded over the rows (stride 0): its embedding is one row, broadcast
        one_time = t.dim() == 0 or (t.dim() == 1 and t.stride(0) == 0)
        t_emb = time_embedding(t.reshape(-1)[:1] if one_time else t)
        h = F.linear(torch.cat([theta.cos(), theta.sin()], -1), w_a) + F.linear(t_emb, w_t) + static
        return self.out(self.blocks(h))
