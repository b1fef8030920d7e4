"""Evaluate a checkpoint or a baseline: python evaluate.py ckpt=PATH_OR_HF | baseline=NAME dataset=NAME."""

import hydra

from scfate.cli import friendly_errors, not_implemented


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@friendly_errors
def main(cfg) -> None:
    if cfg.ckpt is None and cfg.baseline is None:
        not_implemented("evaluate.py needs ckpt=PATH or baseline=NAME; evaluation")
    not_implemented(f"Evaluation of {'ckpt=' + str(cfg.ckpt) if cfg.ckpt else 'baseline=' + str(cfg.baseline)}")


if __name__ == "__main__":
    main()
