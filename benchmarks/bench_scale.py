"""Genome-wide scale on one machine: preparation and training from a backed h5ad of 100k, 300k and 1M cells.

python benchmarks/bench_scale.py [--sizes 100000 300000 1000000] [--genes 2000] [--threads 2] [--workdir DIR]
Writes benchmarks/results/bench_scale.{json,md}. For each size it writes a synthetic screen (benchmarks/scale_data.py,
in chunks) and runs, in a fresh process so that peak memory (VmHWM) is that size's alone:
``prepare`` with ``data.backed=true`` (from disk, in chunks), the I/O floor (the training batches' rows read straight
through h5py), the loader alone, a fixed number of backbone and flow-head training steps reading batches from the
file, and the KRR prior fitted in between. The smallest size is also trained in memory (``data.backed=false``), the
reference the backed throughput is held to. Run it alone on the machine: it times everything.
Targets (issue 14): peak RSS at 1M cells < 4 GB and <= 1.25x the smallest size's; preparation time linear in cells
(seconds per cell at the largest size <= 1.25x the smallest's); backed training >= 1/2 of min(I/O floor, in-memory).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RSS_LIMIT_MB, RSS_RATIO, PREP_RATIO, TRAIN_RATIO = 4096, 1.25, 1.25, 0.5


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child
    would report its parent's peak (the parent that just wrote a 1M-cell file) as its own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: macOS, whose ru_maxrss is in bytes
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def compose_cfg(file: Path, work: Path, name: str, backed: bool):
    from hydra import compose, initialize_config_dir

    from scfate.pipelines.config import CONF_DIR

    overrides = [f"paths.data_dir={work / 'data'}", f"paths.artifacts_dir={work / 'artifacts'}", "dataset=k562",
                 f"data.path={file}", f"data.name={name}", "data.hf_repo=null", "data.hf_file=null",
                 f"data.backed={str(backed).lower()}", "data.n_hvg=1000", "data.features.go=null",
                 "data.features.progeny=null", "data.features.symbols=null", "data.features.aliases=null"]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose("train", overrides=overrides)


def loader_cells_per_s(dm, steps: int, reader=None) -> float:
    """Batches of the training loader alone (no model), with ``reader`` in place of the data module's own."""
    own = dm.reader
    dm.reader = reader or own
    try:
        loader = iter(dm.train_dataloader())
        start = time.perf_counter()
        for _ in range(steps):
            next(loader)
        return 2 * dm.batch_size * steps / (time.perf_counter() - start)
    finally:
        dm.reader = own


def train_cells_per_s(module, loss, dm, steps: int, warmup: int = 5) -> float:
    opt = module.configure_optimizers()
    opt = opt[0] if isinstance(opt, (list, tuple)) else opt
    loader = iter(dm.train_dataloader())
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        opt.zero_grad()
        loss(next(loader)).backward()
        opt.step()
    return 2 * dm.batch_size * steps / (time.perf_counter() - start)


def run_one(file: Path, work: Path, backed: bool, steps: int, threads: int) -> dict:
    """One size in this process: every phase's seconds or cells/s, and the peak RSS after each."""
    import torch
    from hydra.utils import instantiate
    from scale_data import H5pyRows

    from scfate.data.prepare import prepare
    from scfate.data.splits import unit_perturbation
    from scfate.pipelines.config import prior_settings
    from scfate.pipelines.flow import head_behaviour
    from scfate.prior.fit import fit_prior, perturbation_features

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out, rss = {"backed": backed}, {"start": peak_rss_mb()}
    cfg = compose_cfg(file, work, file.stem, backed)
    t = time.perf_counter()
    data = prepare(instantiate(cfg.data), cfg.paths.data_dir)
    out["prepare_s"], rss["prepare"] = time.perf_counter() - t, peak_rss_mb()
    t = time.perf_counter()
    dm = instantiate(cfg.datamodule, _partial_=True)(data=data, val_mode="perturbations")
    dm.setup("fit")
    dm.steps_per_epoch = steps + 5  # one epoch of the loader holds the warm-up and the timed steps
    out["setup_s"], rss["setup"] = time.perf_counter() - t, peak_rss_mb()
    if backed:
        out["io_floor_cells_per_s"] = loader_cells_per_s(dm, steps, H5pyRows(data.cache_dir / "prepared.h5ad"))
    out["loader_cells_per_s"] = loader_cells_per_s(dm, steps)
    model = instantiate(cfg.model, n_genes=dm.n_genes, n_contexts=len(dm.contexts), perturbations=dm.perturbations,
                        atlas_perturbations=sorted({unit_perturbation(e) for e in data.split.train}), _convert_="all")
    out["backbone_cells_per_s"] = train_cells_per_s(model, lambda b: model._total(model._losses(b)), dm, steps)
    rss["backbone"] = peak_rss_mb()
    model.eval().requires_grad_(False)
    t = time.perf_counter()
    unit_feats, pert_feats = perturbation_features(dm)
    behaviour = head_behaviour(cfg.prior.name)
    prior_mu, info = fit_prior(prior_settings(cfg), model, dm, pert_feats, unit_feats, behaviour["decode"])
    out["prior_s"], rss["prior"] = time.perf_counter() - t, peak_rss_mb()
    head = instantiate(cfg.flow.head, **behaviour, backbone=model, unit_features=unit_feats, prior_mu=prior_mu,
                       prior_offset=info.pop("offset", None), prior_delta=info.pop("delta", None),
                       n_contexts=len(dm.contexts))
    out["flow_cells_per_s"] = train_cells_per_s(head, head.fm_loss, dm, steps)
    rss["flow"] = peak_rss_mb()
    out.update(cells=int(data.adata.n_obs), genes=int(data.adata.n_vars), steps=steps, batch_size=dm.batch_size,
               peak_rss_mb=peak_rss_mb(), rss_after_mb={k: round(v) for k, v in rss.items()})
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def child(file: Path, work: Path, backed: bool, steps: int, threads: int) -> dict:
    """``run_one`` in a fresh interpreter, so its peak memory is this size's own; its wall time measured around it."""
    result = work / f"result-{'backed' if backed else 'memory'}.json"
    cmd = [sys.executable, __file__, "--one", str(file), "--workdir", str(work), "--steps", str(steps),
           "--threads", str(threads), *([] if backed else ["--in-memory"])]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return {**json.loads(result.read_text()), "wall_s": round(time.perf_counter() - start, 1)}


def checks(rows: list[dict]) -> dict:
    """The issue's targets, each with the numbers it compares."""
    small, large = rows[0], rows[-1]
    memory = small.get("in_memory") or {}
    per_cell = [r["backed"]["prepare_s"] / r["cells"] for r in rows]
    out = {"peak_rss_largest_mb": large["backed"]["peak_rss_mb"],
           "peak_rss_ratio": round(large["backed"]["peak_rss_mb"] / small["backed"]["peak_rss_mb"], 3),
           "prepare_s_per_cell_ratio": round(per_cell[-1] / per_cell[0], 3)}
    out["rss_under_limit"] = out["peak_rss_largest_mb"] < RSS_LIMIT_MB
    out["rss_flat"] = out["peak_rss_ratio"] <= RSS_RATIO
    out["prepare_linear"] = out["prepare_s_per_cell_ratio"] <= PREP_RATIO
    for stage in ("backbone", "flow"):
        ref_s = min(small["backed"]["io_floor_cells_per_s"], memory.get(f"{stage}_cells_per_s", float("inf")))
        worst = min(r["backed"][f"{stage}_cells_per_s"] for r in rows)
        out[f"{stage}_throughput_vs_reference"] = round(worst / ref_s, 3)
        out[f"{stage}_throughput_ok"] = worst >= TRAIN_RATIO * ref_s
        out[f"{stage}_reference_cells_per_s"] = round(ref_s)
    return out


def markdown(result: dict) -> str:
    c = result["checks"]
    lines = ["# Scale: preparation and training from a backed h5ad", "",
             f"{result['env']['machine']}, torch {result['env']['torch']}, {result['env']['threads']} threads, run "
             f"alone. `{result['command']}`. Synthetic CRISPRi screens ({result['genes']} genes, 100 perturbations, "
             "counts as CSR, cells in random order), prepared to 1,000 HVGs from disk in chunks; "
             f"{result['steps']} timed steps of batch 64 control + 64 perturbed cells, read from the prepared file.",
             "", "| cells | nnz | write s | prepare s | setup s | I/O floor cells/s | loader cells/s | backbone "
             "cells/s | prior s | flow cells/s | peak RSS MB | wall s |", "|" + " --- |" * 12]
    for r in result["rows"]:
        b = r["backed"]
        lines.append(f"| {r['cells']:,} | {r['file']['nnz']:,} | {r['write_s']} | {b['prepare_s']} | {b['setup_s']} | "
                     f"{b['io_floor_cells_per_s']:.0f} | {b['loader_cells_per_s']:.0f} | "
                     f"{b['backbone_cells_per_s']:.0f} | {b['prior_s']} | {b['flow_cells_per_s']:.0f} | "
                     f"{b['peak_rss_mb']:.0f} | {b['wall_s']} |")
        if m := r.get("in_memory"):
            lines.append(f"| {r['cells']:,} in memory | | | | {m['setup_s']} | | {m['loader_cells_per_s']:.0f} | "
                         f"{m['backbone_cells_per_s']:.0f} | {m['prior_s']} | {m['flow_cells_per_s']:.0f} | "
                         f"{m['peak_rss_mb']:.0f} | {m['wall_s']} |")
    lines += ["", "Sequential h5py read of the raw X (the floor of one preparation pass): "
              + ", ".join(f"{r['cells']:,} cells {r['sequential_read']['seconds']} s "
                          f"({r['sequential_read']['mb_per_s']} MB/s)" for r in result["rows"]), "",
              "| target | measured | met |", "| --- | --- | --- |",
              f"| peak RSS at the largest size < {RSS_LIMIT_MB} MB | {c['peak_rss_largest_mb']:.0f} MB | "
              f"{c['rss_under_limit']} |",
              f"| peak RSS largest / smallest <= {RSS_RATIO} | {c['peak_rss_ratio']} | {c['rss_flat']} |",
              f"| prepare s per cell, largest / smallest <= {PREP_RATIO} | {c['prepare_s_per_cell_ratio']} | "
              f"{c['prepare_linear']} |"]
    for stage in ("backbone", "flow"):
        lines.append(f"| {stage} training (slowest size) >= {TRAIN_RATIO} x min(I/O floor, in memory) | "
                     f"{c[f'{stage}_throughput_vs_reference']} x | {c[f'{stage}_throughput_ok']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=ROOT / "artifacts" / "bench_scale")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: one size in this process
    ap.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from scfate.utils.io import atomic_write_json, atomic_write_text

    if args.one:
        result = run_one(args.one, args.workdir, not args.in_memory, args.steps, args.threads)
        atomic_write_json(args.workdir / f"result-{'memory' if args.in_memory else 'backed'}.json", result)
        return
    import torch
    from scale_data import sequential_read, write_screen

    rows = []
    for i, n in enumerate(sorted(args.sizes)):
        work = args.workdir / f"{n}"
        if work.exists():  # a fresh preparation every time: its cache would make prepare_s a read of meta.json
            shutil.rmtree(work)
        work.mkdir(parents=True)
        file = work / f"scale_{n}.h5ad"
        start = time.perf_counter()
        info = write_screen(file, n, args.genes)
        row = {"cells": n, "file": info, "write_s": round(time.perf_counter() - start, 1),
               "sequential_read": sequential_read(file)}
        row["backed"] = child(file, work, True, args.steps, args.threads)
        if i == 0:
            row["in_memory"] = child(file, work, False, args.steps, args.threads)
        rows.append(row)
        print(json.dumps(row), flush=True)
        file.unlink()  # a 1M-cell screen and its prepared copy are a few GB: keep only the numbers
        shutil.rmtree(work / "data")
    result = {"command": "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:]),
              "env": {"torch": torch.__version__, "threads": args.threads, "python": platform.python_version(),
                      "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs"},
              "genes": args.genes, "steps": args.steps, "rows": rows}
    result["checks"] = checks(rows)
    atomic_write_json(args.results / "bench_scale.json", result)
    atomic_write_text(args.results / "bench_scale.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
