"""The project's Optuna sweeper (conf/hydra/sweeper/optuna.yaml): an Optuna study asked for trials, each a
job of the configured Hydra launcher (a batch of `n_jobs` at a time), told each job's result. Hydra finds
sweepers only in the `hydra_plugins` namespace, hence this package; it imports every plugin module at start,
so this one imports neither torch nor Optuna until it sweeps.

The study lives in `storage` (null: SQLite `optuna.db` beside the MLflow store), so that the same command
continues it; its search space is stored with it, and a search whose space differs is refused. A job reports
its validation metric after each epoch to its trial (detection.cli.optuna_trial), and the study's `pruner`
may stop it: the trial is then PRUNED, not COMPLETE."""

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detection.cli.schema import CONFIG_DIR, DEFAULT_STORE
from detection.cli.sweep import PRUNED_AT
from detection.engine.settings import SettingsError
from detection.tracking.stores import store_folder

log = logging.getLogger(__name__)

NO_PRUNER = {"_target_": "optuna.pruners.NopPruner"}  # `pruner: null`: every trial runs to its end
SEARCH_SPACE = "search_space"  # the study's user attribute: {key: distribution as JSON}


def distribution(override: Override):
    """The Optuna distribution of a sweep override: choice(...) or a,b,c -> categorical; range(a, b[, step]) ->
    int (or float) with that step, b excluded as Hydra's range excludes it; interval(a, b) -> float (Hydra
    reads its ends as floats), tag(log, ...) on a log scale. None for a plain value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return None
    value, log_scale = override.value(), "log" in getattr(override.value(), "tags", ())
    if isinstance(value, Glob):
        raise SettingsError(f"{override.input_line}: an Optuna search takes choice(...), a,b,c, range(...) or "
                            f"interval(...), not glob(...)")
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(value.step))
        return FloatDistribution(values[0], values[-1], step=float(value.step))
    assert isinstance(value, IntervalSweep)  # the last kind of sweep Hydra parses
    return FloatDistribution(float(value.start), float(value.end), log=log_scale)


def search_space(params: Optional[DictConfig], arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
    """({key: distribution}, the fixed overrides every trial takes) from the sweeper's `params` and the
    command line's overrides (which win over `params` for the same key)."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    space, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(lines):
        key, found = override.get_key_element(), distribution(override)
        space.pop(key, None)  # a later override of the key replaces an earlier one, swept or not
        fixed.pop(key, None)
        if found is None:
            fixed[key] = override.input_line
        else:
            space[key] = found
    return space, list(fixed.values())


def space_differences(stored: dict[str, str], space: dict[str, str]) -> list[str]:
    """What differs between two search spaces ({key: distribution as JSON}), a phrase per key."""
    from optuna.distributions import json_to_distribution

    def shown(spec: Optional[str]) -> str:
        return "absent" if spec is None else repr(json_to_distribution(spec))

    return [f"{key}: {shown(stored.get(key))} before, {shown(space.get(key))} now"
            for key in sorted(stored.keys() | space.keys()) if stored.get(key) != space.get(key)]


class OptunaSweeper(Sweeper):
    """Hydra's sweeper for `hydra/sweeper=optuna`: see the module's docstring and conf/hydra/sweeper/optuna.yaml
    for the settings. `trial` is not a setting: the sweeper sets it in each job's configuration."""

    def __init__(self, *, direction: str, metric: str, study_name: str, storage: Optional[str], n_trials: int,
                 n_jobs: int, max_failure_rate: float, sampler: DictConfig, params: Optional[DictConfig],
                 pruner: Optional[DictConfig] = None, trial: Optional[int] = None):
        self.direction, self.metric, self.study_name, self.storage = direction, metric, study_name, storage
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.sampler, self.pruner, self.params = sampler, pruner, params
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)
        if self.storage is None:
            folder = store_folder(config.tracking.get("uri") or DEFAULT_STORE) or CONFIG_DIR.parent
            self.storage = f"sqlite:///{Path(folder).resolve() / 'optuna.db'}"

    def sweep(self, arguments: list[str]) -> None:
        space, fixed = search_space(self.params, arguments)
        study = self.open_study(space)
        failures, to_go = 0, self.n_trials
        while to_go > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, to_go))]
            returns = self.launcher.launch([self.overrides(trial, fixed) for trial in trials],
                                           initial_job_idx=self.job_idx)
            self.job_idx, to_go = self.job_idx + len(returns), to_go - len(returns)
            for trial, job in zip(trials, returns):
                self.tell(study, trial, job)
                failures += job.status.name == "FAILED"  # a non-finite value fails its trial, not the sweep
            if failures > self.max_failure_rate * (self.n_trials - to_go):
                failed = next(job for job in returns if job.status.name == "FAILED")
                failed.return_value  # raises the failed job's error: the sweep ends with it
        self.save_results(study)

    def open_study(self, space: dict[str, Any]):
        """The study `study_name` at `storage`, made with the search space or continued when the space is the
        one it began with (refused otherwise); a seeded sampler's seed moves on by the trials already made."""
        import optuna
        from optuna.distributions import distribution_to_json

        as_json = {key: distribution_to_json(value) for key, value in space.items()}
        sampler = OmegaConf.to_container(self.sampler, resolve=True)
        previous = trials_so_far(self.storage, self.study_name)
        if previous and sampler.get("seed") is not None:  # the same seed would draw the first search's points
            sampler["seed"] = int(sampler["seed"]) + previous
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, direction=self.direction,
                                    sampler=instantiate(sampler), pruner=instantiate(self.pruner or NO_PRUNER),
                                    load_if_exists=True)
        stored = study.user_attrs.get(SEARCH_SPACE)
        if stored is None:
            study.set_user_attr(SEARCH_SPACE, as_json)
            with warnings.catch_warnings():  # experimental since Optuna 3.2: the dashboard's axis name
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([self.metric])
        elif stored != as_json:
            raise SettingsError(f"hydra.sweeper.params: the Optuna study {self.study_name!r} in {self.storage} "
                                f"began with another search space ({'; '.join(space_differences(stored, as_json))}); "
                                f"give this search a new hydra.sweeper.study_name, or search the study's space")
        log.info("Optuna study %r in %s: %d trials so far, %d more (%d at a time), %s %s, pruner %s; the same "
                 "command continues it", self.study_name, self.storage, previous, self.n_trials, self.n_jobs,
                 self.direction, self.metric, type(study.pruner).__name__)
        return study

    def overrides(self, trial, fixed: list[str]) -> list[str]:
        """A trial's job: the fixed overrides, the trial's values, and which trial of which study it is."""
        return [*fixed, *(f"{key}={value}" for key, value in trial.params.items()),
                f"hydra.sweeper.trial={trial.number}", f"hydra.sweeper.storage='{self.storage}'",
                f"hydra.sweeper.study_name='{self.study_name}'"]

    def tell(self, study, trial, job) -> None:
        """Tells the study how a trial's job ended: PRUNED when its job was pruned, FAIL when it failed or
        returned a non-finite value, else COMPLETE with its value."""
        import optuna

        states = optuna.trial.TrialState
        pruned_at = study.get_trials(deepcopy=False)[trial.number].user_attrs.get(PRUNED_AT)
        if job.status.name == "FAILED":
            state, value = states.FAIL, None
        elif pruned_at is not None:
            state, value = states.PRUNED, None
        else:
            value = float(job.return_value)
            state, value = (states.COMPLETE, value) if math.isfinite(value) else (states.FAIL, None)
        told = study.tell(trial, value, state=state, skip_if_finished=True)
        log.info("trial %d %s: %s %s%s", trial.number, told.state.name, self.metric,
                 "-" if told.value is None else f"{told.value:.4f}",
                 f" (pruned after epoch {pruned_at})" if pruned_at is not None else "")

    def save_results(self, study) -> None:
        """`optimization_results.yaml` in the sweep folder: the study's best complete trial, with its number."""
        import optuna

        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete:
            log.warning("Optuna study %r has no complete trial: no best parameters", self.study_name)
            return
        best = study.best_trial
        results = {"name": "optuna", "study_name": self.study_name, "storage": self.storage, "metric": self.metric,
                   "direction": self.direction, "best_trial": best.number, "best_params": best.params,
                   "best_value": best.value}
        OmegaConf.save(OmegaConf.create(results), Path(self.config.hydra.sweep.dir) / "optimization_results.yaml")
        log.info("best trial %d of %d: %s %.4f with %s", best.number, len(study.trials), self.metric, best.value,
                 best.params)


def trials_so_far(storage: str, study_name: str) -> int:
    """How many trials (of any state) the study at `storage` has; 0 when there is no such study yet."""
    import optuna

    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # no such study yet
        return 0
