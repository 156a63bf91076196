"""Two configurations compared over the same seeds: the parents of two seed sweeps (`train.py -m seed=0,1,2,3,4
...`), each child paired with the other sweep's child of the same seed, and the mean difference of `metric`
with its 95% confidence interval and a paired t-test's p-value, printed and logged as an MLflow run.

    python -m detection.cli.compare_sweeps first=<parent run id> second=<parent run id> [metric=val/map]
"""

import logging

from omegaconf import DictConfig

from detection.cli.checks import check_compare_sweeps
from detection.cli.entry import entry_point
from detection.cli.schema import DEFAULT_STORE

log = logging.getLogger(__name__)


@entry_point("compare_sweeps", check=check_compare_sweeps)
def main(cfg: DictConfig) -> dict:
    from detection.tracking.sweeps import compare_sweeps

    line, comparison = compare_sweeps(cfg.tracking.uri or DEFAULT_STORE, cfg.first, cfg.second, cfg.metric)
    log.info("%s (per seed: %s)", line, ", ".join(f"{seed}: {difference:+.4f}" for seed, difference
                                                  in zip(comparison["seeds"], comparison["differences"])))
    return comparison


if __name__ == "__main__":
    main()
