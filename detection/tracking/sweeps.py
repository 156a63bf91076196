"""A sweep's parent run: made when the sweep starts, summarised as each job ends (the best child), ended with the
sweep's status; recorded in the sweep folder, where every job finds it."""

import csv
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Mapping, Optional

from detection.reporting.repeats import comparison_line, paired_comparison, repeat_statistics
from detection.tracking.mlflow_tracker import _param_value
from detection.tracking.stores import experiment_id, opened_store, ui_hint

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


def summarise_sweep(uri: str, parent_run_id: str) -> None:
    """The sweep's best child so far, on its parent run: the metric `best/<metric>` (the best child's last
    value, at a step counting the children that count) and the tags `best_run_id`, `best_run_name` and
    `best.<key>` for each swept key. The metric and direction are the parent's tags `best_metric` and
    `direction` (val/map, maximize); failed and pruned children and non-finite values never count. With
    `seed` among the swept keys, the statistics over seeds too (`log_seed_statistics`). Called as each job
    ends and as the sweep ends."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    metric = parent.data.tags.get("best_metric", "val/map")
    children = [run for run in client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
        if run.info.status not in ("FAILED", "KILLED") and "pruned" not in run.data.tags]
    scored = [run for run in children if math.isfinite(run.data.metrics.get(metric, math.nan))]
    swept = parent.data.tags.get("swept", "").split()
    if "seed" in swept:
        log_seed_statistics(client, parent_run_id, children, [key for key in swept if key != "seed"], metric)
    if not scored:
        return
    pick = min if parent.data.tags.get("direction") == "minimize" else max
    best = pick(scored, key=lambda run: run.data.metrics[metric])
    client.log_metric(parent_run_id, f"best/{metric}", best.data.metrics[metric], step=len(scored))
    tags = {"best_run_id": best.info.run_id, "best_run_name": best.info.run_name or "",
            **{f"best.{key}": best.data.params.get(key, "") for key in swept}}
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value)


SEED_TABLE = "seed_statistics.csv"


def log_seed_statistics(client, parent_run_id: str, children: list, others: list[str], metric: str) -> None:
    """A multirun over seeds, on its parent run: for each combination of the `others` swept keys (one group
    when seed alone is swept), `seeds/[<key>:<value> ]<metric>/<statistic>` (n, mean, std, min, max, ci_low,
    ci_high: repeat_statistics) of `metric` and of each class's AP (`val_class/ap50_voc07/<class>`) over the
    children, and the table `seed_statistics.csv`."""
    from mlflow.entities import Metric

    groups: dict[str, list] = {}
    for run in children:
        groups.setdefault(" ".join(f"{key}:{run.data.params.get(key, '')}" for key in others), []).append(run)
    rows, metrics = [], []
    for group, runs in sorted(groups.items()):
        names = [metric, *sorted({key for run in runs for key in run.data.metrics
                                  if key.startswith("val_class/ap50_voc07/")})]
        for name in names:
            values = [run.data.metrics.get(name, math.nan) for run in runs]
            statistics = repeat_statistics(values)
            rows.append({"group": group, "metric": name, **statistics})
            prefix = f"seeds/{group + ' ' if group else ''}{name}"
            metrics += [Metric(f"{prefix}/{key}", float(value), int(time.time() * 1000), len(runs))
                        for key, value in statistics.items() if math.isfinite(value)]
    for start in range(0, len(metrics), 1000):
        client.log_batch(parent_run_id, metrics=metrics[start:start + 1000])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / SEED_TABLE
        with open(path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else ["group", "metric"])
            writer.writeheader()
            writer.writerows(rows)
        client.log_artifact(parent_run_id, str(path))


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


def seed_results(client, parent_run_id: str, metric: str) -> dict[int, float]:
    """{seed: metric} of a sweep's finished, unpruned children (their last value)."""
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {int(run.data.params["seed"]): run.data.metrics.get(metric, math.nan) for run in children
            if run.info.status == "FINISHED" and "pruned" not in run.data.tags and "seed" in run.data.params}


def compare_sweeps(uri: str, first: str, second: str, metric: str = "val/map") -> tuple[str, dict]:
    """The paired comparison (paired_comparison) of two seed sweeps' parents `first` and `second` at `uri`:
    each child of one paired with the other's child of the same seed. Logged as a run of the first's
    experiment (params first, second, metric; metrics `compare/<metric>/mean|ci_low|ci_high|p_value|n`;
    the per-seed differences as `compare/<metric>/difference` at step = seed). Returns the line that says it
    ('anchors=fitted - defaults: +0.0120 [-0.0040, +0.0280], p = 0.11 over 5 seeds') and the numbers."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(uri)
    parents = [client.get_run(run_id) for run_id in (first, second)]
    labels = sweep_labels(*(run.data.tags.get("overrides", "").split() for run in parents))
    comparison = paired_comparison(*(seed_results(client, run_id, metric) for run_id in (first, second)))
    if comparison["n"] < 2:
        raise ValueError(f"runs {first} and {second}: {comparison['n']} seed(s) in common with a finite {metric}; "
                         f"a paired comparison needs two or more (sweep both over the same seeds: seed=0,1,2,...)")
    line = comparison_line(*labels, comparison)
    with opened_store(uri):
        run = client.create_run(parents[0].info.experiment_id, run_name=f"compare {labels[0]} - {labels[1]}",
                                tags={"comparison": line, "mlflow.note.content": line})  # note: the run's description
    client.log_batch(run.info.run_id, params=[Param(key, value) for key, value in
                                              {"first": first, "second": second, "metric": metric}.items()])
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[
        *(Metric(f"compare/{metric}/{key}", float(comparison[key]), now, 0)
          for key in ("mean", "ci_low", "ci_high", "p_value", "n") if math.isfinite(comparison[key])),
        *(Metric(f"compare/{metric}/difference", difference, now, seed)
          for seed, difference in zip(comparison["seeds"], comparison["differences"]))])
    client.set_terminated(run.info.run_id)
    log.info("logged as MLflow run %s: %s", run.info.run_id,
             ui_hint(uri, parents[0].info.experiment_id, run.info.run_id))
    return line, comparison


def sweep_labels(first: list[str], second: list[str]) -> tuple[str, str]:
    """What tells two sweeps apart: each one's overrides that the other lacks, seeds aside ('defaults' for
    none)."""
    def own(overrides, other):
        return " ".join(o for o in overrides if o not in other and not o.startswith("seed=")) or "defaults"

    return own(first, second), own(second, first)
