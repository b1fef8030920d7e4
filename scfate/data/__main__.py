"""python -m scfate.data dataset=NAME [overrides]: prepare a dataset (cached), write its split, print the summary."""

import hydra

from scfate.cli import CONF_DIR, friendly_errors, run_prepare


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="prepare")
@friendly_errors
def main(cfg) -> None:
    run_prepare(cfg)


if __name__ == "__main__":
    main()
