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


def prior_settings(cfg: DictConfig):
    from hydra.utils import instantiate

    return instantiate(cfg.prior)


def resolved(cfg: DictConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)
