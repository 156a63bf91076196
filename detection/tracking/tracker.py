"""What the loop sees of tracking: the `Tracker` protocol, and the tracker that logs nothing."""

from pathlib import Path
from typing import Any, Mapping, Optional, Protocol

import numpy as np


class Tracker(Protocol):
    run_id: Optional[str]  # of the run started, None before and with nothing tracked

    def start(self, *, params: Mapping[str, Any], tags: Mapping[str, str], run_id: Optional[str] = None,
              parent_run_id: Optional[str] = None, spool: Optional[Path] = None) -> Optional[str]: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_params(self, params: Mapping[str, str]) -> None: ...
    def set_tag(self, key: str, value: str) -> None: ...
    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None: ...
    def log_checkpoint(self, path: Path) -> None: ...
    def run_status(self, run_id: str) -> Optional[str]: ...
    log_model_enabled: bool  # whether log_model() stores anything (a caller skips the export otherwise)

    def log_model(self, model_file: Path, input_example: np.ndarray) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Logs nothing (`tracking=none`); takes the names a tracker is built with, and ignores them."""

    run_id = None
    log_model_enabled = False

    def __init__(self, *, experiment_name: Optional[str] = None, run_name: Optional[str] = None):
        pass

    def start(self, *, params, tags, run_id=None, parent_run_id=None, spool=None):
        return None

    def log_metrics(self, metrics, step):
        pass

    def log_params(self, params):
        pass

    def set_tag(self, key, value):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def log_checkpoint(self, path):
        pass

    def run_status(self, run_id):
        return None

    def log_model(self, model_file, input_example):
        pass

    def end(self, status="FINISHED"):
        pass
