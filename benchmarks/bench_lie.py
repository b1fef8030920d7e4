"""Forward+backward cost of a group action on a batch of latents: Torus(k) vs SO(2k, rank 4), CPU, 2 threads.

Rows: the torus's closed form; SO's low-rank ``act`` (coefficients, never an n x n matrix) with matrix_exp and
Cayley; and the textbook route ``exp_dense(xi) @ z`` (n x n ``matrix_exp`` / ``solve``) that a naive
implementation pays. A dense row whose probe (batch 16, scaled to the full batch) predicts more than 10 s per call
is skipped; one that raises (torch 2.13 CPU: batched LU on n >~ 200 with 2 threads) records the error.

Other jobs may share the CPUs, so the rows are timed in interleaved rounds (a burst of load hits every row, not
one) and the table gives the median and the min over rounds, with the load average. ``OMP_WAIT_POLICY`` defaults
to PASSIVE here: with spinning OpenMP workers, two threads on two busy cores measured 100-300x slower (every
parallel region waits for a descheduled spinner), which timed the scheduler, not the group.

    python benchmarks/bench_lie.py      # from the repository root; ~1 min; writes benchmarks/results/bench_lie.*
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP; see the module doc

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scfate.lie import SO, Torus  # noqa: E402
from scfate.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

BATCH, RANK, KS = 256, 4, (16, 64, 192)
VARIANTS = ("torus", "matrix_exp/lowrank", "cayley/lowrank", "matrix_exp/dense", "cayley/dense")
MAX_CALL_S, SLOW_CALL_S = 10.0, 0.5  # skip above MAX; rows above SLOW join only the first SLOW_ROUNDS rounds
ROUNDS, SLOW_ROUNDS, ROUND_TARGET_S = 15, 3, 0.03  # fast rows repeat within a round up to ~ROUND_TARGET_S
OUT = ROOT / "benchmarks" / "results"


def make_step(variant: str, k: int, batch: int):
    """A closure running one forward+backward pass; inputs are leaves that need gradients (as in training)."""
    n = 2 * k
    z = torch.randn(batch, n, requires_grad=True)
    if variant == "torus":
        group, xi = Torus(k), (torch.randn(batch, k) * 2).requires_grad_()
    else:
        group = SO(n, rank=RANK, method=variant.split("/")[0])
        xi = (torch.randn(batch, group.algebra_dim) * 0.1).requires_grad_()
    dense = variant.endswith("/dense")

    def step():
        xi.grad = z.grad = None
        out = group.act(group.exp_dense(xi), z) if dense else group.act(xi, z)
        out.square().sum().backward()

    return step


def time_calls(step, calls: int = 1) -> float:
    """Mean seconds per call over ``calls`` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - t0) / calls


def prepare(variant: str, k: int) -> dict:
    """The row's description plus, unless skipped, its warmed-up step and calls per round."""
    method, path = ("closed form", "closed form") if variant == "torus" else variant.split("/")
    row = {"k": k, "latent_dim": 2 * k, "group": "torus" if variant == "torus" else "SO",
           "rank": None if variant == "torus" else RANK, "method": method, "path": path, "batch": BATCH,
           "skipped": None, "times": []}
    try:
        if path == "dense":  # probe on a small batch so that a minutes-long call is never started
            probe = make_step(variant, k, 16)
            probe()
            est = time_calls(probe) * BATCH / 16
            if est > MAX_CALL_S:
                return {**row, "skipped": f"probe predicts {est:.0f} s/call (> {MAX_CALL_S:.0f} s)"}
        step = make_step(variant, k, BATCH)
        first = min(time_calls(step), time_calls(step))  # warm-up (allocator, kernels) and an estimate
    except RuntimeError as err:
        return {**row, "skipped": f"failed (see module doc): {str(err).splitlines()[0][:45]}..."}
    return {**row, "step": step, "calls": max(1, int(ROUND_TARGET_S / first)), "slow": first > SLOW_CALL_S}


def to_markdown(rows: list[dict], meta: dict) -> str:
    load = meta["loadavg_1min_start_end"]
    lines = [f"# bench_lie: forward+backward of `act`, batch {BATCH}, {meta['threads']} CPU threads", "",
             f"torch {meta['torch']}, {meta['machine']}, {meta['cpus']} CPUs, OMP_WAIT_POLICY={meta['omp_wait_policy']}; {ROUNDS} interleaved rounds "
             f"({SLOW_ROUNDS} for rows slower than {SLOW_CALL_S} s); total {meta['total_s']:.0f} s; 1-min load "
             f"average {load[0]:.1f} -> {load[1]:.1f} (other jobs share the machine: min is the cleaner number).", "",
             "`lowrank` = `SO.act(xi, z)`; `dense` = `SO.act(SO.exp_dense(xi), z)`; x torus = ratio of mins.", "",
             "| k | latent | group | method | path | median ms | min ms | rounds | x torus |",
             "|---|---|---|---|---|---|---|---|---|"]
    torus = {r["k"]: r["min_ms"] for r in rows if r["group"] == "torus"}
    for r in rows:
        group = "Torus" if r["group"] == "torus" else f"SO({r['latent_dim']}, r={r['rank']})"
        cells = [str(r["k"]), str(r["latent_dim"]), group, r["method"], r["path"]]
        if r["skipped"]:
            cells += [r["skipped"], "", "", ""]
        else:
            cells += [f"{r['median_ms']:.3f}", f"{r['min_ms']:.3f}", str(r["rounds"]),
                      f"{r['min_ms'] / torus[r['k']]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    rows = [prepare(v, k) for k in KS for v in VARIANTS]
    for i in range(ROUNDS):
        for r in rows:
            if not r["skipped"] and (i < SLOW_ROUNDS or not r["slow"]):
                r["times"].append(time_calls(r["step"], r["calls"]))
    for r in rows:
        times = r.pop("times")
        r.pop("step", None), r.pop("slow", None)
        if not r["skipped"]:
            r.update(median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times), rounds=len(times))
        print(f"k={r['k']:4d} {r['method']:12s} {r['path']:12s} "
              + (r["skipped"] or f"median {r['median_ms']:10.3f} ms  min {r['min_ms']:10.3f} ms"), flush=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": BATCH, "rank": RANK,
            "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
            "python": platform.python_version(), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "cpus": os.cpu_count(), "total_s": time.perf_counter() - t0,
            "loadavg_1min_start_end": [load0, os.getloadavg()[0]]}
    atomic_write_json(OUT / "bench_lie.json", {"meta": meta, "rows": rows})
    atomic_write_text(OUT / "bench_lie.md", to_markdown(rows, meta))
    print(f"wrote {OUT / 'bench_lie.json'} and bench_lie.md in {meta['total_s']:.0f} s")


if __name__ == "__main__":
    main()
