"""Timing and ODE-endpoint helpers of benchmarks/bench_reflow.py: seconds per 10k predicted cells (own control
cells one condition at a time or stacked, shared control cells, or through the sampler as it was before issue 14) and each variant's endpoint error against the
teacher's 128-step solve."""

from __future__ import annotations

import time

import numpy as np
import torch


def time_per_10k(head, predictor_inputs, n_steps: int, legacy: bool = False) -> float:
    """Seconds to predict 10,000 cells (encode, ODE, decode), conditions as in the evaluation. ``n_steps=0``: the
    floor without any ODE (encode, rotate by the prior mean, decode), the cost no step count can remove.
    ``legacy``: through ``legacy_cells``."""
    total = sum(len(x) for x, *_ in predictor_inputs)
    start = time.perf_counter()
    with torch.no_grad():
        for x, ctx, pert, members, dose in predictor_inputs:
            if legacy:
                legacy_cells(head, x, ctx, pert, members, dose, n_steps)
            elif n_steps:
                head.sample_cells(x, ctx, pert, members, dose, n_steps)
            else:
                z = head.backbone.encode(x, ctx).float()
                head.decode_rotated(head.prior_mu[pert].expand(len(x), -1), z, x, ctx, head.offset_of(pert, ctx))
    return (time.perf_counter() - start) * 10_000 / total


def time_shared_per_10k(head, shared, n_steps: int) -> float:
    """Seconds per 10,000 cells when every test condition of a context is predicted on one control batch: encode
    and ``x - D(z)`` once per context, the ODEs of all its conditions as one stacked batch, decoded in large calls."""
    total = sum(len(x) * len(reqs) for x, _, reqs in shared)
    start = time.perf_counter()
    with torch.no_grad():
        for x, ctx, reqs in shared:
            head.sample_cells_many(head.encode_controls(x, ctx), reqs, n_steps)
    return (time.perf_counter() - start) * 10_000 / total


def time_stacked_per_10k(head, predictor_inputs, n_steps: int) -> float:
    """Seconds per 10,000 cells with each condition on its own control cells, as evaluation now predicts them
    (``FlowPredictor.predict_each``): the conditions of a context encoded, solved and decoded as one paired batch."""
    from scfate.models.flow_sampling import Request

    total = sum(len(x) for x, *_ in predictor_inputs)
    start = time.perf_counter()
    with torch.no_grad():
        for c in sorted({int(ctx) for _, ctx, *_ in predictor_inputs}):
            rows = [i for i in predictor_inputs if int(i[1]) == c]
            controls = head.encode_controls(torch.stack([x for x, *_ in rows]), rows[0][1])
            head.sample_cells_many(controls, [Request(p, m, d) for _, _, p, m, d in rows], n_steps)
    return (time.perf_counter() - start) * 10_000 / total


@torch.no_grad()
def legacy_cells(head, x, ctx, pert, members, dose, n_steps: int):
    """The sampler as it was before issue 14, for timing only: the full velocity net at every step, ``x + D(R z) -
    D(z)`` decoded per call (tests/test_predict_speed.py keeps the same reference and checks the fast path to 1e-5)."""
    from scfate.flow import integrate
    from scfate.lie import circular_mean

    hp, group, bb = head.hparams, head.path.group, head.backbone
    z = bb.encode(x, ctx).float()
    e_p = head.v_net.embed(members.reshape(1, -1), dose.reshape(1))
    theta = integrate(head.path, lambda th, t: head.v_net(th, t, e_p, z, ctx).float(), head._source(pert, len(z)),
                      n_steps, method=hp.sampler)
    mu = head.prior_mu[pert]
    if hp.anchor == "prior":
        theta = group.wrap(theta - circular_mean(theta) + mu)
    if hp.spread != 1.0:
        centre = circular_mean(theta)
        theta = group.wrap(centre + hp.spread * group.wrap(theta - centre))

    def decode(th):
        out = bb.decode(bb.group.act(th, z), ctx)
        if hp.decode == "residual":
            out = x + out - bb.decode(z, ctx)
            off = head.offset_of(pert, ctx)
            out = out if off is None else out + off
        return out

    cells = decode(theta)
    if hp.anchor == "mean":
        cells = cells - cells.mean(0) + decode(mu.expand(len(z), -1)).mean(0)
    return head.anchor_to_delta(cells, x, pert, ctx)


@torch.no_grad()
def endpoint_errors(heads: dict, variants: list, inputs, seed: int) -> dict:
    """RMS wrapped-angle error of each variant's ODE endpoint vs the teacher at 128 steps from the same theta_0."""
    from scfate.flow import integrate
    from scfate.lie import wrap_angle

    def solve(head, x, ctx, members, dose, theta0, steps):
        z = head.backbone.encode(x, ctx).float()
        e_p = head.v_net.embed(members.reshape(1, -1), dose.reshape(1))
        return integrate(head.path, lambda th, t: head.v_net(th, t, e_p, z, ctx).float(), theta0, steps,
                         method=head.hparams.sampler)

    gen = torch.Generator().manual_seed(seed)
    teacher, student = heads["teacher"], heads["student"]
    sq, disp, n = np.zeros(len(variants)), 0.0, 0
    for x, ctx, pert, members, dose in inputs:
        mu = student.prior_mu[pert].expand(len(x), -1)  # the student's source is the teacher's (single reflow)
        theta0 = mu + student.hparams.source_std * torch.randn(mu.shape, generator=gen)
        ref = solve(teacher, x, ctx, members, dose, theta0, 128)
        disp += float((wrap_angle(ref - theta0) ** 2).sum())
        for i, (who, steps) in enumerate(variants):
            sq[i] += float((wrap_angle(solve(heads[who], x, ctx, members, dose, theta0, steps) - ref) ** 2).sum())
        n += ref.numel()
    return {"err": list(np.sqrt(sq / n)), "displacement": (disp / n) ** 0.5}
