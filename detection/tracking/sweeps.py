"""A sweep's parent run: made when the sweep starts, summarised as each job ends (the best child), ended with the
sweep's status; recorded in the sweep folder, where every job finds it."""

import json
import logging
from pathlib import Path
from typing import Mapping, Optional

from detection.tracking.mlflow_tracker import _param_value
from detection.tracking.stores import experiment_id, opened_store

log = logging.getLogger(__name__)


SWEEP_FILE = "mlflow_sweep.json"  # in a multirun's sweep dir: the parent run its jobs report to


def experiment_label(model: str, backbone: str, dataset: str) -> str:
    """'<model>_<backbone>_<dataset>', e.g. 'ssd512_resnet50_shapes', 'maskrcnn_resnet50_voc'."""
    return f"{model}_{backbone}_{dataset}"


def start_parent_run(uri: str, *, experiment_name: str, run_name: str, tags: Mapping[str, str],
                     params: Mapping[str, str]) -> str:
    """Creates the parent run of a sweep (its jobs' runs become its children) in `experiment_name` at
    `uri`, with `params` (the swept space); returns its id."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(uri)
    with opened_store(uri):
        run_id = client.create_run(experiment_id(client, uri, experiment_name), run_name=run_name,
                                   tags=dict(tags)).info.run_id
        client.log_batch(run_id, params=[Param(key, _param_value(value)) for key, value in params.items()])
    log.info("MLflow sweep run %s in experiment %r at %s", run_id, experiment_name, uri)
    return run_id


def summarise_sweep(uri: str, parent_run_id: str, metric: str = "val/map") -> None:
    """The sweep's best child so far, on its parent run: the metric `best/<metric>` (the best child's last
    value, at a step counting the children that have it) and the tags `best_run_id`, `best_run_name` and
    `best.<key>` for each swept key. Called as each job ends and as the sweep ends."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
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


def end_parent_run(uri: str, run_id: str, status: str, artifact: Optional[Path] = None) -> None:
    """Ends a sweep's parent run with `status`, first logging `artifact` (a file) to it when given."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
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
