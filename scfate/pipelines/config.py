"""Small Hydra helpers every stage shares: the data spec of a run (with its split seed), the run's output folder,
the prior's settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def split_seed_of(cfg: DictConfig, default: int | None = None) -> int:
    """The run's split seed: ``split_seed`` when set (train.py: ``${seed}`` unless given), else ``default`` (a
    checkpoint's or teacher's own split seed), else the training seed."""
    value = cfg.get("split_seed")
    if value is not None:
        return int(value)
    return int(default) if default is not None else int(cfg.seed)


def instantiate_spec(cfg: DictConfig, split_seed: int | None = None):
    """The run's DataSpec (``conf/dataset``), its split seed set explicitly when given, never by editing ``cfg``."""
    from hydra.utils import instantiate

    spec = instantiate(cfg.data)
    seed = split_seed if split_seed is not None else spec.split.seed
    if seed is None:
        seed = split_seed_of(cfg)
    return dataclasses.replace(spec, split=dataclasses.replace(spec.split, seed=int(seed)))


def output_dir(cfg: DictConfig) -> Path:
    """Hydra's output folder of this job (or ``paths.output_dir`` outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.get("output_dir") or ".")


def check_outputs_writable(cfg: DictConfig) -> None:
    """Refuse, before anything is trained, a run whose output folders cannot be written: otherwise a read-only
    folder is found only when the finished model is exported, hours later. Folders that do not exist yet are
    judged by the nearest one that does (they are created later, inside it)."""
    from scfate.errors import UsageError

    folders = [(output_dir(cfg), "hydra.run.dir")]
    if cfg.get("out"):
        folders.append((Path(cfg.out).parent, "out"))
    writes_models = cfg.get("task") == "reflow" or (cfg.get("task") == "train" and cfg.get("stage") != "prepare")
    if cfg.get("run_dir") and (cfg.get("task") != "train" or cfg.get("stage") == "flow"):
        folders.append((Path(cfg.run_dir), "run_dir"))
    if writes_models:  # backbones and Lightning checkpoints
        folders.append((Path(cfg.paths.artifacts_dir), "paths.artifacts_dir"))
    for folder, key in folders:
        problem = _not_writable(folder)
        if problem:
            raise UsageError(f"Cannot write this run's outputs to {folder}: {problem}. Give a writable folder "
                             f"with {key}=PATH (or make this one writable); checked before any training.")


def _not_writable(folder: Path) -> str | None:
    import tempfile

    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:  # a real write: permission bits say nothing for root, nor for a read-only mount
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"{existing} is not writable ({exc.strerror or exc})"
    return None


def prior_settings(cfg: DictConfig):
    from hydra.utils import instantiate

    return instantiate(cfg.prior)


def resolved(cfg: DictConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)
