"""Training throughput of the RotationAE backbone on CPU (cells per second: control + perturbed cells per step).

python benchmarks/bench_backbone.py [--steps 60] [--threads 2]
Writes benchmarks/results/bench_backbone.{json,md}. Uses the built-in synthetic dataset (default size) and the
default model config, at theta_dim 32 (the default) and 192 (the card's Norman size); data loading is included,
as in training.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scfate.pipelines.config import CONF_DIR  # noqa: E402
from scfate.utils.io import atomic_write_json, atomic_write_text  # noqa: E402


def default_datamodule(threads: int):
    """The default train config and its synthetic datamodule, prepared (also used by bench_optim.py)."""
    torch.set_num_threads(threads)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=[f"paths.data_dir={tempfile.mkdtemp(prefix='scfate-bench-')}"])
    dm = instantiate(cfg.datamodule)(spec=instantiate(cfg.data), data_dir=cfg.paths.data_dir, val_mode="heldout_cells")
    dm.prepare_data()
    dm.setup("fit")
    return cfg, dm


def make_backbone(cfg, dm, **overrides):
    """The configured backbone for ``dm``, seeded, with ``overrides`` (theta_dim, group) on the model config."""
    torch.manual_seed(0)
    return instantiate(cfg.model, n_genes=dm.n_genes, n_contexts=len(dm.contexts), perturbations=dm.perturbations,
                       atlas_perturbations=list(dm.data.split.train), **overrides, _convert_="all")


def throughput(cfg, dm, theta_dim: int, group: str, steps: int) -> dict:
    model = make_backbone(cfg, dm, theta_dim=theta_dim, group=group)
    opt = model.configure_optimizers()
    loader = iter(dm.train_dataloader())
    warmup = 5
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        batch = next(loader)
        opt.zero_grad()
        loss = model._total(model._losses(batch))
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    cells = 2 * dm.batch_size * steps
    return {"theta_dim": theta_dim, "group": group, "steps": steps, "batch_size": dm.batch_size,
            "n_genes": dm.n_genes, "seconds": round(seconds, 3), "cells_per_s": round(cells / seconds, 1),
            "steps_per_s": round(steps / seconds, 2), "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cfg, dm = default_datamodule(args.threads)
    throughput(cfg, dm, 32, "torus", 20)  # process warm-up (thread pools, allocator, page cache), not reported
    rows = []
    for k, g in ((32, "torus"), (192, "torus"), (32, "so")):
        runs = sorted((throughput(cfg, dm, k, g, args.steps) for _ in range(3)), key=lambda r: r["cells_per_s"])
        rows.append({**runs[1], "cells_per_s_runs": [r["cells_per_s"] for r in runs]})  # median of 3
    env = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
           "processor": platform.processor() or platform.machine()}
    out = ROOT / "benchmarks" / "results"
    atomic_write_json(out / "bench_backbone.json", {"env": env, "results": rows})
    lines = ["# Backbone training throughput (CPU)", "",
             f"torch {env['torch']}, {args.threads} threads, synthetic default dataset ({dm.n_genes} genes), batch "
             f"{dm.batch_size} control + {dm.batch_size} perturbed cells per step, {args.steps} timed steps after 5 "
             "warm-up steps, median of 3 runs, data loading included. `python benchmarks/bench_backbone.py`.", "",
             "| group | theta_dim | params | cells/s | steps/s |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['group']} | {r['theta_dim']} | {r['params']:,} | {r['cells_per_s']:.0f} | {r['steps_per_s']:.1f} |"
              for r in rows]
    atomic_write_text(out / "bench_backbone.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
