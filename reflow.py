"""Few-step students: python reflow.py teacher=PATH_OR_HF K=2 | teachers=GLOB_OR_LIST K=16. See conf/reflow.yaml."""

from scfate.cli import run_reflow
from scfate.errors import hydra_entry


@hydra_entry(config_path="conf", config_name="reflow")
def main(cfg) -> None:
    run_reflow(cfg)


if __name__ == "__main__":
    main()
