"""MLflow tracking stores: reached (probed with a time limit), created and migrated under a lock, where a
store keeps its artifacts, and how to look at a run."""

import logging
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlparse

from detection.command_lines import tool_command

log = logging.getLogger(__name__)

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


def store_folder(uri: str) -> Optional[Path]:
    """The folder of a local SQLite store, where files that belong with the store go (an Optuna study's);
    None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent


# the query that opens MLflow 3's pages on their model-training view (runs, charts) rather than the GenAI one
# the UI starts on (a choice it keeps in the browser, so a link is the only way to make it from outside)
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
# MLflow 3's UI opens an experiment of this kind on its model-training view (runs, charts), not the GenAI
# overview it guesses for an experiment without the tag
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client, uri: str, name: str) -> str:
    """The id of experiment `name` at `uri`, created (with `artifact_location` and EXPERIMENT_KIND) when it
    is new, tagged EXPERIMENT_KIND when an older one lacks it; call it inside `opened_store`, whose lock
    keeps two jobs from creating it together."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location(uri, name), tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def ui_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """How to look at a run: the command serving a local store, or the server's page of the run."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"{tool_command('mlflow', 'ui', '--backend-store-uri', uri)} (then http://127.0.0.1:5000/{page})"
