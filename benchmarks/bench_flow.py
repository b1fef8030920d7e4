"""Flow head on CPU: training throughput (cells/s), prediction throughput (cells/s) for n_steps 1, 2, 20, 128, and
the peak memory (max RSS) of the default `python train.py`.

python benchmarks/bench_flow.py [--threads 2] [--skip-peak]
Writes benchmarks/results/bench_flow.{json,md}. Needs a default run's backbone (it trains one if missing).
"""

from __future__ import annotations

import argparse
import os
import subprocess
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


def peak_memory_of_default_run(tmp: Path) -> tuple[float, float]:
    """(max RSS in MiB, wall seconds) of `python train.py` in a child process: that child's own rusage (os.wait4;
    RUSAGE_CHILDREN would be the largest of every child this process has waited for). ru_maxrss is in KiB."""
    cmd = [sys.executable, "train.py", f"hydra.run.dir={tmp / 'run'}", f"paths.data_dir={tmp / 'data'}",
           f"paths.artifacts_dir={tmp / 'artifacts'}"]
    start = time.perf_counter()
    with open(tmp / "train.log", "wb") as log:  # a file, not a pipe: nothing reads a pipe while wait4 blocks
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = (tmp / "train.log").read_text(errors="replace")[-2000:]
        raise subprocess.CalledProcessError(proc.returncode, cmd, output=tail)
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-peak", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="scfate-bench-flow-"))
    peak, wall = (None, None) if args.skip_peak else peak_memory_of_default_run(tmp)
    art = tmp / "artifacts" if not args.skip_peak else tmp / "artifacts2"
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=[f"paths.data_dir={tmp / 'data'}", f"paths.artifacts_dir={art}",
                                          "trainer.max_epochs=1"])
    from scfate.data.prepare import prepare
    from scfate.models.export import load_backbone
    from scfate.pipelines.backbone import resolve_backbone
    from scfate.pipelines.config import prior_settings
    from scfate.pipelines.flow import head_behaviour
    from scfate.prior.fit import fit_prior, perturbation_features

    data = prepare(instantiate(cfg.data), cfg.paths.data_dir)
    bb_path = resolve_backbone(cfg, data)
    dm = instantiate(cfg.datamodule)(data=data, val_mode="perturbations")
    dm.setup("fit")
    backbone, _ = load_backbone(bb_path)
    unit_feats, per = perturbation_features(dm)
    prior_mu, _ = fit_prior(prior_settings(cfg), backbone, dm, per, unit_feats)
    head = instantiate(cfg.flow.head, **head_behaviour(cfg.prior.name), backbone=backbone, unit_features=unit_feats,
                       prior_mu=prior_mu, n_contexts=len(dm.contexts))
    opt = head.configure_optimizers()
    loader = iter(dm.train_dataloader())
    for i in range(65):
        if i == 5:
            t0 = time.perf_counter()
        batch = next(loader)
        opt.zero_grad()
        head.fm_loss(batch).backward()
        opt.step()
    train_cps = 2 * dm.batch_size * 60 / (time.perf_counter() - t0)
    head.eval()
    x = torch.from_numpy(dm.reader(dm.controls[dm.contexts[0]][:256]))
    args_ = (torch.tensor(0), torch.tensor(0), torch.tensor([0]), torch.tensor(0.0))
    pred = {}
    for n_steps in (1, 2, 20, 128):
        head.sample_cells(x, *args_, n_steps=n_steps)
        t0 = time.perf_counter()
        reps = 5 if n_steps < 128 else 2
        for _ in range(reps):
            head.sample_cells(x, *args_, n_steps=n_steps)
        pred[n_steps] = round(reps * len(x) / (time.perf_counter() - t0), 1)
    result = {"env": {"torch": torch.__version__, "threads": args.threads,
                      "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
              "train_cells_per_s": round(train_cps, 1), "predict_cells_per_s": pred,
              "default_run_peak_rss_mib": None if peak is None else round(peak, 1),
              "default_run_wall_s": None if wall is None else round(wall, 1),
              "n_genes": dm.n_genes, "batch_size": dm.batch_size}
    out = ROOT / "benchmarks" / "results"
    atomic_write_json(out / "bench_flow.json", result)
    lines = ["# Flow head on CPU", "", f"torch {torch.__version__}, {args.threads} threads, synthetic default "
             f"dataset ({dm.n_genes} genes). `python benchmarks/bench_flow.py`.", "",
             "| measure | value |", "| --- | --- |",
             f"| training throughput (control + perturbed cells/s, batch {dm.batch_size}) | {train_cps:.0f} |"]
    lines += [f"| prediction throughput, n_steps={k} (cells/s, 256 cells per call) | {v:.0f} |" for k, v in pred.items()]
    if peak is not None:
        lines += [f"| peak memory of `python train.py` (max RSS) | {peak:.0f} MiB |",
                  f"| wall time of `python train.py` | {wall:.0f} s |"]
    atomic_write_text(out / "bench_flow.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
