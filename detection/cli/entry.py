"""The one contract every entry point keeps: compose the configuration with Hydra, register the schema,
check the settings before torch loads, run the job, and turn every error of input (a setting, a file, a
value in a file; their messages name it) into one log line and exit status 2. The job returns the metric
a sweeper optimises.

    @entry_point("train", check=check_train)
    def main(cfg: DictConfig) -> float:
        from detection.cli.training import run_training
        return run_training(cfg)["val/map"]
"""

import difflib
import functools
import logging
import os
import sys
import time
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from detection.cli.schema import CONFIG_DIR, register
from detection.engine.settings import SettingsError, unknown_key

log = logging.getLogger(__name__)


def entry_point(config_name: str, *, check: Callable[[DictConfig], Any],
                errors: tuple[type[BaseException], ...] = (SettingsError, FileNotFoundError, ValueError)
                ) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Makes `job(cfg)` a Hydra entry point on `conf/<config_name>.yaml`: `check(cfg)` first (it imports no
    torch), then the job; an error of `errors` is one log line and exit status 2, or in a multirun, where an
    exit would stop the sweep, one log line and the error raised for the sweep to record as the job's."""
    register()

    def wrap(job: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(job)  # Hydra names the job (its log file, its run folder) after the wrapped script
        def checked(cfg: DictConfig) -> Any:
            composing.end()
            JOBS.append(time.time())
            try:
                check(cfg)
                return job(cfg)
            except errors as error:
                log.error("%s", one_line(error))
                if HydraConfig.get().mode == RunMode.MULTIRUN:
                    raise  # the sweep records the job as failed and goes on to the next
                sys.exit(2)

        composing = Composing()
        hydra_main = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(checked)
        return functools.wraps(job)(lambda: composing.run(hydra_main))

    return wrap


JOBS: list[float] = []  # when each job of this process began (a sweep's jobs may share one process)


def uptime() -> float:
    """Seconds since this job began: since the process started for its first job (imports and composition
    included), since the entry point began it for a later job of a sweep."""
    import psutil

    began = JOBS[-1] if len(JOBS) > 1 else psutil.Process().create_time()
    return time.time() - began


class Composing:
    """Hydra's composition errors (a misspelt key or option) in one line that suggests the closest known
    one, exit status 2. Hydra reports its errors itself unless HYDRA_FULL_ERROR is set, so it is set while
    Hydra composes and put back as it was when the job starts: the job's own errors are Hydra's to report."""

    def __init__(self):
        self.started = False
        self.previous = os.environ.get("HYDRA_FULL_ERROR")

    def run(self, hydra_main: Callable[[], Any]) -> Any:
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            return hydra_main()
        except (HydraException, SettingsError) as error:  # a sweeper refuses its settings before any job
            if self.started:
                raise
            message = composition_error(error) if isinstance(error, HydraException) else str(error)
            sys.stderr.write(f"error: {message}\n")
            sys.exit(2)
        finally:
            self.end()

    def end(self) -> None:
        self.started = True
        if self.previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = self.previous


def one_line(error: BaseException) -> str:
    """The error's message; for one a loader worker raised (whose message holds the worker's traceback),
    its original message, the traceback's last line."""
    message = str(error)
    if message.startswith("Caught ") and "Original Traceback" in message:
        return message.strip().splitlines()[-1].split(": ", 1)[-1]
    return message


def composition_error(error: HydraException) -> str:
    """One line for a composition error: the unknown key or option with the closest known one, else
    Hydra's message folded into a line."""
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and cause.full_key and cause.parent_node is not None:
        return unknown_key(cause.full_key, [str(key) for key in cause.parent_node.keys()])
    if isinstance(error, MissingConfigException) and error.options:
        group, _, option = str(error.missing_cfg_file).rpartition("/")
        close = difflib.get_close_matches(option, error.options, n=1, cutoff=0.5)
        hint = f"did you mean {group}={close[0]}? " if close else ""
        return f"{group}={option} is not an option: {hint}options: {', '.join(error.options)}"
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
