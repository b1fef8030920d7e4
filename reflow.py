"""Few-step students: python reflow.py teacher=PATH_OR_HF K=2 | teachers=GLOB_OR_LIST K=16. See conf/reflow.yaml."""

import hydra

from scfate.cli import friendly_errors, not_implemented


@hydra.main(version_base="1.3", config_path="conf", config_name="reflow")
@friendly_errors
def main(cfg) -> None:
    not_implemented(f"Reflow / distillation (K={cfg.K})")


if __name__ == "__main__":
    main()
