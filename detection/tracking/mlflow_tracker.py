"""The MLflow tracker: a run's params, tags, metrics, artifacts and model, sent through an Outbox, with keys
MLflow would refuse renamed once per run."""

import json
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np

from detection.command_lines import module_command
from detection.tracking.outbox import Outbox, replay_spool
from detection.tracking.stores import StoreUnreachable, experiment_id, opened_store, probe_store, ui_hint

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[1]  # detection/: the code a logged model carries
PYFUNC_MODEL = Path(__file__).with_name("pyfunc_model.py")  # the logged model's code (a model from code)
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
MAX_TAG_LENGTH = 8000  # and on a tag value


REFUSED = ("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST")  # the store answered: not this record


# MLflow's HTTP limits while a run is tracked, where the user has not set them: a call to a dead server fails
# in seconds (MLflow's defaults retry for minutes), and the Outbox's own retries take over
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}


URI_VARIABLE = "MLFLOW_TRACKING_URI"


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


def refused_by_mlflow(error: BaseException) -> bool:
    """Whether MLflow's store answered and refused the call's values (an invalid key or value), rather than
    failing to take it (unreachable, full, an internal error)."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in REFUSED


def send_kept_record(record: dict) -> None:
    """`send_record` for a record read back from a spool: one the store refuses (its run is gone, say) is
    logged and passed over, so that it never holds back the records after it."""
    try:
        send_record(record)
    except Exception as error:
        if not refused_by_mlflow(error):
            raise
        log.error("MLflow refused a kept %s record of run %s, passed over: %s", record["kind"], record["run_id"], error)


def send_record(record: dict) -> None:
    """Delivers one record (see `MlflowTracker`) to the run and store it names ('run_id', 'uri')."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client, run_id = MlflowClient(record["uri"]), record["run_id"]
    if record["kind"] == "metrics":
        metrics = [Metric(key, value, record["timestamp"], record["step"]) for key, value in record["metrics"].items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
    elif record["kind"] == "params":  # the same value again (a resumed run's) is accepted; another is refused
        client.log_batch(run_id, params=[Param(key, value) for key, value in record["params"].items()])
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
        uri: tracking URI (the command line gives `mlflow.db` beside the project's conf/ when none is set).
        experiment_name: created when missing.
        run_name: the run's display name.
        system_metrics: MLflow's own CPU / memory / disk / network (and GPU, through nvidia-ml-py)
            sampling, every `system_metrics_interval` seconds, as `system/...` metrics.
        log_model: `log_model()` logs the model with `mlflow.pyfunc.log_model`.
        log_checkpoint: `log_checkpoint()` also copies the best checkpoint into the run (off by default:
            the run directory keeps it, and the logged model holds the same weights).
        register_model: also register it under this name in the model registry (None: do not).
    """

    def __init__(self, *, uri: str, experiment_name: str = "detection", run_name: str = "run",
                 system_metrics: bool = True, system_metrics_interval: float = 10.0, log_model: bool = True,
                 log_checkpoint: bool = False, register_model: Optional[str] = None):
        self.uri = uri
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
                self._send_kept(Path(spool))
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

    def _send_kept(self, spool: Path) -> None:
        """Sends the records an earlier process kept in `spool`; what still cannot be sent stays there, said
        (a resume never waits on it)."""
        try:
            log.info("%s: %d records kept by an earlier run sent", spool, replay_spool(spool, send_kept_record))
        except Exception as error:
            log.warning("%s: the records kept there could not all be sent (%s: %s); they stay there", spool,
                        type(error).__name__, error)

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

    def log_params(self, params):
        """Params logged after the start (the model's cost, known once it is built); values as strings."""
        self._put({"kind": "params", "params": {self._keys([key])[key]: _param_value(value)
                                                for key, value in params.items()}})

    def set_tag(self, key, value):
        """A tag set after the start (a pruned trial's `pruned`)."""
        self._put({"kind": "tag", "key": key, "value": str(value)[:MAX_TAG_LENGTH]})

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
        import mlflow.pyfunc
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        from detection.models.deployment import ContractModel

        requirements = [f"{name}=={version(name)}" for name in ("torch", "torchvision", "numpy", "pycocotools")]
        # any batch and image size (the example's own would be enforced otherwise), every output by name
        signature = ModelSignature(
            inputs=Schema([TensorSpec(input_example.dtype, (-1, input_example.shape[1], -1, -1))]),
            outputs=Schema([TensorSpec(array.dtype, (-1,) * array.ndim, name)
                            for name, array in ContractModel.of_file(model_file)(input_example).items()]))
        mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_MODEL), artifacts={"model": str(model_file)},
                                input_example=input_example, signature=signature, code_paths=[str(PACKAGE)],
                                pip_requirements=requirements, registered_model_name=self.register_model)

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
        if not (self._outbox.counts["spooled"] or self._outbox.counts["lost"]):
            log.info("MLflow run %s ended %s (%s); to see it: %s", self.run_id, status, counts or "nothing logged",
                     hint)
        elif self._outbox.counts["spooled"]:
            log.error("MLflow run %s is incomplete in %s: %s; the records not sent (its end %s among them) are kept "
                      "in %s; send them when the store answers with: %s", self.run_id, self.uri, counts, status,
                      self._outbox.spool, module_command("detection.tracking", self._outbox.spool))
        else:
            log.error("MLflow run %s is incomplete in %s: %s; the records counted lost could not be kept (see "
                      "above), and the run shows RUNNING there", self.run_id, self.uri, counts)
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


def _param_value(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_PARAM_LENGTH:
        cut = "...[cut]"
        return text[: MAX_PARAM_LENGTH - len(cut)] + cut
    return text
