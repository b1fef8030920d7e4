"""AdamW on torch's fused kernel wherever the parameters allow it.

The fused kernel updates every parameter of a step in one pass; the ``foreach`` one makes a pass per arithmetic op
(about eight) over all of them. Inside a training step of the default backbone on 2 CPU cores that is 0.8-1.0 vs
1.8-2.4 ms, 1-2.6 ms of a 13-18 ms step (``benchmarks/bench_optim.py``). Both compute AdamW's update, to float
rounding (tests/test_optim.py checks the fused one against the closed form).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

# where torch has a fused AdamW kernel (torch.optim.AdamW's ``fused`` documentation), and the dtypes it takes
FUSED_DEVICES = ("cpu", "cuda")
FUSED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def adamw(params: Iterable, **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kwargs)``, fused when every parameter is a floating tensor on a device with
    the fused kernel, ``foreach`` otherwise (an MPS or XPU model, say). ``params``: tensors or param-group dicts."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in FUSED_DEVICES and p.dtype in FUSED_DTYPES for p in tensors)
    return torch.optim.AdamW(groups, **kwargs, **({"fused": True} if fused else {"foreach": True}))
