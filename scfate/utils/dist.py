"""Which process of a multi-process (DDP) run this is, for the rule such a run keeps: every rank computes, rank 0
alone writes, and a rank that needs what rank 0 wrote waits for it.

Lightning's DDP runs the entry point once per process: on one machine its launcher re-runs the command with
``LOCAL_RANK`` set (``trainer=ddp``), on SLURM ``srun`` starts every task with ``SLURM_PROCID``. So the rank is read
from the environment the way Lightning reads it, and is known before any process group exists (that is made by the
first ``trainer.fit``); once one exists, torch.distributed's own answer wins.
"""

from __future__ import annotations

import os

# Lightning's order (lightning_fabric.utilities.rank_zero._get_rank): the first one set is the global rank
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def _group():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def global_rank() -> int:
    group = _group()
    if group is not None:
        return int(group.get_rank())
    for name in RANK_VARIABLES:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return 0


def world_size() -> int:
    group = _group()
    if group is not None:
        return int(group.get_world_size())
    return int(os.environ.get("WORLD_SIZE") or 1)


def is_rank_zero() -> bool:
    return global_rank() == 0


def barrier() -> None:
    """Wait until every rank is here (a no-op without a process group): after rank 0 has written a file that the
    other ranks read next, e.g. an exported backbone the flow stage loads on every rank."""
    group = _group()
    if group is not None:
        group.barrier()
