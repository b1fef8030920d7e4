"""Few-step students: python reflow.py teacher=PATH_OR_HF K=2 | teachers=GLOB_OR_LIST K=16. See conf/reflow.yaml."""

import hydra

from scfate.cli import run_reflow
from scfate.errors import friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="reflow")
@friendly_errors
def main(cfg) -> None:
    run_reflow(cfg)


if __name__ == "__main__":
    main()
