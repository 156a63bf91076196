"""A training job's side of an Optuna search (`hparams_search=...`, conf/hydra/sweeper/optuna.yaml): after
every validation the job reports its metric to its trial in the study's storage and asks the study's pruner
whether to go on. The sweeper names the trial in the job's `hydra.sweeper.trial`."""

import logging
import math

from hydra.core.hydra_config import HydraConfig

from detection.cli.sweep import PRUNED_AT
from detection.engine.distributed import gather_to_all
from detection.engine.hooks import Hook
from detection.engine.state import TrainingState
from detection.tracking import Tracker

log = logging.getLogger(__name__)

SWEEPER = "hydra_plugins.detection_optuna_sweeper.optuna_sweeper.OptunaSweeper"


class TrialReport(Hook):
    """Reports `metric` (the validation's, after each epoch, at step = epochs done) to an Optuna trial and,
    when the study's pruner says so, ends training after this epoch (its checkpoint written) with the MLflow
    run tagged `pruned` (the epoch). Only the main rank talks to the study; every rank takes its answer."""

    def __init__(self, trial, metric: str, tracker: Tracker, *, is_main: bool = True):
        self.trial, self.metric, self.tracker, self.is_main = trial, metric, tracker, is_main

    def after_epoch(self, state: TrainingState) -> None:
        prune = False
        if self.is_main:
            value = float(state.metrics.get(self.metric, math.nan))
            self.trial.report(value, state.epoch)
            prune = self.trial.should_prune()
        if gather_to_all([prune])[0]:
            if self.is_main:
                self.trial.set_user_attr(PRUNED_AT, state.epoch)
                self.tracker.set_tag("pruned", str(state.epoch))
            state.stop_early(f"Optuna trial {self.trial.number} pruned by the study's pruner "
                             f"({self.metric} {state.metrics.get(self.metric, math.nan):.4f})")


def trial_report(tracker: Tracker, *, is_main: bool) -> list[Hook]:
    """[TrialReport] for a job of an Optuna search whose study has a pruner, else []."""
    from hydra.utils import instantiate

    sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else None
    if sweeper is None or sweeper.get("_target_") != SWEEPER or sweeper.get("trial") is None \
            or sweeper.get("pruner") is None:
        return []
    trial = open_trial(sweeper.storage, sweeper.study_name, int(sweeper.trial), instantiate(sweeper.pruner))
    log.info("Optuna trial %d of study %r: %s reported after each validation, pruned when its %s says so",
             trial.number, sweeper.study_name, sweeper.metric, type(trial.study.pruner).__name__)
    return [TrialReport(trial, sweeper.metric, tracker, is_main=is_main)]


def open_trial(storage: str, study_name: str, number: int, pruner):
    """The running trial `number` of a stored study, to report to, judged by `pruner` (a study's pruner is
    not stored: the sweeper's configuration names it)."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
    frozen = study.get_trials(deepcopy=False)[number]
    return optuna.trial.Trial(study, frozen._trial_id)  # Optuna's way to a running trial from its storage id
