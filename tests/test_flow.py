"""scfate.flow: paths, OT couplings and samplers against closed forms (fast, CPU)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import ot
import pytest
import torch

from scfate.flow import SOPath, TorusPath, integrate, ot_pairs, sq_cost, torus_features
from scfate.lie import Torus, wrap_angle

PI = math.pi


def _circ_close(a, b, atol=1e-5):
    """Equal as points of the torus (mod 2 pi)."""
    return wrap_angle(a - b).abs().max().item() < atol


def _rotations(b, n, scale, seed):
    g = torch.randn(b, n, n, generator=torch.Generator().manual_seed(seed)) * scale
    return torch.linalg.matrix_exp(g - g.transpose(-1, -2))


# --- torus path ----------------------------------------------------------------------------------------------
def test_torus_endpoints_and_constant_velocity():
    gen = torch.Generator().manual_seed(0)
    th0, th1 = (torch.rand(16, 5, generator=gen) * 2 - 1) * PI, (torch.rand(16, 5, generator=gen) * 2 - 1) * PI
    path = TorusPath(5, sigma=0.0)
    x0, u0 = path.sample(th0, th1, torch.zeros(16))
    x1, u1 = path.sample(th0, th1, torch.ones(16, 1))
    assert _circ_close(x0, th0) and _circ_close(x1, th1)
    for t in (0.0, 0.3, torch.rand(16, generator=gen)):
        xt, u = path.sample(th0, th1, t)
        assert torch.allclose(u, wrap_angle(th1 - th0)) and torch.allclose(u, u0)
        assert xt.min() > -PI and xt.max() <= PI  # returned wrapped
    assert torch.allclose(u1, u0)


def test_torus_shortest_way_across_seam():
    path = TorusPath(1)
    th0, th1 = torch.tensor([[PI - 0.1]]), torch.tensor([[-PI + 0.1]])
    xt, u = path.sample(th0, th1, 0.5)
    assert torch.allclose(u, torch.tensor([[0.2]]), atol=1e-5)  # +0.2 across the seam, not -2pi + 0.2
    assert _circ_close(xt, torch.tensor([[PI]]))
    _, u_back = path.sample(th1, th0, 0.5)
    assert torch.allclose(u_back, torch.tensor([[-0.2]]), atol=1e-5)


def test_torus_noise_scale_and_given_noise():
    sigma, b = 0.1, 20000
    path = TorusPath(3, sigma=sigma)
    th0, th1 = torch.full((b, 3), 0.2), torch.full((b, 3), 0.6)
    xt, _ = path.sample(th0, th1, 0.5, generator=torch.Generator().manual_seed(1))
    assert abs(xt.mean().item() - 0.4) < 5e-3 and abs(xt.std().item() - sigma) < 5e-3
    noise = torch.randn(4, 3)
    xt, _ = path.sample(th0[:4], th1[:4], 0.5, noise=noise)
    assert torch.allclose(xt, 0.4 + sigma * noise, atol=1e-6)


def test_torus_float32_under_autocast():
    path = TorusPath(2, sigma=0.02)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xt, u = path.sample(torch.zeros(3, 2), torch.full((3, 2), 3.0), 0.5)
        assert xt.dtype == torch.float32 and u.dtype == torch.float32
        assert path.step(xt, u, 0.1).dtype == torch.float32


def test_target_angle_recovers_rotation():
    gen = torch.Generator().manual_seed(2)
    k = 6
    z = torch.randn(32, 2 * k, generator=gen) + 0.1
    theta = (torch.rand(32, k, generator=gen) * 2 - 1) * 3.0
    z_pert = Torus(k).act(theta, z)
    assert torch.allclose(TorusPath(k).target_angle(z, z_pert), theta, atol=1e-4)


# --- SO path --------------------------------------------------------------------------------------------------
def test_so_path_endpoints_orthogonality_geodesic():
    n = 5
    r0 = _rotations(8, n, 1.0, 3)
    r1 = r0 @ _rotations(8, n, 0.3, 4)  # relative angles well below pi
    path = SOPath(n)
    eye = torch.eye(n)
    ra, u = path.sample(r0, r1, 0.0)
    rb, _ = path.sample(r0, r1, torch.ones(8))
    assert torch.allclose(ra, r0, atol=1e-5) and torch.allclose(rb, r1, atol=1e-4)
    assert torch.allclose(u, -u.transpose(-1, -2))
    t = torch.rand(8, generator=torch.Generator().manual_seed(5))
    rt, _ = path.sample(r0, r1, t)
    assert torch.allclose(rt.transpose(-1, -2) @ rt, eye.expand(8, n, n), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rt), torch.ones(8), atol=1e-5)
    assert torch.allclose(rt, path.group.geodesic(r0, r1, t), atol=1e-5)
    noisy, _ = SOPath(n, sigma=0.1).sample(r0, r1, t, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(noisy.transpose(-1, -2) @ noisy, eye.expand(8, n, n), atol=1e-5)
    assert not torch.allclose(noisy, rt, atol=1e-3)


# --- samplers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["euler", "heun"])
def test_constant_field_one_step_torus(method):
    gen = torch.Generator().manual_seed(7)
    th0, v = (torch.rand(10, 4, generator=gen) * 2 - 1) * PI, torch.randn(10, 4, generator=gen) * 4
    out = integrate(TorusPath(4), lambda x, t: v, th0, n_steps=1, method=method)
    assert torch.allclose(out, wrap_angle(th0 + v), atol=1e-5)
    assert out.min() > -PI and out.max() <= PI


def test_time_dependent_field_heun_exact_euler_first_order():
    path, x0 = TorusPath(1), torch.zeros(3, 1)
    field = lambda x, t: (2 * t).unsqueeze(-1).expand_as(x)  # noqa: E731  x(1) = 1 exactly
    for n in (1, 4, 10):
        assert torch.allclose(integrate(path, field, x0, n, method="heun"), torch.ones(3, 1), atol=1e-6)
        # left Riemann sum of 2t: sum_i 2 (i h) h = 1 - h
        assert torch.allclose(integrate(path, field, x0, n, method="euler"), torch.full((3, 1), 1 - 1 / n),
                              atol=1e-6)


def test_trajectory_and_time_window():
    seen = []
    field = lambda x, t: seen.append(t.clone()) or torch.ones_like(x)  # noqa: E731
    out, traj = integrate(TorusPath(2), field, torch.zeros(3, 2), 4, t0=0.2, t1=0.6, return_trajectory=True)
    assert traj.shape == (5, 3, 2) and torch.allclose(traj[0], torch.zeros(3, 2)) and torch.equal(traj[-1], out)
    assert torch.allclose(out, torch.full((3, 2), 0.4), atol=1e-6)
    assert torch.allclose(torch.stack(seen)[:, 0], torch.tensor([0.2, 0.3, 0.4, 0.5]))
    assert seen[0].shape == (3,)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_so_constant_generator_exact(method):
    n = 4
    r0 = _rotations(6, n, 1.0, 8)
    g = torch.randn(6, n, n, generator=torch.Generator().manual_seed(9))
    v = g - g.transpose(-1, -2)
    out = integrate(SOPath(n), lambda x, t: v, r0, n_steps=5, method=method)
    assert torch.allclose(out, r0 @ torch.linalg.matrix_exp(v), atol=1e-4)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_n_steps_raises(bad):
    with pytest.raises(ValueError, match="n_steps"):
        integrate(TorusPath(1), lambda x, t: x, torch.zeros(2, 1), bad)
    with pytest.raises(ValueError, match="method"):
        integrate(TorusPath(1), lambda x, t: x, torch.zeros(2, 1), 2, method="rk4")


# --- OT coupling ----------------------------------------------------------------------------------------------
def test_ot_square_matches_brute_force():
    gen = torch.Generator().manual_seed(10)
    x0, x1 = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    i, j = ot_pairs(x0, x1)
    assert torch.equal(i, torch.arange(5)) and sorted(j.tolist()) == list(range(5))
    cost = sq_cost(x0, x1)
    best = min(sum(cost[a, p[a]] for a in range(5)) for p in itertools.permutations(range(5)))
    assert cost[i.numpy(), j.numpy()].sum() == pytest.approx(best, rel=1e-9)


def test_ot_recovers_obvious_pairing():
    x0 = torch.arange(8, dtype=torch.float32).unsqueeze(1) * 10
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(11))
    x1 = (x0 + 0.1)[perm]  # x1[q] is the partner of x0[perm[q]]
    i, j = ot_pairs(x0, x1)
    assert torch.equal(perm[j], i)


@pytest.mark.parametrize("n,m", [(7, 3), (3, 7)])
def test_ot_unbalanced_support_and_determinism(n, m):
    gen = torch.Generator().manual_seed(12)
    x0, x1 = torch.randn(n, 2, generator=gen), torch.randn(m, 2, generator=gen)
    i, j = ot_pairs(x0, x1, generator=torch.Generator().manual_seed(0))
    assert i.dtype == torch.long and len(i) == len(j) == max(n, m)
    big = i if n > m else j
    assert torch.equal(big, torch.arange(max(n, m)))  # every row of the larger batch used once
    plan = ot.emd(np.full(n, 1 / n), np.full(m, 1 / m), sq_cost(x0, x1))
    assert (plan[i.numpy(), j.numpy()] > 0).all()
    i2, j2 = ot_pairs(x0, x1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(i, i2) and torch.equal(j, j2)


def test_ot_unbalanced_clusters_use_every_row():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x0 = centers.repeat_interleave(2, 0) + torch.randn(6, 2, generator=torch.Generator().manual_seed(13)) * 0.1
    i, j = ot_pairs(x0, centers, generator=torch.Generator().manual_seed(1))
    assert torch.equal(i, torch.arange(6)) and torch.equal(j, torch.arange(3).repeat_interleave(2))


def test_ot_bad_shapes():
    with pytest.raises(ValueError):
        ot_pairs(torch.zeros(3, 2), torch.zeros(3, 4))


def test_torus_features_invariant_to_rotation():
    k = 4
    z = torch.randn(9, 2 * k, generator=torch.Generator().manual_seed(14))
    r = torus_features(z)
    assert r.shape == (9, k)
    assert torch.allclose(r, z.view(9, k, 2).norm(dim=-1))
    assert torch.allclose(torus_features(Torus(k).act(torch.randn(9, k), z)), r, atol=1e-5)
    with pytest.raises(ValueError):
        torus_features(torch.zeros(2, 5))
