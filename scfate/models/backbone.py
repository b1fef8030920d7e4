"""RotationAE: the rotation autoencoder backbone (DESIGN §2.1).

An encoder maps cells to a latent read as k planes; every training perturbation p owns a learned mean angle
``theta_bar_p`` (the rotation atlas). Training asks that (1) the autoencoder reconstructs cells, (2) control
latents rotated by ``theta_bar_p`` decode to cells distributed like p's cells in the same context (mean matching plus
an energy distance on the minibatch), and (3) plane amplitudes stay perturbation-invariant, so a perturbation is a
pure rotation. Group operations run in float32 even under bf16 autocast (scfate.lie).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torchmetrics

from scfate.lie.factory import amplitudes, make_group
from scfate.models.step_logging import logs_this_step
from scfate.nn import Decoder, Encoder, mse_loss, nb_nll
from scfate.nn.optim import adamw

DEFAULT_WEIGHTS = {"recon": 1.0, "transport_mean": 1.0, "transport_dist": 0.5, "amplitude": 0.1}


def energy_distance(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Energy distance with Euclidean distances (a metric on distributions, unlike its squared-distance form,
    which only compares means): 2 E|x-y| - E|x-x'| - E|y-y'|. x [n, d], y [m, d]."""
    def mean_dist(a, b):
        return (torch.cdist(a.float(), b.float()).pow(2) + eps).sqrt().mean()

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


class RotationAE(pl.LightningModule):
    def __init__(self, n_genes: int, n_contexts: int, perturbations: list[str], atlas_perturbations: list[str],
                 theta_dim: int = 32, group: str = "torus", enc_hidden: list[int] = (256, 128),
                 dec_hidden: list[int] = (128, 256), d_context: int = 16, dropout: float = 0.0,
                 likelihood: str = "mse", lr: float = 1e-3, atlas_lr: float = 3e-2, weight_decay: float = 1e-5,
                 loss_weights: dict | None = None, so_rank: int = 4, so_method: str = "matrix_exp"):
        super().__init__()
        self.save_hyperparameters()
        self.weights = {**DEFAULT_WEIGHTS, **(loss_weights or {})}
        self.group = make_group(group, theta_dim, so_rank=so_rank, so_method=so_method)
        latent = self.group.latent_dim
        self.encoder = Encoder(n_genes, latent, n_contexts, list(enc_hidden), d_context, dropout)
        self.decoder = Decoder(n_genes, latent, n_contexts, list(dec_hidden), d_context, likelihood, dropout)
        # small random start: SO generators U V^T - V U^T have zero gradient at exactly zero
        self.atlas = torch.nn.Parameter(1e-2 * torch.randn(len(atlas_perturbations), self.group.algebra_dim))
        row = {p: i for i, p in enumerate(atlas_perturbations)}
        self.register_buffer("atlas_index", torch.tensor([row.get(p, -1) for p in perturbations]), persistent=False)
        self.val_r2_ctrl = torchmetrics.R2Score(multioutput="variance_weighted")
        self.val_r2_pert = torchmetrics.R2Score(multioutput="variance_weighted")

    # --- pieces reused by the oracle predictor and the flow head -------------------------------------------
    def encode(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, context.expand(x.shape[0]))

    def decode(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Latent -> predicted log1p expression."""
        return self.decoder.expression(self.decoder(z, context.expand(z.shape[0])))

    def theta_bar(self, perturbation: torch.Tensor) -> torch.Tensor:
        row = self.atlas_index[perturbation]
        if (row < 0).any():
            raise KeyError("perturbation has no atlas entry: only training perturbations own a learned angle")
        return self.atlas[row]

    def transport(self, x_ctrl: torch.Tensor, context: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Rotate encoded control cells by theta (algebra element [d] or [B, d]) and decode."""
        z = self.encode(x_ctrl, context)
        return self.decode(self.group.act(theta.expand(z.shape[0], -1), z), context)

    # --- training ------------------------------------------------------------------------------------------
    def _losses(self, batch) -> dict[str, torch.Tensor]:
        ctx = batch["context"]
        z_c, z_p = self.encode(batch["x_ctrl"], ctx), self.encode(batch["x_pert"], ctx)
        out_c, out_p = self.decoder(z_c, ctx.expand(len(z_c))), self.decoder(z_p, ctx.expand(len(z_p)))
        if self.hparams.likelihood == "nb":
            recon = nb_nll(batch["c_ctrl"], out_c, self.decoder.log_theta) + nb_nll(
                batch["c_pert"], out_p, self.decoder.log_theta)
        else:
            recon = mse_loss(out_c, batch["x_ctrl"]) + mse_loss(out_p, batch["x_pert"])
        theta = self.theta_bar(batch["perturbation"]).expand(len(z_c), -1)
        x_rot = self.decode(self.group.act(theta, z_c), ctx)
        x_p = batch["x_pert"]
        r_c, r_p = amplitudes(self.group, z_c), amplitudes(self.group, z_p)
        return {
            "recon": recon,
            "transport_mean": ((x_rot.mean(0) - x_p.mean(0)) ** 2).mean(),
            "transport_dist": energy_distance(x_rot, x_p) / x_p.shape[1] ** 0.5,
            "amplitude": ((r_c.mean(0) - r_p.mean(0)) ** 2).mean() + ((r_c.std(0) - r_p.std(0)) ** 2).mean(),
            "_x_rot": x_rot, "_out_c": out_c, "_out_p": out_p,
        }

    def _total(self, losses) -> torch.Tensor:
        return sum(self.weights[k] * losses[k] for k in self.weights)

    def training_step(self, batch, batch_idx):
        losses = self._losses(batch)
        loss = self._total(losses)
        b = len(batch["x_ctrl"])
        if logs_this_step(self, batch_idx):  # only where the loggers write (scfate.models.step_logging)
            self.log_dict({f"train/{k}": v for k, v in losses.items() if not k.startswith("_")}, batch_size=b)
            self.log("train/loss", loss, prog_bar=True, batch_size=b)
        return loss

    def validation_step(self, batch, batch_idx):
        losses = self._losses(batch)
        b = len(batch["x_ctrl"])
        x_c, x_p, x_rot = batch["x_ctrl"], batch["x_pert"], losses["_x_rot"]
        self.val_r2_ctrl.update(self.decoder.expression(losses["_out_c"]).float(), x_c.float())
        self.val_r2_pert.update(self.decoder.expression(losses["_out_p"]).float(), x_p.float())
        cos = torch.nn.functional.cosine_similarity((x_rot.mean(0) - x_c.mean(0)).float(),
                                                    (x_p.mean(0) - x_c.mean(0)).float(), dim=0)
        self.log_dict({f"val/{k}": v for k, v in losses.items() if not k.startswith("_")}, batch_size=b)
        self.log_dict({"val/loss": self._total(losses), "val/transport_cos": cos}, prog_bar=True, batch_size=b)

    def on_validation_epoch_end(self):
        self.log_dict({"val/recon_r2": self.val_r2_ctrl.compute(), "val/recon_r2_perturbed": self.val_r2_pert.compute()},
                      prog_bar=True)
        self.val_r2_ctrl.reset()
        self.val_r2_pert.reset()

    def configure_optimizers(self):
        # each angle is updated only when its perturbation is drawn (1 / n_perturbations of the steps), so the
        # atlas gets its own, larger learning rate and no weight decay (which would pull angles towards 0)
        nets = [p for n, p in self.named_parameters() if n != "atlas"]
        return adamw([{"params": nets, "weight_decay": self.hparams.weight_decay},
                      {"params": [self.atlas], "lr": self.hparams.atlas_lr, "weight_decay": 0.0}], lr=self.hparams.lr)
