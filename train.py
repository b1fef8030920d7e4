"""Train scFATE: python train.py [dataset=NAME] [seed=N] [trainer=gpu] [-m seed=1,2,3]. See conf/train.yaml."""

from scfate.cli import run_train
from scfate.errors import hydra_entry


@hydra_entry(config_path="conf", config_name="train")
def main(cfg) -> None:
    run_train(cfg)


if __name__ == "__main__":
    main()
