"""Experiment tracking against a real `mlflow server` (loopback, temporary SQLite store and artifact folder):
what a run logs, sweeps as parent and child runs, and a server that is not there."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import REPO, SMALL_SHAPES, free_port, run_script, serve_mlflow, stop_server
from detection.tracking.mlflow_tracker import MAX_PARAM_LENGTH, MlflowKeys, MlflowTracker, _param_value
from detection.tracking.outbox import Outbox
from detection.cli.runs import flatten
from detection.tracking.stores import StoreUnreachable

SMOKE = ["debug=smoke", "backbone=resnet18", "anchors=shapes128", *SMALL_SHAPES, "tracking.system_metrics_interval=1"]
QUICK_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def all_runs(client: MlflowClient):
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    paths = []
    for item in client.list_artifacts(run_id, path):
        paths.extend(artifact_paths(client, run_id, item.path) if item.is_dir else [item.path])
    return paths


def test_names_and_params_follow_mlflows_rules():
    assert flatten({"optimizer": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": 0}) == \
        {"optimizer.lr": 0.1, "optimizer.betas": [0.9, 0.99], "seed": 0}
    assert MlflowKeys()(["val/ap/traffic light", "val/ap/traffic+light#1"]) == \
        {"val/ap/traffic light": "val/ap/traffic light", "val/ap/traffic+light#1": "val/ap/traffic_light_1"}
    cut = _param_value("x" * 10_000)
    assert len(cut) == MAX_PARAM_LENGTH and cut.endswith("...[cut]")


@pytest.mark.slow
def test_a_run_logs_config_metrics_images_plots_checkpoint_and_model(tmp_path, shapes_root, mlflow_server):
    uri, _ = mlflow_server
    result = run_script("train.py", *SMOKE, f"dataset.root={shapes_root}", f"tracking.uri={uri}",
                        "tracking.register_model=shapes_ssd", "tracking.log_checkpoint=true", cwd=tmp_path,
                        env=QUICK_RETRIES)
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(uri)
    [run] = all_runs(client)
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("ssd128_resnet18_shapes debug=smoke")
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["optimizer.lr"] == "0.001" and params["model.class"] == "ssd.build_ssd"
    assert params["backbone.weights"] == "None" and params["anchors.image_size"] == "128"
    # one key per value: no copies made by interpolation, no instantiation keys, no reporting settings
    assert not any(key.startswith(("model.anchors.", "model.backbone.", "dataset.train.root", "tracking."))
                   or key.endswith(("_target_", "_partial_")) for key in params)
    assert params["anchors.aspect_ratios"] == "[2], [2, 3], [2, 3], [2], [2]"  # lists as text, not JSON blocks
    assert "tracking.uri" not in run.info.run_name
    assert {"train/loss", "train/classification", "train/bbox_regression", "train/lr", "train/images_per_s",
            "val/map", "val/map50_voc", "val/map50_95", "val/map50_coco", "val_class/ap50_voc07/ellipse",
            "val_class/ap50_95/ellipse", "val/errors/background"} <= set(metrics)
    val_metrics = [name for name in metrics if name.startswith("val/")]
    assert not any("ap/" in name for name in val_metrics)  # per-class APs only under val_class/
    assert not {"val/map_50", "val/voc07_map", "val/coco_map"} & set(metrics)  # one key per number
    assert "val/map50_95" in tags["mlflow.note.content"]  # the run's description says what each one is
    assert any(name.startswith("system/cpu_utilization") for name in metrics)
    assert any(name.startswith("system/system_memory_usage") for name in metrics)
    assert {"git_commit", "git_dirty", "host", "device", "overrides"} <= set(tags) and tags["device"] == "cpu"
    paths = artifact_paths(client, run.info.run_id)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/best.pt",
            "debug_images/train_step_0000001.png", "precision_recall/step_0000002.png"} <= set(paths)
    assert any(path.startswith("debug_images/val_step_0000002_image_") for path in paths)
    import mlflow

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    # the exported files' contract: uint8 images of any size in, padded detections with counts out
    outputs = model.predict(np.random.randint(0, 256, (2, 3, 96, 80), dtype=np.uint8))
    assert list(outputs) == ["boxes", "scores", "labels", "counts"]
    assert outputs["boxes"].shape == (2, 200, 4) and outputs["counts"].shape == (2,)  # 200: detections_per_image
    assert client.get_registered_model("shapes_ssd").latest_versions[0].run_id == run.info.run_id


@pytest.mark.slow
def test_a_sqlite_stores_artifacts_live_beside_it_and_the_run_says_how_to_see_it(tmp_path, shapes_root):
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    elsewhere.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    result = run_script("train.py", *SMOKE, f"dataset.root={shapes_root}", f"tracking.uri={uri}",
                        "tracking.system_metrics=false", cwd=elsewhere)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    client = MlflowClient(uri)
    [run] = all_runs(client)
    assert run.info.artifact_uri.startswith((store / "mlartifacts").as_uri())
    assert not (elsewhere / "mlruns").exists()
    assert not any(path.startswith("checkpoints/") for path in artifact_paths(client, run.info.run_id))
    [model_dir] = [path.parent for path in (store / "mlartifacts").glob("*/models/*/artifacts/MLmodel")]
    weights = [path for path in model_dir.rglob("*") if path.is_file() and path.stat().st_size > 1_000_000]
    assert [path.name for path in weights] == ["model.pt"]  # the weights once, as the TorchScript export
    assert not list(model_dir.rglob("*.pkl"))  # a model from code: nothing pickled
    assert "CloudPickle" not in output and "arbitrary code" not in output  # and no warning about it
    assert output.count(f"MLflow run {run.info.run_id}") == 2  # at its start and at its end
    assert f"mlflow ui --backend-store-uri {uri}" in output


@pytest.mark.slow
def test_a_multirun_is_a_parent_run_with_a_child_per_job_and_a_failed_job_does_not_stop_it(
        tmp_path, shapes_root, mlflow_server):
    uri, _ = mlflow_server
    # the first job fails (AdamW refuses a negative learning rate); the second still runs. The URI comes
    # from the environment, as tracking.uri's default reads it: every job must log the same value
    result = run_script("train.py", "-m", *SMOKE, f"dataset.root={shapes_root}", "tracking.log_model=false",
                        "optimizer.lr=-1,0.002", cwd=tmp_path, env={**QUICK_RETRIES, "MLFLOW_TRACKING_URI": uri})
    assert result.returncode != 0 and "Invalid learning rate: -1" in result.stderr
    client = MlflowClient(uri)
    runs = all_runs(client)
    [parent] = [run for run in runs if run.data.tags.get("sweep") == "parent"]
    children = sorted((run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda run: run.data.params["optimizer.lr"])
    assert len(runs) == 3 and len(children) == 2
    assert [child.info.status for child in children] == ["FAILED", "FINISHED"]
    assert parent.info.status == "FAILED" and parent.info.run_name == "sweep optimizer.lr=-1,0.002"
    # named by what they change, so the runs list tells them apart at a glance; the experiment names the model
    assert [child.info.run_name for child in children] == ["optimizer.lr=-1", "optimizer.lr=0.002"]
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert {"key/val_map", "key/mAP50-95", "key/precision"} <= set(children[1].data.metrics)
    assert children[1].data.metrics["key/val_map"] == children[1].data.metrics["val/map"]
    first, second = (child.data.params for child in children)
    assert {key for key in first if first[key] != second.get(key)} == {"optimizer.lr"}
    assert "val/map" in children[1].data.metrics
    assert not client.search_logged_models([parent.info.experiment_id])  # tracking.log_model=false: no model
    assert ".hydra/config.yaml" in artifact_paths(client, children[0].info.run_id)  # the failed job's config too
    # the parent shows the swept space and the winner (the one job that reported val/map)
    assert parent.data.params["sweep.optimizer.lr"] == "-1,0.002"
    assert parent.data.metrics["best/val/map"] == children[1].data.metrics["val/map"]
    assert parent.data.tags["best_run_id"] == children[1].info.run_id and parent.data.tags["best.optimizer.lr"] == "0.002"
    # and the terminal's table of the jobs, the failed one included
    table = [line.split("] ", 1)[-1] for line in result.stdout[result.stdout.index("sweep of 2 jobs:"):].splitlines()]
    assert table[2].split()[:2] == ["0", "FAILED"] and table[2].endswith("optimizer.lr=-1")
    assert table[3].split()[:2] == ["1", "COMPLETED"] and table[3].endswith("optimizer.lr=0.002")
    assert table[4].startswith("best: job 1 (optimizer.lr=0.002), val/map")


@pytest.mark.faults
def test_an_unreachable_server_fails_within_seconds_with_mlflows_default_retries(monkeypatch):
    for variable in QUICK_RETRIES:
        monkeypatch.delenv(variable, raising=False)
    uri = f"http://127.0.0.1:{free_port()}"  # a real, closed loopback port
    tracker = MlflowTracker(uri=uri, experiment_name="e", run_name="r", system_metrics=False)
    started = time.monotonic()
    with pytest.raises(StoreUnreachable, match=f"cannot reach the MLflow tracking store at {uri}"):
        tracker.start(params={}, tags={})
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_an_unreachable_server_is_a_clear_error_before_training(tmp_path, shapes_root):
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_script("train.py", *SMOKE, f"dataset.root={shapes_root}", f"tracking.uri={uri}", cwd=tmp_path,
                        timeout=120)
    assert result.returncode != 0
    assert f"cannot reach the MLflow tracking store at {uri}" in result.stderr
    assert not list((tmp_path / "run").rglob("*.pt"))


@pytest.mark.slow
def test_three_first_runs_at_once_on_a_fresh_sqlite_store_all_finish(tmp_path, shapes_root):
    store = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    folders = [tmp_path / f"job{index}" for index in range(3)]
    processes = []
    for folder in folders:
        folder.mkdir()
        processes.append(subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *SMOKE, f"dataset.root={shapes_root}", f"tracking.uri={store}",
             "tracking.system_metrics=false", "tracking.log_model=false",
             f"hydra.run.dir={folder}/run"], cwd=folder,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], "\n".join(outputs)
    runs = all_runs(MlflowClient(store))
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}
    assert all("val/map" in run.data.metrics and "train/loss" in run.data.metrics for run in runs)


def test_starting_a_run_leaves_the_environment_as_it_was(tmp_path, monkeypatch):
    """A sweep's jobs share a process: the URI must not leak into the next job's `tracking.uri`."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = MlflowTracker(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment_name="e", run_name="r",
                            system_metrics=False)
    tracker.start(params={"optimizer.lr": 0.1}, tags={})
    tracker.end()
    assert "MLFLOW_TRACKING_URI" not in os.environ
    [run] = all_runs(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"))
    assert run.info.status == "FINISHED" and run.data.params == {"optimizer.lr": "0.1"}


def test_keys_mlflow_would_refuse_are_renamed_recorded_and_every_value_arrives(tmp_path, caplog):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(uri=store, experiment_name="e", run_name="r", system_metrics=False)
    tracker.start(params={"dataset.classes": "/m/01g317"}, tags={}, spool=tmp_path / "spool.jsonl")
    odd = ["val_class/ap50_voc07//m/01g317", "val_class/ap50_voc07/a//b", "val_class/ap50_voc07/cat/",
           "val_class/ap50_voc07/..", "val_class/ap50_voc07/a+b", "val_class/ap50_voc07/a#b"]
    for step in (1, 2):
        tracker.log_metrics({"val/map": step / 10, **{key: 0.5 for key in odd}}, step=step)
    with caplog.at_level("INFO"):
        tracker.end()
    client = MlflowClient(store)
    [run] = all_runs(client)
    renamed = json.loads(run.data.tags["renamed_keys"])
    assert sorted(renamed) == sorted(odd) and len(set(renamed.values())) == len(odd)
    assert renamed["val_class/ap50_voc07//m/01g317"] == "val_class/ap50_voc07/_/m/01g317"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val/map")] == [0.1, 0.2]
    assert all(len(client.get_metric_history(run.info.run_id, name)) == 2 for name in renamed.values())
    assert run.info.status == "FINISHED" and "refused" not in caplog.text and not (tmp_path / "spool.jsonl").exists()


def test_a_refused_record_is_that_records_problem_and_the_outbox_goes_on(tmp_path):
    received = []

    def send(record):
        if record["kind"] == "tag":
            raise ValueError("refused")
        received.append(record["step"])

    outbox = Outbox(send, refused=lambda error: isinstance(error, ValueError), spool=tmp_path / "spool", where="s")
    for step in range(3):
        outbox.put({"kind": "metrics", "step": step, "metrics": {"a": 1.0}})
        outbox.put({"kind": "tag", "key": "k", "value": "v"})
    outbox.close()
    assert received == [0, 1, 2] and outbox.counts["refused"] == {"tag": 3} and outbox.down is None
    assert not (tmp_path / "spool").exists()


@pytest.mark.slow
def test_a_store_outage_of_20_s_loses_no_value(tmp_path, mlflow_server, monkeypatch):
    uri, server = mlflow_server
    for name, value in QUICK_RETRIES.items():
        monkeypatch.setenv(name, value)
    tracker = MlflowTracker(uri=uri, experiment_name="e", run_name="r", system_metrics=False)
    spool = tmp_path / "spool.jsonl"
    run_id = tracker.start(params={}, tags={}, spool=spool)
    steps = iter(range(1, 1000))

    def log_for(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            tracker.log_metrics({"val/map": 0.5}, step=next(steps))
            time.sleep(0.5)

    log_for(2)
    stop_server(server)
    log_for(20)
    assert spool.is_file()  # what the store did not take is kept on disk meanwhile
    server = serve_mlflow(tmp_path, int(uri.rsplit(":", 1)[1]))
    try:
        log_for(8)  # past the outbox's next retry
        tracker.end()
        logged = [m.step for m in MlflowClient(uri).get_metric_history(run_id, "val/map")]
        assert logged == list(range(1, next(steps))) and not spool.exists()
        assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    finally:
        stop_server(server)


def test_records_that_cannot_be_kept_are_counted_lost_and_said(tmp_path, caplog):
    def send(record):
        raise ConnectionError("store down")

    spool = tmp_path / "missing folder" / "spool.jsonl"  # cannot be written: its folder does not exist
    outbox = Outbox(send, refused=lambda error: False, spool=spool, where="s")
    outbox.put({"kind": "metrics", "step": 1, "metrics": {"a": 1.0, "b": 2.0}})
    outbox.close()
    assert outbox.counts["lost"] == {"metrics": 2} and not outbox.counts["spooled"] and not spool.exists()
    assert "tracking records lost: they cannot be kept" in caplog.text


def test_a_spool_of_a_run_the_store_lacks_never_holds_back_a_resume(tmp_path, caplog):
    """A resume on another store finds the earlier run's spool: its records, refused there, are passed over."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    spool = tmp_path / "tracking_spool.jsonl"
    spool.write_text(json.dumps({"kind": "metrics", "step": 3, "timestamp": 0, "metrics": {"val/map": 0.5},
                                 "run_id": "0123456789abcdef0123456789abcdef", "uri": store}) + "\n")
    tracker = MlflowTracker(uri=store, experiment_name="e", run_name="r", system_metrics=False)
    tracker.start(params={}, tags={}, spool=spool)
    tracker.log_metrics({"val/map": 0.6}, step=4)
    tracker.end()
    [run] = all_runs(MlflowClient(store))
    assert run.data.metrics == {"val/map": 0.6} and run.info.status == "FINISHED" and not spool.exists()
    assert "refused a kept metrics record of run 0123456789abcdef0123456789abcdef" in caplog.text
