"""Run identity: a run prepares (and hashes) its data once, and ``backbone=auto`` reuses a backbone only when both
its split and its backbone config are the run's. In-process runs on the built-in data, tiny epochs."""

import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from scfate.errors import DataError
from scfate.pipelines.config import CONF_DIR

QUICK = ["trainer.max_epochs=1", "datamodule.steps_per_epoch=3", "datamodule.val_steps=1", "eval_n_cells=20",
         "eval_baselines=[no_change,train_mean]", "model.enc_hidden=[32]", "model.dec_hidden=[32]",
         "flow.head.d_hidden=32", "flow.head.d_embed=16", "flow.head.n_blocks=1", "flow.head.n_steps=2",
         "prior.space=angle"]
SMALL = ["+data.synthetic.n_genes=80", "+data.synthetic.n_background_genes=40", "+data.synthetic.n_perturbed_genes=24",
         "+data.synthetic.n_combos=16", "+data.synthetic.cells_per_condition=20", "+data.synthetic.n_control_cells=100"]


def compose_config(config_name: str, overrides: list[str], out_dir) -> object:
    """Compose ``config_name`` with ``overrides`` as a Hydra run would (its hydra node set, output in ``out_dir``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def compose_train(tmp_path, *overrides):
    return compose_config("train", [*QUICK, *SMALL, f"paths.data_dir={tmp_path / 'data'}",
                                    f"paths.artifacts_dir={tmp_path / 'artifacts'}", *overrides], tmp_path / "out")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One whole in-process ``train.py`` run, counting preparations and hashes of the raw data file."""
    import scfate.data.prepare as prep
    import scfate.utils.io as io
    from scfate.cli import run_train

    tmp = tmp_path_factory.mktemp("identity")
    calls = {"prepare": 0, "hash": []}
    real_prepare, real_hash = prep.prepare, io.sha256_file

    def counting_prepare(*a, **k):
        calls["prepare"] += 1
        return real_prepare(*a, **k)

    def counting_hash(path, *a, **k):
        calls["hash"].append(str(path))
        return real_hash(path, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(prep, "prepare", counting_prepare)
    mp.setattr(io, "sha256_file", counting_hash)
    try:
        ev = run_train(compose_train(tmp))
        first = dict(calls, hash=list(calls["hash"]))
        calls.update(prepare=0, hash=[])
        run_train(compose_train(tmp, "seed=2", "split_seed=1"))  # another head on the same split and data
        second = dict(calls, hash=list(calls["hash"]))
    finally:
        mp.undo()
    return tmp, ev, first, second


def test_a_run_prepares_its_data_once_and_a_later_run_hashes_nothing(first_run):
    tmp, ev, first, second = first_run
    raw = [h for h in first["hash"] if h.endswith(".h5ad")]
    assert first["prepare"] == 1 and len(raw) == 1, first  # one preparation, one hash of the raw file
    assert second["prepare"] == 1 and not [h for h in second["hash"] if h.endswith(".h5ad")], second
    assert ev["seed"] == 1 and ev["split_seed"] == 1


def test_backbone_auto_is_keyed_by_split_and_backbone_config(first_run):
    from scfate.data.prepare import prepare
    from scfate.pipelines.backbone import resolve_backbone
    from scfate.pipelines.config import instantiate_spec

    tmp = first_run[0]
    cfg32 = compose_train(tmp)
    data = prepare(instantiate_spec(cfg32), cfg32.paths.data_dir)
    (folder32,) = (tmp / "artifacts" / "backbones" / "synthetic").iterdir()  # both heads of split 1 share it
    p32 = resolve_backbone(cfg32, data)
    assert p32 == folder32 / "backbone.pt" and torch.load(p32, weights_only=True)["theta_dim"] == 32
    cfg48 = compose_train(tmp, "model.theta_dim=48")
    p48 = resolve_backbone(cfg48, data)  # another config: its own folder, trained now, not the 32-plane one
    assert p48.parent != p32.parent and p48.parent.name.startswith(data.split.tag + "-")
    assert torch.load(p48, weights_only=True)["theta_dim"] == 48
    assert torch.load(p32, weights_only=True)["theta_dim"] == 32  # untouched
    shutil.copy(p32, p48)  # a 32-plane backbone put in the 48-plane folder by hand is refused, naming the key
    with pytest.raises(DataError, match=r"another backbone config.*model.theta_dim: 32 vs 48"):
        resolve_backbone(cfg48, data)
