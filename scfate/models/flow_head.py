"""FlowHead: Lie-algebraic conditional flow matching on the backbone's rotation latent (DESIGN §2.2).

For a training perturbation p: control and perturbed latents of one context are paired by minibatch optimal
transport on the perturbation-invariant part (plane amplitudes); the target angle of a pair is
``theta_1 = wrap(phi(z_p) - phi(z_c))``. The source is ``theta_0 ~ N(mu_prior(p), source_std^2)`` with the KRR prior
(or 0), the path the torus geodesic with ``sigma`` noise, and the target velocity the constant algebra element
``wrap(theta_1 - theta_0)``. The backbone is frozen: the head learns only the velocity field.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from scfate.flow import TorusPath, ot_pairs, torus_features
from scfate.lie import circular_mean
from scfate.models.flow_sampling import (
    Controls,
    Request,
    encode_controls,
    sample_angles_many,
    sample_cells_many,
)
from scfate.models.latent_cache import LatentCache
from scfate.models.step_logging import logs_this_step
from scfate.nn.optim import adamw
from scfate.nn.velocity import VelocityNet


class FlowHead(pl.LightningModule):
    def __init__(self, backbone, unit_features: torch.Tensor, prior_mu: torch.Tensor, n_contexts: int,
                 use_dose: bool = False, d_embed: int = 128, d_hidden: int = 256, n_blocks: int = 4,
                 d_context: int = 16, dropout: float = 0.0, sigma: float = 0.02, source_std: float = 0.1,
                 n_steps: int = 20, sampler: str = "euler", lr: float = 1e-3, weight_decay: float = 1e-5,
                 coupling: str = "ot", target: str = "atlas", decode: str = "residual", anchor: str = "none",
                 prior_offset: torch.Tensor | None = None, spread: float = 1.0,
                 prior_delta: torch.Tensor | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "unit_features", "prior_mu", "prior_offset", "prior_delta"])
        self.backbone = backbone.eval().requires_grad_(False)
        k = backbone.hparams.theta_dim
        self.path = TorusPath(k, sigma)
        self.register_buffer("prior_mu", prior_mu.float())  # [n_perturbations, k]: KRR prior (zeros: none)
        # [n_perturbations, n_contexts, G]: the expression prior's shift that its lifted angle does not decode to
        # (scfate.prior.lift.lift_residual), added to residual-decoded cells; empty: none
        self.register_buffer("prior_offset", torch.zeros(0) if prior_offset is None else prior_offset.float())
        # [n_perturbations, n_contexts, G]: the shift the mean predictor chose (scfate.prior.mean_select); a
        # vocabulary perturbation's predicted cells get exactly this mean shift from their own control cells
        self.register_buffer("prior_delta", torch.zeros(0) if prior_delta is None else prior_delta.float())
        self.v_net = VelocityNet(k, backbone.group.latent_dim, n_contexts, unit_features, d_embed, d_hidden,
                                 n_blocks, d_context, use_dose, dropout)
        self.history: list[dict] = []  # per-epoch validation metrics, exported as flow_metrics.jsonl
        self.latents = LatentCache()  # the frozen backbone's latents by row (not part of the state dict)

    def on_fit_start(self) -> None:
        self.latents = LatentCache()  # rows index this fit's data: another fit may bring another matrix

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout / batch statistics changes
        return self

    def _source(self, perturbation: torch.Tensor | None, n: int, theta_mu: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        mu = (self.prior_mu[perturbation] if theta_mu is None else theta_mu.to(self.prior_mu)).expand(n, -1)
        if generator is None:  # training and evaluation draw from the global RNG their seed_everything set
            return mu + self.hparams.source_std * torch.randn_like(mu)
        # a caller's own generator (predict(seed=...)): reproducible cells without touching the global RNG
        noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=generator.device).to(mu.device)
        return mu + self.hparams.source_std * noise

    def _pairs(self, batch):
        ctx = batch["context"]
        with torch.no_grad():
            z_c = self.latents.encode(self._encode, batch["x_ctrl"], batch.get("rows_ctrl"), ctx)
            z_p = self.latents.encode(self._encode, batch["x_pert"], batch.get("rows_pert"), ctx)
        if self.hparams.coupling == "ot":
            i, j = ot_pairs(torus_features(z_c), torus_features(z_p))
            z_c, z_p = z_c[i], z_p[j]
        return z_c, z_p

    def _encode(self, x, ctx):
        return self.backbone.encode(x, ctx).float()

    def fm_loss(self, batch) -> torch.Tensor:
        z_c, z_p = self._pairs(batch)
        theta1 = self.path.target_angle(z_c, z_p)
        if self.hparams.target == "prior":
            # the pairs' spread around the prior's mean angle: the flow learns the cell-to-cell spread while the
            # mean comes from the (validation-selected) prior, for training and unseen perturbations alike
            theta1 = self.path.group.wrap(self.prior_mu[batch["perturbation"]] + theta1 - circular_mean(theta1))
        elif self.hparams.target == "atlas" and self.backbone.atlas_index[batch["perturbation"]] >= 0:
            # centre the pairs' spread on the backbone's learned angle: the mean rotation is the one the decoder
            # was trained to turn into p's cells, the pairs only add the cell-to-cell spread around it
            rel_mean = circular_mean(theta1)
            theta1 = self.path.group.wrap(self.backbone.theta_bar(batch["perturbation"]) + theta1 - rel_mean)
        theta0 = self._source(batch["perturbation"], len(z_c))
        t = torch.rand(len(z_c), device=z_c.device)
        theta_t, u_t = self.path.sample(theta0, theta1, t)
        e_p = self.v_net.embed(batch["members"].unsqueeze(0), batch["log10_dose"].reshape(1))
        v = self.v_net(theta_t, t, e_p, z_c, batch["context"])
        return ((v.float() - u_t) ** 2).mean()

    @torch.no_grad()
    def encode_controls(self, x_ctrl: torch.Tensor, context: torch.Tensor) -> Controls:
        """Control cells encoded once, for any number of perturbations (``sample_cells``, ``sample_cells_many``):
        their latents and, under ``decode=residual``, ``x - D(z)`` (scfate.models.flow_sampling)."""
        return encode_controls(self, x_ctrl, context)

    @torch.no_grad()
    def sample_angles(self, z_c: torch.Tensor, context: torch.Tensor, perturbation: torch.Tensor | None,
                      members: torch.Tensor, log10_dose: torch.Tensor, n_steps: int | None = None,
                      theta_mu: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Integrate the flow from the source for control latents ``z_c`` [B, 2k] -> final angles [B, k].

        The source mean is the stored prior of ``perturbation``, or ``theta_mu`` for a perturbation outside the
        training vocabulary (the API computes it from the prior). ``generator``: the source noise's RNG (default
        the global one). ``anchor`` and ``spread`` act on the result (scfate.models.flow_sampling).
        """
        request = Request(perturbation, members, log10_dose, theta_mu)
        return sample_angles_many(self, z_c, context, [request], n_steps, generator)[0]

    @torch.no_grad()
    def sample_cells(self, x_ctrl: torch.Tensor | Controls, context: torch.Tensor, perturbation: torch.Tensor | None,
                     members: torch.Tensor, log10_dose: torch.Tensor, n_steps: int | None = None,
                     theta_mu: torch.Tensor | None = None, offset: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """One predicted cell per control cell: integrate the flow from the prior, rotate, decode. [B, G].
        ``x_ctrl``: the cells, or ``Controls`` from ``encode_controls`` (reused, not encoded again).
        ``theta_mu`` / ``offset``: the prior of a perturbation outside the training vocabulary (the API's)."""
        controls = x_ctrl if isinstance(x_ctrl, Controls) else encode_controls(self, x_ctrl, context)
        request = Request(perturbation, members, log10_dose, theta_mu, offset)
        return sample_cells_many(self, controls, [request], n_steps, generator)[0]

    @torch.no_grad()
    def sample_cells_many(self, controls: Controls, requests: list[Request], n_steps: int | None = None,
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """``sample_cells`` for every request on the same encoded controls, in one stacked pass: [P, B, G]."""
        return sample_cells_many(self, controls, requests, n_steps, generator)

    def anchor_to_delta(self, cells: torch.Tensor, x_ctrl: torch.Tensor, perturbation: torch.Tensor | None,
                        context: torch.Tensor) -> torch.Tensor:
        """Cells whose mean is their control cells' mean plus the stored mean-predictor shift (when one is
        stored): decoding a rotation changes the mean differently on other control cells than the prior was
        lifted on, so the cells keep their own deviations and take the chosen mean exactly."""
        if perturbation is None or not self.prior_delta.numel():
            return cells
        delta = self.prior_delta[perturbation, context].to(cells.dtype)
        return cells - cells.mean(0) + x_ctrl.to(cells.dtype).mean(0) + delta

    def offset_of(self, perturbation: torch.Tensor | None, context: torch.Tensor) -> torch.Tensor | None:
        """The stored prior offset of a vocabulary perturbation in a context [G], or None (no offset stored)."""
        if perturbation is None or not self.prior_offset.numel():
            return None
        return self.prior_offset[perturbation, context]

    def decode_rotated(self, theta: torch.Tensor, z_c: torch.Tensor, x_ctrl: torch.Tensor, context: torch.Tensor,
                       offset: torch.Tensor | None = None, base: torch.Tensor | None = None):
        """Cells of control latents ``z_c`` rotated by ``theta`` [B, k]. ``decode=residual`` adds the decoded change
        to the measured control cell, ``x_c + D(R z_c) - D(z_c)``, so the autoencoder's reconstruction error (a
        bias shared by every prediction) cancels and theta = 0 returns the controls exactly, plus the prior's
        ``offset`` [G] where one is given; ``direct`` is D(R z_c). ``base``: ``x_c - D(z_c)`` already computed
        (``Controls.base``), so the controls are not decoded again."""
        out = self.backbone.decode(self.backbone.group.act(theta, z_c), context)
        if self.hparams.decode == "residual":
            if base is None:
                base = x_ctrl.to(out.dtype) - self.backbone.decode(z_c, context)
            out = out + base.to(out.dtype)
            if offset is not None:
                out = out + offset.to(out.dtype)
        return out

    def training_step(self, batch, batch_idx):
        loss = self.fm_loss(batch)
        if logs_this_step(self, batch_idx):  # only where the loggers write (scfate.models.step_logging)
            self.log("train/fm_loss", loss, prog_bar=True, batch_size=len(batch["x_ctrl"]))
        return loss

    def validation_step(self, batch, batch_idx):
        b = len(batch["x_ctrl"])
        # the checkpoint monitor; the same draws in every epoch (EpochSeed reseeds each validation batch), so
        # epochs differ by the weights alone
        self.log("val/fm_loss", self.fm_loss(batch), batch_size=b)
        if self.prior_delta.numel():
            # the stored mean-predictor shift sets the cells' mean (anchor_to_delta): their delta cosine is the
            # prior's in every epoch, and sampling 20 steps per batch to log a constant is most of the epoch's time
            return
        x_hat = self.sample_cells(batch["x_ctrl"], batch["context"], batch["perturbation"], batch["members"],
                                  batch["log10_dose"])
        ctrl_mean = batch["x_ctrl"].mean(0)
        delta_hat, delta = x_hat.mean(0) - ctrl_mean, batch["x_pert"].mean(0) - ctrl_mean
        cos = torch.nn.functional.cosine_similarity(delta_hat.float(), delta.float(), dim=0)
        self.log("val/delta_cos", cos, prog_bar=True, batch_size=b)

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
            epoch = int(self.current_epoch)  # an epoch replayed after a resume replaces its earlier record
            self.history = [r for r in self.history if r["epoch"] != epoch] + [{"epoch": epoch, **metrics}]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the epochs before an interruption: a resumed run's flow_metrics.jsonl keeps its whole history
        checkpoint["scfate_history"] = [dict(r) for r in self.history]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = [dict(r) for r in checkpoint.get("scfate_history", [])]

    def configure_optimizers(self):
        return adamw(self.v_net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
