"""Evaluate: python evaluate.py baseline=NAME dataset=NAME | predictions=PRED.h5ad | ckpt=PATH_OR_HF.

Scores every test perturbation with every metric, beside every baseline, prints one table and writes one eval JSON.
"""

import hydra

from scfate.cli import run_evaluate
from scfate.errors import friendly_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@friendly_errors
def main(cfg) -> None:
    run_evaluate(cfg)


if __name__ == "__main__":
    main()
