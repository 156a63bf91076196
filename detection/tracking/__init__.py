"""Experiment tracking, the one package that imports MLflow. The loop only sees the `Tracker` protocol
(`tracker`); `MlflowTracker` (`mlflow_tracker`) sends a run's records through an `Outbox` (`outbox`) that keeps
what the store does not take; `stores` reaches and locks stores; `sweeps` makes a sweep's parent run;
`pyfunc_model` is the logged model's code. `python -m detection.tracking <spool>` sends kept records.

The config groups name `detection.tracking.MlflowTracker` and `detection.tracking.NullTracker` (and
checkpoints store those names), so both are importable from here."""

from detection.tracking.mlflow_tracker import MlflowTracker
from detection.tracking.tracker import NullTracker, Tracker

__all__ = ["MlflowTracker", "NullTracker", "Tracker"]
