"""The optimizer's share of a training step on CPU: AdamW's ``foreach`` kernels against its fused kernel
(scfate.nn.optim.adamw), for the backbone and the flow head of the default config.

python benchmarks/bench_optim.py [--steps 60] [--threads 2]
Writes benchmarks/results/bench_optim.{json,md}. Per model and optimizer: the optimizer step alone and a whole
training step (forward, backward, step; data loading included), timed over ``--steps`` steps after 5 warm-up
steps, in 3 interleaved rounds (foreach, fused, foreach, ...) so the machine's drift hits both; median reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_backbone import default_datamodule, make_backbone  # noqa: E402  (beside this script)

from scfate.utils.io import atomic_write_json, atomic_write_text  # noqa: E402


def build(cfg, dm, which: str):
    backbone = make_backbone(cfg, dm)
    if which == "backbone":
        return backbone, lambda b: backbone._total(backbone._losses(b))
    feats = torch.as_tensor(dm.data.features.matrix, dtype=torch.float32)
    prior = torch.zeros(len(dm.perturbations), backbone.hparams.theta_dim)
    head = instantiate(cfg.flow.head, backbone=backbone, unit_features=feats, prior_mu=prior,
                       n_contexts=len(dm.contexts))
    return head, head.fm_loss


def timed(cfg, dm, which: str, fused: bool, steps: int) -> dict:
    model, loss_of = build(cfg, dm, which)
    params = [p for g in model.configure_optimizers().param_groups for p in g["params"]]
    opt = torch.optim.AdamW(params, lr=1e-3, **({"fused": True} if fused else {"foreach": True}))
    loader, step_s, total = iter(dm.train_dataloader()), 0.0, 0.0
    for i in range(5 + steps):
        t0 = time.perf_counter()
        batch = next(loader)
        opt.zero_grad()
        loss_of(batch).backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if i >= 5:
            step_s, total = step_s + t2 - t1, total + t2 - t0
    return {"optimizer_ms": 1e3 * step_s / steps, "train_step_ms": 1e3 * total / steps,
            "params": sum(p.numel() for p in params)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cfg, dm = default_datamodule(args.threads)
    timed(cfg, dm, "backbone", True, 10)  # process warm-up (thread pools, allocator), not reported
    rows = []
    for which in ("backbone", "flow head"):
        runs = {False: [], True: []}
        for _ in range(3):
            for fused in (False, True):
                runs[fused].append(timed(cfg, dm, which, fused, args.steps))
        for fused, rs in runs.items():
            rows.append({"model": which, "optimizer": "fused" if fused else "foreach", "params": rs[0]["params"],
                         **{k: round(statistics.median(r[k] for r in rs), 3) for k in ("optimizer_ms", "train_step_ms")},
                         "train_step_ms_runs": [round(r["train_step_ms"], 3) for r in rs]})
    env = {"torch": torch.__version__, "threads": args.threads, "load_average": list(os.getloadavg())}
    out = ROOT / "benchmarks" / "results"
    atomic_write_json(out / "bench_optim.json", {"env": env, "steps": args.steps, "results": rows})
    lines = ["# AdamW: foreach vs fused kernel (CPU)", "",
             f"torch {env['torch']}, {args.threads} threads, default config on the synthetic dataset, batch "
             f"{dm.batch_size} + {dm.batch_size} cells, {args.steps} timed steps after 5 warm-up steps, 3 interleaved "
             "rounds, median. `python benchmarks/bench_optim.py`. Load average at the end: "
             + ", ".join(f"{x:.2f}" for x in env["load_average"]) + " (2-core machine).", "",
             "| model | params | optimizer | optimizer step (ms) | training step (ms) |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['params']:,} | {r['optimizer']} | {r['optimizer_ms']:.2f} | {r['train_step_ms']:.2f} |"
              for r in rows]
    atomic_write_text(out / "bench_optim.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
