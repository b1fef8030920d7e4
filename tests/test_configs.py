"""Every config file composes, and every config with a _target_ instantiates."""

import dataclasses
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from scfate.data import DataSpec, SplitSpec
from scfate.pipelines.config import CONF_DIR

CONF = Path(CONF_DIR)
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml"))
LOGGERS = sorted(p.stem for p in (CONF / "logger").glob("*.yaml"))
FEATURES = sorted(p.stem for p in (CONF / "features").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
PRIORS = sorted(p.stem for p in (CONF / "prior").glob("*.yaml"))


def _compose(config_name: str, overrides: list[str], tmp_path) -> object:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "out")
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def test_the_config_tree_is_complete():
    assert PRIMARY == ["bench", "evaluate", "prepare", "reflow", "train"]
    assert {"synthetic", "norman", "norman_devel", "k562", "rpe1", "sciplex3", "custom"} <= set(DATASETS)
    assert TRAINERS == ["cpu", "ddp", "gpu"] and LOGGERS == ["csv", "wandb"]
    assert (CONF / "paths" / "default.yaml").is_file() and (CONF / "hydra" / "default.yaml").is_file()
    assert PRIORS == ["krr", "none"]
    for group in ("datamodule", "callbacks", "flow", "split"):
        assert (CONF / group / "default.yaml").is_file(), group


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_configs_compose_with_defaults(name, tmp_path):
    cfg = _compose(name, [], tmp_path)
    assert cfg.data.name == "synthetic" and cfg.seed == 1
    assert cfg.paths.artifacts_dir.endswith("artifacts")
    assert cfg.paths.output_dir == str(tmp_path / "out")


@pytest.mark.parametrize("dataset", DATASETS)
def test_dataset_configs_instantiate(dataset, tmp_path):
    extra = [f"data.path={tmp_path / 'my.h5ad'}"] if dataset == "custom" else []
    cfg = _compose("train", [f"dataset={dataset}", "seed=7", *extra], tmp_path)
    spec = instantiate(cfg.data)
    assert isinstance(spec, DataSpec) and spec.name == dataset
    assert spec.split.seed == 7  # split_seed defaults to the seed, so seed=1,2,3 -m varies the split (GEARS)
    pinned = instantiate(_compose("train", [f"dataset={dataset}", "seed=7", "split_seed=2", *extra], tmp_path).data)
    assert pinned.split.seed == 2  # ... and split_seed=N pins one split for every training seed
    # every split key is present, so any can be overridden without "+"
    assert set(cfg.data.split) == {f.name for f in dataclasses.fields(SplitSpec)}
    assert isinstance(spec.features, dict) and spec.features


def test_features_groups_are_used():
    used = {line.split(":")[-1].strip() for p in (CONF / "dataset").glob("*.yaml")
            for line in p.read_text().splitlines() if "/features@features" in line}
    assert used == set(FEATURES)
    # one shared base (target, split keys, usual columns) instead of a copy per dataset
    assert "/split@split: default" in (CONF / "dataset_base" / "default.yaml").read_text()
    assert all("/dataset_base@_here_: default" in p.read_text() and "_target_" not in p.read_text()
               for p in (CONF / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_configs_instantiate(trainer, tmp_path):
    import pytorch_lightning as pl

    cfg = _compose("train", [f"trainer={trainer}"], tmp_path)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    with open_dict(cfg):
        if not torch.cuda.is_available() and cfg.trainer.accelerator == "gpu":
            # same config on the CPU: checks every key is a valid Trainer argument
            cfg.trainer.accelerator, cfg.trainer.devices = "cpu", 1
    trainer_obj = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer_obj, pl.Trainer)
    if trainer in ("gpu", "ddp"):
        assert cfg.trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("logger", LOGGERS)
def test_logger_configs_instantiate(logger, tmp_path):
    cfg = _compose("train", [f"logger={logger}", "seed=3"], tmp_path)
    obj = instantiate(cfg.logger)
    assert type(obj).__name__ == {"csv": "CSVLogger", "wandb": "WandbLogger"}[logger]
    if logger == "wandb":
        assert cfg.logger.offline is True and cfg.logger.group == "synthetic"


@pytest.mark.parametrize("app", ["train", "reflow"])
def test_datamodule_config_instantiates(app, tmp_path):
    cfg = _compose(app, ["dataset=norman_devel"], tmp_path)
    dm = instantiate(cfg.datamodule)(spec=instantiate(cfg.data), data_dir=tmp_path)  # a partial: stages add data
    assert isinstance(dm.spec, DataSpec) and dm.spec.name == "norman_devel"
    assert dm.batch_size == cfg.datamodule.batch_size and dm.data is None and dm.seed == cfg.seed


@pytest.mark.parametrize("prior", PRIORS)
def test_prior_configs_instantiate(prior, tmp_path):
    from scfate.prior.settings import PriorSettings

    settings = instantiate(_compose("train", [f"prior={prior}"], tmp_path).prior)
    assert isinstance(settings, PriorSettings) and settings.name == prior
    assert settings.select is (prior == "krr")


def test_flow_config_instantiates_a_head_on_a_backbone(tmp_path):
    from scfate.models.flow_head import FlowHead
    from scfate.pipelines.flow import head_behaviour

    cfg = _compose("train", [], tmp_path)
    bb = instantiate(cfg.model, n_genes=12, n_contexts=2, perturbations=["A", "B", "A+B"],
                     atlas_perturbations=["A", "B"], _convert_="all")
    head = instantiate(cfg.flow.head, **head_behaviour("krr"), backbone=bb, unit_features=torch.randn(2, 5),
                       prior_mu=torch.zeros(3, bb.hparams.theta_dim), n_contexts=2)
    assert isinstance(head, FlowHead) and head.hparams.target == "prior" and head.hparams.decode == "residual"
    assert head_behaviour("none")["target"] == "atlas" and head_behaviour("none")["anchor"] == "none"


@pytest.mark.parametrize("stage", ["backbone", "flow", "reflow"])
def test_callbacks_configs_instantiate(stage, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    cb = instantiate(_compose("train", [], tmp_path).callbacks[stage], dirpath=tmp_path / "ckpt")
    monitor = {"backbone": ("val/loss", "min"), "flow": ("val/fm_loss", "min"), "reflow": ("val/endpoint_mse", "min")}
    assert isinstance(cb, ModelCheckpoint) and (cb.monitor, cb.mode) == monitor[stage]


@pytest.mark.parametrize("model", MODELS)
def test_model_configs_instantiate(model, tmp_path):
    from scfate.models.backbone import RotationAE

    cfg = _compose("train", [f"model={model}"], tmp_path)
    obj = instantiate(cfg.model, n_genes=12, n_contexts=2, perturbations=["A", "B", "A+B"],
                      atlas_perturbations=["A", "B"], _convert_="all")
    assert isinstance(obj, RotationAE) and obj.atlas.shape[0] == 2
    assert obj.hparams.group == {"backbone": "torus", "backbone_so": "so"}[model]


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# which entry point runs each Table 1 experiment (the comment at the top of each file says the same)
EXPERIMENT_APP = {"k562_reflow_K2": "reflow", "sciplex3_mixed18_K16": "reflow", "sciplex3_router": "evaluate"}


def test_every_table1_row_has_an_experiment():
    assert set(EXPERIMENTS) == {"norman_flow_heads", "k562_base", "k562_reflow_K2", "sciplex3_teachers",
                                "sciplex3_mixed18_K16", "sciplex3_router"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_configs_compose_into_the_card_tree(name, tmp_path):
    app = EXPERIMENT_APP.get(name, "train")
    cfg = _compose(app, [f"experiment={name}", f"paths.artifacts_dir={tmp_path}"], tmp_path)
    assert cfg.run_group.startswith("table1_")
    spec = instantiate(cfg.data)
    assert spec.name in ("norman", "k562", "sciplex3")
    if app == "evaluate":
        assert cfg.router.similarities and cfg.teachers.endswith("sciplex3_path_b/teachers/*/s*")
        return
    rel = Path(cfg.run_dir).relative_to(tmp_path).as_posix()
    expected = {"norman_flow_heads": "flow_heads/norman/seed1", "k562_base": "flow_heads/k562/base",
                "k562_reflow_K2": "flow_heads/k562/reflow_K2_s1", "sciplex3_teachers": "sciplex3_path_b/teachers/priorkrr/s1",
                "sciplex3_mixed18_K16": "sciplex3_path_b/students/mixed18_K16/s1"}[name]
    assert rel == expected
    if name in ("sciplex3_teachers", "norman_flow_heads"):  # one split (so one backbone) for every seed
        assert _compose(app, [f"experiment={name}", "seed=3"], tmp_path).data.split.seed == 1
    if name == "sciplex3_teachers":  # one split for all 18 teachers, whatever their seed
        assert cfg.hydra.sweeper.params == {"prior": "krr,none", "seed": "1,2,3,4,5,6,7,8,9"}
        assert _compose(app, [f"experiment={name}", "seed=5"], tmp_path).data.split.seed == 1


def test_slurm_launcher_config_composes_and_its_launcher_imports(tmp_path):
    from hydra.utils import get_class

    cfg = _compose("train", ["hydra/launcher=slurm"], tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher.gpus_per_node == 1 and launcher.array_parallelism == 18 and launcher.timeout_min > 0
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
