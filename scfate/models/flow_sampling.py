"""The flow head's prediction path, batched (issue 14): many perturbations on one control batch in one pass.

What a prediction costs is encode + ODE steps + decode. Everything that does not depend on the perturbation or
the step is done once per control batch: the latents ``z`` and, for ``decode=residual``, the base ``x - D(z)`` the
decoded rotation is added to (``x + D(R z) - D(z)``: ``D(z)`` is the controls' own, shared by every perturbation);
the velocity net's input layer on ``(e_p, z, context)`` is computed once per perturbation instead of at every step
(VelocityNet.condition). The ODEs of all requested perturbations run as one stacked batch and their rotated
latents are decoded in large batches. ``anchor=prior`` with ``spread=0`` puts every cell on the prior's mean angle
whatever the ODE does, so the ODE is skipped there (its source noise is still drawn, so the RNG moves on as before).

Row ``p * B + i`` of a stacked tensor is perturbation ``p``, control cell ``i``. Results equal the one-at-a-time
path to float rounding (tests/test_predict_speed.py checks 1e-5). Control batches come *shared* (``x [B, G]``: every
perturbation on the same cells, the API's case) or *paired* (``x [P, B, G]``: perturbation ``p`` on its own cells
``x[p]``, the evaluation's case, where each test condition draws its own controls): either way one stacked solve.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scfate.flow import integrate
from scfate.lie import circular_mean

Tensor = torch.Tensor
# rows (perturbations x cells) per stacked ODE solve and per decoder call. CPU: a couple of thousand, so a call's
# activations stay in cache (bigger stacks measured no faster per row, up to ~15% slower at 5k rows); GPU: many,
# so a call's kernel launches are paid once for many perturbations. Either way a genome-wide request list never
# holds every activation at once.
MAX_ROWS = {"cpu": 2_048, "cuda": 65_536}


def max_rows(t: Tensor) -> int:
    return MAX_ROWS.get(t.device.type, MAX_ROWS["cpu"])


@dataclass
class Controls:
    """A control batch encoded once (FlowHead.encode_controls) and reused for every perturbation and step.

    ``x [B, G]`` the cells, ``context`` their context index (0-dim), ``z [B, 2k]`` float32 latents, ``base [B, G]``
    ``x - D(z)`` under ``decode=residual`` (None for ``direct``). Paired: a leading ``[P]`` on ``x``, ``z`` and
    ``base``, one batch of B cells per perturbation (``len`` is still B, the cells per perturbation)."""

    x: Tensor
    context: Tensor
    z: Tensor
    base: Tensor | None

    def __len__(self) -> int:
        return int(self.x.shape[-2])

    @property
    def paired(self) -> bool:
        return self.x.dim() == 3

    def take(self, rows) -> Controls:
        """The same encoding for a subset (or a resample, with repeats) of the cells: nothing is recomputed."""
        if self.paired:
            raise ValueError("take() resamples a shared control batch; index a paired one with pick()")
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.x.device)
        return Controls(self.x[rows], self.context, self.z[rows], None if self.base is None else self.base[rows])

    def pick(self, batches) -> Controls:
        """Paired: the batches of these perturbations (a list of indices, or a slice), still paired."""
        return Controls(self.x[batches], self.context, self.z[batches],
                        None if self.base is None else self.base[batches])

    def item(self, p: int) -> Controls:
        """Paired: perturbation ``p``'s own batch, as a shared one."""
        return Controls(self.x[p], self.context, self.z[p], None if self.base is None else self.base[p])


@dataclass
class Request:
    """One perturbation to predict: a vocabulary one (``perturbation`` index, its stored prior and offset) or a new
    one (``perturbation=None`` and ``theta_mu``, the API's prior, with its expression ``offset``)."""

    perturbation: Tensor | None
    members: Tensor
    log10_dose: Tensor
    theta_mu: Tensor | None = None
    offset: Tensor | None = None


def encode_controls(head, x: Tensor, context: Tensor) -> Controls:
    """``x [B, G]`` (shared) or ``[P, B, G]`` (paired), encoded (and ``D(z)`` decoded) MAX_ROWS rows per call."""
    if context.dim():  # the chunks below and decode_many pass one context with every chunk of rows
        raise ValueError(f"one context per control batch (a 0-dim index), got a context of shape "
                         f"{tuple(context.shape)}: encode each context's cells separately")
    flat, bb, step = x.reshape(-1, x.shape[-1]), head.backbone, max_rows(x)
    chunks = [flat[i:i + step] for i in range(0, len(flat), step)] or [flat]
    z = torch.cat([bb.encode(c, context).float() for c in chunks])
    base = None
    if head.hparams.decode == "residual":
        dz = torch.cat([bb.decode(zc, context) for zc in z.split(step)]) if len(z) else bb.decode(z, context)
        base = (flat.to(dz.dtype) - dz).view(*x.shape[:-1], -1)
    return Controls(x, context, z.view(*x.shape[:-1], -1), base)


def _mean_angle(head, r: Request) -> Tensor:
    return head.prior_mu[r.perturbation] if r.theta_mu is None else r.theta_mu.to(head.prior_mu)


def sample_angles_many(head, z: Tensor, context: Tensor, requests: list[Request], n_steps: int | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
    """Final angles ``[P, B, k]`` of every request on the control latents ``z [B, 2k]`` (or paired, ``[P, B, 2k]``)
    (FlowHead.sample_angles for each request in turn, with the same source draws in the same order)."""
    hp, group, b = head.hparams, head.path.group, z.shape[-2]
    theta0 = torch.cat([head._source(r.perturbation, b, r.theta_mu, generator) for r in requests])
    mu = torch.stack([_mean_angle(head, r).expand(b, -1) for r in requests])  # [P, B, k]
    per_perturbation = all(r.theta_mu is None or r.theta_mu.reshape(-1).shape == mu.shape[-1:] for r in requests)
    if hp.anchor == "prior" and hp.spread == 0 and per_perturbation:
        theta = mu  # centred on mu, then shrunk to its centre: mu itself, whatever the ODE returned
    else:
        e_p = torch.cat([head.v_net.embed(r.members.reshape(1, -1), r.log10_dose.reshape(1)) for r in requests])
        static = head.v_net.condition(e_p, z, context)
        theta = integrate(head.path, lambda th, t: head.v_net.step_velocity(th, t, static).float(), theta0,
                          n_steps or hp.n_steps, method=hp.sampler).view(len(requests), b, -1)
    if hp.anchor == "prior":  # (anchor=mean acts on the decoded cells, in sample_cells_many)
        # keep the flow's cell-to-cell spread but put its circular mean on the prior's: with a few dozen
        # training perturbations the learned residual of an unseen one can be mostly noise
        theta = group.wrap(theta - circular_mean(theta, dim=1).unsqueeze(1) + mu.to(theta))
    if hp.spread != 1.0:
        # the sampled angles' spread around their circular mean, scaled: chosen on validation perturbations
        # (scfate.eval.spread); 0 rotates every control cell by the mean angle alone (the flow switched off)
        centre = circular_mean(theta, dim=1).unsqueeze(1)
        theta = group.wrap(centre + hp.spread * group.wrap(theta - centre))
    return theta


def decode_many(head, theta: Tensor, c: Controls) -> Tensor:
    """``D(R(theta) z)`` (+ the residual base) for stacked angles ``[P, B, k]`` -> ``[P, B, G]``, in chunks."""
    p, b = theta.shape[:2]
    flat, out, step = theta.reshape(p * b, -1), [], max_rows(theta)
    # angle row r acts on latent r mod len(z): a shared batch's cell, or (paired, P | p) its own batch's
    z = c.z.reshape(-1, c.z.shape[-1])
    for start in range(0, p * b, step):
        rows = torch.arange(start, min(start + step, p * b), device=flat.device)
        out.append(head.backbone.decode(head.backbone.group.act(flat[rows], z[rows % len(z)]), c.context))
    cells = torch.cat(out).view(p, b, -1)
    if c.base is None:
        return cells
    base = c.base.to(cells.dtype)
    return (cells.view(-1, *base.shape) + base).view(p, b, -1)


def sample_cells_many(head, c: Controls, requests: list[Request], n_steps: int | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
    """One predicted cell per control cell for every request: ``[P, B, G]`` (FlowHead.sample_cells for each in
    turn), on shared controls or paired ones (request ``p`` on ``c.x[p]``). Requests go through the ODE and the
    decoder MAX_ROWS rows at a time, in order (the same source draws)."""
    if c.paired and c.x.shape[0] != len(requests):
        raise ValueError(f"{c.x.shape[0]} paired control batches for {len(requests)} requests")
    per = max(1, max_rows(c.z) // max(1, len(c)))
    return torch.cat([_cells(head, c.pick(slice(i, i + per)) if c.paired else c, requests[i:i + per], n_steps,
                             generator) for i in range(0, len(requests), per)])


def _cells(head, c: Controls, requests: list[Request], n_steps, generator) -> Tensor:
    hp, b = head.hparams, len(c)
    theta = sample_angles_many(head, c.z, c.context, requests, n_steps, generator)
    mean_anchor = hp.anchor == "mean"
    if mean_anchor:  # the prior's own cells decoded in the same calls as the flow's
        theta = torch.cat([theta, torch.stack([_mean_angle(head, r).expand(b, -1) for r in requests])])
    cells = decode_many(head, theta, c)
    out = []
    for p, r in enumerate(requests):
        offset = r.offset
        if offset is None and r.theta_mu is None:
            offset = head.offset_of(r.perturbation, c.context)
        x = cells[p] if offset is None or hp.decode != "residual" else cells[p] + offset.to(cells.dtype)
        if mean_anchor:
            # the flow's cells keep their spread, their mean is the prior alone's on these very control cells:
            # decoding a spread of angles shrinks and bends the mean, and an unseen perturbation's learned
            # residual is mostly noise with a few dozen training perturbations (REPRODUCE.md §6)
            prior = cells[len(requests) + p]
            prior = prior if offset is None or hp.decode != "residual" else prior + offset.to(cells.dtype)
            x = x - x.mean(0) + prior.mean(0)
        out.append(head.anchor_to_delta(x, c.x[p] if c.paired else c.x, r.perturbation, c.context))
    return torch.stack(out)
