"""Few-step students vs their teacher, side by side on the same cells (issue 6 benchmark).

One run on the built-in synthetic dataset: a teacher (trained with train.py if the work folder has none), one K=2
reflow student (reflow.py, the teacher's network fine-tuned) and one small K=2 student (a narrower, shallower velocity
net distilled from scratch), then the teacher at 20 and 128 steps and the students at K = 1, 2 (4, 16) predict the
test conditions from the same control cells: wall time per 10k predicted cells and DA / cos / PDE (scfate.eval.runner).
Each condition is timed on its own control cells (as evaluation draws them: one call each, and stacked as evaluation
predicts them, ``FlowPredictor.predict_each``), on control cells shared by every test condition of a context (the API's many perturbations on one batch: ``sample_cells_many``, controls encoded once), and
through the pre-issue-14 sampler (``legacy_cells``: full velocity net at every step, controls decoded per call),
which measures what the fast path itself gained, on the same machine at the same time.

python benchmarks/bench_reflow.py [--workdir DIR] [--teacher RUN_DIR] [--reuse-student] [--threads 2] [--rounds 3]
Writes benchmarks/results/bench_reflow.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reflow_timing import (  # noqa: E402  (this folder)
    endpoint_errors,
    time_per_10k,
    time_shared_per_10k,
    time_stacked_per_10k,
)

from scfate.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

# "QUICK-ish": short, but long enough that the teacher is a real model (the tests' 5-step teacher is noise)
TEACHER_ARGS = ["epochs.backbone=10", "epochs.flow=8", "eval_n_cells=100"]
STUDENT_ARGS = ["K=2", "eval_n_cells=100"]
# a smaller velocity net distilled from scratch (at the teacher's lr, as a network trained afresh): each step costs
# less, the only way K=2 can be >= 10x a 20-step solve of the teacher's network (see the markdown)
SMALL_ARGS = [*STUDENT_ARGS, "student.d_hidden=128", "student.n_blocks=2", "student.lr=1e-3"]
# the rows, plus the teacher itself at 1 and 2 steps: what the student's K steps would give without reflow
VARIANTS = [("teacher", 20), ("teacher", 128), ("teacher", 1), ("teacher", 2), ("student", 1), ("student", 2),
            ("student", 4), ("student", 16), ("small", 1), ("small", 2)]


def sh(args: list[str], work: Path, job: str) -> float:
    cmd = [sys.executable, *args, f"hydra.run.dir={work / 'runs' / job}", f"paths.data_dir={work / 'data'}",
           f"paths.artifacts_dir={work / 'artifacts'}"]
    start = time.perf_counter()
    # training is not what is timed here; one thread keeps it from crawling when the machine is shared
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scfate-bench-reflow")
    ap.add_argument("--teacher", type=Path, default=None, help="an existing synthetic teacher run folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (interleaved; the minimum is reported)")
    ap.add_argument("--n-cells", type=int, default=300, help="control cells per test condition")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reuse-student", action="store_true", help="keep the work folder's K=2 student (re-time only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.workdir.resolve()
    walls = {}
    teacher_dir = args.teacher or work / "artifacts" / "flow_heads" / "synthetic" / f"seed{args.seed}"
    if not (teacher_dir / "flow_best.pt").is_file():
        walls["train_teacher_s"] = sh(["train.py", f"seed={args.seed}", *TEACHER_ARGS], work, "teacher")
    student_dir = work / "artifacts" / "flow_heads" / "synthetic" / f"reflow_K2_s{args.seed}"
    small_dir = work / "artifacts" / "flow_heads" / "synthetic" / f"reflow_small_K2_s{args.seed}"
    for name, run, extra in (("reflow_K2_s", student_dir, STUDENT_ARGS), ("reflow_small_K2_s", small_dir, SMALL_ARGS)):
        if not (args.reuse_student and (run / "flow_best.pt").is_file()):
            walls[name] = sh(["reflow.py", f"teacher={teacher_dir}", f"seed={args.seed}", *extra, f"run_dir={run}"],
                             work, name)

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from scfate.data.prepare import prepare
    from scfate.eval.runner import EvalData, score
    from scfate.models.flow_export import load_flow
    from scfate.models.predictor import FlowPredictor
    from scfate.pipelines.config import CONF_DIR

    teacher, t_ckpt = load_flow(teacher_dir / "flow_best.pt")
    student, s_ckpt = load_flow(student_dir / "flow_best.pt")
    small, small_ckpt = load_flow(small_dir / "flow_best.pt")
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("reflow", overrides=[f"paths.data_dir={work / 'data'}", f"split_seed={t_ckpt['split']['seed']}"])
    data = prepare(instantiate(cfg.data), cfg.paths.data_dir)
    units = data.features.index()
    perts, contexts = list(data.perturbations), list(data.meta["contexts"])
    heads = {"teacher": teacher, "student": student, "small": small}

    # quality: every variant scores the same control cells (the runner's draws, replayed from one state)
    ed = EvalData(data, n_cells=args.n_cells, seed=args.seed)
    fresh = ed.rng.bit_generator.state
    results = []
    for who, steps in VARIANTS:
        ed.rng.bit_generator.state = fresh
        torch.manual_seed(args.seed)
        pred = FlowPredictor(heads[who], perts, contexts, units, f"{who}@{steps}", n_steps=steps)
        pred.fit(ed.pseudobulk())
        overall = score(ed, pred)["overall"]
        results.append({"model": who, "n_steps": steps,
                        **{m: overall[m]["mean"] for m in ("da", "cos", "pde", "energy_distance", "mmd")}})

    # speed: the same inputs for every variant; rounds interleaved so machine noise hits all alike
    rng = np.random.default_rng(args.seed)
    inputs = []
    for g in ed.groups["test"]:
        cond = ed.conditions[(g.context, g.condition)]
        ctrl = ed.controls[g.context]
        x = torch.from_numpy(ed.reader(np.sort(rng.choice(ctrl, args.n_cells, replace=len(ctrl) < args.n_cells))))
        inputs.append((x, torch.tensor(contexts.index(g.context)), torch.tensor(perts.index(g.perturbation)),
                       torch.tensor([units[m] for m in cond.members]),
                       torch.tensor(np.log10(cond.dose) if np.isfinite(cond.dose) else 0.0, dtype=torch.float32)))
    from scfate.models.flow_sampling import Request

    shared = []  # per context: the first test condition's control cells, shared by all of that context's conditions
    for c in sorted({int(ctx) for _, ctx, *_ in inputs}):
        rows = [i for i in inputs if int(i[1]) == c]
        shared.append((rows[0][0], rows[0][1], [Request(p, m, d) for _, _, p, m, d in rows]))
    times = {i: [] for i in range(len(VARIANTS) + 1)}
    shared_times = {i: [] for i in range(len(VARIANTS))}
    stacked_times = {i: [] for i in range(len(VARIANTS))}
    legacy = {"teacher@20": [], "student@2": []}
    for _ in range(args.rounds):
        for i, (who, steps) in enumerate(VARIANTS):
            times[i].append(time_per_10k(heads[who], inputs, steps))
            shared_times[i].append(time_shared_per_10k(heads[who], shared, steps))
            stacked_times[i].append(time_stacked_per_10k(heads[who], inputs, steps))
        times[len(VARIANTS)].append(time_per_10k(teacher, inputs, 0))
        legacy["teacher@20"].append(time_per_10k(teacher, inputs, 20, legacy=True))
        legacy["student@2"].append(time_per_10k(student, inputs, 2, legacy=True))
    base, shared_base, stacked_base = min(times[0]), min(shared_times[0]), min(stacked_times[0])
    for i, r in enumerate(results):
        r["s_per_10k_cells"] = min(times[i])
        r["speedup_vs_teacher20"] = base / r["s_per_10k_cells"]
        r["s_per_10k_cells_shared_controls"] = min(shared_times[i])
        r["speedup_vs_teacher20_shared_controls"] = shared_base / r["s_per_10k_cells_shared_controls"]
        r["s_per_10k_cells_stacked"] = min(stacked_times[i])
        r["speedup_vs_teacher20_stacked"] = stacked_base / r["s_per_10k_cells_stacked"]
    legacy = {k: min(v) for k, v in legacy.items()}
    # the ODE against its own reference: same theta_0 and control latents, endpoint error vs the teacher at 128
    # steps (wrapped angle RMS, radians), and how far that reference moves from theta_0 at all
    ends = endpoint_errors(heads, VARIANTS, inputs, args.seed)
    for r, err in zip(results, ends["err"]):
        r["theta_rmse_vs_teacher128"] = err
    displacement = ends["displacement"]
    t20 = results[0]
    k2 = next(r for r in results if r["model"] == "student" and r["n_steps"] == 2)
    s2 = next(r for r in results if r["model"] == "small" and r["n_steps"] == 2)
    da_loss, small_da_loss = 100 * (t20["da"] - k2["da"]), 100 * (t20["da"] - s2["da"])
    verdict = {"k2_speedup_vs_teacher20": k2["speedup_vs_teacher20"],
               "k2_at_least_10x_faster": k2["speedup_vs_teacher20"] >= 10,
               "k2_speedup_vs_teacher20_shared_controls": k2["speedup_vs_teacher20_shared_controls"],
               "k2_speedup_vs_teacher20_stacked": k2["speedup_vs_teacher20_stacked"],
               "legacy_s_per_10k": legacy,
               "fast_path_gain_teacher20": legacy["teacher@20"] / base,
               "fast_path_gain_student2": legacy["student@2"] / k2["s_per_10k_cells"],
               "k2_vs_legacy_teacher20": legacy["teacher@20"] / k2["s_per_10k_cells"],
               "k2_da_loss_points": da_loss, "k2_loses_under_1_da_point": da_loss < 1,
               "small_k2_speedup_vs_teacher20": s2["speedup_vs_teacher20"], "small_k2_da_loss_points": small_da_loss,
               "small_k2_speedup_vs_teacher20_shared_controls": s2["speedup_vs_teacher20_shared_controls"],
               "small_k2_speedup_vs_teacher20_stacked": s2["speedup_vs_teacher20_stacked"],
               "small_k2_meets_both": s2["speedup_vs_teacher20"] >= 10 and small_da_loss < 1,
               "encode_decode_floor_s_per_10k": min(times[len(VARIANTS)]),
               "teacher128_rms_displacement_from_theta0": displacement}
    out = {"dataset": "synthetic", "seed": args.seed, "test_conditions": len(inputs), "cells_per_condition": args.n_cells,
           "teacher": str(teacher_dir), "student": str(student_dir), "teacher_args": TEACHER_ARGS,
           "student_args": STUDENT_ARGS, "small_args": SMALL_ARGS, "student_n_couplings": s_ckpt["n_couplings"],
           "student_best_val_endpoint_mse": s_ckpt["best_val_endpoint_mse"],
           "small_best_val_endpoint_mse": small_ckpt["best_val_endpoint_mse"], "wall_s": walls, "results": results,
           "verdict": verdict, "load_avg": os.getloadavg(), "torch": torch.__version__, "threads": args.threads, "machine": platform.processor()
           or platform.machine(), "rounds": args.rounds}
    res = ROOT / "benchmarks" / "results"
    atomic_write_json(res / "bench_reflow.json", out)
    atomic_write_text(res / "bench_reflow.md", markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    v = out["verdict"]
    rows = "\n".join(f"| {r['model']} | {r['n_steps']} | {r['s_per_10k_cells']:.3f} | {r['speedup_vs_teacher20']:.1f}x | "
                     f"{r['s_per_10k_cells_stacked']:.3f} | {r['speedup_vs_teacher20_stacked']:.1f}x | "
                     f"{r['s_per_10k_cells_shared_controls']:.3f} | {r['speedup_vs_teacher20_shared_controls']:.1f}x | "
                     f"{r['da']:.4f} | {r['cos']:.4f} | {r['pde']:.4f} | {r['mmd']:.4f} | {r['theta_rmse_vs_teacher128']:.4f} |"
                     for r in out["results"])
    leg = v["legacy_s_per_10k"]
    return f"""# Reflow students vs teacher

torch {out['torch']}, {out['threads']} thread{'s' if out['threads'] > 1 else ''}, CPU; synthetic dataset, split seed {out['seed']},
{out['test_conditions']} test conditions x {out['cells_per_condition']} control cells (the same cells for every row).
Teacher: `train.py {' '.join(out['teacher_args'])}`; student: `reflow.py {' '.join(out['student_args'])}`;
small: `reflow.py {' '.join(out['small_args'])}` (a fresh velocity net, distilled from the same teacher)
({out['student_n_couplings']} couplings at 128 teacher steps). `python benchmarks/bench_reflow.py`.
Time: encode + ODE + decode, per 10k predicted cells, minimum over {out['rounds']} interleaved rounds; "own controls":
each condition on its own control cells (as evaluation draws them), one condition per call; "stacked": the same
cells, the conditions of a context as one paired batch (`FlowPredictor.predict_each`, evaluation's path); "shared":
every test condition of a context on one control batch (`sample_cells_many`: encoded and decoded once per context). The load average
below says whether other processes shared the machine; the ratios, not the absolute times, carry over.

| model | steps | s / 10k cells (own controls) | speedup vs teacher@20 | s / 10k (stacked) | speedup (stacked) | s / 10k (shared) | speedup (shared) | DA | cos | PDE | MMD | theta RMSE vs teacher@128 |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

The sampler before issue 14 (full velocity net at every step, the controls decoded per call), timed in the same
rounds: teacher@20 {leg['teacher@20']:.3f} s / 10k cells (the fast path: {v['fast_path_gain_teacher20']:.2f}x its speed), student@2
{leg['student@2']:.3f} ({v['fast_path_gain_student2']:.2f}x); the K=2 student now vs the teacher@20 then:
{v['k2_vs_legacy_teacher20']:.1f}x. With the same network at every step, K=2 vs 20 steps is (F + 2 s) against (F + 20 s) for a
fixed cost F > 0 (encode, decode) and a step cost s: below 10x however small F gets.

Floor without any ODE step (encode, rotate, decode): {v['encode_decode_floor_s_per_10k']:.3f} s / 10k cells, so no
step count can be more than {out['results'][0]['s_per_10k_cells'] / v['encode_decode_floor_s_per_10k']:.1f}x faster than the 20-step teacher here. The teacher's 128-step ODE moves theta {v['teacher128_rms_displacement_from_theta0']:.4f} rad (RMS) away from theta_0; theta RMSE is each row's endpoint error against it from the same theta_0 and cells.
Load average during timing: {', '.join(f'{x:.2f}' for x in out['load_avg'])} (2-core machine).

K=2 student vs the 20-step teacher: {v['k2_speedup_vs_teacher20']:.1f}x faster on its own controls, \
{v['k2_speedup_vs_teacher20_stacked']:.1f}x stacked, {v['k2_speedup_vs_teacher20_shared_controls']:.1f}x on shared controls (target >= 10x: \
{'met' if v['k2_at_least_10x_faster'] else 'not met'}); DA {v['k2_da_loss_points']:+.1f} points lost (target < 1: \
{'met' if v['k2_loses_under_1_da_point'] else 'not met'}). The small K=2 student: {v['small_k2_speedup_vs_teacher20']:.1f}x ({v['small_k2_speedup_vs_teacher20_stacked']:.1f}x stacked, {v['small_k2_speedup_vs_teacher20_shared_controls']:.1f}x shared), DA {v['small_k2_da_loss_points']:+.1f} points lost ({'both targets met' if v['small_k2_meets_both'] else 'not both met'}).
Where the mean predictor sets the cells' mean (the default), DA / cos / PDE are the same for every row by
construction: MMD and theta RMSE are what tell the students' cells apart.
"""


if __name__ == "__main__":
    main()
