"""What a GPU does with scFATE at genome-wide scale (issue 14), in under 5 minutes: run through gpu_check.sh.

1. A synthetic log1p file of ``GPU_CHECK_CELLS`` cells (1M) x 2,000 genes, sparse CSR written in row chunks (never
   whole in memory), a valid h5ad (``anndata.read_h5ad(path, backed="r")`` opens it); kept and reused.
2. bf16-mixed training throughput of the backbone and the flow head (the default model sizes) on batches read from
   that file on disk (scfate's RowReader + PairedBatches, the path ``data.backed=true`` trains on), for each batch size
   in ``GPU_CHECK_BATCH``; the I/O floor (the same batches read, no model); peak GPU memory of each fit
   (``torch.cuda.max_memory_allocated``).
3. Prediction: the flow at 20 steps vs K=2 (float32), per 10k cells, each perturbation on its own control cells and
   many perturbations on one control batch (``sample_cells_many``).

``GPU_CHECK_DRY=1``: the same code on the CPU with tiny sizes (what CI can run), written to ``GPU_CHECK_OUT``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DRY = os.environ.get("GPU_CHECK_DRY") == "1"
CELLS = int(os.environ.get("GPU_CHECK_CELLS", 20_000 if DRY else 1_000_000))
GENES = int(os.environ.get("GPU_CHECK_GENES", 200 if DRY else 2_000))
STEPS = int(os.environ.get("GPU_CHECK_STEPS", 12 if DRY else 200))
WARMUP = max(2, STEPS // 10)  # steps before the clock starts: CUDA context, cuBLAS handles, the workers' first reads
BATCHES = [int(b) for b in os.environ.get("GPU_CHECK_BATCH", "64" if DRY else "64,1024").split(",")]
WORKERS = int(os.environ.get("GPU_CHECK_WORKERS", 0 if DRY else 4))
WORK = Path(os.environ.get("GPU_CHECK_DIR", "/tmp/scfate-gpu-check"))
OUT = Path(os.environ.get("GPU_CHECK_OUT", WORK / "gpu_check_dry.json" if DRY else
                          ROOT / "benchmarks" / "results" / "gpu_check.json"))
CONTEXTS, PERTS_PER_CONTEXT, DENSITY, CHUNK = 2, 100, 0.05, 50_000
DEVICE = "cpu" if DRY else "cuda"


def layout():
    """Rows in blocks of (context, condition): per context a control block of a fifth of its cells, then one block
    per perturbation. -> [(context, condition, start, stop)]."""
    per_ctx, blocks, start = CELLS // CONTEXTS, [], 0
    for c in range(CONTEXTS):
        n_ctrl = per_ctx // 5
        sizes = [n_ctrl] + [(per_ctx - n_ctrl) // PERTS_PER_CONTEXT] * PERTS_PER_CONTEXT
        sizes[-1] += per_ctx - sum(sizes)
        for p, n in enumerate(sizes):
            blocks.append((c, "ctrl" if p == 0 else f"P{p}", start, start + n))
            start += n
    return blocks


def write_cells(path: Path) -> dict:
    """The synthetic file, CSR written ``CHUNK`` rows at a time: each block's cells share a mean profile (its
    condition's shift of the context's), with ``DENSITY`` of the genes non-zero per cell."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    blocks, rng = layout(), np.random.default_rng(0)
    nnz_row = max(1, int(DENSITY * GENES))
    stride = GENES // nnz_row
    base = rng.gamma(2.0, 0.5, size=(CONTEXTS, GENES))
    # each block's expected value per gene: its context's profile, shifted by its perturbation (controls: none)
    profile = np.exp(np.stack([base[c] + (0 if name == "ctrl" else rng.normal(0, 0.3, GENES))
                               for c, name, _, _ in blocks])).astype(np.float32)
    row_block = np.empty(CELLS, dtype=np.int64)
    for i, (_, _, a, b) in enumerate(blocks):
        row_block[a:b] = i
    start = time.perf_counter()
    tmp = path.with_suffix(".partial")
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (CELLS, GENES)})
        chunk = (min(1 << 20, CELLS * nnz_row),)  # 4 MiB per HDF5 chunk: a batch's rows are a few reads
        data = x.create_dataset("data", (CELLS * nnz_row,), np.float32, chunks=chunk)
        indices = x.create_dataset("indices", (CELLS * nnz_row,), np.int32, chunks=chunk)
        x.create_dataset("indptr", data=np.arange(CELLS + 1, dtype=np.int64) * nnz_row)
        for lo in range(0, CELLS, CHUNK):
            hi = min(lo + CHUNK, CELLS)
            # nnz_row genes per cell, sorted and distinct: one per stride of the gene axis, at a random offset
            cols = (rng.integers(0, stride, hi - lo)[:, None] + stride * np.arange(nnz_row)).astype(np.int32)
            vals = np.log1p(1 + rng.poisson(profile[row_block[lo:hi, None], cols])).astype(np.float32)
            data[lo * nnz_row:hi * nnz_row], indices[lo * nnz_row:hi * nnz_row] = vals.ravel(), cols.ravel()
        names, ctxs = np.array([b[1] for b in blocks]), np.array([f"ctx{b[0]}" for b in blocks])
        obs = pd.DataFrame({"condition": pd.Categorical(names[row_block]), "cell_type": pd.Categorical(ctxs[row_block])},
                           index=np.char.add("c", np.arange(CELLS).astype(str)))
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=[f"G{g}" for g in range(GENES)]))
    tmp.replace(path)  # a run killed while writing leaves no file that looks complete
    backed = ad.read_h5ad(path, backed="r")
    assert backed.shape == (CELLS, GENES), backed.shape
    backed.file.close()
    return {"write_s": time.perf_counter() - start, "bytes": path.stat().st_size, "reused": False}


def batches(path: Path, batch_size: int, seed: int):
    """scfate's own batch source on the file: PairedBatches over RowReader(path=...), one condition per batch."""
    from scfate.data.datamodule import ConditionGroup, PairedBatches, _StepSampler
    from scfate.data.rows import RowReader

    blocks = layout()
    controls = {f"ctx{c}": np.arange(a, b) for c, name, a, b in blocks if name == "ctrl"}
    groups = [ConditionGroup(f"ctx{c}", name, name, np.arange(a, b)) for c, name, a, b in blocks if name != "ctrl"]
    names = sorted({g.perturbation for g in groups})
    encode = {(g.context, g.condition): {"context": torch.tensor(int(g.context[3:])),
                                         "perturbation": torch.tensor(names.index(g.perturbation)),
                                         "members": torch.tensor([names.index(g.perturbation)]),
                                         "log10_dose": torch.tensor(0.0)} for g in groups}
    dataset = PairedBatches(RowReader(path=path), groups, controls, encode, batch_size, seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=_StepSampler(STEPS + WARMUP),
                                         num_workers=WORKERS, persistent_workers=False)
    return loader, names


class Clock:
    """Seconds from the end of the WARMUP-th training step to the end of training, device synchronised."""

    def __init__(self):
        import pytorch_lightning as pl

        outer = self

        class _Cb(pl.Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step == WARMUP:
                    outer.sync()
                    outer.start = time.perf_counter()

            def on_train_end(self, trainer, *args):
                outer.sync()
                outer.stop = time.perf_counter()

        self.callback, self.start, self.stop = _Cb(), None, None

    @staticmethod
    def sync():
        if DEVICE == "cuda":
            torch.cuda.synchronize()


def fit(module, loader) -> dict:
    import pytorch_lightning as pl

    clock = Clock()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = pl.Trainer(accelerator="gpu" if DEVICE == "cuda" else "cpu", devices=1, precision="bf16-mixed",
                         max_steps=STEPS + WARMUP, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[clock.callback])
    trainer.fit(module, train_dataloaders=loader)
    seconds = clock.stop - clock.start
    peak = torch.cuda.max_memory_allocated() if DEVICE == "cuda" else None
    b = loader.dataset.batch_size
    return {"steps_timed": STEPS, "s": seconds, "steps_per_s": STEPS / seconds, "cells_per_s": 2 * b * STEPS / seconds,
            "peak_gpu_bytes": peak}


def io_floor(loader) -> dict:
    """The same batches read from disk and collated, no model: the rate no training on this file can beat."""
    it, n = iter(loader), 0
    for _ in range(WARMUP):
        next(it)
    start = time.perf_counter()
    for batch in it:
        n += len(batch["x_ctrl"]) + len(batch["x_pert"])
    return {"cells_per_s": n / (time.perf_counter() - start)}


def make_backbone(names: list[str]):
    """The backbone at the default sizes (conf/model/backbone.yaml)."""
    from scfate.models.backbone import RotationAE

    torch.manual_seed(0)
    return RotationAE(n_genes=GENES, n_contexts=CONTEXTS, perturbations=names, atlas_perturbations=names)


def make_head(backbone, names: list[str]):
    """The flow head at the default sizes (conf/flow/default.yaml) on ``backbone``, which it freezes: made only
    after the backbone's own fit, as the flow stage does."""
    from scfate.models.flow_head import FlowHead

    torch.manual_seed(1)
    return FlowHead(backbone, torch.randn(len(names), 64), torch.zeros(len(names), backbone.hparams.theta_dim),
                    CONTEXTS)


@torch.no_grad()
def predict_timing(head, path: Path, names: list[str], n_cells: int, n_perts: int) -> dict:
    """Seconds per 10k predicted cells at 20 and 2 flow steps (float32; K=2 is a reflow student's cost: the same
    network), each perturbation on its own control cells, and all of them on one control batch."""
    from scfate.data.rows import RowReader
    from scfate.models.flow_sampling import Request

    head = head.to(DEVICE).eval()
    ctrl = [b for b in layout() if b[1] == "ctrl"][0]
    reader, rng = RowReader(path=path), np.random.default_rng(1)
    xs = [torch.from_numpy(reader(np.sort(rng.choice(np.arange(ctrl[2], ctrl[3]), n_cells, replace=False))))
          .to(DEVICE) for _ in range(n_perts)]
    ctx = torch.tensor(ctrl[0], device=DEVICE)
    reqs = [Request(torch.tensor(p, device=DEVICE), torch.tensor([p], device=DEVICE), torch.tensor(0.0, device=DEVICE))
            for p in range(n_perts)]
    out = {}
    for steps in (20, 2, 20, 2):  # the second round is the one kept: the first pays for kernels' first launches
        Clock.sync()
        start = time.perf_counter()
        for x, r in zip(xs, reqs):
            head.sample_cells(x, ctx, r.perturbation, r.members, r.log10_dose, steps)
        Clock.sync()
        own = time.perf_counter() - start
        start = time.perf_counter()
        head.sample_cells_many(head.encode_controls(xs[0], ctx), reqs, steps)
        Clock.sync()
        shared = time.perf_counter() - start
        total = n_cells * n_perts
        out[steps] = {"own_controls_s_per_10k": own * 1e4 / total, "shared_controls_s_per_10k": shared * 1e4 / total}
    return {"cells_per_perturbation": n_cells, "perturbations": n_perts, "steps_20": out[20], "steps_2": out[2],
            "k2_speedup_own_controls": out[20]["own_controls_s_per_10k"] / out[2]["own_controls_s_per_10k"],
            "k2_speedup_shared_controls": out[20]["shared_controls_s_per_10k"] / out[2]["shared_controls_s_per_10k"]}


def environment() -> dict:
    env = {"dry_run": DRY, "device": DEVICE, "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(), "host_cpus": os.cpu_count()}
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_bytes=props.total_memory, bf16_supported=torch.cuda.is_bf16_supported())
    return env


def main() -> None:
    from scfate.utils.io import atomic_write_json

    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); "
                 "run it on a GPU machine, or GPU_CHECK_DRY=1 for the CPU dry run")
    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"cells_{CELLS}x{GENES}.h5ad"
    file = {"path": str(path), "cells": CELLS, "genes": GENES, "density": DENSITY}
    file.update(write_cells(path) if not path.is_file() else {"reused": True, "bytes": path.stat().st_size})
    print(f"file {path}: {file}", flush=True)
    train = []
    for b in BATCHES:
        loader, names = batches(path, b, seed=b)
        row = {"batch_size": b, "io_floor": io_floor(loader)}
        backbone = make_backbone(names)
        row["backbone"] = fit(backbone, batches(path, b, seed=b)[0])
        head = make_head(backbone, names)
        row["flow"] = fit(head, batches(path, b, seed=b + 1)[0])
        train.append(row)
        print(json.dumps(row), flush=True)
    predict = predict_timing(head, path, names, n_cells=200 if DRY else 2_000, n_perts=4 if DRY else 50)
    print(json.dumps(predict), flush=True)
    result = {"environment": environment(), "file": file, "train_bf16_mixed": train, "predict_fp32": predict,
              "settings": {"steps": STEPS, "warmup": WARMUP, "workers": WORKERS, "batches": BATCHES},
              "wall_s": time.perf_counter() - started}
    atomic_write_json(OUT, result)
    print(f"gpu_check: wrote {OUT} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
