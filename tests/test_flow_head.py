"""Flow head: velocity network pieces, export/import with weights_only=True, the Python API, and its errors."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from test_backbone import dm, make_model  # noqa: F401 - fixtures

from scfate.data import DataError
from scfate.models.export import export_backbone
from scfate.models.flow_export import export_flow, load_flow
from scfate.models.flow_head import FlowHead
from scfate.nn.velocity import SetEncoder, VelocityNet


def test_set_encoder_is_permutation_invariant_and_handles_padding():
    enc = SetEncoder(torch.randn(5, 7), d_embed=8, d_hidden=16, use_dose=False)
    ab, ba = enc(torch.tensor([[0, 3]]), torch.zeros(1)), enc(torch.tensor([[3, 0]]), torch.zeros(1))
    assert torch.allclose(ab, ba, atol=1e-6)
    assert torch.allclose(enc(torch.tensor([[2, -1]]), torch.zeros(1)), enc(torch.tensor([[2]]), torch.zeros(1)), atol=1e-6)


def test_velocity_net_is_periodic_in_the_angles():
    net = VelocityNet(theta_dim=3, latent_dim=6, n_contexts=2, unit_features=torch.randn(4, 5), d_embed=8,
                      d_hidden=16, n_blocks=2)
    theta, t = torch.randn(4, 3), torch.rand(4)
    e, z, c = torch.randn(1, 8), torch.randn(4, 6), torch.tensor(1)
    out = net(theta, t, e, z, c)
    assert out.shape == (4, 3)
    assert torch.allclose(out, net(theta + 2 * torch.pi, t, e, z, c), atol=1e-5)


@pytest.fixture
def head(dm, tmp_path):  # noqa: F811
    backbone = make_model(dm).eval()
    bb_path = export_backbone(backbone, dm.data, tmp_path / "backbones" / "tiny" / "backbone.pt")
    feats = torch.as_tensor(dm.data.features.matrix, dtype=torch.float32)
    prior = torch.zeros(len(dm.perturbations), backbone.hparams.theta_dim)
    torch.manual_seed(0)
    h = FlowHead(backbone, feats, prior, len(dm.contexts), d_embed=8, d_hidden=16, n_blocks=1, n_steps=3)
    return h, bb_path


def test_flow_matching_steps_lower_the_loss(dm, head):  # noqa: F811
    h, _ = head
    opt = h.configure_optimizers()
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(1)
    first = float(h.fm_loss(batch))
    for _ in range(60):
        opt.zero_grad()
        h.fm_loss(batch).backward()
        opt.step()
    torch.manual_seed(1)
    assert float(h.fm_loss(batch)) < first
    assert all(p.grad is None for p in h.backbone.parameters())  # the backbone stays frozen


def test_export_import_round_trip_and_card_quickstart(dm, head, tmp_path):  # noqa: F811
    h, bb_path = head
    path = export_flow(h, dm.data, tmp_path / "flow_heads" / "tiny" / "seed1" / "flow_best.pt", bb_path,
                       {"prior": "none", "krr_gamma": None, "krr_alpha": None})
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # the model card's quickstart: every hyperparameter at the top level, the velocity net at v_net_state_dict
    hp = {k: v for k, v in ckpt.items() if not k.endswith("_state_dict") and not k.startswith("_")}
    for key in ("theta_dim", "d_embed", "d_hidden", "n_blocks", "sigma", "n_steps", "prior", "krr_gamma", "krr_alpha"):
        assert key in hp
    assert "v_net_state_dict" in ckpt and ckpt["backbone_path"] == "../../../backbones/tiny/backbone.pt"
    loaded, _ = load_flow(path)
    x = torch.from_numpy(dm.reader(np.arange(6)))
    args = (torch.tensor(0), torch.tensor(0), torch.tensor([0]), torch.tensor(0.0))
    torch.manual_seed(5)
    a = h.sample_cells(x, *args)
    torch.manual_seed(5)
    assert torch.allclose(a, loaded.sample_cells(x, *args), atol=1e-6)
    bb_path.write_bytes(bb_path.read_bytes() + b"x")
    with pytest.raises(DataError, match="sha256 differs"):
        load_flow(path)


def test_python_api_predicts_named_cells_and_rejects_bad_input(dm, head, tmp_path, caplog):  # noqa: F811
    import scfate

    h, bb_path = head
    path = export_flow(h, dm.data, tmp_path / "flow_heads" / "tiny" / "seed1" / "flow_best.pt", bb_path,
                       {"prior": "none", "krr_gamma": None, "krr_alpha": None})
    model = scfate.load(path.parent)
    genes = model.genes
    ctrl = ad.AnnData(dm.reader(dm.controls["c1"][:5]), var=pd.DataFrame(index=genes))
    pred = model.predict(ctrl, ["B+A", "D"], n_cells=8, context="c1")
    assert pred.shape == (16, len(genes)) and list(pred.var_names) == genes
    assert list(pred.obs["perturbation"].unique()) == ["A+B", "D"]
    assert "with replacement" in caplog.text
    with pytest.raises(DataError, match=r"Unknown perturbation member\(s\) \['AA'\].*Close matches: \{'AA': \['A'"):
        model.predict(ctrl, ["AA"], context="c1")
    with pytest.raises(DataError, match="pass context=NAME"):
        model.predict(ctrl, ["A"])
    with pytest.raises(DataError, match=r"adata_ctrl has other genes than expected: missing \['A'\]"):
        model.predict(ctrl[:, genes[1:]], ["A"], context="c1")
    with pytest.raises(DataError, match="No flow-head checkpoint"):
        scfate.load(tmp_path / "nowhere")


def test_load_from_a_local_hub_cache_offline(dm, head, tmp_path, monkeypatch):  # noqa: F811
    """hf://OWNER/NAME/flow_heads/... resolves the flow head and its backbone from the Hub cache (no network)."""
    import huggingface_hub.constants as C

    import scfate

    h, _ = head
    snap = tmp_path / "hub" / "models--owner--scfate" / "snapshots" / ("0" * 40)
    bb = export_backbone(h.backbone, dm.data, snap / "backbones" / "tiny" / "backbone.pt")
    export_flow(h, dm.data, snap / "flow_heads" / "tiny" / "seed1" / "flow_best.pt", bb,
                {"prior": "none", "krr_gamma": None, "krr_alpha": None})
    (tmp_path / "hub" / "models--owner--scfate" / "refs").mkdir()
    (tmp_path / "hub" / "models--owner--scfate" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = scfate.load("hf://owner/scfate/flow_heads/tiny/seed1")
    assert model.genes == list(dm.data.adata.var_names)
    with pytest.raises(DataError, match="offline or unreachable.*hf download owner/scfate"):
        scfate.load("hf://owner/scfate/flow_heads/other/seed1")
