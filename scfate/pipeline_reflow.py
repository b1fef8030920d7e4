"""``reflow.py``: few-step students by reflow (one teacher) or mixed-teacher distillation (DESIGN §2.5).

Teachers are checked against each other and the prepared data before anything is computed; couplings
``(theta_0, ODE_teacher(theta_0))`` are drawn over training conditions and training control cells; the student
(initialised from the first teacher, ``n_steps=K``) is trained on them, selected on validation perturbations at K
steps, evaluated on the test split at K steps and exported in the flow-head format with its teacher references.
"""

from __future__ import annotations

import glob
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from scfate.data.errors import DataError
from scfate.flow.reflow import Couplings, draw_teachers, mixture_weights, teacher_endpoints

log = logging.getLogger("scfate")
# what every teacher of one student must share (the student reuses one backbone, vocabulary and feature table)
SHARED = ("dataset", "genes", "perturbations", "units", "backbone_sha256", "split")
# the prior's description at the top level of a flow checkpoint (what pipeline_flow.fit_prior returns, less tensors)
PRIOR_PREFIXES = ("prior", "krr_", "lift_")


def check_k(K) -> int:
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise DataError(f"K={K!r}: the student's number of sampling steps must be an integer >= 1 (e.g. K=2).")
    return K


def teacher_refs(cfg: DictConfig) -> tuple[list[str], bool]:
    """(teacher references with globs expanded, mixed?) from ``teacher=`` or ``teachers=`` (exactly one)."""
    one, many = cfg.get("teacher"), cfg.get("teachers")
    if (one is None) == (many is None):
        raise DataError("reflow.py needs exactly one of teacher=PATH_OR_HF (reflow) or teachers=GLOB_OR_LIST (mixed "
                        f"distillation); got teacher={one!r}, teachers={many!r}.")
    if one is not None:
        return [str(one)], False
    items = list(many) if isinstance(many, (list, ListConfig)) else [many]
    refs = []
    for item in map(str, items):
        if item.startswith("hf://") or not glob.has_magic(item):
            refs.append(item)
            continue
        matches = sorted(glob.glob(item))
        if not matches:
            raise DataError(f"teachers: the glob {item!r} matches nothing (relative to {Path.cwd()}). Point it at "
                            "teacher run folders or flow_best.pt files, e.g. teachers='artifacts/D_path_b/teachers/*/s*'.")
        refs.extend(matches)
    return refs, True


def _plain(x):
    return json.loads(json.dumps(x, default=list))


def difference(a, b, names: tuple[str, str] = ("first", "second")) -> str:
    """What differs between two checkpoint values (lists of names, split dicts, scalars), briefly."""
    a, b = _plain(a), _plain(b)
    if isinstance(a, list) and isinstance(b, list):
        sa, sb = set(map(str, a)), set(map(str, b))
        if sa == sb:
            return f"the same {len(sa)} items in another order"
        only = [(n, sorted(x - y)) for n, x, y in ((names[0], sa, sb), (names[1], sb, sa))]
        return ", ".join(f"{len(o)} only in the {n} {o[:5]}{'…' if len(o) > 5 else ''}" for n, o in only if o)
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return "; ".join(f"{k}: {difference(a.get(k), b.get(k), names)}" for k in keys)
    return f"{a!r} ({names[0]}) vs {b!r} ({names[1]})"


def check_teachers(refs: list[str], ckpts: list[dict]) -> None:
    """Every teacher shares dataset, genes, vocabulary, feature units, backbone and split with the first."""
    for key in SHARED:
        bad = [(r, c) for r, c in zip(refs[1:], ckpts[1:]) if _plain(c.get(key)) != _plain(ckpts[0].get(key))]
        if bad:
            named = "; ".join(f"{r} ({difference(ckpts[0].get(key), c.get(key), ('first', 'other'))})"
                              for r, c in bad)
            raise DataError(f"Teachers must share their {key}, but these differ from the first teacher {refs[0]}: "
                            f"{named}. Distil teachers trained by train.py on one dataset and split with "
                            "backbone=auto (e.g. `python train.py dataset=D data.split.seed=S seed=1,2,3 -m`).")


def check_against_data(refs: list[str], ckpts: list[dict], data) -> None:
    """The prepared data must be the teachers' (genes, split, vocabulary, feature units); name the difference."""
    from scfate.data.schema import check_same_genes

    ref, ckpt = refs[0], ckpts[0]
    check_same_genes(list(data.adata.var_names), ckpt["genes"], f"Teacher {ref}",
                     f"Prepare the data the teacher was trained on (dataset={ckpt['dataset']} and its data.* options).")
    ours = {"split": data.split.to_dict(), "perturbations": list(data.perturbations), "units": list(data.features.units)}
    for key, value in ours.items():
        if _plain(value) != _plain(ckpt[key]):
            raise DataError(f"Teacher {ref} was trained on another {key} than the prepared {data.spec.name} data: "
                            f"{difference(ckpt[key], value, ('teacher', 'data'))}. Pass the teacher's data options "
                            f"(split_seed={ckpt['split'].get('seed')}, data.split.*) or retrain the teacher.")


def prior_of(ckpt: dict) -> dict:
    """The ``prior_info`` that export_flow expects, rebuilt from a teacher checkpoint (the student keeps its prior)."""
    info = {k: v for k, v in ckpt.items() if k.startswith(PRIOR_PREFIXES) and k not in ("prior_mu", "prior_state", "prior_offset")}
    return {**info, "state": dict(ckpt.get("prior_state", {}))}


def tree_ref(ref: str, artifacts_dir) -> str:
    """A teacher reference as the checkpoint records it: a run inside the artifacts tree by its path in the tree
    (``flow_heads/k562/base``, the same on the Hub), anything else (hf://, another folder) as given."""
    path, art = Path(ref).resolve(), Path(artifacts_dir).resolve()
    if ref.startswith("hf://") or not path.is_relative_to(art):
        return ref
    return (path.parent if path.name == "flow_best.pt" else path).relative_to(art).as_posix()


def student_backbone(path: Path, ckpt: dict, artifacts_dir) -> Path:
    """The backbone the student's checkpoint points to: this tree's copy under ``backbones/<dataset>/`` when it is
    the teacher's (same sha256; e.g. a Hub teacher whose backbone was also pulled here), else the teacher's own."""
    from scfate.utils.io import sha256_file

    for local in sorted((Path(artifacts_dir) / "backbones" / ckpt["dataset"]).rglob("backbone.pt")):
        if sha256_file(local) == ckpt["backbone_sha256"]:
            return local
    return (path.parent / ckpt["backbone_path"]).resolve()


def default_run_dir(cfg: DictConfig, n_teachers: int, mixed: bool, rnd: int) -> Path:
    art, name = Path(cfg.paths.artifacts_dir), cfg.data.name
    if mixed:
        return art / f"{name}_path_b" / "students" / f"mixed{n_teachers}_K{cfg.K}" / f"s{cfg.seed}"
    # round 1 is the card's reflow_K2_s1; a student of a student gets its own folder instead of overwriting it
    return art / "flow_heads" / name / f"reflow{'' if rnd == 1 else rnd}_K{cfg.K}_s{cfg.seed}"


@torch.no_grad()
def generate_couplings(student, teachers: list, dm, n: int, teacher_steps: int, probs: torch.Tensor, seed: int,
                       chunk: int = 4096) -> Couplings:
    """``n`` couplings over the training conditions (cycled in shuffled order so each gets its share) and their
    context's training control cells. ``theta_0`` is the student's source; each row's teacher is drawn from
    ``probs``; ``theta_1`` is that teacher's ODE solution at ``teacher_steps`` with its own sampler, conditioned on
    the same control latent, perturbation and context. The backbone is shared (checked), so latents come from
    the student's."""
    rng, gen = np.random.default_rng([seed, 11]), torch.Generator().manual_seed(seed)
    groups, b = dm.groups["train"], dm.batch_size
    n_draws = math.ceil(n / b)
    order = np.concatenate([rng.permutation(len(groups)) for _ in range(math.ceil(n_draws / len(groups)))])
    rows = []
    for c in range(n_draws):
        g, m = groups[order[c]], min(b, n - c * b)
        enc = dm.encode[(g.context, g.condition)]
        ctrl = dm.controls[g.context]
        idx = rng.choice(ctrl, m, replace=len(ctrl) < m)
        z = student.backbone.encode(torch.from_numpy(dm.reader(idx)), enc["context"]).float()
        rows.append(Couplings(theta0=student._source(enc["perturbation"], m), theta1=torch.empty(0), z_ctrl=z,
                              ctrl_index=torch.as_tensor(idx, dtype=torch.long),
                              perturbation=enc["perturbation"].expand(m), context=enc["context"].expand(m),
                              members=enc["members"].expand(m, -1), log10_dose=enc["log10_dose"].expand(m),
                              teacher=draw_teachers(m, probs, gen)))
    out = Couplings.cat(rows)
    out.theta1 = torch.empty_like(out.theta0)
    for start in range(0, len(out), chunk):  # many conditions per ODE solve: each row carries its own conditioning
        part = out[slice(start, start + chunk)]
        for j in part["teacher"].unique().tolist():
            sel = (part["teacher"] == j).nonzero().squeeze(1)
            t = teachers[j]
            e_p = t.v_net.embed(part["members"][sel], part["log10_dose"][sel])
            z, ctx = part["z_ctrl"][sel], part["context"][sel]

            def v_fn(theta, tt, t=t, e_p=e_p, z=z, ctx=ctx):
                return t.v_net(theta, tt, e_p, z, ctx).float()

            out.theta1[start + sel] = teacher_endpoints(t.path, v_fn, part["theta0"][sel], teacher_steps,
                                                        t.hparams.sampler)
    return out


def coupling_loader(couplings: Couplings, batch_size: int, seed: int):
    """Shuffled batches of whole rows (index lists, so a batch is one tensor gather, not a per-row collate)."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    sampler = RandomSampler(couplings, generator=torch.Generator().manual_seed(seed))
    return DataLoader(couplings, sampler=BatchSampler(sampler, batch_size, drop_last=len(couplings) > batch_size),
                      batch_size=None)


def checked_teachers(cfg: DictConfig):
    """(refs, mixed?, mixture probabilities, checkpoint paths, checkpoints), after every check that needs only the
    checkpoints, so bad input stops before any data is prepared or model built."""
    from scfate.hub import resolve_checkpoint
    from scfate.models.export import read_checkpoint
    from scfate.models.flow_export import FORMAT

    refs, mixed = teacher_refs(cfg)
    try:
        probs = mixture_weights(cfg.get("teacher_weights"), len(refs)) if mixed else torch.ones(1, dtype=torch.float64)
    except ValueError as exc:
        raise DataError(f"{exc} Teachers: {refs}") from exc
    paths = [Path(resolve_checkpoint(r, filename="flow_best.pt")) for r in refs]
    ckpts = [read_checkpoint(p, FORMAT, "Flow-head", "Give a run folder of train.py or reflow.py.") for p in paths]
    check_teachers(refs, ckpts)
    if ckpts[0]["dataset"] != cfg.data.name:
        raise DataError(f"teacher trained on {ckpts[0]['dataset']}: add dataset={ckpts[0]['dataset']} "
                        f"(the run is configured for dataset={cfg.data.name}).")
    return refs, mixed, probs, paths, ckpts


def run_reflow(cfg: DictConfig) -> dict:
    import pytorch_lightning as pl

    from scfate.models.flow_export import load_flow

    K = check_k(cfg.K)
    pl.seed_everything(int(cfg.seed), workers=True)
    refs, mixed, probs, paths, ckpts = checked_teachers(cfg)
    rnd = max(int(c.get("reflow_round", 0)) for c in ckpts) + 1
    run_dir = Path(cfg.run_dir) if cfg.get("run_dir") else default_run_dir(cfg, len(refs), mixed, rnd)
    if any(p.resolve().parent == run_dir.resolve() for p in paths):
        raise DataError(f"run_dir={run_dir} holds a teacher; the student would overwrite it. Pass another run_dir=.")
    with open_dict(cfg):  # the teacher's split, not the student's seed, decides the data split
        cfg.data.split.seed = int(ckpts[0]["split"]["seed"] if cfg.split_seed is None else cfg.split_seed)
    from hydra.utils import instantiate

    dm = instantiate(cfg.datamodule, _partial_=True)(spec=instantiate(cfg.data), val_mode="perturbations")
    dm.prepare_data()
    dm.setup("fit")
    check_against_data(refs, ckpts, dm.data)
    teachers = [load_flow(p)[0] for p in paths]
    # the student's source (theta_0) is its prior: the teacher's, or for a mixture the first KRR teacher's (or none)
    src = next((i for i, c in enumerate(ckpts) if c.get("prior") == "krr"), None) if mixed else 0
    prior_ckpt = ckpts[src] if src is not None else {"prior": "none", "krr_gamma": None, "krr_alpha": None}
    prior_mu = teachers[src].prior_mu if src is not None else torch.zeros_like(teachers[0].prior_mu)
    prior_offset = teachers[src].prior_offset if src is not None else None
    prior_info = prior_of(prior_ckpt)
    from scfate.models.reflow import student_from_teacher

    overrides = OmegaConf.to_container(cfg.student, resolve=True) if cfg.get("student") else {}
    student = student_from_teacher(teachers[0], K, prior_mu, {k: v for k, v in overrides.items() if v is not None},
                                   prior_offset)
    log.info("generating %d couplings from %d teacher(s) at %d steps", cfg.n_couplings, len(refs), cfg.teacher_steps)
    couplings = generate_couplings(student, teachers, dm, int(cfg.n_couplings), int(cfg.teacher_steps), probs,
                                   int(cfg.seed), int(cfg.coupling_chunk))
    if cfg.get("save_couplings"):
        couplings.save(run_dir / "couplings.pt")
    best = train_student(cfg, student, couplings, dm, run_dir)
    from scfate.models.flow_export import export_flow
    from scfate.utils.io import atomic_write_text, sha256_file
    from scfate.utils.reproduce import write_reproduce

    shas = [sha256_file(p) for p in paths]
    named = [tree_ref(r, cfg.paths.artifacts_dir) for r in refs]
    extra = {"seed": int(cfg.seed), "K": K, "teacher_steps": int(cfg.teacher_steps), "reflow_round": rnd,
             "n_couplings": int(cfg.n_couplings), "best_val_delta_cos": best}
    if mixed:  # (the Hub manifest tells a mixed student by its `teachers`, a reflow student by its `teacher`)
        extra.update(teachers=named, teachers_sha256=shas, teacher_weights=probs.tolist(),
                     teacher_counts=torch.bincount(couplings.teacher, minlength=len(refs)).tolist())
    else:
        extra.update(teacher=named[0], teacher_sha256=shas[0])
    bb_path = student_backbone(paths[0], ckpts[0], cfg.paths.artifacts_dir)
    path = export_flow(student, dm.data, run_dir / "flow_best.pt", bb_path, prior_info, extra=extra)
    atomic_write_text(run_dir / "flow_metrics.jsonl", "".join(json.dumps(r) + "\n" for r in student.history))
    write_reproduce(run_dir, "reflow.py", artifacts_dir=cfg.paths.artifacts_dir)
    print(f"student (K={K}) exported to {path}")
    tag = f"mixed{len(refs)}" if mixed else "reflow" if rnd == 1 else f"reflow{rnd}"
    name = f"scfate:{cfg.data.name}_{tag}_K{K}"
    return evaluate_student(cfg, student, teachers[0], dm, name, path, run_dir, prior_info["prior"] == "krr")


def train_student(cfg: DictConfig, student, couplings: Couplings, dm, run_dir: Path) -> float:
    """Lightning fit on the couplings; validation on validation perturbations at K steps picks the best epoch."""
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelCheckpoint

    from scfate.pipeline import finish_loggers

    art = Path(cfg.paths.artifacts_dir).resolve()
    rel = run_dir.resolve().relative_to(art) if run_dir.resolve().is_relative_to(art) else Path(run_dir.name)
    checkpoint = ModelCheckpoint(dirpath=art / "checkpoints" / rel, filename="best", monitor="val/delta_cos",
                                 mode="max", save_last=True)
    epochs = cfg.epochs if cfg.trainer.get("max_epochs") is None else cfg.trainer.max_epochs
    loggers = [instantiate(cfg.logger)] if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=[checkpoint], logger=loggers, max_epochs=epochs)
    trainer.fit(student, train_dataloaders=coupling_loader(couplings, int(cfg.batch_size), int(cfg.seed)),
                val_dataloaders=dm.val_dataloader(), ckpt_path=cfg.get("ckpt_path"))
    finish_loggers(trainer)
    if checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        student.load_state_dict(state)
    student.cpu().eval()
    return float(checkpoint.best_model_score or 0)


def evaluate_student(cfg: DictConfig, student, teacher, dm, name: str, path: Path, run_dir: Path, krr: bool) -> dict:
    """Test split at K steps beside the configured baselines, the (first) teacher at its own steps and, with a
    KRR prior, the prior alone; one eval JSON in the run folder."""
    from scfate.eval.results import build_eval_json, print_table, write_eval_json
    from scfate.eval.runner import EvalData, evaluate, score
    from scfate.pipeline_flow import FlowPredictor

    units, n_cells, seed = dm.data.features.index(), int(cfg.eval_n_cells), int(cfg.seed)
    model = FlowPredictor(student, dm.perturbations, dm.contexts, units, name, n_steps=int(cfg.K))
    scores = evaluate(dm.data, model, list(cfg.eval_baselines), n_cells=n_cells, seed=seed)
    extras = {}
    if cfg.get("eval_teacher"):
        extras[f"teacher_{teacher.hparams.n_steps}steps"] = FlowPredictor(
            teacher, dm.perturbations, dm.contexts, units, "teacher", n_steps=int(teacher.hparams.n_steps))
    if krr:
        extras["krr_prior"] = FlowPredictor(student, dm.perturbations, dm.contexts, units, "krr_prior",
                                            prior_only=True)
    if extras:
        ed = EvalData(dm.data, n_cells=n_cells, seed=seed)
        fresh = ed.rng.bit_generator.state  # what `evaluate` drew the student's cells from: the same cells for each
        for key, predictor in extras.items():
            ed.rng.bit_generator.state = fresh
            predictor.fit(ed.pseudobulk())
            scores["baselines"][key] = score(ed, predictor)
    ev = build_eval_json(name, dm.data, scores, OmegaConf.to_container(cfg, resolve=True), ckpt=str(path))
    print_table(ev)
    write_eval_json(ev, run_dir / f"eval_{cfg.data.name}_seed{cfg.seed}.json")
    return ev
