"""python -m scfate.data dataset=NAME [overrides]: prepare a dataset (cached), write its split, print the summary."""

from pathlib import Path

from scfate.errors import hydra_entry

# also scfate.pipelines.config.CONF_DIR: this entry point sits in the data layer, which may not import pipelines
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra_entry(config_path=CONF_DIR, config_name="prepare")
def main(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from scfate.data.prepare import prepare
    from scfate.data.summary import write_summary

    data = prepare(instantiate(cfg.data), cfg.paths.data_dir, rebuild=bool(cfg.get("rebuild_data", False)))
    write_summary(data, HydraConfig.get().runtime.output_dir, OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
