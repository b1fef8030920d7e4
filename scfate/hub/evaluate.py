"""``evaluate.py ckpt=PATH_OR_HF``: score a saved flow head on the prepared data it was trained for.

Only the checkpoint is needed: it carries its dataset name, gene list, split and vocabularies, which are checked
against the prepared data so that a score never silently comes from another split or gene order.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from scfate.data.errors import DataError

log = logging.getLogger("scfate")


def check_split(ckpt_split: dict, data_split: dict, ckpt_path) -> None:
    """Raise naming the first difference between the checkpoint's split and the prepared data's."""
    for key in ("mode", "seed", "params", "train", "val", "test"):
        a, b = ckpt_split.get(key), data_split.get(key)
        if a == b:
            continue
        if key in ("train", "val", "test"):
            only_c, only_d = sorted(set(a or []) - set(b or [])), sorted(set(b or []) - set(a or []))
            detail = f"only in the checkpoint's {key}: {only_c[:10]}, only in the data's: {only_d[:10]}"
        else:
            detail = f"checkpoint {a!r}, data {b!r}"
        fix = f"run with seed={a}" if key == "seed" else "prepare the data with the checkpoint's split settings"
        raise DataError(f"{ckpt_path} was trained on another split than the prepared data ({key} differs: {detail}). "
                        f"Evaluate on its own split: {fix}.")


def _seed_given() -> bool:
    from scfate.utils.reproduce import job_overrides

    return any(o.lstrip("+~").startswith(("seed=", "data.split.seed=")) for o in job_overrides())


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    from scfate.cli import instantiate_spec, output_dir
    from scfate.data.prepare import prepare
    from scfate.data.schema import check_same_genes
    from scfate.eval.results import build_eval_json, print_table, write_eval_json
    from scfate.eval.runner import evaluate
    from scfate.hub import resolve_checkpoint
    from scfate.models.export import read_checkpoint
    from scfate.models.flow_export import FORMAT, load_flow
    from scfate.pipeline_flow import FlowPredictor

    path = resolve_checkpoint(cfg.ckpt)
    ckpt = read_checkpoint(path, FORMAT, "Flow-head", "Give a flow_best.pt (or its run folder / hf:// path).")
    if ckpt["dataset"] != cfg.data.name:
        raise DataError(f"checkpoint trained on {ckpt['dataset']}: run with dataset={ckpt['dataset']} "
                        f"(got dataset={cfg.data.name}; checkpoint {cfg.ckpt}).")
    split_seed = ckpt["split"].get("seed")
    if split_seed is not None and split_seed != cfg.data.split.seed and not _seed_given():
        # evaluation needs only the checkpoint: its own split unless the user asked for another seed
        log.info("seed=%s: the checkpoint's split seed (pass seed=N to choose another)", split_seed)
        cfg.seed = split_seed
    data = prepare(instantiate_spec(cfg), cfg.paths.data_dir)
    check_same_genes(list(ckpt["genes"]), list(data.adata.var_names), f"The prepared {cfg.data.name} data",
                     f"{path} was trained on other genes: prepare the data with the checkpoint's settings.")
    check_split(ckpt["split"], data.split.to_dict(), path)
    if ckpt.get("data_sha256") != data.meta["data_sha256"]:
        log.warning("the data file differs from the one %s was trained on (sha256 %s vs %s): same genes and split, "
                    "so it is scored, but numbers may not match the paper's", path, ckpt.get("data_sha256"),
                    data.meta["data_sha256"])
    head, ckpt = load_flow(path)
    n_steps = int(cfg.n_steps) if cfg.get("n_steps") is not None else int(ckpt["n_steps"])
    units = {u: i for i, u in enumerate(ckpt["units"])}  # the checkpoint's order: rows of its unit_features
    model = FlowPredictor(head, list(ckpt["perturbations"]), list(ckpt["contexts"]), units,
                          f"scfate:{ckpt['dataset']}", n_steps=n_steps)
    scores = evaluate(data, model, list(cfg.baselines), n_cells=int(cfg.n_cells), seed=int(cfg.seed))
    ev = build_eval_json(model.name, data, scores, OmegaConf.to_container(cfg, resolve=True), ckpt=str(path))
    ev["provenance"].update(checkpoint_ref=str(cfg.ckpt), n_steps=n_steps)
    print_table(ev)
    out = cfg.get("out") or output_dir(cfg) / f"eval_scfate_{data.spec.name}_seed{ev['seed']}.json"
    print(f"eval JSON written to {write_eval_json(ev, out)}")
    return ev
