"""Closed-form checks of the Lie groups (scfate.lie): group laws, orthogonality, wrapping, geodesics, float32."""

import math

import pytest
import torch

from scfate.lie import SO, Torus, build_group, float32_ops, geodesic_on_sphere, plane_rotation, wrap_angle

PI = math.pi
METHODS = ("matrix_exp", "cayley")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def same_angle(a, b, atol=1e-5):
    """Equal modulo 2 pi."""
    return torch.allclose(torch.cos(a), torch.cos(b), atol=atol) and torch.allclose(torch.sin(a), torch.sin(b), atol=atol)


def assert_rotation(r, atol=1e-5):
    eye = torch.eye(r.shape[-1], dtype=r.dtype)
    assert torch.allclose(r.transpose(-1, -2) @ r, eye.expand_as(r), atol=atol)
    assert torch.allclose(torch.linalg.det(r), torch.ones(r.shape[:-2], dtype=r.dtype), atol=atol)


# --- torus ---------------------------------------------------------------------------------------------
def test_wrap_range_and_edges():
    vals = [PI, -PI, 3 * PI, -3 * PI, 5 * PI, 2 * PI, 0.0, 1e-8, -1e-8, 1e4, -1e4, 123.456]
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor(vals, dtype=dtype)  # not a cast from float32: float32(pi) > pi is not pi in float64
        y = wrap_angle(x)
        assert y.dtype == dtype
        assert ((y > -PI) & (y <= PI)).all(), y
        assert y[0] == y[1] == torch.tensor(PI, dtype=dtype)  # pi -> pi and -pi -> pi, never -pi
        assert same_angle(y.double(), x.double(), atol=1e-3 if dtype == torch.float32 else 1e-9)
        assert y[7] == torch.tensor(1e-8, dtype=dtype)  # small angles are returned exactly
    dense = wrap_angle(torch.linspace(-50, 50, 100_001))
    assert ((dense > -PI) & (dense <= PI)).all()
    assert torch.equal(Torus(3).wrap(x[:3]), wrap_angle(x[:3]))


def test_torus_exp_log_round_trip_and_matrix():
    g, theta = Torus(5), (torch.rand(8, 5) * 2 - 1) * PI
    assert torch.allclose(g.log(g.exp(theta)), theta, atol=1e-6)
    assert torch.allclose(g.log(g.exp(theta + 4 * PI)), theta, atol=1e-5)  # log returns the principal angle
    m = g.matrix(theta)
    assert m.shape == (8, 10, 10)
    assert_rotation(m)
    z = torch.randn(8, 10)
    assert torch.allclose(g.act(theta, z), (m @ z.unsqueeze(-1)).squeeze(-1), atol=1e-6)
    assert torch.allclose(g.act(g.exp(theta), z), g.act(theta, z))  # act takes angles or (cos, sin)
    # layout: plane j is (z[2j], z[2j+1]); a quarter turn of plane 1 only maps e_2 to e_3
    e = torch.zeros(1, 10)
    e[0, 2] = 1.0
    out = g.act(torch.tensor([[0.0, PI / 2, 0, 0, 0]]), e)
    assert torch.allclose(out, torch.nn.functional.one_hot(torch.tensor([3]), 10).float(), atol=1e-7)


def test_torus_homomorphism():
    g = Torus(4)
    a, b, z = torch.randn(6, 4) * 3, torch.randn(6, 4) * 3, torch.randn(6, 8)
    assert torch.allclose(g.matrix(a) @ g.matrix(b), g.matrix(a + b), atol=1e-5)
    assert torch.allclose(g.act(a, g.act(b, z)), g.act(g.compose(a, b), z), atol=1e-5)
    ab = g.compose(a, b)
    assert ((ab > -PI) & (ab <= PI)).all() and same_angle(ab, a + b)


def test_torus_act_preserves_amplitudes_and_polar_round_trip():
    g = Torus(6)
    z, theta = torch.randn(16, 12), torch.randn(16, 6) * 5
    r, phi = g.polar(z)
    assert ((phi > -PI) & (phi <= PI)).all()
    assert torch.allclose(g.from_polar(r, phi), z, atol=1e-6)
    r2, phi2 = g.polar(g.act(theta, z))
    assert torch.allclose(r2, r, atol=1e-5)
    assert same_angle(phi2, phi + theta, atol=1e-5)
    assert torch.allclose(g.act(theta, z).norm(dim=-1), z.norm(dim=-1), atol=1e-5)


def test_relative_angle_recovers_rotation():
    g = Torus(6)
    z = torch.randn(32, 12)
    theta = (torch.rand(32, 6) * 2 - 1) * (PI - 1e-3)
    assert torch.allclose(g.relative_angle(z, g.act(theta, z)), theta, atol=1e-5)
    scaled = g.from_polar(g.polar(z)[0] * 3.0, g.polar(z)[1] + theta)  # amplitude changes do not matter
    assert torch.allclose(g.relative_angle(z, scaled), theta, atol=1e-5)


def test_torus_geodesic_endpoints_and_seam():
    g = Torus(3)
    a, b = torch.randn(5, 3) * 3, torch.randn(5, 3) * 3
    assert torch.allclose(g.geodesic(a, b, 0.0), a)
    assert same_angle(g.geodesic(a, b, 1.0), b)
    assert torch.allclose(g.geodesic(a, b, torch.full((5,), 0.5)), g.geodesic(a, b, 0.5))
    # across the seam: from 3 to -3 the short way is +0.28 rad through pi, not -6 rad through 0
    a0, b0 = torch.tensor([[3.0]]), torch.tensor([[-3.0]])
    mid = Torus(1).geodesic(a0, b0, 0.5)
    assert torch.allclose(mid, torch.tensor([[PI]]), atol=1e-6)
    path = Torus(1).geodesic(a0, b0, torch.linspace(0, 1, 11).unsqueeze(-1))
    assert (path.diff(dim=0) > 0).all() and (path.diff(dim=0).sum() - (2 * PI - 6.0)).abs() < 1e-5


# --- SO(n) ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_so_rotations_and_lowrank_act(method):
    g = SO(7, rank=2, method=method)
    assert g.algebra_dim == 28 and g.latent_dim == 7
    xi = torch.randn(10, g.algebra_dim)
    a = g.generator(xi)
    assert torch.equal(a, -a.transpose(-1, -2)) and torch.linalg.matrix_rank(a).max() <= 4
    r = g.exp(xi)
    assert_rotation(r)
    assert_rotation(g.exp_dense(xi))
    assert torch.allclose(r, g.exp_dense(xi), atol=1e-4)  # low-rank closed form == textbook n x n route
    z = torch.randn(10, 7)
    assert torch.allclose(g.act(xi, z), (r @ z.unsqueeze(-1)).squeeze(-1), atol=1e-4)  # low-rank == dense
    assert torch.allclose(g.act(r, z), g.act(xi, z), atol=1e-4)
    assert torch.allclose(g.act(xi, z).norm(dim=-1), z.norm(dim=-1), atol=1e-4)
    assert torch.allclose(g.compose(xi, xi), r @ r) and g.wrap(xi) is xi


def test_so_cayley_matches_exp_to_second_order():
    xi = torch.randn(4, SO(6, 2).algebra_dim, dtype=torch.float64)
    # A is bilinear in xi, so xi * s scales A by s^2; the gap is O(|A|^3): 10x smaller A -> ~1000x smaller gap
    errs = [(SO(6, 2, "cayley").exp(xi * s) - SO(6, 2).exp(xi * s)).abs().max().item() for s in (0.3, 0.3 / 10 ** 0.5)]
    assert errs[1] < 1e-3 and 500 < errs[0] / errs[1] < 2000


def test_so_exp_log_round_trip():
    g = SO(8, rank=2)
    xi = torch.randn(6, g.algebra_dim, dtype=torch.float64) * 0.4
    a = g.generator(xi)
    assert torch.linalg.matrix_norm(a, ord=2).max() < PI  # angles < pi: the principal log is defined
    assert torch.allclose(g.log(g.exp(xi)), a, atol=1e-8)
    assert torch.allclose(g.log(g.exp(xi * 1e-3)), a * 1e-6, atol=1e-14)  # series branch (A is bilinear in xi)
    assert torch.allclose(g.log(torch.eye(8).expand(2, 8, 8)), torch.zeros(2, 8, 8))
    r0, r1 = g.exp(xi), g.exp(xi.flip(0))
    assert torch.allclose(g.geodesic(r0, r1, 0.0), r0, atol=1e-8)
    assert torch.allclose(g.geodesic(xi, xi.flip(0), 1.0), r1, atol=1e-6)
    assert_rotation(g.geodesic(r0, r1, torch.rand(6)))


def test_so_plane_log():
    """A plane rotation by angle a has log = a (w u^T - u w^T)."""
    u, v = unit(torch.randn(3, 5, dtype=torch.float64)), unit(torch.randn(3, 5, dtype=torch.float64))
    r = plane_rotation(u, v)
    assert torch.allclose(torch.linalg.matrix_exp(SO(5).log(r)), r, atol=1e-8)


def test_plane_rotation_maps_u_to_v():
    u, v, z = torch.randn(8, 9) * 3, torch.randn(8, 9), torch.randn(8, 9)
    r = plane_rotation(u, v)
    assert_rotation(r)
    assert torch.allclose((r @ unit(u).unsqueeze(-1)).squeeze(-1), unit(v), atol=1e-5)
    assert torch.allclose((r @ z.unsqueeze(-1)).norm(dim=(-1, -2)), z.norm(dim=-1), atol=1e-4)
    assert SO.plane_rotation is plane_rotation
    # near-identical and antipodal pairs
    near = u + 1e-8 * torch.randn_like(u)
    assert torch.allclose(plane_rotation(u, near), torch.eye(9).expand(8, 9, 9), atol=1e-5)
    for v_anti in (-u, -u + 1e-5 * torch.randn_like(u)):  # exactly and nearly antipodal
        flip = plane_rotation(u, v_anti)
        assert_rotation(flip)
        assert torch.allclose((flip @ unit(u).unsqueeze(-1)).squeeze(-1), unit(v_anti), atol=1e-5)


def test_geodesic_on_sphere():
    u, v = torch.randn(8, 6), torch.randn(8, 6)
    assert torch.allclose(geodesic_on_sphere(u, v, 0.0), unit(u), atol=1e-6)
    assert torch.allclose(geodesic_on_sphere(u, v, 1.0), unit(v), atol=1e-5)
    t = torch.rand(8)
    p = geodesic_on_sphere(u, v, t)
    assert torch.allclose(p.norm(dim=-1), torch.ones(8), atol=1e-6)
    assert torch.allclose(p, (plane_rotation(u, v, t) @ unit(u).unsqueeze(-1)).squeeze(-1), atol=1e-5)
    ang = lambda x, y: torch.arccos((unit(x) * unit(y)).sum(-1).clamp(-1, 1))  # noqa: E731
    assert torch.allclose(ang(u, p), t * ang(u, v), atol=1e-4)  # constant speed along the great circle


# --- precision and gradients ---------------------------------------------------------------------------
def test_float32_ops_disables_autocast():
    seen = {}

    @float32_ops
    def probe(x):
        seen["dtype"], seen["autocast"] = x.dtype, torch.is_autocast_enabled("cpu")
        return x @ x.T

    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(4, 4, dtype=torch.bfloat16)
        assert (x.float() @ x.float().T).dtype == torch.bfloat16  # autocast really is on out here
        out = probe(x)
    assert seen == {"dtype": torch.float32, "autocast": False} and out.dtype == torch.bfloat16


def test_group_ops_float32_under_autocast():
    tor, so = Torus(8), SO(12, rank=2)
    theta, z = torch.randn(16, 8) * 3, torch.randn(16, 16)
    xi = torch.randn(16, so.algebra_dim) * 0.3
    ref_act, ref_r = tor.act(theta, z), so.exp(xi)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tor.act(theta.bfloat16(), z.bfloat16())
        round_trip = tor.log(tor.exp(theta))
        r = so.exp(xi)
        lg = so.log(r)
        act_so = so.act(xi, z[:, :12])
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref_act, atol=0.1, rtol=0.02)
    assert round_trip.dtype == torch.float32 and torch.allclose(round_trip, tor.wrap(theta), atol=1e-6)
    assert r.dtype == torch.float32 and torch.allclose(r, ref_r, atol=1e-6)
    assert_rotation(r)  # a bf16 matmul would leave errors ~1e-2
    assert torch.allclose(lg, so.generator(xi), atol=1e-4) and act_so.dtype == torch.float32


def test_gradients():
    tor = Torus(2)
    theta, z = torch.randn(3, 2, dtype=torch.float64, requires_grad=True), torch.randn(3, 4, dtype=torch.float64,
                                                                                      requires_grad=True)
    assert torch.autograd.gradcheck(tor.act, (theta, z))
    assert torch.autograd.gradcheck(lambda a, b: tor.geodesic(a, b, 0.3), (theta, theta.detach().flip(0)))
    for method in METHODS:
        g = SO(4, rank=1, method=method)
        xi = (torch.randn(2, g.algebra_dim, dtype=torch.float64) * 0.5).requires_grad_()
        zz = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
        # fast_mode: torch's matrix_exp backward costs ~35 ms per call on CPU even at 4 x 4
        assert torch.autograd.gradcheck(g.exp, (xi,), fast_mode=True)
        assert torch.autograd.gradcheck(g.exp_dense, (xi,), fast_mode=True)
        assert torch.autograd.gradcheck(g.act, (xi, zz), fast_mode=True)
    u, v = (torch.randn(2, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda a, b: geodesic_on_sphere(a, b, 0.4), (u, v))


def test_build_group():
    assert build_group("torus", 10).k == 5
    assert repr(build_group("so", 6, rank=3, method="cayley")) == "SO(n=6, rank=3, method='cayley')"
    with pytest.raises(ValueError, match="valid: torus, so"):
        build_group("sphere", 4)
    with pytest.raises(ValueError, match="valid: matrix_exp, cayley"):
        SO(4, method="pade")
