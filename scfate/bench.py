"""``python -m scfate.bench dataset=NAME folds=5 repeats=3 [model overrides]``: the cross-validated benchmark
(scfate.pipelines.bench). See conf/bench.yaml."""

import hydra

from scfate.errors import friendly_errors
from scfate.pipelines.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
@friendly_errors
def main(cfg) -> None:
    from scfate.pipelines.bench import run_bench

    run_bench(cfg)


if __name__ == "__main__":
    main()
