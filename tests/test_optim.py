"""scfate.nn.optim.adamw: the fused kernel where it exists, the same update as AdamW's closed form."""

import torch

from scfate.nn.optim import adamw


def _manual_adamw(p, grads, lr, betas, eps, wd):
    """Loshchilov & Hutter's AdamW, written out: decoupled decay, bias-corrected moments."""
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def test_fused_on_cpu_and_equal_to_the_closed_form():
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(7, 5, generator=gen, dtype=torch.float64) for _ in range(25)]
    p = torch.nn.Parameter(p0.clone())
    opt = adamw([p], lr=0.01, weight_decay=0.1)
    assert opt.defaults["fused"] is True
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = _manual_adamw(p0, grads, 0.01, (0.9, 0.999), 1e-8, 0.1)
    assert torch.allclose(p.detach(), expected, atol=1e-12, rtol=0)
    assert not torch.allclose(p0, expected, atol=1e-3)  # the steps did move it


def test_param_groups_keep_their_own_lr_and_decay():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = adamw([{"params": [a], "weight_decay": 0.5}, {"params": [b], "lr": 0.1, "weight_decay": 0.0}], lr=0.01)
    a.grad, b.grad = torch.zeros(3), torch.zeros(3)
    opt.step()  # zero gradient: only the decay moves a parameter (Adam's step is 0 / (0 + eps) = 0)
    assert torch.allclose(a.detach(), torch.full((3,), 1 - 0.01 * 0.5))
    assert torch.equal(b.detach(), torch.ones(3))


def test_foreach_where_no_fused_kernel():
    p = torch.nn.Parameter(torch.empty(3, device="meta"))
    opt = adamw([p], lr=1e-3)
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    q = torch.nn.Parameter(torch.zeros(3, dtype=torch.float32))
    assert adamw(q for q in [q]).defaults["fused"]  # a generator of parameters, as module.parameters() gives
