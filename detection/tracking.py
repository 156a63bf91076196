"""Experiment tracking: the one module that imports mlflow. The loop only sees the `Tracker` protocol; a
sweep's parent run is made and ended by plain functions that edge.py's Hydra callback calls."""

import json
import logging
import os
import queue
import re
import shlex
import socket
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Protocol
from urllib.parse import urlparse

import numpy as np

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URI = f"sqlite:///{REPO_ROOT / 'mlflow.db'}"  # one store wherever Hydra puts a job's outputs
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
MAX_TAG_LENGTH = 8000  # and on a tag value
REFUSED = ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")  # the store answered and refused one call's values
# MLflow's HTTP limits while a run is tracked, where the user has not set them: a call to a dead server fails
# in seconds (MLflow's defaults retry for minutes), and the Outbox's own retries take over
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
SWEEP_FILE = "mlflow_sweep.json"  # in a multirun's sweep dir: the parent run its jobs report to
URI_VARIABLE = "MLFLOW_TRACKING_URI"
PROBE_TIMEOUT_S = 5.0  # an HTTP store that does not accept a connection in this time is unreachable


class StoreUnreachable(RuntimeError):
    """The tracking store did not answer at start."""


def probe_store(uri: str) -> None:
    """Raises StoreUnreachable naming `uri` unless an http(s) store accepts a TCP connection within
    PROBE_TIMEOUT_S; MLflow's own retries would take minutes to give up. Other URIs are not probed."""
    parts = urlparse(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as error:
        raise StoreUnreachable(f"cannot reach the MLflow tracking store at {uri}: {error}") from error


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Holds a file lock beside a local SQLite store (`<db>.lock`) while it is created, migrated and its
    experiment made: runs that start together on a fresh store otherwise race through MLflow's schema
    migration and fail (`duplicate column name`) or leave it half-migrated. Other stores need no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    database = Path(uri.removeprefix("sqlite:///")).expanduser()
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock"):
        yield


@contextmanager
def opened_store(uri: str) -> Iterator[None]:
    """The store at `uri` probed, and locked while the block creates or migrates it; any failure in the
    block is StoreUnreachable naming the URI."""
    probe_store(uri)
    with store_lock(uri):
        try:
            yield
        except Exception as error:
            raise StoreUnreachable(f"cannot reach the MLflow tracking store at {uri}: {error}") from error


def artifact_location(uri: str, experiment_name: str) -> Optional[str]:
    """Where a new experiment keeps its artifacts: beside a local SQLite store,
    `<store folder>/mlartifacts/<experiment>`, so that a store and its artifacts travel together (MLflow
    would put them in `./mlruns` of whatever folder the command ran from); None (the server's or MLflow's
    default) for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return (store_folder(uri) / "mlartifacts" / re.sub(r"[^\w.-]", "_", experiment_name)).as_uri()


def store_folder(uri: Optional[str]) -> Path:
    """The folder of a local SQLite store (`uri` None: the default one), else the repository root: where
    files that belong with the store go (an Optuna study's)."""
    uri = uri or DEFAULT_URI
    if not uri.startswith("sqlite:///"):
        return REPO_ROOT
    return Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent


def experiment_id(client, uri: str, name: str) -> str:
    """The id of experiment `name` at `uri`, created (with `artifact_location`) when it is new; call it
    inside `opened_store`, whose lock keeps two jobs from creating it together."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(uri, name))


def ui_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """How to look at a run: the command serving a local store, or the server's page of the run."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return (f"mlflow ui --backend-store-uri {shlex.quote(uri)} (then "
            f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id})")


def experiment_label(model: str, backbone: str, dataset: str) -> str:
    """'<model>_<backbone>_<dataset>', e.g. 'ssd512_resnet50_shapes', 'maskrcnn_resnet50_voc'."""
    return f"{model}_{backbone}_{dataset}"


class Tracker(Protocol):
    run_id: Optional[str]  # of the run started, None before and with nothing tracked

    def start(self, *, params: Mapping[str, Any], tags: Mapping[str, str], run_id: Optional[str] = None,
              parent_run_id: Optional[str] = None, spool: Optional[Path] = None) -> Optional[str]: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
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


MAX_KEY_LENGTH = 250  # MLflow's limit on a metric, param or tag key


def valid_key(key: str) -> str:
    """`key` as MLflow accepts it: letters and digits of any script and `_ - . / space` stay ('val/ap/猫',
    'val/ap/café'), any other character becomes `_`; a path part MLflow refuses (empty, as in `a//b`, a
    leading or trailing `/`, `.` or `..`) becomes underscores; at most MAX_KEY_LENGTH characters."""
    parts = re.sub(r"[^\w\-./ ]", "_", key).split("/")
    safe = "/".join(part if part.strip(".") else "_" * max(len(part), 1) for part in parts)
    return safe[:MAX_KEY_LENGTH]


class MlflowKeys:
    """One MLflow key per key a run logs, the same at every call and never two the same: `valid_key`, and
    a key that would then repeat another's gets `_2`, `_3`, ... ('a+b' and 'a#b' stay apart). `renamed`
    holds every key that changed (the run records it, so a reader finds `/m/01g317` again)."""

    def __init__(self):
        self.names: dict[str, str] = {}
        self.renamed: dict[str, str] = {}

    def __call__(self, keys: Iterable[str]) -> dict[str, str]:
        for key in keys:
            if key in self.names:
                continue
            safe = candidate = valid_key(key)
            count = 1
            while candidate in self.names.values():
                count += 1
                candidate = f"{safe[:MAX_KEY_LENGTH - 1 - len(str(count))]}_{count}"
            self.names[key] = candidate
            if candidate != key:
                self.renamed[key] = candidate
        return {key: self.names[key] for key in keys}


class StoreDown(RuntimeError):
    """The tracking store did not take a record for a reason of its own (unreachable, full, failing)."""


class Outbox:
    """Sends a run's records (plain dicts, see `MlflowTracker`) from a thread of its own, in order, so that
    training never waits on the store. A record the store refuses (`refused(error)`) is that record's
    problem: logged and counted. When the store fails otherwise, the record and those after it are
    appended to `spool` (JSON lines), and retried every `retry_s`; once the store answers, the spool is
    sent first, in order. `close()` waits while records still go out and spools what is left.

    Args:
        send: delivers one record; raises when it cannot.
        refused: whether an exception means the store answered and refused the record.
        spool: the JSON-lines file that keeps records the store did not take (None: they are counted lost).
        where: the store's URI, for the log.
    """

    def __init__(self, send: Callable[[dict], None], *, refused: Callable[[BaseException], bool],
                 spool: Optional[Path], where: str, retry_s: float = 5.0):
        self.send, self.refused, self.spool, self.where, self.retry_s = send, refused, spool, where, retry_s
        self.counts = {"sent": Counter(), "spooled": Counter(), "refused": Counter()}
        self.down: Optional[str] = None  # why the store does not answer, while it does not
        self._retry_at = 0.0
        self._queue: "queue.Queue[Optional[dict]]" = queue.Queue()
        self._lock = threading.Lock()  # the spool is written by the thread, and by close() on a timeout
        self._closed = False
        self._last_progress = time.monotonic()
        self._current: Optional[dict] = None  # the record being delivered
        self._thread = threading.Thread(target=self._run, name="tracking outbox", daemon=True)
        self._thread.start()

    def put(self, record: dict) -> None:
        self._queue.put(record)

    def _run(self) -> None:
        while (record := self._queue.get()) is not None:
            self._current = record
            self._deliver(record)
            self._current, self._last_progress = None, time.monotonic()

    def _deliver(self, record: dict) -> None:
        if self.down is not None and time.monotonic() < self._retry_at:
            self._keep([record])
            return
        try:
            if self.down is not None and self.spool is not None and self.spool.is_file():
                sent = replay_spool(self.spool, self._send, self._lock)  # back? the older records first
                log.warning("the MLflow store at %s answers again: %d kept records sent", self.where, sent)
            self._send(record)
            self.down = None
        except StoreDown as error:
            if self.down is None:
                log.error("the MLflow store at %s did not take a record (%s); training goes on, records are kept "
                          "in %s and sent when it answers", self.where, error, self.spool or "memory (no spool)")
            self.down, self._retry_at = str(error), time.monotonic() + self.retry_s
            self._keep([record])

    def _send(self, record: dict) -> None:
        """Sends one record; StoreDown when the store failed, nothing raised when it refused the record."""
        try:
            self.send(record)
        except Exception as error:
            if not self.refused(error):
                raise StoreDown(f"{type(error).__name__}: {error}") from error
            log.error("MLflow refused a %s record (the run goes on logging): %s", record["kind"], error)
            self.counts["refused"][record["kind"]] += record_size(record)
            return
        self.counts["sent"][record["kind"]] += record_size(record)

    def _keep(self, records: list[dict]) -> None:
        with self._lock:
            if self._closed and threading.current_thread() is self._thread:
                return  # close() has kept it already
            if self.spool is not None:
                with open(self.spool, "a", encoding="utf-8") as file:
                    file.writelines(json.dumps(record) + "\n" for record in records)
            for record in records:
                self.counts["spooled"][record["kind"]] += record_size(record)

    def close(self, stall_s: float = 10.0) -> None:
        """Sends what is queued, waiting as long as records keep going out (at most `stall_s` without one);
        what is left then (the store hangs) is kept in the spool, the record being sent included (it may
        then arrive twice: MLflow keeps one of two equal metric values, a tag or an artifact is the same)."""
        self._queue.put(None)
        closing = time.monotonic()
        while self._thread.is_alive() and time.monotonic() - max(self._last_progress, closing) < stall_s:
            self._thread.join(timeout=0.5)
        if self._thread.is_alive():
            left = []
            while not self._queue.empty():
                left.append(self._queue.get_nowait())
            with self._lock:
                self._closed = True
            log.error("the MLflow store at %s did not answer for %.0f s: %d records not sent", self.where, stall_s,
                      len([r for r in left if r is not None]) + 1)
            self._keep([record for record in [self._current, *left] if record is not None])


def record_size(record: dict) -> int:
    """How many values a record carries: a metrics record's count, else 1."""
    return len(record["metrics"]) if record["kind"] == "metrics" else 1


def read_records(path: Path) -> list[dict]:
    """The records of a JSON-lines spool file ([] when there is none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_records(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def replay_spool(path: Path, send: Callable[[dict], None], lock: Optional[threading.Lock] = None) -> int:
    """Sends the records kept in `path`, in order. They are moved to `<path>.sending` first (records kept
    meanwhile start a new `path`; a `.sending` file a process left when it died mid-replay goes first);
    when a send fails, the records not yet sent go back to the head of `path` and the error is raised.
    `lock` guards the files against a writer in another thread. Returns how many were sent."""
    path = Path(path)
    sending = path.with_name(f"{path.name}.sending")
    with lock or nullcontext():
        records = read_records(sending) + read_records(path)
        write_records(sending, records)
        path.unlink(missing_ok=True)
    for index, record in enumerate(records):
        try:
            send(record)
        except BaseException:
            with lock or nullcontext():
                write_records(path, records[index:] + read_records(path))
                sending.unlink()
            raise
    sending.unlink()
    return len(records)


def refused_by_mlflow(error: BaseException) -> bool:
    """Whether MLflow's store answered and refused the call's values (an invalid key or value), rather than
    failing to take it (unreachable, full, an internal error)."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in REFUSED


def send_record(record: dict) -> None:
    """Delivers one record (see `MlflowTracker`) to the run and store it names ('run_id', 'uri')."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client, run_id = MlflowClient(record["uri"]), record["run_id"]
    if record["kind"] == "metrics":
        metrics = [Metric(key, value, record["timestamp"], record["step"]) for key, value in record["metrics"].items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
    elif record["kind"] == "artifact":
        log_files = client.log_artifacts if Path(record["path"]).is_dir() else client.log_artifact
        log_files(run_id, record["path"], record["artifact_path"])
    elif record["kind"] == "tag":
        client.set_tag(run_id, record["key"], record["value"])
    elif record["kind"] == "end":
        client.set_terminated(run_id, record["status"])
    else:
        raise ValueError(f"unknown tracking record {record['kind']!r}")


class MlflowTracker:
    """Logs params, tags, metrics and artifacts to an MLflow tracking store.

    mlflow is imported in the methods: it takes seconds to import, and runs with `tracking=none`
    and the core tests should not pay for it.

    A store that cannot be reached at start is an error naming the URI, before any training. After that,
    nothing waits on it: metrics, tags, artifacts and the run's end are records an `Outbox` sends from its
    own thread. A record the store refuses is logged and the rest goes on; while the store does not answer,
    records are kept in the spool (`start`'s, in the run directory) and sent when it answers again, or by
    `python -m detection.tracking <spool>`. `end()` says what was sent and what is kept, and returns within
    seconds whatever the store does. Keys MLflow would refuse are renamed (`MlflowKeys`) and the renaming is
    recorded in the run's `renamed_keys` tag. From `start` to `end`, MLflow's HTTP calls are limited to
    HTTP_LIMITS where the environment does not set them.

    Args:
        uri: tracking URI; None means the SQLite store `mlflow.db` at the repository root.
        experiment_name: created when missing.
        run_name: the run's display name.
        system_metrics: MLflow's own CPU / memory / disk / network (and GPU, through nvidia-ml-py)
            sampling, every `system_metrics_interval` seconds, as `system/...` metrics.
        log_model: `log_model()` logs the model with `mlflow.pyfunc.log_model`.
        log_checkpoint: `log_checkpoint()` also copies the best checkpoint into the run (off by default:
            the run directory keeps it, and the logged model holds the same weights).
        register_model: also register it under this name in the model registry (None: do not).
    """

    def __init__(self, *, uri: Optional[str] = None, experiment_name: str = "detection", run_name: str = "run",
                 system_metrics: bool = True, system_metrics_interval: float = 10.0, log_model: bool = True,
                 log_checkpoint: bool = False, register_model: Optional[str] = None):
        self.uri = uri or DEFAULT_URI
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.system_metrics = system_metrics
        self.system_metrics_interval = system_metrics_interval
        self.log_model_enabled = log_model
        self.log_checkpoint_enabled = log_checkpoint
        self.register_model = register_model
        self.run_id: Optional[str] = None
        self._experiment_id: Optional[str] = None
        self._outbox: Optional[Outbox] = None
        self._environment: dict[str, Optional[str]] = {}  # HTTP_LIMITS' variables as they were before start
        self._monitor = None  # MLflow's system metrics sampler
        self._keys = MlflowKeys()
        self._renamed_recorded = 0

    def start(self, *, params, tags, run_id=None, parent_run_id=None, spool=None):
        """Starts a run, or reopens `run_id` on resume; when the store does not hold `run_id` (a checkpoint
        taken to another machine, a new store), a new run tagged `resumed_from_run_id`. Under
        `parent_run_id` when given (a sweep's job). Records the store does not take go to `spool`; records
        kept there by an earlier process are sent first."""
        from mlflow import MlflowClient

        self._environment = {name: os.environ.get(name) for name in HTTP_LIMITS}
        for name, value in HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
        with opened_store(self.uri):
            client = MlflowClient(self.uri)  # made under the lock: making it creates or migrates the store
            self._experiment_id = experiment_id(client, self.uri, self.experiment_name)
            if spool is not None and Path(spool).is_file():
                log.info("sending the %s records kept in %s", self.uri, spool)
                replay_spool(Path(spool), send_record)
            resumed = run_id is not None and self.run_status(run_id) is not None
            if run_id is not None and not resumed:
                log.warning("the MLflow store at %s holds no run %s (the checkpoint's): the run goes on in a new "
                            "run tagged resumed_from_run_id=%s", self.uri, run_id, run_id)
                tags = {**tags, "resumed_from_run_id": run_id}
            self.run_id = self._open_run(client, run_id if resumed else None, params, tags, parent_run_id)
        self._outbox = Outbox(send_record, refused=refused_by_mlflow,
                              spool=Path(spool) if spool else None, where=self.uri)
        if self.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.system_metrics_interval,
                                                 samples_before_logging=1, resume_logging=resumed,
                                                 tracking_uri=self.uri)
            self._monitor.start()
        log.info("MLflow run %s in experiment %r; to see it: %s", self.run_id, self.experiment_name,
                 ui_hint(self.uri, self._experiment_id, self.run_id))
        return self.run_id

    def _open_run(self, client, run_id: Optional[str], params: Mapping[str, Any], tags: Mapping[str, str],
                  parent_run_id: Optional[str]) -> str:
        """Reopens `run_id` (RUNNING again, its tags updated), or creates a run with MLflow's context tags
        (user, source, git), `tags` and `params`. Returns its id."""
        from mlflow.entities import Param, RunTag
        from mlflow.tracking.context.registry import resolve_tags

        tags = {**tags, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
        tags = {self._keys([key])[key]: str(value)[:MAX_TAG_LENGTH] for key, value in tags.items()}
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
        else:
            run_id = client.create_run(self._experiment_id, run_name=self.run_name,
                                       tags=resolve_tags(tags)).info.run_id
            values = [Param(self._keys([key])[key], _param_value(value)) for key, value in params.items()]
            for start in range(0, len(values), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(run_id, params=values[start:start + 100])
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        return run_id

    def _put(self, record: dict) -> None:
        self._outbox.put({**record, "run_id": self.run_id, "uri": self.uri})

    def log_metrics(self, metrics, step):
        names = self._keys(metrics)
        self._put({"kind": "metrics", "step": int(step), "timestamp": int(time.time() * 1000),
                   "metrics": {names[key]: float(value) for key, value in metrics.items()}})
        if len(self._keys.renamed) > self._renamed_recorded:  # the keys MLflow would refuse, and their names
            self._renamed_recorded = len(self._keys.renamed)
            self._put({"kind": "tag", "key": "renamed_keys",
                       "value": json.dumps(self._keys.renamed, ensure_ascii=False)[:MAX_TAG_LENGTH]})

    def log_artifact(self, path, artifact_path=None):
        """A file, or a folder as a folder of that name, under `artifact_path` of the run's artifacts."""
        path = Path(path).resolve()
        if not path.exists():  # our mistake, not the store's: say so, and go on logging
            log.error("not logging %s to MLflow: no such file or folder", path)
            return
        if path.is_dir():
            artifact_path = f"{artifact_path}/{path.name}" if artifact_path else path.name
        self._put({"kind": "artifact", "path": str(path), "artifact_path": artifact_path})

    def run_status(self, run_id):
        """The status of run `run_id` in the store (FINISHED, RUNNING, ...; a checkpoint's training run, when
        it was tracked here), None when the store does not hold it."""
        from mlflow import MlflowClient

        probe_store(self.uri)
        try:
            return MlflowClient(self.uri).get_run(run_id).info.status
        except Exception:  # MLflow's own 'not found', or a store without that table yet
            return None

    def log_checkpoint(self, path):
        """The checkpoint file under the run's `checkpoints/`, when `log_checkpoint` is on."""
        if self.log_checkpoint_enabled:
            self.log_artifact(path, artifact_path="checkpoints")

    def log_model(self, model_file, input_example):
        """The exported TorchScript file `model_file` as the run's MLflow pyfunc model ('model'), loadable with
        mlflow.pyfunc.load_model and called on the exported files' contract (`ContractModel.of_file`);
        `input_example` uint8 [N, 3, H, W]. Logged as a model from code (PYFUNC_MODEL, nothing pickled):
        its signature takes any batch and image size and names the outputs; the package's code travels
        with it and the requirements are the pinned versions. Sent at once (MLflow logs a model only to the
        active run), and not at all while the store does not answer (said)."""
        if not self.log_model_enabled:
            return
        try:
            probe_store(self.uri)  # a server that died is found in seconds, not after MLflow's minutes of retries
            if self._outbox.down is not None:
                raise StoreUnreachable(self._outbox.down)
        except StoreUnreachable as error:
            log.error("not logging the model to MLflow run %s: the store does not answer (%s); export.py makes "
                      "the same file from best.pt", self.run_id, error)
            return
        try:
            with active_run(self.uri, self.run_id):
                self._log_pyfunc(model_file, input_example)
        except Exception as error:  # the run keeps everything else; say what is missing
            log.error("could not log the model to MLflow run %s: %s: %s", self.run_id, type(error).__name__, error)

    def _log_pyfunc(self, model_file: Path, input_example: np.ndarray) -> None:
        import tempfile

        import mlflow.pyfunc
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        from detection.models.export import ContractModel

        requirements = [f"{name}=={version(name)}" for name in ("torch", "torchvision", "numpy", "pycocotools")]
        # any batch and image size (the example's own would be enforced otherwise), every output by name
        signature = ModelSignature(
            inputs=Schema([TensorSpec(input_example.dtype, (-1, input_example.shape[1], -1, -1))]),
            outputs=Schema([TensorSpec(array.dtype, (-1,) * array.ndim, name)
                            for name, array in ContractModel.of_file(model_file)(input_example).items()]))
        with tempfile.TemporaryDirectory() as folder:
            code = Path(folder) / "exported_model.py"
            code.write_text(PYFUNC_MODEL)
            mlflow.pyfunc.log_model(name="model", python_model=str(code), artifacts={"model": str(model_file)},
                                    input_example=input_example, signature=signature,
                                    code_paths=[str(REPO_ROOT / "detection")], pip_requirements=requirements,
                                    registered_model_name=self.register_model)

    def end(self, status="FINISHED"):
        """Ends the run with `status`: the record goes out after all the others, waiting while they still go
        out; then says what was sent, refused and kept (and how to send what is kept)."""
        if self.run_id is None:
            return
        if self._monitor is not None:  # its last samples flushed, unless the store hangs
            stopping = threading.Thread(target=self._monitor.finish, name="system metrics stop", daemon=True)
            stopping.start()
            stopping.join(timeout=5)
        self._put({"kind": "end", "status": status})
        self._outbox.close()
        counts = {name: dict(count) for name, count in self._outbox.counts.items() if count}
        hint = ui_hint(self.uri, self._experiment_id, self.run_id)
        if not self._outbox.counts["spooled"]:
            log.info("MLflow run %s ended %s (%s); to see it: %s", self.run_id, status, counts or "nothing logged",
                     hint)
        else:
            where = self._outbox.spool or "nowhere: no spool file was given"
            log.error("MLflow run %s is incomplete in %s: %s; the records not sent (its end %s among them) are kept "
                      "in %s; send them when the store answers with: python -m detection.tracking %s", self.run_id,
                      self.uri, counts, status, where, shlex.quote(str(where)))
        self.run_id = None
        for name, value in self._environment.items():  # the process's environment as it was
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def active_run(uri: str, run_id: str) -> Iterator[None]:
    """`run_id` as MLflow's active run (fluent calls such as `mlflow.pyfunc.log_model` log into it) within the
    block, the process environment left as it was (`set_tracking_uri` exports the URI; a later job of a
    sweep in this process would then resolve `tracking.uri` to it). The run's status is left to `end()`."""
    import mlflow

    environment = os.environ.get(URI_VARIABLE)
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.start_run(run_id=run_id, log_system_metrics=False)
        try:
            yield
        finally:
            mlflow.end_run(status="RUNNING")  # leaves the active runs; the run's end is end()'s
    finally:
        if environment is None:
            os.environ.pop(URI_VARIABLE, None)
        else:
            os.environ[URI_VARIABLE] = environment


PYFUNC_MODEL = '''"""The detector's exported TorchScript file as an MLflow pyfunc model (a model from code)."""
import mlflow
import numpy as np

from detection.models.export import ContractModel


class ExportedFile(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.model = ContractModel.of_file(context.artifacts["model"])

    def predict(self, context, model_input: np.ndarray, params=None):
        return self.model(model_input)


mlflow.models.set_model(ExportedFile())
'''


def _param_value(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_PARAM_LENGTH:
        cut = "...[cut]"
        return text[: MAX_PARAM_LENGTH - len(cut)] + cut
    return text


def start_parent_run(uri: Optional[str], *, experiment_name: str, run_name: str, tags: Mapping[str, str],
                     params: Mapping[str, str]) -> str:
    """Creates the parent run of a sweep (its jobs' runs become its children) in `experiment_name` at
    `uri` (None: the default store), with `params` (the swept space); returns its id."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    uri = uri or DEFAULT_URI
    client = MlflowClient(uri)
    with opened_store(uri):
        run_id = client.create_run(experiment_id(client, uri, experiment_name), run_name=run_name,
                                   tags=dict(tags)).info.run_id
        client.log_batch(run_id, params=[Param(key, _param_value(value)) for key, value in params.items()])
    log.info("MLflow sweep run %s in experiment %r at %s", run_id, experiment_name, uri)
    return run_id


def summarise_sweep(uri: Optional[str], parent_run_id: str, metric: str = "val/map") -> None:
    """The sweep's best child so far, on its parent run: the metric `best/<metric>` (the best child's last
    value, at a step counting the children that have it) and the tags `best_run_id`, `best_run_name` and
    `best.<key>` for each swept key. Called as each job ends and as the sweep ends."""
    from mlflow import MlflowClient

    client = MlflowClient(uri or DEFAULT_URI)
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    scored = [run for run in children if metric in run.data.metrics]
    if not scored:
        return
    best = max(scored, key=lambda run: run.data.metrics[metric])
    client.log_metric(parent_run_id, f"best/{metric}", best.data.metrics[metric], step=len(scored))
    swept = parent.data.tags.get("swept", "").split()
    tags = {"best_run_id": best.info.run_id, "best_run_name": best.info.run_name or "",
            **{f"best.{key}": best.data.params.get(key, "") for key in swept}}
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value)


def end_parent_run(uri: Optional[str], run_id: str, status: str, artifact: Optional[Path] = None) -> None:
    """Ends a sweep's parent run with `status`, first logging `artifact` (a file) to it when given."""
    from mlflow import MlflowClient

    client = MlflowClient(uri or DEFAULT_URI)
    if artifact is not None:
        client.log_artifact(run_id, str(artifact))
    client.set_terminated(run_id, status)


def write_sweep_parent(sweep_dir: Path, run_id: str, experiment_name: str, swept: list[str]) -> None:
    """Records the sweep's parent run in `sweep_dir`, where every job (in this process or a launcher's)
    finds it with `sweep_parent`."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SWEEP_FILE).write_text(json.dumps({"run_id": run_id, "experiment_name": experiment_name,
                                                    "swept": swept}))


def sweep_parent(sweep_dir: Path) -> Optional[dict[str, str]]:
    """The parent run of the multirun in `sweep_dir`, if it made one: 'run_id', 'experiment_name' and
    'swept', the swept keys (a job's run is named by its values of them)."""
    path = sweep_dir / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


if __name__ == "__main__":  # python -m detection.tracking <spool> ...: sends what a run's store did not take
    for spool_file in sys.argv[1:]:
        print(f"{spool_file}: {replay_spool(Path(spool_file), send_record)} records sent")
