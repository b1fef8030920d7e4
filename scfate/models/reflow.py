"""ReflowStudent: a flow head trained on a teacher's straight couplings (DESIGN §2.5).

It *is* a FlowHead (same velocity network, prior, sampler and checkpoint format), so ``export_flow`` / ``load_flow``
and the evaluation predictor work unchanged; only the training batches (couplings instead of paired cells) and the
model selection (its own K steps against the teachers' endpoints on validation perturbations) differ.
"""

from __future__ import annotations

import logging

import torch

from scfate.errors import UsageError
from scfate.flow import integrate
from scfate.flow.reflow import reflow_loss
from scfate.models.flow_head import FlowHead
from scfate.models.step_logging import logs_this_step

log = logging.getLogger("scfate")
# the velocity net's shape: a student that overrides any of these cannot start from the teacher's weights
ARCHITECTURE = ("d_embed", "d_hidden", "n_blocks", "d_context")


class ReflowStudent(FlowHead):
    """``hparams.n_steps`` is K: validation, export and every later prediction sample with K steps."""

    def coupling_field(self, batch: dict[str, torch.Tensor]):
        """The velocity field ``v(theta, t)`` of a batch of couplings (rows of `Couplings`, mixed perturbations and
        contexts), each row on its own perturbation, control latent and context."""
        e_p = self.v_net.embed(batch["members"], batch["log10_dose"])  # [B, d_embed]: one perturbation per row

        def v_fn(theta, t):
            return self.v_net(theta, t, e_p, batch["z_ctrl"], batch["context"])

        return v_fn

    def coupling_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Batch of couplings -> scalar loss."""
        return reflow_loss(self.path, self.coupling_field(batch), batch["theta0"], batch["theta1"])

    def training_step(self, batch, batch_idx):
        loss = self.coupling_loss(batch)
        if logs_this_step(self, batch_idx):  # only where the loggers write (scfate.models.step_logging)
            self.log("train/reflow_loss", loss, prog_bar=True, batch_size=len(batch["theta0"]))
        return loss

    def validation_step(self, batch, batch_idx):
        # model selection on couplings of validation perturbations: the student's ODE endpoint at its own K steps
        # against the teacher's (wrapped angle, mean square), i.e. what it is distilled for, at the step count it
        # will be used at, on perturbations it was not trained on
        v_fn = self.coupling_field(batch)
        theta_k = integrate(self.path, lambda theta, t: v_fn(theta, t).float(), batch["theta0"],
                            int(self.hparams.n_steps), method=self.hparams.sampler)
        err = self.path.group.wrap(theta_k - batch["theta1"])
        self.log("val/endpoint_mse", err.pow(2).mean(), prog_bar=True, batch_size=len(err))


def student_from_teacher(teacher: FlowHead, K: int, prior_mu: torch.Tensor | None = None,
                         overrides: dict | None = None, prior_offset: torch.Tensor | None = None,
                         prior_delta: torch.Tensor | None = None) -> ReflowStudent:
    """A student with the teacher's architecture and weights, ``n_steps=K``, and ``prior_mu`` (default: the
    teacher's). ``overrides``: other hyperparameters (e.g. ``lr``) that differ from the teacher's. An override of
    the velocity net's size (``d_hidden``, ``n_blocks``, ``d_embed``, ``d_context``) gives a smaller (or larger)
    network that cannot take the teacher's weights: it starts from a fresh initialisation and learns from the
    couplings alone (distillation), which is what makes a K-step prediction cheaper than K steps of the teacher."""
    hp = dict(teacher.hparams)
    unknown = sorted(set(overrides or {}) - set(hp))
    if unknown:
        raise UsageError(f"student overrides {unknown} are not flow-head hyperparameters; valid: {sorted(hp)}")
    hp.update(overrides or {}, n_steps=int(K))
    prior = teacher.prior_mu if prior_mu is None else prior_mu
    # the offset and the mean-predictor shift belong to their prior
    offset = teacher.prior_offset if prior_mu is None else prior_offset
    delta = teacher.prior_delta if prior_mu is None else prior_delta
    student = ReflowStudent(teacher.backbone, teacher.v_net.embed.unit_features.detach().clone(),
                            prior.detach().clone(), **hp,
                            prior_offset=offset.detach().clone() if offset is not None and offset.numel() else None,
                            prior_delta=delta.detach().clone() if delta is not None and delta.numel() else None)
    if all(hp[k] == teacher.hparams[k] for k in ARCHITECTURE):
        student.v_net.load_state_dict(teacher.v_net.state_dict())
    else:
        log.info("student velocity net %s differs from the teacher's %s: trained from a fresh initialisation",
                 {k: hp[k] for k in ARCHITECTURE}, {k: teacher.hparams[k] for k in ARCHITECTURE})
    return student
