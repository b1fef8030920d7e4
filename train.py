"""Train scFATE: python train.py [dataset=NAME] [seed=N] [trainer=gpu] [-m seed=1,2,3]. See conf/train.yaml."""

import hydra

from scfate.cli import run_train
from scfate.errors import friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@friendly_errors
def main(cfg) -> None:
    run_train(cfg)


if __name__ == "__main__":
    main()
