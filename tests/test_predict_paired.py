"""Each test condition on its own control cells, stacked (``FlowPredictor.predict_each``, the evaluation's case):
the same cells, to 1e-5, and the same source draws in the same order as one ``predict`` call per condition, with
runs of one context encoded, solved and decoded together in bounded chunks."""

import numpy as np
import pytest
import torch
from test_predict_speed import CONFIGS, CONTEXTS, PERTS, UNITS, G, K, calls, cond, make_head

import scfate.models.flow_sampling as fs
from scfate.models.predictor import FlowPredictor, NotPredictable

# (perturbation, context, cells): C+D is outside the vocabulary; the 25-cell batch starts a run of its own
ITEMS = [("A", "c1", 40), ("B+C", "c1", 40), ("C+D", "c1", 40), ("A+B", "c1", 40), ("B", "c1", 25),
         ("A+B", "c2", 40), ("C", "c2", 40)]


def batches():
    gen = torch.Generator().manual_seed(5)
    return [(torch.rand(n, G, generator=gen) * 3).numpy() for _, _, n in ITEMS]


def one_at_a_time(predictor, conds, xs):
    out = []
    for c, x in zip(conds, xs):
        try:
            out.append(predictor.predict(c, x))
        except NotPredictable as exc:
            out.append(exc)
    return out


@pytest.mark.parametrize("config", ["plain", "anchor_mean_offset_delta", "spread_zero", "heun"])
@pytest.mark.parametrize("with_new", [True, False])
@pytest.mark.parametrize("prior_only", [False, True])
def test_each_condition_on_its_own_controls_equals_one_at_a_time(config, with_new, prior_only, monkeypatch):
    head = make_head(**CONFIGS[config])
    seen = []

    def prior_of_new(members, z, ctx):
        seen.append(z.shape)
        return torch.full((K,), 0.3), 0.02 * torch.ones(G)

    def predictor():
        return FlowPredictor(head, PERTS, CONTEXTS, UNITS, "m", n_steps=3, prior_only=prior_only,
                             prior_of_new=prior_of_new if with_new else None,
                             generator=torch.Generator().manual_seed(4))

    conds, xs = [cond(p, c) for p, c, _ in ITEMS], batches()
    expected = one_at_a_time(predictor(), conds, xs)
    seen.clear()
    enc = calls(monkeypatch, head.backbone.encoder)
    got = predictor().predict_each(conds, xs)
    assert len(got) == len(expected)
    for (name, *_), g, e in zip(ITEMS, got, expected):
        if name == "C+D" and not with_new:
            assert isinstance(g, NotPredictable) and isinstance(e, NotPredictable) and str(g) == str(e)
            continue
        np.testing.assert_allclose(g.cells, e.cells, atol=1e-5, rtol=0)
        np.testing.assert_allclose(g.mean, e.mean, atol=1e-5, rtol=0)
    assert enc == [160, 25, 80]  # one encode per run of one context and batch size
    assert seen == ([(40, 2 * K)] if with_new else [])  # the new prior sees that condition's own latents


def test_paired_runs_are_solved_and_decoded_in_bounded_chunks(monkeypatch):
    head = make_head(anchor="prior", offset=True, delta=True)
    conds, xs = [cond(p, c) for p, c, _ in ITEMS if p != "C+D"], [x for (p, *_), x in zip(ITEMS, batches())
                                                                   if p != "C+D"]
    expected = FlowPredictor(head, PERTS, CONTEXTS, UNITS, "m", generator=torch.Generator().manual_seed(0)
                             ).predict_each(conds, xs)
    monkeypatch.setitem(fs.MAX_ROWS, "cpu", 70)  # 40 cells: one condition per solve, calls of <= 70 rows
    enc, dec = calls(monkeypatch, head.backbone.encoder), calls(monkeypatch, head.backbone.decoder)
    got = FlowPredictor(head, PERTS, CONTEXTS, UNITS, "m", generator=torch.Generator().manual_seed(0)
                        ).predict_each(conds, xs)
    assert max(enc) <= 70 and max(dec) <= 70 and sum(enc) == sum(len(x) for x in xs)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.cells, b.cells, atol=1e-5, rtol=0)


def test_paired_controls_refuse_a_mismatch():
    head = make_head()
    controls = head.encode_controls(torch.rand(3, 10, G), torch.tensor(0))
    assert controls.paired and len(controls) == 10 and controls.z.shape == (3, 10, 2 * K)
    request = fs.Request(torch.tensor(0), torch.tensor([0]), torch.tensor(0.0))
    with pytest.raises(ValueError, match="3 paired control batches for 1 requests"):
        head.sample_cells_many(controls, [request])
    with pytest.raises(ValueError, match="pick"):
        controls.take([0, 1])
    with pytest.raises(ValueError, match="one context per control batch"):
        head.encode_controls(torch.rand(10, G), torch.zeros(10, dtype=torch.long))
