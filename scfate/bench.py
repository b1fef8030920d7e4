"""``python -m scfate.bench dataset=NAME folds=5 repeats=3 [model overrides]``: the cross-validated benchmark
(scfate.pipelines.bench). See conf/bench.yaml."""

from scfate.errors import hydra_entry
from scfate.pipelines.config import CONF_DIR


@hydra_entry(config_path=CONF_DIR, config_name="bench")
def main(cfg) -> None:
    from scfate.pipelines.bench import run_bench

    run_bench(cfg)


if __name__ == "__main__":
    main()
