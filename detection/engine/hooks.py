"""What the training loop calls around its steps: metrics, debug images, validation, checkpoints. `fit`
calls each hook's methods in list order, the checkpoints last; a new duty is a new Hook."""

import logging
import time
from pathlib import Path
from typing import Iterable, Optional

import torch

from detection.reporting.debug_images import DebugArtifacts
from detection.reporting.results import (key_metrics, save_results_plot, table_header, table_line,
                                        write_class_table, write_results_csv)
from detection.engine.checkpoint import CheckpointKeeper
from detection.engine.distributed import gather_to_all
from detection.engine.inference import evaluate
from detection.engine.precision import EVALUATION
from detection.engine.state import TrainingState
from detection.engine.step import StepOutcome
from detection.evaluation import DetectionEvaluator, validation_metrics
from detection.profiling.speed import StageTimes
from detection.tracking import Tracker

log = logging.getLogger(__name__)


class Hook:
    """Does nothing; a hook overrides what it needs. `batch` is (images, targets, skipped samples), the
    images and targets on the step's device as the network took them."""

    def before_epoch(self, state: TrainingState, progress_bar) -> None:
        pass

    def after_step(self, state: TrainingState, outcome: StepOutcome, batch: tuple) -> None:
        pass

    def after_epoch(self, state: TrainingState) -> None:
        pass


class MetricLogger(Hook):
    """Every `every` steps: `train/<loss>` and `train/loss` averaged over the steps since the last log
    (summed on the device, read back once), `train/lr`, `train/images_per_s` and `train/data_wait_fraction`
    (the share of the time the loop waited for batches), the last two on the progress bar too; the
    non-finite losses as they come; each epoch's unreadable samples (`train/skipped_samples`). Once per
    run, a warning when the loop waited for data over `warn_data_wait` of the time two logs running."""

    def __init__(self, tracker: Tracker, *, every: int, warn_data_wait: Optional[float] = None):
        self.tracker = tracker
        self.every = every
        self.warn_data_wait = warn_data_wait
        self.progress_bar = None
        self.slow_logs, self.warned = 0, False
        self._reset(0.0)

    def _reset(self, data_wait_s: float) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.images, self.started, self.data_wait_s = 0, 0, time.perf_counter(), data_wait_s

    def before_epoch(self, state: TrainingState, progress_bar) -> None:
        self.progress_bar, self.skipped = progress_bar, 0
        # the throughput and the waiting leave validation out
        self.images, self.started, self.data_wait_s = 0, time.perf_counter(), state.data_wait_s

    def after_step(self, state: TrainingState, outcome: StepOutcome, batch: tuple) -> None:
        self.skipped += batch[2]
        if outcome.nonfinite:
            log.warning("non-finite loss at step %d (%d in a row): step skipped", state.step, state.nonfinite_in_row)
            self.tracker.log_metrics({"train/nonfinite_in_row": state.nonfinite_in_row}, step=state.step)
        if not outcome.applied:
            return
        for name, value in outcome.losses.items():
            self.sums[name] = self.sums.get(name, 0) + value.float()
        self.steps += 1
        self.images += outcome.images
        if state.step % self.every == 0:
            self._log(state)

    def _log(self, state: TrainingState) -> None:
        names = list(self.sums)
        means = [value / self.steps for value in torch.stack([self.sums[n] for n in names]).to("cpu", copy=True).tolist()]
        elapsed = time.perf_counter() - self.started
        waiting = (state.data_wait_s - self.data_wait_s) / elapsed
        scalars = {"train/loss": sum(means), **{f"train/{name}": mean for name, mean in zip(names, means)},
                   "train/lr": state.train_step.optimizer.param_groups[0]["lr"],
                   "train/images_per_s": self.images / elapsed, "train/data_wait_fraction": waiting}
        self.tracker.log_metrics(scalars, step=state.step)
        if self.progress_bar is not None:
            self.progress_bar.set_postfix(loss=f"{scalars['train/loss']:.3f}", img_s=f"{self.images / elapsed:.1f}",
                                          data_wait=f"{waiting:.0%}")
        self._warn_when_data_is_slow(waiting)
        self._reset(state.data_wait_s)

    def _warn_when_data_is_slow(self, waiting: float) -> None:
        self.slow_logs = self.slow_logs + 1 if self.warn_data_wait and waiting > self.warn_data_wait else 0
        if self.slow_logs >= 2 and not self.warned:
            self.warned = True
            log.warning("the loop waited for data %.0f%% of the time over the last %d steps: the loader is the "
                        "bottleneck. More loader processes (trainer.num_workers, up to the CPU cores), the "
                        "augmentation on the GPU (augment=ssd_gpu for augment=ssd), a lighter augmentation or "
                        "smaller images help (trainer.warn_data_wait sets this warning)",
                        100 * waiting, self.every)

    def after_epoch(self, state: TrainingState) -> None:
        skipped = sum(gather_to_all([self.skipped]))
        if skipped:
            log.warning("epoch %d skipped %d unreadable samples (dataset.on_bad_sample=skip)", state.epoch, skipped)
            self.tracker.log_metrics({"train/skipped_samples": skipped}, step=state.step)


class DebugImages(Hook):
    """Every `artifacts.every` steps, the batch's first image drawn with its targets and predictions."""

    def __init__(self, artifacts: DebugArtifacts):
        self.artifacts = artifacts

    def after_step(self, state: TrainingState, outcome: StepOutcome, batch: tuple) -> None:
        images, targets, _ = batch
        if outcome.applied and images:
            self.artifacts.training_step(state.train_step.model, state.step, images[0], targets[0])


class Validation(Hook):
    """After each epoch: the model over `loader`, its metrics logged (`val/...`, see validation_metrics;
    `val/speed/<stage>_ms`, the milliseconds per image of its stages, see StageTimes) and recorded in the
    state, and (with `artifacts`) a drawn validation image and the PR curves. It runs in
    the precision evaluate.py runs in (EVALUATION, fp32), whatever the training's: one number per checkpoint."""

    def __init__(self, loader: Iterable, evaluator: DetectionEvaluator, tracker: Tracker, *, device: torch.device,
                 progress: bool = True, artifacts: Optional[DebugArtifacts] = None):
        self.loader, self.evaluator, self.tracker = loader, evaluator, tracker
        self.device, self.progress, self.artifacts = device, progress, artifacts

    def after_epoch(self, state: TrainingState) -> None:
        model = state.train_step.model
        with StageTimes(model, self.device) as times:
            results = evaluate(model, self.loader, self.evaluator, device=self.device, precision=EVALUATION,
                               progress=self.progress)
        metrics = {**validation_metrics(results), **{f"val/speed/{key}": ms for key, ms in times.per_image().items()}}
        self.tracker.log_metrics({**metrics, "epoch": state.epoch}, step=state.step)
        if self.artifacts is not None:
            self.artifacts.validation(model, state.step, state.epoch, self.loader.dataset, self.evaluator, metrics)
        state.validated(metrics)


class EpochResults(Hook):
    """Each epoch's row of results: every training loss averaged over the epoch's steps (summed on the
    device, read back once at its end), the learning rate, training images/s, the epoch's seconds
    (validation included) and the validation's metrics. The row joins the state's history (so a resumed
    run's table goes on), is logged as a line of the epoch table and, on the main rank, rewrites
    `results.csv`, `results.png` and `per_class_ap.csv` (the validation's per-class APs) in `folder`, which
    go to the tracker too, under names every run shares (MLflow's compare view lines them up). It follows
    Validation."""

    def __init__(self, folder: Path, tracker: Tracker, *, max_epochs: int, is_main: bool = True):
        self.folder, self.tracker, self.max_epochs, self.is_main = folder, tracker, max_epochs, is_main
        self.headed = False

    def before_epoch(self, state: TrainingState, progress_bar) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.images = 0, 0
        self.started = self.trained = time.perf_counter()

    def after_step(self, state: TrainingState, outcome: StepOutcome, batch: tuple) -> None:
        if outcome.applied:
            for name, value in outcome.losses.items():
                self.sums[name] = self.sums.get(name, 0) + value.float()
            self.steps, self.images, self.trained = self.steps + 1, self.images + outcome.images, time.perf_counter()

    def after_epoch(self, state: TrainingState) -> None:
        names = list(self.sums)
        means = (torch.stack([self.sums[name] for name in names]) / self.steps).to("cpu", copy=True).tolist() \
            if names else []
        row = {"epoch": state.epoch, "step": state.step, "train/loss": sum(means),
               **{f"train/{name}": mean for name, mean in zip(names, means)},
               "train/lr": state.train_step.optimizer.param_groups[0]["lr"],
               "train/images_per_s": self.images / max(self.trained - self.started, 1e-9),
               "epoch_s": time.perf_counter() - self.started, **state.metrics}
        state.history.append(row)
        if not self.headed:
            log.info("%s", table_header(row))
            self.headed = True
        log.info("%s", table_line(row, self.max_epochs))
        self.tracker.log_metrics(key_metrics(row), step=state.step)
        if self.is_main:
            for path in (write_results_csv(state.history, self.folder / "results.csv"),
                         save_results_plot(state.history, self.folder / "results.png"),
                         write_class_table(state.metrics, self.folder / "per_class_ap.csv")):
                self.tracker.log_artifact(path)


class Checkpoints(Hook):
    """Checkpoints every `every` steps (when set) and at each epoch end (`best.pt` too when val/map
    improved; the model only with `best_model_only`), through a CheckpointKeeper; only the main rank writes."""

    def __init__(self, folder: Path, *, every: Optional[int] = None, keep_last: int = 1, is_main: bool = True,
                 best_model_only: bool = False):
        self.keeper = CheckpointKeeper(folder, keep_last=keep_last)
        self.every = every
        self.is_main = is_main
        self.best_model_only = best_model_only

    @property
    def last(self) -> Path:
        return self.keeper.last

    def save(self, state: TrainingState, *, is_best: bool = False) -> Path:
        """Writes the state's checkpoint; returns its path (on other ranks, where last.pt will be)."""
        if not self.is_main:
            return self.keeper.last
        return self.keeper.save(state.checkpoint(), step=state.step, is_best=is_best,
                                best_model_only=self.best_model_only)

    def after_step(self, state: TrainingState, outcome: StepOutcome, batch: tuple) -> None:
        if self.every and outcome.applied and not outcome.stop and state.step % self.every == 0:
            self.save(state)

    def after_epoch(self, state: TrainingState) -> None:
        self.save(state, is_best=state.improved)
