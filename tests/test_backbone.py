"""RotationAE: shapes, a few steps lower the loss, export/import with weights_only=True, resume from last, and
the errors a user can hit."""

import json

import numpy as np
import pytest
import torch
from test_prepare import tiny_spec

from scfate.data import DataError
from scfate.data.datamodule import PerturbationDataModule
from scfate.models.backbone import RotationAE, energy_distance
from scfate.models.export import export_backbone, load_backbone
from scfate.nn import Decoder, Encoder, nb_nll


@pytest.fixture
def dm(tmp_path):
    dm = PerturbationDataModule(tiny_spec(tmp_path), tmp_path / "data", batch_size=16, steps_per_epoch=10,
                                val_steps=2, seed=0, val_mode="heldout_cells")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def make_model(dm, **kw):
    torch.manual_seed(0)
    return RotationAE(n_genes=dm.n_genes, n_contexts=len(dm.contexts), perturbations=dm.perturbations,
                      atlas_perturbations=list(dm.data.split.train), theta_dim=4, enc_hidden=[32], dec_hidden=[32], **kw)


def test_encoder_decoder_shapes():
    enc, dec = Encoder(20, 8, 3, [16]), Decoder(20, 8, 3, [16], likelihood="nb")
    x, c = torch.rand(5, 20), torch.tensor([0, 1, 2, 0, 1])
    z = enc(x, c)
    assert z.shape == (5, 8) and dec(z, c).shape == (5, 20)
    expr = dec.expression(dec(z, c))
    assert torch.allclose(torch.expm1(expr).sum(-1), torch.full((5,), 1e4), rtol=1e-4)  # normalize_total + log1p
    with pytest.raises(ValueError, match="likelihood"):
        Decoder(20, 8, 3, [16], likelihood="poisson")


def test_nb_nll_matches_torch_distribution():
    c = torch.tensor([[0.0, 3, 10], [5, 0, 1]])
    logits, log_theta = torch.randn(2, 3), torch.randn(3)
    mu = c.sum(-1, keepdim=True) * torch.softmax(logits, -1)
    theta = log_theta.exp()
    ref = -torch.distributions.NegativeBinomial(total_count=theta, probs=mu / (mu + theta)).log_prob(c).mean()
    assert nb_nll(c, logits, log_theta) == pytest.approx(float(ref), rel=1e-5)


def test_energy_distance_is_zero_for_equal_sets_and_positive_for_shifted():
    x = torch.randn(30, 4)
    assert float(energy_distance(x, x)) == pytest.approx(0, abs=1e-3)
    assert float(energy_distance(x, x + 3)) > 1


def test_a_few_steps_lower_the_loss(dm):
    model = make_model(dm)
    opt = model.configure_optimizers()
    batches = [b for _, b in zip(range(3), dm.train_dataloader())]
    first = float(model._total(model._losses(batches[0])))
    for _ in range(30):
        for b in batches:
            opt.zero_grad()
            model._total(model._losses(b)).backward()
            opt.step()
    assert float(model._total(model._losses(batches[0]))) < 0.7 * first


def test_only_training_perturbations_own_an_angle(dm):
    model = make_model(dm)
    test_idx = dm.perturbations.index(dm.data.split.test[0])
    with pytest.raises(KeyError, match="no atlas entry"):
        model.theta_bar(torch.tensor(test_idx))


def test_export_import_round_trip_weights_only(dm, tmp_path):
    model = make_model(dm).eval()
    path = export_backbone(model, dm.data, tmp_path / "bb" / "backbone.pt", extra={"seed": 3})
    raw = torch.load(path, weights_only=True)
    assert raw["theta_dim"] == 4 and raw["enc_hidden"] == [32] and raw["seed"] == 3
    assert raw["genes"] == list(dm.data.adata.var_names) and raw["atlas"].shape == (len(dm.data.split.train), 4)
    assert raw["split"]["test"] == dm.data.split.test and len(raw["data_sha256"]) == 64
    config = json.loads((tmp_path / "bb" / "config.json").read_text())
    assert config["theta_dim"] == 4 and config["n_atlas"] == len(dm.data.split.train)
    loaded, _ = load_backbone(path, genes=list(dm.data.adata.var_names))
    x = torch.from_numpy(dm.reader(np.arange(8)))
    ctx = torch.tensor(0)
    theta = model.theta_bar(torch.tensor(dm.perturbations.index(dm.data.split.train[0])))
    with torch.no_grad():
        assert torch.allclose(model.transport(x, ctx, theta), loaded.transport(x, ctx, theta))


def test_gene_list_mismatch_names_the_genes(dm, tmp_path):
    path = export_backbone(make_model(dm), dm.data, tmp_path / "backbone.pt")
    genes = list(dm.data.adata.var_names)
    # the checkpoint lacks the data's gene ZZZ and has A, which the data lacks
    with pytest.raises(DataError, match=r"missing \['ZZZ'\] \(1\), extra \['A'\] \(1\)\. Use the dataset"):
        load_backbone(path, genes=[g for g in genes if g != "A"] + ["ZZZ"])
    with pytest.raises(DataError, match="same genes, different order"):
        load_backbone(path, genes=genes[::-1])
    with pytest.raises(DataError, match="not found"):
        load_backbone(tmp_path / "none.pt")


def test_group_so_ablation_trains(dm):
    model = make_model(dm, group="so", so_rank=1, so_method="cayley")
    loss = model._total(model._losses(next(iter(dm.train_dataloader()))))
    loss.backward()
    assert torch.isfinite(loss) and model.atlas.grad.abs().sum() > 0


def test_bf16_autocast_step_is_finite_and_group_ops_stay_float32(dm):
    """What trainer=gpu (precision bf16-mixed) does, on the CPU: autocast to bfloat16 around the step."""
    model = make_model(dm)
    batch = next(iter(dm.train_dataloader()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model._total(model._losses(batch))
        z = model.encode(batch["x_ctrl"], batch["context"])
        theta = model.theta_bar(torch.tensor(dm.perturbations.index(dm.data.split.train[0]))).expand(len(z), -1)
        rotated = model.group.act(theta, z)
    loss.backward()
    assert torch.isfinite(loss) and z.dtype == torch.bfloat16
    # the rotation itself ran in float32: it preserves plane norms to float32 accuracy, not bf16's ~1e-2
    r_in, r_out = model.group.polar(z.float())[0], model.group.polar(rotated.float())[0]
    assert rotated.dtype == torch.float32 and torch.allclose(r_in, r_out, rtol=1e-5, atol=1e-5)
