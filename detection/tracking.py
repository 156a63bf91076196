"""Experiment tracking: the one module that imports mlflow. The loop only sees the `Tracker` protocol; a
sweep's parent run is made and ended by plain functions that edge.py's Hydra callback calls."""

import json
import logging
import os
import re
import socket
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Protocol
from urllib.parse import urlparse

import numpy as np

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URI = f"sqlite:///{REPO_ROOT / 'mlflow.db'}"  # one store wherever Hydra puts a job's outputs
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
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
    return f"mlflow ui --backend-store-uri {uri} (then http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id})"


def experiment_label(model: str, backbone: str, dataset: str) -> str:
    """'<model>_<backbone>_<dataset>', e.g. 'ssd512_resnet50_shapes', 'maskrcnn_resnet50_voc'."""
    return f"{model}_{backbone}_{dataset}"


class Tracker(Protocol):
    run_id: Optional[str]  # of the run started, None before and with nothing tracked

    def start(self, *, params: Mapping[str, Any], tags: Mapping[str, str], run_id: Optional[str] = None,
              parent_run_id: Optional[str] = None) -> Optional[str]: ...
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

    def start(self, *, params, tags, run_id=None, parent_run_id=None):
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


def metric_names(keys: Iterable[str]) -> dict[str, str]:
    """An MLflow key for each of `keys`, never two the same. MLflow accepts letters and digits of any script
    and `_ - . / space`, so 'val/ap/猫' and 'val/ap/café' stay as they are; any other character becomes `_`,
    and a key that would then repeat an earlier one gets `_2`, `_3`, ... ('a+b' and 'a#b' stay apart)."""
    names: dict[str, str] = {}
    for key in keys:
        safe = candidate = re.sub(r"[^\w\-./ ]", "_", key)
        count = 1
        while candidate in names.values():
            count += 1
            candidate = f"{safe}_{count}"
        names[key] = candidate
    return names


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
        self._lost: Optional[str] = None  # why the store stopped answering, once it has
        self._unlogged = {"metric values": 0, "artifacts": 0}

    def start(self, *, params, tags, run_id=None, parent_run_id=None):
        """Starts a run (or reopens `run_id` on resume) under `parent_run_id` when given (a sweep's job)."""
        import mlflow

        environment = os.environ.get(URI_VARIABLE)
        mlflow.set_tracking_uri(self.uri)
        # set_tracking_uri also exports the URI; a later job of a sweep in this process would then resolve
        # tracking.uri to it and log a different param than the first job did
        if environment is None:
            os.environ.pop(URI_VARIABLE, None)
        else:
            os.environ[URI_VARIABLE] = environment
        with opened_store(self.uri):
            experiment = experiment_id(mlflow.MlflowClient(self.uri), self.uri, self.experiment_name)
            mlflow.set_experiment(experiment_id=experiment)
        if self.system_metrics:
            mlflow.set_system_metrics_sampling_interval(self.system_metrics_interval)
            mlflow.set_system_metrics_samples_before_logging(1)
        tags = {**tags, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else self.run_name, tags=tags,
                               log_system_metrics=self.system_metrics)
        self.run_id, self._experiment_id = run.info.run_id, run.info.experiment_id
        log.info("MLflow run %s in experiment %r; to see it: %s", self.run_id, self.experiment_name,
                 ui_hint(self.uri, self._experiment_id, self.run_id))
        if run_id is None:
            values = {key: _param_value(value) for key, value in params.items()}
            items = list(values.items())
            for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                mlflow.log_params(dict(items[start:start + 100]))
        return self.run_id

    def log_metrics(self, metrics, step):
        import mlflow

        names = metric_names(metrics)
        self._send(lambda: mlflow.log_metrics({names[k]: float(v) for k, v in metrics.items()}, step=step),
                   "metric values", len(metrics), f"metrics at step {step}")

    def log_artifact(self, path, artifact_path=None):
        """A file, or a folder as a folder of that name, under `artifact_path` of the run's artifacts."""
        import mlflow

        path = Path(path)
        if not path.exists():  # our mistake, not the store's: say so, and go on logging
            log.error("not logging %s to MLflow: no such file or folder", path)
            self._unlogged["artifacts"] += 1
            return
        if path.is_dir():
            folder = f"{artifact_path}/{path.name}" if artifact_path else path.name
            self._send(lambda: mlflow.log_artifacts(str(path), artifact_path=folder), "artifacts", 1, str(path))
        else:
            self._send(lambda: mlflow.log_artifact(str(path), artifact_path=artifact_path), "artifacts", 1, str(path))

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
        with it and the requirements are the pinned versions."""
        import tempfile

        import mlflow.pyfunc
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        from detection.models.export import ContractModel

        if not self.log_model_enabled:
            return
        if self._lost is not None:
            self._unlogged["artifacts"] += 1
            return
        requirements = [f"{name}=={version(name)}" for name in ("torch", "torchvision", "numpy", "pycocotools")]
        try:
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
        except Exception as error:  # the run keeps everything else; say what is missing
            self._unlogged["artifacts"] += 1
            log.error("could not log the model to MLflow run %s: %s: %s", self.run_id, type(error).__name__, error)

    def end(self, status="FINISHED"):
        import mlflow

        if self.run_id is None:
            return
        self._send(lambda: mlflow.end_run(status=status), "run status", 0, f"the run's end ({status})")
        log.info("MLflow run %s ended %s; to see it: %s", self.run_id, status,
                 ui_hint(self.uri, self._experiment_id, self.run_id))
        if self._lost is not None:
            log.error("MLflow run %s at %s is incomplete: %s not logged after the store was lost (%s)",
                      self.run_id, self.uri,
                      ", ".join(f"{count} {kind}" for kind, count in self._unlogged.items()), self._lost)
        self.run_id = None

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
