"""Sweeps that answer questions, with real Hydra multiruns and real SQLite stores (MLflow and Optuna): the
project's Optuna sweeper (search, pruning, a continued study, a changed search space), the parent's best,
seed statistics and the paired comparison of two seed sweeps."""

import math
import subprocess
import sys

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats

from conftest import REPO, SMALL_SHAPES, run_script
from detection.tracking.sweeps import summarise_sweep

SMOKE = ["debug=smoke", "backbone=resnet18", "anchors=shapes128", "optimizer=adamw", *SMALL_SHAPES,
         "tracking.log_model=false", "tracking.system_metrics=false"]
STATES = optuna.trial.TrialState


def sqlite_store(folder) -> str:
    return f"sqlite:///{folder / 'store' / 'mlflow.db'}"


def children_of(client: MlflowClient, parent) -> list:
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def parent_of(client: MlflowClient):
    [parent] = [run for run in client.search_runs(["0", "1"]) if run.data.tags.get("sweep") == "parent"]
    return parent


@pytest.mark.slow
def test_a_search_prunes_the_planted_hopeless_trial_after_its_first_validation(tmp_path, shapes_root):
    uri, storage = sqlite_store(tmp_path), f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="plant", storage=storage, direction="maximize")
    for lr in (0.002, 0.003, 1e-9, 0.002):  # the order the trials take: the third cannot learn
        study.enqueue_trial({"optimizer.lr": lr})
    result = run_script("train.py", "-m", "hydra/sweeper=optuna", "hydra.sweeper.study_name=plant",
                        f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=4", "hydra/sweeper/pruner=median",
                        "hydra.sweeper.pruner.n_startup_trials=2", "optimizer.lr=choice(0.002,0.003,1e-9)",
                        *SMOKE, "trainer.max_epochs=2", "dataset.num_train=32", "trainer.limit_train_images=32",
                        f"dataset.root={shapes_root}", f"tracking.uri={uri}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = optuna.load_study(study_name="plant", storage=storage).trials
    assert [trial.params["optimizer.lr"] for trial in trials] == [0.002, 0.003, 1e-9, 0.002]
    assert trials[0].state == trials[1].state == STATES.COMPLETE
    assert trials[2].state == STATES.PRUNED and trials[2].user_attrs["pruned_at_epoch"] == 1
    assert list(trials[2].intermediate_values) == [1]  # one validation, then it stopped
    assert (tmp_path / "multirun" / "2" / "checkpoints" / "last.pt").is_file()  # it ended with its checkpoint
    client = MlflowClient(uri)
    parent = parent_of(client)
    [pruned] = [run for run in children_of(client, parent) if run.data.params["optimizer.lr"] == "1e-09"]
    assert pruned.info.status == "FINISHED" and pruned.data.tags["pruned"] == "1"
    assert parent.data.tags["best_run_id"] != pruned.info.run_id
    assert parent.data.tags["best_metric"] == "val/map" and parent.data.tags["direction"] == "maximize"
    output = result.stdout + result.stderr
    assert "trial 2 PRUNED" in output and "   2 PRUNED " in output  # the log and the terminal's table


@pytest.mark.slow
def test_the_same_command_continues_the_study_and_a_changed_search_space_is_refused(tmp_path, shapes_root):
    uri = sqlite_store(tmp_path)
    command = ["train.py", "hparams_search=ssd_lr", "hydra.sweeper.n_trials=1", *SMOKE, f"dataset.root={shapes_root}",
               f"tracking.uri={uri}"]
    for search in ("first", "second"):  # each in a folder of its own, as Hydra's timestamped default gives
        (tmp_path / search).mkdir()
        result = run_script(*command, cwd=tmp_path / search)
        assert result.returncode == 0, result.stdout + result.stderr
    storage = f"sqlite:///{tmp_path / 'store' / 'optuna.db'}"  # beside the MLflow store
    trials = optuna.load_study(study_name="ssd_lr_ssd128_resnet18_shapes", storage=storage).trials
    assert [trial.number for trial in trials] == [0, 1]  # the second search went on from the first's
    assert all(trial.state == STATES.COMPLETE for trial in trials)
    assert trials[0].params != trials[1].params  # the seeded sampler moved on: not the first's point again
    client = MlflowClient(uri)
    runs = client.search_runs(["1"])
    assert len(runs) == 2 * 2, [run.info.run_name for run in runs]  # each search: a parent and its trial
    (tmp_path / "third").mkdir()
    result = run_script(*command, "optimizer.lr=tag(log, interval(1e-5, 1e-2))",
                        cwd=tmp_path / "third")
    assert result.returncode != 0
    assert "began with another search space (optimizer.lr:" in result.stderr + result.stdout
    assert len(optuna.load_study(study_name="ssd_lr_ssd128_resnet18_shapes", storage=storage).trials) == 2


@pytest.mark.slow
def test_a_seed_multirun_gives_its_parent_the_mean_spread_and_confidence_interval(tmp_path, shapes_root):
    uri = sqlite_store(tmp_path)
    result = run_script("train.py", "-m", "seed=0,1,2", *SMOKE, "dataset.num_train=16", "trainer.limit_train_images=16",
                        f"dataset.root={shapes_root}", f"tracking.uri={uri}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(uri)
    parent = client.get_run(parent_of(client).info.run_id)
    values = np.array([run.data.metrics["val/map"] for run in children_of(client, parent)])
    assert len(values) == 3
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    metrics = parent.data.metrics
    assert metrics["seeds/val/map/n"] == 3 and metrics["seeds/val/map/mean"] == pytest.approx(values.mean())
    assert metrics["seeds/val/map/std"] == pytest.approx(values.std(ddof=1))
    assert metrics["seeds/val/map/min"] == values.min() and metrics["seeds/val/map/max"] == values.max()
    assert (metrics["seeds/val/map/ci_low"], metrics["seeds/val/map/ci_high"]) == pytest.approx((low, high))
    assert any(key.startswith("seeds/val_class/ap50_voc07/") and key.endswith("/mean") for key in metrics)
    table = client.download_artifacts(parent.info.run_id, "seed_statistics.csv", str(tmp_path))
    assert open(table).readline().strip() == "group,metric,n,mean,std,min,max,ci_low,ci_high"


def made_sweep(client: MlflowClient, experiment: str, overrides: str, values: dict[int, float]) -> str:
    """A seed sweep's parent and children, written into a real store as the sweep callback writes them."""
    parent = client.create_run(experiment, tags={"sweep": "parent", "swept": "seed", "overrides": overrides})
    for seed, value in values.items():
        child = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id})
        client.log_batch(child.info.run_id, metrics=[Metric("val/map", value, 0, 1)], params=[Param("seed", str(seed))])
        client.set_terminated(child.info.run_id)
    return parent.info.run_id


def test_the_paired_comparison_equals_scipys_on_the_same_values(tmp_path):
    uri = sqlite_store(tmp_path)
    client = MlflowClient(uri)
    experiment = client.create_experiment("anchors")
    fitted = {0: 0.61, 1: 0.58, 2: 0.64, 3: 0.60, 4: 0.62}
    default = {0: 0.60, 1: 0.59, 2: 0.61, 3: 0.57, 4: 0.60, 5: 0.70}  # seed 5 has no pair: left out
    first = made_sweep(client, experiment, "seed=0,1,2,3,4 anchors=fitted", fitted)
    second = made_sweep(client, experiment, "seed=0,1,2,3,4,5", default)
    result = subprocess.run([sys.executable, "-m", "detection.cli.compare_sweeps", f"first={first}",
                             f"second={second}", f"tracking.uri={uri}", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    a, b = np.array(list(fitted.values())), np.array([default[seed] for seed in fitted])
    difference = a - b
    low, high = stats.t.interval(0.95, 4, loc=difference.mean(), scale=stats.sem(difference))
    p_value = stats.ttest_rel(a, b).pvalue
    line = (f"anchors=fitted - defaults: {difference.mean():+.4f} [{low:+.4f}, {high:+.4f}], "
            f"p = {p_value:.3g} over 5 seeds")
    assert line in result.stderr + result.stdout
    [run] = [run for run in client.search_runs([experiment]) if "comparison" in run.data.tags]
    assert run.data.tags["comparison"] == run.data.tags["mlflow.note.content"] == line  # the run's description
    assert run.info.status == "FINISHED"
    assert run.data.metrics["compare/val/map/p_value"] == pytest.approx(p_value)
    assert (run.data.metrics["compare/val/map/ci_low"], run.data.metrics["compare/val/map/ci_high"]) == \
        pytest.approx((low, high))
    history = client.get_metric_history(run.info.run_id, "compare/val/map/difference")
    assert {metric.step: metric.value for metric in history} == pytest.approx(dict(zip(fitted, difference)))


def test_the_best_child_ignores_nan_failed_and_pruned_children_and_follows_the_direction(tmp_path):
    uri = sqlite_store(tmp_path)
    client = MlflowClient(uri)
    experiment = client.create_experiment("sweep")
    parent = client.create_run(experiment, tags={"sweep": "parent", "swept": "optimizer.lr"})
    for lr, value, status, tags in ((1, math.nan, "FINISHED", {}), (2, 0.3, "FINISHED", {}), (3, 0.2, "FINISHED", {}),
                                    (4, 0.9, "FINISHED", {"pruned": "1"}), (5, 0.95, "FAILED", {})):
        child = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id, **tags})
        client.log_batch(child.info.run_id, metrics=[Metric("val/map", value, 0, 1)],
                         params=[Param("optimizer.lr", str(lr))])
        client.set_terminated(child.info.run_id, status)
    summarise_sweep(uri, parent.info.run_id)
    best = client.get_run(parent.info.run_id).data
    assert best.metrics["best/val/map"] == 0.3 and best.tags["best.optimizer.lr"] == "2"
    client.set_tag(parent.info.run_id, "direction", "minimize")
    summarise_sweep(uri, parent.info.run_id)
    assert client.get_run(parent.info.run_id).data.tags["best.optimizer.lr"] == "3"
