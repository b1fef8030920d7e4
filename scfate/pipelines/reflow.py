"""``reflow.py``: few-step students by reflow (one teacher) or mixed-teacher distillation (DESIGN §2.5).

Teachers are checked against each other and the prepared data before anything is computed; couplings
``(theta_0, ODE_teacher(theta_0))`` are drawn over training conditions and training control cells; the student
(initialised from the first teacher, ``n_steps=K``) is trained on them, selected on validation perturbations at K
steps, evaluated on the test split at K steps and exported in the flow-head format with its teacher references.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from scfate.errors import DataError
from scfate.pipelines.teachers import Teacher

log = logging.getLogger("scfate")


def check_k(K) -> int:
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise DataError(f"K={K!r}: the student's number of sampling steps must be an integer >= 1 (e.g. K=2).")
    return K


def checked_teachers(cfg: DictConfig) -> tuple[list[Teacher], bool, torch.Tensor]:
    """(teachers, mixed?, mixture probabilities), after every check that needs only the checkpoints, so bad input
    stops before any data is prepared or model built."""
    from scfate.flow.reflow import mixture_weights
    from scfate.pipelines.teachers import check_teachers, read_teachers, teacher_refs

    refs, mixed = teacher_refs(cfg)
    teachers = read_teachers(refs)
    try:
        probs = (mixture_weights(cfg.get("teacher_weights"), len(teachers)) if mixed
                 else torch.ones(1, dtype=torch.float64))
    except ValueError as exc:
        raise DataError(f"{exc} Teachers: {[t.ref for t in teachers]}") from exc
    ckpts = [t.ckpt for t in teachers]
    check_teachers([t.ref for t in teachers], ckpts)
    if ckpts[0]["dataset"] != cfg.data.name:
        raise DataError(f"teacher trained on {ckpts[0]['dataset']}: add dataset={ckpts[0]['dataset']} "
                        f"(the run is configured for dataset={cfg.data.name}).")
    return teachers, mixed, probs


def default_run_dir(cfg: DictConfig, n_teachers: int, mixed: bool, rnd: int) -> Path:
    art, name = Path(cfg.paths.artifacts_dir), cfg.data.name
    if mixed:
        return art / f"{name}_path_b" / "students" / f"mixed{n_teachers}_K{cfg.K}" / f"s{cfg.seed}"
    # round 1 is the card's reflow_K2_s1; a student of a student gets its own folder instead of overwriting it
    return art / "flow_heads" / name / f"reflow{'' if rnd == 1 else rnd}_K{cfg.K}_s{cfg.seed}"


def run_reflow(cfg: DictConfig) -> dict:
    K = check_k(cfg.K)
    teachers, mixed, probs = checked_teachers(cfg)  # bad input stops here, before Lightning and the data load
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from scfate.data.prepare import prepare
    from scfate.models.couplings import generate_couplings
    from scfate.models.flow_export import load_flow
    from scfate.models.reflow import student_from_teacher
    from scfate.pipelines.config import instantiate_spec, split_seed_of
    from scfate.pipelines.teachers import check_against_data, prior_of

    pl.seed_everything(int(cfg.seed), workers=True)
    refs, ckpts = [t.ref for t in teachers], [t.ckpt for t in teachers]
    rnd = max(int(c.get("reflow_round", 0)) for c in ckpts) + 1
    run_dir = Path(cfg.run_dir) if cfg.get("run_dir") else default_run_dir(cfg, len(teachers), mixed, rnd)
    if any(t.path.parent == run_dir.resolve() for t in teachers):
        raise DataError(f"run_dir={run_dir} holds a teacher; the student would overwrite it. Pass another run_dir=.")
    # the teacher's split, not the student's seed, decides the data split (split_seed=null)
    data = prepare(instantiate_spec(cfg, split_seed_of(cfg, ckpts[0]["split"]["seed"])), cfg.paths.data_dir)
    check_against_data(refs, ckpts, data)
    dm = instantiate(cfg.datamodule)(data=data, val_mode="perturbations")
    dm.setup("fit")
    heads = [load_flow(t.path)[0] for t in teachers]
    # the student's source (theta_0) is its prior: the teacher's, or for a mixture the first KRR teacher's (or none)
    src = next((i for i, c in enumerate(ckpts) if c.get("prior") == "krr"), None) if mixed else 0
    prior_ckpt = ckpts[src] if src is not None else {"prior": "none", "krr_gamma": None, "krr_alpha": None}
    prior_mu = heads[src].prior_mu if src is not None else torch.zeros_like(heads[0].prior_mu)
    prior_offset = heads[src].prior_offset if src is not None else None
    prior_delta = heads[src].prior_delta if src is not None else None
    prior_info = prior_of(prior_ckpt)
    overrides = OmegaConf.to_container(cfg.student, resolve=True) if cfg.get("student") else {}
    student = student_from_teacher(heads[0], K, prior_mu, {k: v for k, v in overrides.items() if v is not None},
                                   prior_offset, prior_delta)
    log.info("generating %d couplings from %d teacher(s) at %d steps", cfg.n_couplings, len(heads), cfg.teacher_steps)
    couplings = generate_couplings(student, heads, dm, int(cfg.n_couplings), int(cfg.teacher_steps), probs,
                                   int(cfg.seed), int(cfg.coupling_chunk))
    if cfg.get("save_couplings"):
        couplings.save(run_dir / "couplings.pt")
    # the student's model selection: its K-step endpoints against the teachers' on validation perturbations (a
    # tenth as many couplings, their own draws). Cells cannot judge it where the mean predictor sets their mean and
    # the ODE moves the angles little: their energy distance then varied in the 6th digit between epochs
    split = "val" if dm.groups["val"] else "train"
    if split == "train":
        log.warning("no validation perturbations: the student is selected on fresh couplings of training ones")
    val = generate_couplings(student, heads, dm, max(1, int(cfg.n_couplings) // 10), int(cfg.teacher_steps), probs,
                             int(cfg.seed) + 1, int(cfg.coupling_chunk), split=split)
    student, best = train_student(cfg, student, couplings, val, run_dir)
    path = export_student(cfg, student, data, teachers, mixed, probs, couplings, run_dir, prior_info,
                          {"K": K, "reflow_round": rnd, "best_val_endpoint_mse": best})
    print(f"student (K={K}) exported to {path}")
    tag = f"mixed{len(teachers)}" if mixed else "reflow" if rnd == 1 else f"reflow{rnd}"
    name = f"scfate:{cfg.data.name}_{tag}_K{K}"
    return evaluate_student(cfg, student, heads[0], dm, name, path, run_dir, prior_info["prior"] == "krr")


def train_student(cfg: DictConfig, student, couplings, val_couplings, run_dir: Path):
    """Lightning fit on the couplings; the K-step endpoint error on ``val_couplings`` picks the best epoch.
    Returns (the student at its best epoch, on the CPU in eval mode; that error, rad^2)."""
    from omegaconf import OmegaConf

    from scfate.models.couplings import coupling_loader
    from scfate.pipelines.training import checkpoint_dir, fit_and_restore

    # what makes a student this student, for ckpt_path= (scfate.pipelines.resume): not its epochs or evaluation
    keys = ("data", "teacher", "teachers", "teacher_weights", "K", "student", "seed", "split_seed", "n_couplings",
            "teacher_steps", "batch_size")
    identity = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                for k, v in ((k, cfg.get(k)) for k in keys)}
    student, checkpoint, _ = fit_and_restore(
        cfg, student, cfg.callbacks.reflow, checkpoint_dir(cfg, run_dir), int(cfg.epochs), identity=identity,
        train_dataloaders=coupling_loader(couplings, int(cfg.batch_size), int(cfg.seed)),
        val_dataloaders=coupling_loader(val_couplings, int(cfg.batch_size), int(cfg.seed), shuffle=False))
    return student, float(checkpoint.best_model_score or 0)


def export_student(cfg: DictConfig, student, data, teachers: list[Teacher], mixed: bool, probs, couplings,
                   run_dir: Path, prior_info: dict, extra: dict) -> Path:
    """The student in the flow-head format, with its teachers (by their place in the artifacts tree and their
    sha256), its metrics history and a reproduce.sh; returns the checkpoint's path."""
    from scfate.models.flow_export import export_flow
    from scfate.pipelines.resume import write_history
    from scfate.pipelines.teachers import student_backbone, tree_ref
    from scfate.utils.io import sha256_file
    from scfate.utils.reproduce import write_reproduce

    shas = [sha256_file(t.path) for t in teachers]
    named = [tree_ref(t.ref, cfg.paths.artifacts_dir) for t in teachers]
    extra = {"seed": int(cfg.seed), "teacher_steps": int(cfg.teacher_steps), "n_couplings": int(cfg.n_couplings),
             **extra}
    if mixed:  # the Hub manifest tells a mixed student by its `teachers`, a reflow student by its `teacher`
        extra.update(teachers=named, teachers_sha256=shas, teacher_weights=probs.tolist(),
                     teacher_counts=torch.bincount(couplings.teacher, minlength=len(teachers)).tolist())
    else:
        extra.update(teacher=named[0], teacher_sha256=shas[0])
    bb_path = student_backbone(teachers[0].path, teachers[0].ckpt, cfg.paths.artifacts_dir)
    path = export_flow(student, data, run_dir / "flow_best.pt", bb_path, prior_info, extra=extra)
    write_history(run_dir / "flow_metrics.jsonl", student.history)
    write_reproduce(run_dir, "reflow.py", artifacts_dir=cfg.paths.artifacts_dir)
    return path


def evaluate_student(cfg: DictConfig, student, teacher, dm, name: str, path: Path, run_dir: Path, krr: bool) -> dict:
    """Test split at K steps beside the configured baselines, the (first) teacher at its own steps and, with a
    KRR prior, the prior alone; one eval JSON in the run folder."""
    from scfate.eval.results import build_eval_json, print_table, write_eval_json
    from scfate.eval.runner import EvalData, evaluate, score
    from scfate.models.predictor import FlowPredictor
    from scfate.pipelines.config import resolved

    data = dm.data
    units, n_cells, seed = data.features.index(), int(cfg.eval_n_cells), int(cfg.seed)
    model = FlowPredictor(student, dm.perturbations, dm.contexts, units, name, n_steps=int(cfg.K))
    scores = evaluate(data, model, list(cfg.eval_baselines), n_cells=n_cells, seed=seed)
    extras = {}
    if cfg.get("eval_teacher"):
        extras[f"teacher_{teacher.hparams.n_steps}steps"] = FlowPredictor(
            teacher, dm.perturbations, dm.contexts, units, "teacher", n_steps=int(teacher.hparams.n_steps))
    if krr:
        extras["krr_prior"] = FlowPredictor(student, dm.perturbations, dm.contexts, units, "krr_prior",
                                            prior_only=True)
    if extras:
        ed = EvalData(data, n_cells=n_cells, seed=seed)
        fresh = ed.rng.bit_generator.state  # what `evaluate` drew the student's cells from: the same cells for each
        for key, predictor in extras.items():
            ed.rng.bit_generator.state = fresh
            predictor.fit(ed.pseudobulk())
            scores["baselines"][key] = score(ed, predictor)
    ev = build_eval_json(name, data, scores, resolved(cfg), ckpt=str(path), seed=seed)
    print_table(ev)
    write_eval_json(ev, run_dir / f"eval_{cfg.data.name}_seed{cfg.seed}.json")
    return ev
