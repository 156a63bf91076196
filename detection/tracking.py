"""Experiment tracking: the one module that imports mlflow. The loop only sees the `Tracker` protocol."""

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


class Tracker(Protocol):
    def start(self, *, params: Mapping[str, Any], tags: Mapping[str, str], run_id: Optional[str] = None) -> Optional[str]: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Logs nothing (`tracking=none`)."""

    def start(self, *, params, tags, run_id=None):
        return None

    def log_metrics(self, metrics, step):
        pass

    def log_artifact(self, path):
        pass

    def end(self, status="FINISHED"):
        pass


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 0.1}} -> {'optimizer.lr': 0.1}; lists stay whole values."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def metric_name(name: str) -> str:
    """MLflow accepts letters, digits and `_ - . / space` in names; anything else becomes `_`."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


class MlflowTracker:
    """Logs params, tags, metrics and artifacts to an MLflow tracking store.

    mlflow is imported in the methods: it takes seconds to import, and runs with `tracking=none`
    and the core tests should not pay for it.

    A store that cannot be reached at start is an error naming the URI, before any training. A store lost
    later does not stop training: the failure is reported once, nothing more is sent, and `end()` says
    how many metric values and artifacts were not logged.

    Args:
        uri: tracking URI; None means the SQLite store `mlflow.db` at the repository root.
        experiment_name: created when missing.
        run_name: the run's display name.
    """

    def __init__(self, *, uri: Optional[str] = None, experiment_name: str = "detection", run_name: str = "run"):
        self.uri = uri or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
        self.experiment_name = experiment_name
        self.run_name = run_name
        self._run_id: Optional[str] = None
        self._lost: Optional[str] = None  # why the store stopped answering, once it has
        self._unlogged = {"metric values": 0, "artifacts": 0}

    def start(self, *, params, tags, run_id=None):
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        try:
            mlflow.set_experiment(self.experiment_name)
        except Exception as error:
            raise RuntimeError(f"cannot reach the MLflow tracking store at {self.uri}: {error}") from error
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else self.run_name, tags=dict(tags))
        self._run_id = run.info.run_id
        if run_id is None:
            values = {key: _param_value(value) for key, value in params.items()}
            items = list(values.items())
            for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                mlflow.log_params(dict(items[start:start + 100]))
        return self._run_id

    def log_metrics(self, metrics, step):
        import mlflow

        self._send(lambda: mlflow.log_metrics({metric_name(k): float(v) for k, v in metrics.items()}, step=step),
                   "metric values", len(metrics), f"metrics at step {step}")

    def log_artifact(self, path):
        import mlflow

        path = Path(path)
        if path.is_dir():
            self._send(lambda: mlflow.log_artifacts(str(path), artifact_path=path.name), "artifacts", 1, str(path))
        else:
            self._send(lambda: mlflow.log_artifact(str(path)), "artifacts", 1, str(path))

    def end(self, status="FINISHED"):
        import mlflow

        if self._run_id is None:
            return
        self._send(lambda: mlflow.end_run(status=status), "run status", 0, f"the run's end ({status})")
        if self._lost is not None:
            log.error("MLflow run %s at %s is incomplete: %s not logged after the store was lost (%s)",
                      self._run_id, self.uri,
                      ", ".join(f"{count} {kind}" for kind, count in self._unlogged.items()), self._lost)
        self._run_id = None

    def _send(self, call, kind: str, count: int, what: str) -> None:
        """Runs one logging call; after the first failure, counts instead of calling."""
        if self._lost is None:
            try:
                call()
                return
            except Exception as error:
                self._lost = f"{type(error).__name__}: {error}"
                log.error("lost the MLflow tracking store at %s while logging %s (%s); training goes on, "
                          "nothing more is sent to it", self.uri, what, self._lost)
        if kind in self._unlogged:
            self._unlogged[kind] += count


def _param_value(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_PARAM_LENGTH:
        cut = "...[cut]"
        return text[: MAX_PARAM_LENGTH - len(cut)] + cut
    return text
