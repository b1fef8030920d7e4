"""Expression-space prior (DESIGN §2.4, prior.space=expression): member-additive KRR and its lift to angles."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from test_backbone import dm, make_model  # noqa: F401 - fixtures

from scfate.lie import Torus
from scfate.prior.additive import AdditivePrior
from scfate.prior.lift import decoded_means, lift_to_angles

KRR_YAML = Path(__file__).resolve().parents[1] / "conf" / "prior" / "krr.yaml"


def prior_settings(**overrides):
    """The shipped KRR prior config (conf/prior/krr.yaml) with ``overrides``, as the flow stage instantiates it."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.merge(OmegaConf.load(KRR_YAML), overrides))


def test_measured_singles_are_used_exactly_and_unseen_singles_follow_a_linear_map():
    g = torch.Generator().manual_seed(0)
    U, d, G = 30, 4, 12
    F = torch.randn(U, d, generator=g)
    W = torch.randn(d, G, generator=g)
    shift = F @ W  # a single's shift is linear in its features
    train = [([u], shift[u] + 0.01 * torch.randn(G, generator=g)) for u in range(20)]
    val = [([u], shift[u]) for u in range(20, 25)]
    prior = AdditivePrior("rbf").fit(F, train, val)
    assert torch.equal(prior.predict([[3]])[0], train[3][1])  # a measured single is its own estimate
    unseen = prior.predict([[u] for u in range(25, 30)])
    mean_only = torch.stack([d for _, d in train]).mean(0)
    err, err_mean = ((unseen - shift[25:]) ** 2).mean(), ((mean_only - shift[25:]) ** 2).mean()
    assert err < 0.5 * err_mean, (err, err_mean)  # features carry the effect: better than the mean single


def test_pairs_add_members_and_interaction_is_chosen_only_when_validation_asks_for_it():
    g = torch.Generator().manual_seed(1)
    F, G = torch.randn(10, 3, generator=g), 6
    single = torch.randn(10, G, generator=g)
    train = [([u], single[u]) for u in range(10)]
    additive_pairs = [([a, b], single[a] + single[b]) for a, b in [(0, 1), (2, 3), (4, 5), (6, 7)]]
    prior = AdditivePrior("rbf").fit(F, train + additive_pairs[:2], additive_pairs[2:])
    assert prior.info["interaction"]["chosen"] == "none"  # exact additivity: no interaction term
    assert torch.allclose(prior.predict([[8, 9]])[0], single[8] + single[9])
    offset = torch.full((G,), 2.0)  # every pair shares the same non-additive shift: the mean interaction
    shifted = [(m, d + offset) for m, d in additive_pairs]
    prior = AdditivePrior("rbf").fit(F, train + shifted[:2], shifted[2:])
    assert prior.info["interaction"]["chosen"] in ("mean", "krr")
    assert torch.allclose(prior.predict([[8, 9]])[0], single[8] + single[9] + offset, atol=0.05)
    state = AdditivePrior.from_state(prior.to_state())  # tensors only: survives a weights_only checkpoint
    assert torch.allclose(state.predict([[8, 9]]), prior.predict([[8, 9]]))


def test_lift_recovers_the_decoded_mean_of_a_known_rotation():
    torch.manual_seed(0)
    group, k, G = Torus(3), 3, 8
    decoder = torch.nn.Sequential(torch.nn.Linear(2 * k, 16), torch.nn.Tanh(), torch.nn.Linear(16, G))

    def decode(z, context):
        return decoder(z)

    z = torch.randn(40, 2 * k)
    ctx = torch.tensor(0)
    theta_true = torch.tensor([[0.6, -0.4, 0.2], [-0.3, 0.5, 0.1]])
    with torch.no_grad():
        target = decoded_means(group.act, decode, theta_true, z, ctx)
    theta, err = lift_to_angles(group.act, decode, target[None], [z], [ctx], torch.zeros(2, k), steps=400, lr=0.05)
    assert err.max() < 1e-5, err
    with torch.no_grad():
        assert torch.allclose(decoded_means(group.act, decode, theta, z, ctx), target, atol=5e-3)


def test_expression_prior_in_a_checkpoint_predicts_an_unseen_combination(dm, tmp_path):  # noqa: F811
    """fit (pipeline) -> export -> scfate.load -> predict: the API lifts the stored prior on the user's controls."""
    import anndata as ad
    import pandas as pd

    import scfate
    from scfate.models.export import export_backbone
    from scfate.models.flow_export import export_flow
    from scfate.models.flow_head import FlowHead
    from scfate.prior.fit import fit_prior, perturbation_features

    backbone = make_model(dm).eval()
    bb_path = export_backbone(backbone, dm.data, tmp_path / "backbones" / "tiny" / "backbone.pt")
    unit_feats, pert_feats = perturbation_features(dm)
    settings = prior_settings(krr_gamma=0.1, space="expression", lift_cells=8, lift_steps=20, lift_residual=False)
    prior_mu, info = fit_prior(settings, backbone, dm, pert_feats, unit_feats)
    assert prior_mu.shape == (len(dm.perturbations), backbone.hparams.theta_dim) and info["prior_space"] == "expression"
    # a margin no score misses: auto must pick expression
    _, auto = fit_prior(replace(settings, space="auto", auto_margin=-10.0), backbone, dm, pert_feats, unit_feats)
    assert set(auto["prior_space_selection"]) == {"angle", "expression"} and auto["prior_space"] == "expression"
    assert all(-1.0 <= v <= 1.0 for v in auto["prior_space_selection"].values())
    # ... and one no score reaches: angle
    assert fit_prior(replace(settings, space="auto", auto_margin=10.0), backbone, dm, pert_feats,
                     unit_feats)[1]["prior_space"] == "angle"
    head = FlowHead(backbone, unit_feats, prior_mu, len(dm.contexts), d_embed=8, d_hidden=16, n_blocks=1, n_steps=2,
                    target="prior")
    path = export_flow(head, dm.data, tmp_path / "flow_heads" / "tiny" / "seed1" / "flow_best.pt", bb_path, info)
    model = scfate.load(path)
    ctrl = ad.AnnData(dm.reader(dm.controls["c1"][:10]), var=pd.DataFrame(index=model.genes))
    pred = model.predict(ctrl, ["A+D"], n_cells=10, context="c1")
    assert pred.shape == (10, len(model.genes)) and np.isfinite(pred.X).all()


def test_residual_decoding_returns_the_controls_at_zero_rotation(dm):  # noqa: F811
    from scfate.models.flow_head import FlowHead

    backbone = make_model(dm).eval()
    head = FlowHead(backbone, torch.randn(len(dm.data.features.units), 3), torch.zeros(len(dm.perturbations),
                    backbone.hparams.theta_dim), len(dm.contexts), d_embed=8, d_hidden=16, n_blocks=1)
    x = torch.from_numpy(dm.reader(np.arange(5)))
    with torch.no_grad():
        z = backbone.encode(x, torch.tensor(0))
        out = head.decode_rotated(torch.zeros(5, backbone.hparams.theta_dim), z, x, torch.tensor(0))
    assert torch.allclose(out, x, atol=1e-5)


def _anchored_head(dm, anchor: str):  # noqa: F811
    """An untrained head with a distinct prior angle per perturbation, anchored by ``anchor``."""
    from scfate.models.flow_head import FlowHead

    backbone = make_model(dm).eval()
    k = backbone.hparams.theta_dim
    prior = torch.linspace(-1.0, 1.0, len(dm.perturbations) * k).reshape(-1, k)
    head = FlowHead(backbone, torch.randn(len(dm.data.features.units), 3), prior, len(dm.contexts), d_embed=8,
                    d_hidden=16, n_blocks=1, n_steps=3, anchor=anchor)
    return head, backbone, prior


def test_anchored_sampling_puts_the_circular_mean_on_the_prior(dm):  # noqa: F811
    from scfate.lie import circular_mean

    head, backbone, prior = _anchored_head(dm, "prior")
    z = backbone.encode(torch.from_numpy(dm.reader(np.arange(20))), torch.tensor(0)).detach()
    theta = head.sample_angles(z, torch.tensor(0), torch.tensor(1), torch.tensor([0]), torch.tensor(0.0))
    assert torch.allclose(circular_mean(theta), prior[1], atol=1e-4)
    head.hparams.anchor = "none"
    free = head.sample_angles(z, torch.tensor(0), torch.tensor(1), torch.tensor([0]), torch.tensor(0.0))
    assert not torch.allclose(circular_mean(free), prior[1], atol=1e-3)  # the untrained flow drifts from it


def test_lift_residual_makes_the_prior_alone_predict_its_shift_exactly(dm, tmp_path):  # noqa: F811
    """The offset is what the lifted angle's decoded change misses: rotated + offset cells average to ctrl + delta
    on the offset's cells; it travels in the checkpoint and the API recomputes it for an unseen combination."""
    import anndata as ad
    import pandas as pd

    import scfate
    from scfate.models.export import export_backbone
    from scfate.models.flow_export import export_flow, load_flow
    from scfate.models.flow_head import FlowHead
    from scfate.models.predictor import Condition, FlowPredictor
    from scfate.prior.fit import fit_prior, perturbation_features
    from scfate.prior.validation import control_latents

    backbone = make_model(dm).eval()
    bb_path = export_backbone(backbone, dm.data, tmp_path / "backbones" / "tiny" / "backbone.pt")
    unit_feats, pert_feats = perturbation_features(dm)
    settings = prior_settings(krr_gamma=0.1, space="expression", lift_cells=8, lift_steps=20, residual_cells=6,
                              mean_candidates=[])  # the offset is checked against the member-additive prior
    prior_mu, info = fit_prior(settings, backbone, dm, pert_feats, unit_feats)
    offset = info.pop("offset")
    assert offset.shape == (len(dm.perturbations), len(dm.contexts), dm.n_genes) and info["lift_residual"]
    head = FlowHead(backbone, unit_feats, prior_mu, len(dm.contexts), d_embed=8, d_hidden=16, n_blocks=1, n_steps=2,
                    target="prior", prior_offset=offset)
    ctx, p = torch.tensor(0), 2
    ctrl = dm.heldout_controls[dm.contexts[0]]  # the offset's cells: control_latents(n=6, seed=1) of context 0
    x = torch.from_numpy(dm.reader(np.sort(np.random.default_rng(1).choice(ctrl, min(6, len(ctrl)), replace=False))))
    z = control_latents(backbone, dm, n=6, seed=1)[0][0]
    assert torch.allclose(z, backbone.encode(x, ctx).float())
    with torch.no_grad():
        cells = head.decode_rotated(prior_mu[p].expand(len(x), -1), z, x, ctx, head.offset_of(torch.tensor(p), ctx))
    prior = AdditivePrior.from_state(info["state"]["contexts"][0])
    members = [[dm.data.features.index()[m] for m in dm.data.members(dm.perturbations[p])]]
    assert torch.allclose(cells.mean(0) - x.mean(0), prior.predict(members)[0], atol=1e-4)
    path = export_flow(head, dm.data, tmp_path / "flow_heads" / "tiny" / "seed1" / "flow_best.pt", bb_path, info)
    assert torch.equal(load_flow(path)[0].prior_offset, offset)
    model = scfate.load(path)
    ctrl = ad.AnnData(dm.reader(dm.controls["c1"][:10]), var=pd.DataFrame(index=model.genes))
    ctrl.obs_names = [f"ctrl{i}" for i in range(10)]
    assert np.isfinite(model.predict(ctrl, ["C+D"], n_cells=10, context="c1").X).all()  # outside the vocabulary
    # a vocabulary perturbation: the API predicts exactly what evaluation's FlowPredictor does on the same cells
    # and the same source noise (the API draws it from a generator seeded with `seed`, whatever the global RNG)
    torch.manual_seed(0)
    pred = model.predict(ctrl, ["D+A"], n_cells=10, context="c1", seed=3)
    rows = [list(ctrl.obs_names).index(c) for c in pred.obs["control_cell"]]
    loaded, ckpt = load_flow(path)
    units = {u: i for i, u in enumerate(ckpt["units"])}
    torch.manual_seed(1)
    ev = FlowPredictor(loaded, list(ckpt["perturbations"]), list(ckpt["contexts"]), units, "eval",
                       generator=torch.Generator().manual_seed(3)).predict(
        Condition("c1", "A+D", "A+D", ["A", "D"], float("nan"), np.zeros(0)), ctrl.X[rows])
    assert np.allclose(pred.X, ev.cells, atol=1e-6)


def test_mean_anchoring_puts_the_cells_mean_on_the_prior_alone(dm):  # noqa: F811

    head, backbone, prior = _anchored_head(dm, "mean")
    x, ctx, p = torch.from_numpy(dm.reader(np.arange(20))), torch.tensor(0), torch.tensor(1)
    cells = head.sample_cells(x, ctx, p, torch.tensor([0]), torch.tensor(0.0))
    with torch.no_grad():
        alone = head.decode_rotated(prior[1].expand(20, -1), backbone.encode(x, ctx).float(), x, ctx)
    assert torch.allclose(cells.mean(0), alone.mean(0), atol=1e-5)
    assert cells.std(0).sum() > alone.std(0).sum() * 0.5  # the flow's spread is kept, not collapsed


def test_spread_zero_is_the_flow_switched_off_and_is_chosen_on_validation(dm):  # noqa: F811
    from scfate.eval.spread import SCALES, select_spread
    from scfate.lie import circular_mean

    head, backbone, prior = _anchored_head(dm, "prior")
    x, ctx, p = torch.from_numpy(dm.reader(np.arange(20))), torch.tensor(0), torch.tensor(1)
    z = backbone.encode(x, ctx).detach()
    args = (ctx, p, torch.tensor([0]), torch.tensor(0.0))
    torch.manual_seed(0)
    full = head.sample_angles(z, *args)
    head.hparams.spread = 0.5
    torch.manual_seed(0)
    half = head.sample_angles(z, *args)
    assert torch.allclose(circular_mean(half), prior[1], atol=1e-4)
    assert torch.allclose(head.path.group.wrap(half - prior[1]), 0.5 * head.path.group.wrap(full - prior[1]), atol=1e-4)
    head.hparams.spread = 0.0
    assert torch.allclose(head.sample_angles(z, *args), prior[1].expand(20, -1), atol=1e-5)
    with torch.no_grad():
        alone = head.decode_rotated(prior[1].expand(20, -1), z.float(), x, ctx)
    assert torch.allclose(head.sample_cells(x, *args), alone, atol=1e-5)  # the prior alone, cell by cell
    chosen = select_spread(head, dm, n=16)
    assert chosen["spread"] in SCALES and head.hparams.spread == chosen["spread"]
    assert set(chosen["val_mmd"]) == {str(s) for s in SCALES}


def test_cells_take_the_chosen_mean_shift_exactly_on_any_control_cells(dm):  # noqa: F811
    from scfate.models.predictor import Condition, FlowPredictor

    head, backbone, _ = _anchored_head(dm, "prior")
    P, C, G = len(dm.perturbations), len(dm.contexts), dm.n_genes
    head.prior_delta = torch.randn(P, C, G)
    x, ctx, p = torch.from_numpy(dm.reader(np.arange(25))), torch.tensor(1), torch.tensor(2)
    cells = head.sample_cells(x, ctx, p, torch.tensor([0]), torch.tensor(0.0))
    assert torch.allclose(cells.mean(0) - x.mean(0), head.prior_delta[2, 1], atol=1e-5)
    assert cells.std(0).sum() > 0  # the cells keep their own deviations
    units = dm.data.features.index()
    pert = dm.perturbations[2]
    cond = Condition(dm.contexts[1], pert, pert, dm.data.members(pert), float("nan"), np.zeros(0))
    off = FlowPredictor(head, dm.perturbations, dm.contexts, units, "off", prior_only=True).predict(cond, x.numpy())
    assert np.allclose(off.mean - x.numpy().mean(0), head.prior_delta[2, 1].numpy(), atol=1e-5)
