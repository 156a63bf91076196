"""The one contract every entry point keeps: compose the configuration with Hydra, register the schema,
check the settings before torch loads, run the job, and turn every error of input (a setting, a file, a
value in a file; their messages name it) into one log line and exit status 2. The job returns the metric
a sweeper optimises.

    @entry_point("train", check=check_train)
    def main(cfg: DictConfig) -> float:
        from detection.cli.training import run_training
        return run_training(cfg)["val/map"]
"""

import functools
import logging
import sys
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from detection.cli.schema import CONFIG_DIR, register
from detection.engine.settings import SettingsError

log = logging.getLogger(__name__)


def entry_point(config_name: str, *, check: Callable[[DictConfig], Any],
                errors: tuple[type[BaseException], ...] = (SettingsError, FileNotFoundError, ValueError)
                ) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Makes `job(cfg)` a Hydra entry point on `conf/<config_name>.yaml`: `check(cfg)` first (it imports no
    torch), then the job; an error of `errors` is one log line and exit status 2. `train.py` narrows
    `errors` to SettingsError: in a multirun an exit stops the sweep, and a failed job's traceback is for
    the sweep to record."""
    register()

    def wrap(job: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(job)  # Hydra names the job (its log file, its run folder) after the wrapped script
        def checked(cfg: DictConfig) -> Any:
            try:
                check(cfg)
                return job(cfg)
            except errors as error:
                log.error("%s", error)
                sys.exit(2)

        return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(checked)

    return wrap
