"""Where a training run stands, and what its checkpoints hold: written and read here only."""

import math
from pathlib import Path
from typing import Any, Optional

from detection.engine.checkpoint import rng_state, set_rng_state
from detection.engine.step import StepOutcome, TrainStep


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row."""


class TrainingState:
    """The training step's objects (model, optimizer, scheduler, scaler) and the position: `epoch` (the
    one in progress, or the next), `batches_done` in it, `step` (updates made), the best and the last
    validation metrics, and each epoch's row of results (`history`: what results.csv holds).

    Args:
        extras: what else each checkpoint holds (the configuration, class names, tracking run id, ...).
    """

    def __init__(self, train_step: TrainStep, *, extras: Optional[dict[str, Any]] = None):
        self.train_step = train_step
        self.extras = dict(extras or {})
        self.epoch, self.batches_done, self.step = 0, 0, 0
        self.best_map, self.metrics = -math.inf, {}
        self.history: list[dict[str, float]] = []
        self.improved = False  # the last validation's val/map is the best so far
        self.stopped_early: Optional[str] = None  # why a hook ended training before max_epochs (stop_early)
        self.nonfinite_in_row = 0
        self.data_wait_s = 0.0  # seconds the loop has waited for batches in this process (a measure, not saved)

    def stop_early(self, reason: str) -> None:
        """Ends training after this epoch's hooks (its checkpoint is written): a hook's call, `reason` logged."""
        self.stopped_early = reason

    def checkpoint(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly as this one would have."""
        step = self.train_step
        return {"model": step.model.state_dict(), "optimizer": step.optimizer.state_dict(),
                "scheduler": step.scheduler.state_dict(), "scaler": step.scaler.state_dict(), "epoch": self.epoch,
                "batches_done": self.batches_done, "step": self.step, "best_map": self.best_map,
                "metrics": self.metrics, "history": self.history, "rng": rng_state(), **self.extras}

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continues from `checkpoint` (as `checkpoint()` wrote it)."""
        step = self.train_step
        step.model.load_state_dict(checkpoint["model"])
        step.optimizer.load_state_dict(checkpoint["optimizer"])
        step.scheduler.load_state_dict(checkpoint["scheduler"])
        step.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.batches_done, self.step = checkpoint["epoch"], checkpoint["batches_done"], checkpoint["step"]
        self.best_map, self.metrics = checkpoint["best_map"], checkpoint["metrics"]
        self.history = list(checkpoint.get("history", []))  # checkpoints from before results.csv have none
        set_rng_state(checkpoint["rng"])

    def count(self, outcome: StepOutcome, *, max_nonfinite_in_row: int, last_checkpoint: Path) -> None:
        """Advances by one batch; raises NonFiniteLossError after too many non-finite losses in a row."""
        self.batches_done += 1
        if outcome.applied:
            self.step += 1
            self.nonfinite_in_row = 0
        elif outcome.nonfinite:
            self.nonfinite_in_row += 1
            if self.nonfinite_in_row > max_nonfinite_in_row:
                raise NonFiniteLossError(
                    f"{self.nonfinite_in_row} non-finite losses in a row at step {self.step} "
                    f"(trainer.max_nonfinite_in_row={max_nonfinite_in_row}); lower the learning rate or check "
                    f"the data. The last good checkpoint is {last_checkpoint}")

    def validated(self, metrics: dict[str, float]) -> None:
        """Records an epoch's validation metrics and whether its `val/map` is the best so far."""
        self.metrics = metrics
        self.improved = metrics["val/map"] > self.best_map
        self.best_map = max(self.best_map, metrics["val/map"])
