"""The training loop: plain PyTorch, the same for every detector with torchvision's contract. It reads
in one screen; the step is `TrainStep`, the position and checkpoint contents `TrainingState`, and what
happens around the steps (metrics, debug images, validation, checkpoints) the hooks."""

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from tqdm import tqdm

from detection.command_lines import script_command
from detection.data.loader import TrainingLoader
from detection.engine.hooks import Checkpoints, Hook
from detection.engine.settings import SettingsError, TrainerSettings
from detection.engine.state import TrainingState

log = logging.getLogger(__name__)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)  # USR2: SLURM's warning before pre-emption


class TrainingInterrupted(Exception):
    """A stop signal (STOP_SIGNALS) stopped training after a step whose checkpoint was written."""

    def __init__(self, signal_number: int, checkpoint: Path):
        self.signal_number = signal_number
        self.checkpoint = checkpoint
        super().__init__(f"{signal.Signals(signal_number).name} received: stopped after a checkpoint; resume with "
                         f"{script_command('train.py', f'ckpt_path={checkpoint}')}")


class EmptyEpoch(SettingsError):
    """An epoch made no training step: a run that learns nothing must not end as if it had trained (a
    SettingsError: the data given cannot train, and the entry point says so in one line)."""


class StopOnSignal:
    """Within `with`, the first stop signal (STOP_SIGNALS) only sets `signal_number`, so the loop can finish
    its step and checkpoint; a second SIGINT interrupts at once, as usual. The handlers there were before
    (submitit's, for one) are restored on the way out."""

    def __init__(self):
        self.signal_number: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.signal_number is not None

    def _handle(self, number, frame):
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number
        log.warning("%s received: stopping after this step", signal.Signals(number).name)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def timed(batches: Iterable, state: TrainingState) -> Iterator:
    """`batches`, adding the time spent waiting for each to `state.data_wait_s`."""
    iterator = iter(batches)
    while True:
        started = time.perf_counter()
        batch = next(iterator, None)
        if batch is None:
            return
        state.data_wait_s += time.perf_counter() - started
        yield batch


def fit(state: TrainingState, loader: TrainingLoader, settings: TrainerSettings, *, hooks: Sequence[Hook],
        checkpoints: Checkpoints) -> dict[str, float]:
    """Trains from where `state` stands (restored from a checkpoint, or new) to `settings.max_epochs`,
    calling the hooks, then `checkpoints`, around each step and after each epoch. A resumed run continues
    exactly as the uninterrupted one would have. SIGINT, SIGTERM or SIGUSR2 finish the current step,
    checkpoint and raise TrainingInterrupted; a hook's `state.stop_early` ends it after the epoch's hooks, the
    checkpoint written; too many non-finite losses in a row raise NonFiniteLossError, and
    an epoch that makes no step at all EmptyEpoch.

    Returns:
        the last validation metrics (`val/map`, ...).
    """
    hooks = [*hooks, checkpoints]
    with StopOnSignal() as stop:
        for epoch in range(state.epoch, settings.max_epochs):
            state.epoch = epoch
            bar = tqdm(loader.epoch(epoch, skip_batches=state.batches_done), desc=f"epoch {epoch + 1}/"
                       f"{settings.max_epochs}", disable=not settings.progress, dynamic_ncols=True)
            for hook in hooks:
                hook.before_epoch(state, bar)
            whole_epoch, steps_before = state.batches_done == 0, state.step
            for images, targets, skipped in timed(bar, state):
                batch = (*state.train_step.on_device(images, targets), skipped)
                outcome = state.train_step(*batch[:2], stop_requested=stop.requested)
                state.count(outcome, max_nonfinite_in_row=settings.max_nonfinite_in_row,
                            last_checkpoint=checkpoints.last)
                for hook in hooks:
                    hook.after_step(state, outcome, batch)
                if outcome.stop:
                    raise TrainingInterrupted(stop.signal_number or signal.SIGTERM, checkpoints.save(state))
            if whole_epoch and state.step == steps_before:
                raise EmptyEpoch(f"epoch {epoch + 1} made no training step: every sample was skipped as unreadable "
                                 f"(dataset.on_bad_sample=skip) or every loss was non-finite; check the training "
                                 f"split with python -m detection.cli.inspect_data")
            state.epoch, state.batches_done = epoch + 1, 0
            for hook in hooks:
                hook.after_epoch(state)
            if state.stopped_early:
                log.info("training stopped after epoch %d of %d: %s", epoch + 1, settings.max_epochs,
                         state.stopped_early)
                break
    return state.metrics
