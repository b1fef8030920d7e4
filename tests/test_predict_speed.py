"""Prediction speed without a change in the cells: the flow head's fast path (controls encoded once, the
velocity net's step-invariant input computed once, decoding batched, the flow skipped where spread=0 cancels it)
predicts the same cells, to 1e-5, as the straightforward path it replaced, which ``reference_cells`` keeps verbatim.

No data files: an untrained backbone and head on random cells (their velocities are far from zero, so any slip in
the sampler shows)."""

import numpy as np
import pytest
import torch

from scfate.flow import integrate
from scfate.lie import circular_mean
from scfate.models.backbone import RotationAE
from scfate.models.flow_head import FlowHead
from scfate.models.predictor import Condition, FlowPredictor

PERTS = ["A", "B", "C", "A+B", "B+C"]
CONTEXTS = ["c1", "c2"]
UNITS = {"A": 0, "B": 1, "C": 2, "D": 3}
G, K = 12, 4


def make_head(anchor="none", spread=1.0, decode="residual", offset=False, delta=False, sampler="euler",
              n_steps=4) -> FlowHead:
    torch.manual_seed(0)
    backbone = RotationAE(n_genes=G, n_contexts=2, perturbations=PERTS, atlas_perturbations=["A", "B", "C"],
                          theta_dim=K, enc_hidden=[16], dec_hidden=[16]).eval()
    prior = torch.linspace(-1.5, 1.5, len(PERTS) * K).reshape(-1, K)
    head = FlowHead(backbone, torch.randn(len(UNITS), 5), prior, 2, d_embed=8, d_hidden=16, n_blocks=2,
                    n_steps=n_steps, sampler=sampler, anchor=anchor, spread=spread, decode=decode,
                    prior_offset=0.1 * torch.randn(len(PERTS), 2, G) if offset else None,
                    prior_delta=0.2 * torch.randn(len(PERTS), 2, G) if delta else None)
    return head.eval()


@torch.no_grad()
def reference_cells(head, x, context, perturbation, members, log10_dose, n_steps=None, theta_mu=None, offset=None,
                    generator=None):
    """FlowHead.sample_cells as it was before the fast path (issue 14): one encode, the full velocity net at every
    step, ``x + D(R z) - D(z)`` decoded per call."""
    hp, group = head.hparams, head.path.group

    def decode_rotated(theta, z, off):
        out = head.backbone.decode(group.act(theta, z), context)
        if hp.decode == "residual":
            out = x.to(out.dtype) + out - head.backbone.decode(z, context)
            if off is not None:
                out = out + off.to(out.dtype)
        return out

    z = head.backbone.encode(x, context).float()
    e_p = head.v_net.embed(members.reshape(1, -1), log10_dose.reshape(1))
    theta0 = head._source(perturbation, len(z), theta_mu, generator)
    theta = integrate(head.path, lambda th, t: head.v_net(th, t, e_p, z, context).float(), theta0,
                      n_steps or hp.n_steps, method=hp.sampler)
    mu = head.prior_mu[perturbation] if theta_mu is None else theta_mu.to(theta)
    if hp.anchor == "prior":
        theta = group.wrap(theta - circular_mean(theta) + mu)
    if hp.spread != 1.0:
        centre = circular_mean(theta)
        theta = group.wrap(centre + hp.spread * group.wrap(theta - centre))
    if offset is None and theta_mu is None:
        offset = head.offset_of(perturbation, context)
    cells = decode_rotated(theta, z, offset)
    if hp.anchor == "mean":
        cells = cells - cells.mean(0) + decode_rotated(mu.expand(len(z), -1), z, offset).mean(0)
    return head.anchor_to_delta(cells, x, perturbation, context)


def cond(name: str, context: str = "c1") -> Condition:
    return Condition(context, name, name, name.split("+"), float("nan"), np.zeros(0))


def inputs(name: str, context: str = "c1"):
    return (torch.tensor(CONTEXTS.index(context)), torch.tensor(PERTS.index(name)),
            torch.tensor([UNITS[m] for m in name.split("+")]), torch.tensor(0.0))


X = torch.rand(40, G, generator=torch.Generator().manual_seed(0)) * 3

CONFIGS = {
    "plain": {},
    "anchor_prior_offset_delta": dict(anchor="prior", offset=True, delta=True),
    "spread_half_direct": dict(anchor="prior", spread=0.5, decode="direct"),
    "spread_zero": dict(anchor="prior", spread=0.0, offset=True),
    "spread_zero_unanchored": dict(spread=0.0),
    "anchor_mean_offset_delta": dict(anchor="mean", offset=True, delta=True),
    "heun": dict(sampler="heun", offset=True),
}


@pytest.mark.parametrize("config", CONFIGS)
def test_sample_cells_matches_the_reference_on_a_fixed_seed(config):
    head = make_head(**CONFIGS[config])
    for name, context, steps in [("A", "c1", None), ("B+C", "c2", 2), ("A+B", "c1", 1)]:
        args = inputs(name, context)
        torch.manual_seed(3)
        ref = reference_cells(head, X, *args, n_steps=steps)
        after_ref = torch.rand(1)  # the global RNG moves on exactly as before: later draws are the same
        torch.manual_seed(3)
        fast = head.sample_cells(X, *args, n_steps=steps)
        assert torch.equal(torch.rand(1), after_ref)
        assert ref.shape == fast.shape == (len(X), G)
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", ["plain", "anchor_prior_offset_delta", "anchor_mean_offset_delta"])
def test_flow_predictor_matches_the_reference_for_vocabulary_new_and_prior_only(config):
    head = make_head(**CONFIGS[config])
    ctrl = X.numpy()
    gen = torch.Generator().manual_seed(7)
    pred = FlowPredictor(head, PERTS, CONTEXTS, UNITS, "m", n_steps=3, generator=gen).predict(cond("A+B", "c2"), ctrl)
    ref = reference_cells(head, X, *inputs("A+B", "c2"), n_steps=3, generator=torch.Generator().manual_seed(7))
    np.testing.assert_allclose(pred.cells, ref.double().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(pred.mean, ref.double().numpy().mean(0), atol=1e-5, rtol=0)

    # a perturbation outside the vocabulary: its prior comes from prior_of_new, computed on the control latents
    mu_new, off_new = torch.full((K,), 0.4), 0.05 * torch.ones(G)
    seen = []

    def prior_of_new(members, z, ctx):
        seen.append(z)
        return mu_new, off_new

    new = FlowPredictor(head, PERTS, CONTEXTS, UNITS, "m", prior_of_new=prior_of_new,
                        generator=torch.Generator().manual_seed(1)).predict(cond("C+D"), ctrl)
    ctx, _, _, dose = inputs("A")
    ref = reference_cells(head, X, ctx, None, torch.tensor([2, 3]), dose, theta_mu=mu_new, offset=off_new,
                          generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(new.cells, ref.double().numpy(), atol=1e-5, rtol=0)
    torch.testing.assert_close(seen[0], head.backbone.encode(X, ctx).float(), atol=1e-6, rtol=0)

    # the prior alone: every control rotated by the stored mean angle
    off = FlowPredictor(head, PERTS, CONTEXTS, UNITS, "off", prior_only=True).predict(cond("B"), ctrl)
    with torch.no_grad():
        ctx, pert = torch.tensor(0), torch.tensor(1)
        z = head.backbone.encode(X, ctx).float()
        rot = head.backbone.decode(head.path.group.act(head.prior_mu[pert].expand(len(X), -1), z), ctx)
        ref = rot if head.hparams.decode != "residual" else X + rot - head.backbone.decode(z, ctx)
        if head.prior_offset.numel():
            ref = ref + head.prior_offset[pert, ctx]
        ref = head.anchor_to_delta(ref, X, pert, ctx)
    np.testing.assert_allclose(off.cells, ref.double().numpy(), atol=1e-5, rtol=0)


def calls(monkeypatch, module) -> list[int]:
    """Rows of every forward call of ``module`` (an instance attribute shadows the class's forward)."""
    rows, forward = [], module.forward

    def counting(x, *a, **k):
        rows.append(len(x))
        return forward(x, *a, **k)

    monkeypatch.setattr(module, "forward", counting)
    return rows


@pytest.mark.parametrize("config", ["plain", "anchor_mean_offset_delta"])
def test_many_perturbations_encode_the_controls_once_and_equal_one_at_a_time(config, monkeypatch):
    head = make_head(**CONFIGS[config])
    names = ["A", "B+C", "A+B", "C+D", "B"]  # C+D is outside the vocabulary: its prior comes from prior_of_new
    conds = [cond(n, "c2") for n in names]
    ctx = torch.tensor(1)

    def prior_of_new(members, z, c):
        return torch.full((K,), 0.3), 0.02 * torch.ones(G)

    def predictor():
        return FlowPredictor(head, PERTS, CONTEXTS, UNITS, "m", n_steps=3, prior_of_new=prior_of_new,
                             generator=torch.Generator().manual_seed(4))

    first_alone = predictor().predict(conds[0], X.numpy())
    gen = torch.Generator().manual_seed(4)
    refs = []
    for n in names:  # one generator across the conditions, drawn in order, as sequential predict calls draw it
        if n == "C+D":
            refs.append(reference_cells(head, X, ctx, None, torch.tensor([2, 3]), torch.tensor(0.0),
                                        n_steps=3, theta_mu=torch.full((K,), 0.3), offset=0.02 * torch.ones(G),
                                        generator=gen))
        else:
            refs.append(reference_cells(head, X, *inputs(n, "c2"), n_steps=3, generator=gen))
    enc, dec = calls(monkeypatch, head.backbone.encoder), calls(monkeypatch, head.backbone.decoder)
    inp, blocks = calls(monkeypatch, head.v_net.inp), calls(monkeypatch, head.v_net.blocks)
    many = predictor().predict_many(conds, X.numpy())
    for pred, ref in zip(many, refs):
        np.testing.assert_allclose(pred.cells, ref.double().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(many[0].cells, first_alone.cells, atol=1e-5, rtol=0)
    n = len(X) * len(names)
    assert enc == [len(X)]  # the controls are encoded once for all five perturbations ...
    # ... D(z) of the controls once, then every rotated latent (and anchor=mean's prior cells) in one call
    assert dec == [len(X), n * (2 if config == "anchor_mean_offset_delta" else 1)]
    assert inp == [] and blocks == [n] * 3  # 3 steps of one stacked batch; the input layer's bulk is precomputed


def test_encoded_controls_are_reused_and_resampled_rows_equal_encoding_them_again(monkeypatch):
    head = make_head(anchor="prior", offset=True, delta=True)
    p = FlowPredictor(head, PERTS, CONTEXTS, UNITS, "m", n_steps=2)
    controls = p.encode(X.numpy(), "c1")
    rows = np.random.default_rng(0).choice(len(X), 60, replace=True)
    enc = calls(monkeypatch, head.backbone.encoder)
    torch.manual_seed(2)
    taken = p.predict(cond("A+B"), controls.take(rows))
    assert enc == []  # nothing encoded again, even for a resample with repeats
    torch.manual_seed(2)
    np.testing.assert_allclose(taken.cells, p.predict(cond("A+B"), X.numpy()[rows]).cells, atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="encoded for context 'c1', not 'c2'"):
        p.predict(cond("A", "c2"), controls)
    with pytest.raises(Exception, match="one context"):
        p.predict_many([cond("A"), cond("B", "c2")], X.numpy())


def test_spread_zero_with_the_prior_anchor_skips_the_flow_but_draws_its_noise(monkeypatch):
    head = make_head(**CONFIGS["spread_zero"])
    blocks = calls(monkeypatch, head.v_net.blocks)
    args = inputs("B+C", "c2")
    torch.manual_seed(1)
    fast = head.sample_cells(X, *args)
    after = torch.rand(1)
    assert blocks == []  # every cell sits on the prior's mean angle: no velocity evaluated
    torch.manual_seed(1)
    ref = reference_cells(head, X, *args)
    assert torch.equal(torch.rand(1), after)  # the RNG stream is where the full ODE would have left it
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


def test_long_request_lists_are_solved_and_decoded_in_bounded_chunks(monkeypatch):
    import scfate.models.flow_sampling as fs

    head = make_head(anchor="prior", offset=True)
    conds = [cond(n) for n in PERTS]
    whole = FlowPredictor(head, PERTS, CONTEXTS, UNITS, "m", generator=torch.Generator().manual_seed(0))
    expected = whole.predict_many(conds, X.numpy())
    monkeypatch.setitem(fs.MAX_ROWS, "cpu", 70)  # 40 cells: one perturbation per solve, decodes of <= 70 rows
    dec = calls(monkeypatch, head.backbone.decoder)
    chunked = FlowPredictor(head, PERTS, CONTEXTS, UNITS, "m", generator=torch.Generator().manual_seed(0))
    got = chunked.predict_many(conds, X.numpy())
    assert max(dec) <= 70 and len(dec) == 1 + len(PERTS)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.cells, b.cells, atol=1e-5, rtol=0)
