"""Evaluate: python evaluate.py baseline=NAME dataset=NAME | predictions=PRED.h5ad | ckpt=PATH_OR_HF.

Scores every test perturbation with every metric, beside every baseline, prints one table and writes one eval JSON.
"""

from scfate.cli import run_evaluate
from scfate.errors import hydra_entry


@hydra_entry(config_path="conf", config_name="evaluate")
def main(cfg) -> None:
    run_evaluate(cfg)


if __name__ == "__main__":
    main()
