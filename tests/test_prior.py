"""KRR prior (DESIGN §2.4): agreement with sklearn, centring, Tanimoto, angle unwrapping, selection, state."""

import math

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge

from scfate.prior import KRRPrior, select_krr, unwrap_around_mean, wrap_to_pi


def _data(n=60, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, k, generator=g)


@pytest.mark.parametrize("center", [False, True])
def test_rbf_matches_sklearn(center):
    F, Y = _data()
    Fn = torch.randn(15, 6, generator=torch.Generator().manual_seed(1))
    ours = KRRPrior("rbf", gamma=0.2, alpha=0.5, center=center).fit(F, Y).predict(Fn)
    off = Y.mean(0).numpy() if center else 0.0
    ref = KernelRidge(alpha=0.5, kernel="rbf", gamma=0.2).fit(F.double().numpy(), Y.double().numpy() - off)
    assert ours.dtype == torch.float32 and ours.shape == (15, 3)
    np.testing.assert_allclose(ours.numpy(), ref.predict(Fn.double().numpy()) + off, atol=1e-5)


def test_tanimoto_matches_sklearn_precomputed():
    g = torch.Generator().manual_seed(2)
    F = (torch.rand(40, 64, generator=g) < 0.2).float()
    Fn = (torch.rand(7, 64, generator=g) < 0.2).float()
    Y = torch.randn(40, 2, generator=g)

    def tani(a, b):  # numpy reference written independently of the module
        dot = a @ b.T
        return dot / ((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - dot)

    a, an = F.double().numpy(), Fn.double().numpy()
    ref = KernelRidge(alpha=0.3, kernel="precomputed").fit(
        tani(a, a), Y.double().numpy() - Y.double().numpy().mean(0)
    )
    ours = KRRPrior("tanimoto", alpha=0.3).fit(F, Y).predict(Fn)
    np.testing.assert_allclose(ours.numpy(), ref.predict(tani(an, a)) + Y.double().numpy().mean(0), atol=1e-5)


def test_tanimoto_hand_value():
    a = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    prior = KRRPrior("tanimoto")
    assert prior._k(a.double(), b.double()).item() == pytest.approx(2 / (3 + 3 - 2))
    assert prior._k(a.double(), a.double()).item() == pytest.approx(1.0)
    z = torch.zeros(1, 4, dtype=torch.float64)
    assert prior._k(z, z).item() == 1.0  # both zero: defined as identical
    assert prior._k(z, a.double()).item() == 0.0


def test_linear_map_beats_mean_only():
    g = torch.Generator().manual_seed(3)
    F = torch.randn(120, 5, generator=g)
    W = torch.randn(5, 4, generator=g)
    Y = F @ W + 1.5 + 0.05 * torch.randn(120, 4, generator=g)  # offset 1.5: a shared mean effect
    tr, te = slice(0, 90), slice(90, None)
    pred = KRRPrior("rbf", gamma=0.02, alpha=0.01, standardize=True).fit(F[tr], Y[tr]).predict(F[te])
    mse = ((pred - Y[te]) ** 2).mean().item()
    mse_mean = ((Y[tr].mean(0) - Y[te]) ** 2).mean().item()
    assert mse < 0.05 * mse_mean


def test_large_alpha_falls_back_to_training_mean():
    F, Y = _data()
    Y = Y + 3.0
    Fn = torch.randn(5, 6)
    pred = KRRPrior("rbf", gamma=0.1, alpha=1e9).fit(F, Y).predict(Fn)
    torch.testing.assert_close(pred, Y.mean(0).expand(5, -1), atol=1e-5, rtol=0)
    # without centring the same prior shrinks to zero, the reason DESIGN centres on the mean effect
    pred0 = KRRPrior("rbf", gamma=0.1, alpha=1e9, center=False).fit(F, Y).predict(Fn)
    assert pred0.abs().max() < 1e-5


def test_standardize_constant_feature_is_finite():
    F, Y = _data()
    F[:, 2] = 4.0
    prior = KRRPrior("rbf", gamma=0.1, standardize=True).fit(F, Y)
    assert prior.x_sd[2] == 1.0 and torch.isfinite(prior.predict(F[:3])).all()


def test_unwrap_keeps_angles_near_pi_together():
    theta = torch.tensor(
        [[math.pi - 0.1, 0.2], [-math.pi + 0.1, 0.3], [math.pi - 0.05, 0.1], [-math.pi + 0.05, 0.4]]
    )
    u = unwrap_around_mean(theta)
    assert u[:, 0].max() - u[:, 0].min() < 0.25  # one cluster, not split at ±pi
    assert abs(abs(u[:, 0].mean().item()) - math.pi) < 0.05
    torch.testing.assert_close(u[:, 1], theta[:, 1])  # a dimension away from the cut is unchanged
    torch.testing.assert_close(torch.sin(u), torch.sin(theta))  # same angles on the circle
    torch.testing.assert_close(torch.cos(u), torch.cos(theta))
    assert wrap_to_pi(torch.tensor(-math.pi)).item() == pytest.approx(math.pi)  # half-open (-pi, pi]


def test_select_picks_generating_region():
    g = torch.Generator().manual_seed(4)
    d, n = 4, 200
    F = torch.randn(n, d, generator=g)
    gamma_true = 10.0 / d  # a wiggly function: the two smoother default gammas underfit
    centres = torch.randn(30, d, generator=g)
    Y = torch.exp(-gamma_true * torch.cdist(F, centres) ** 2) @ torch.randn(30, 2, generator=g) + 0.7
    Y = Y + 0.01 * torch.randn(n, 2, generator=g)
    res = select_krr(F[:150], Y[:150], F[150:], Y[150:])
    assert res["gamma"] == pytest.approx(gamma_true)
    assert res["alpha"] <= 0.1  # low noise: little ridge
    assert res["val_mse"] < 0.5 * res["val_mse_mean_only"]
    assert len(res["grid"]) == 15
    assert KRRPrior.select(F[:150], Y[:150], F[150:], Y[150:])["val_mse"] == res["val_mse"]


def test_select_tanimoto_ignores_gamma():
    g = torch.Generator().manual_seed(5)
    F = (torch.rand(50, 32, generator=g) < 0.3).float()
    Y = F @ torch.randn(32, 2, generator=g) * 0.1
    res = select_krr(F[:40], Y[:40], F[40:], Y[40:], kernel="tanimoto")
    assert res["gamma"] is None and len(res["grid"]) == 5
    assert np.isfinite(res["val_mse"]) and res["val_mse"] <= max(res["grid"].values())


@pytest.mark.parametrize("kernel,standardize", [("rbf", True), ("tanimoto", False)])
def test_state_round_trip(tmp_path, kernel, standardize):
    F, Y = _data()
    F = F.abs() if kernel == "tanimoto" else F
    prior = KRRPrior(kernel, gamma=0.3, alpha=0.2, standardize=standardize).fit(F, Y)
    torch.save(prior.to_state(), tmp_path / "prior.pt")
    back = KRRPrior.from_state(torch.load(tmp_path / "prior.pt", weights_only=True))
    assert torch.equal(back.predict(F[:9]), prior.predict(F[:9]))
    assert (back.kernel, back.gamma, back.alpha, back.center) == (kernel, 0.3, 0.2, True)


def test_errors():
    with pytest.raises(RuntimeError, match="before fit"):
        KRRPrior().predict(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="before fit"):
        KRRPrior().to_state()
    with pytest.raises(ValueError, match="unknown kernel"):
        KRRPrior("poly")
    with pytest.raises(ValueError, match="Tanimoto"):
        KRRPrior("tanimoto", standardize=True)
    with pytest.raises(ValueError, match="F_new"):
        KRRPrior().fit(torch.randn(5, 3), torch.randn(5, 2)).predict(torch.randn(2, 4))
