"""Nothing lost: a run killed at any step resumes to the weights of the uninterrupted run; SIGTERM ends
cleanly with a checkpoint and a KILLED MLflow run."""

import os
import random
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch

from conftest import REPO, SMALL_SHAPES, run_script
from detection.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

# 2 epochs of 4 steps, a checkpoint every step, augmentation on and a loader worker: everything that could
# make a resumed run differ is in play
SETTINGS = ["debug=smoke", "backbone=resnet18", "anchors=shapes128", "augment=basic", *SMALL_SHAPES,
            "trainer.limit_train_images=8", "trainer.max_epochs=2", "trainer.checkpoint_every=1",
            "trainer.num_workers=1", "tracking=none"]


def start_training(folder, shapes_root, *overrides):
    folder.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *SETTINGS, f"dataset.root={shapes_root}",
                             *overrides, f"hydra.run.dir={folder}/run"], cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(path, process, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"training ended before {path} appeared:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_weights(tmp_path, shapes_root):
    (tmp_path / "whole").mkdir()
    whole = run_script("train.py", *SETTINGS, f"dataset.root={shapes_root}", cwd=tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    expected = load_checkpoint(tmp_path / "whole" / "run" / "checkpoints" / "last.pt")

    kill_step = random.Random().randint(1, 7)
    process = start_training(tmp_path / "killed", shapes_root)
    wait_for(tmp_path / "killed" / "run" / "checkpoints" / f"step_{kill_step:08d}.pt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    last = tmp_path / "killed" / "run" / "checkpoints" / "last.pt"
    interrupted = load_checkpoint(last)
    assert interrupted["step"] >= kill_step

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    resumed = run_script("train.py", *SETTINGS, f"dataset.root={shapes_root}", f"ckpt_path={last}", cwd=resumed_dir)
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(resumed_dir / "run" / "checkpoints" / "last.pt")
    assert final["step"] == expected["step"] == 8
    mismatched = [key for key in expected["model"] if not torch.equal(expected["model"][key], final["model"][key])]
    assert not mismatched, f"killed after step {interrupted['step']}: {mismatched[:5]} differ"
    assert final["metrics"] == expected["metrics"]


def test_sigterm_checkpoints_ends_the_run_killed_and_says_how_to_resume(tmp_path, shapes_root):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    process = start_training(tmp_path / "run_dir", shapes_root, "tracking=mlflow", f"tracking.uri={store}")
    wait_for(tmp_path / "run_dir" / "run" / "checkpoints" / "step_00000002.pt", process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "resume with python train.py ckpt_path=" in output
    checkpoint = load_checkpoint(tmp_path / "run_dir" / "run" / "checkpoints" / "last.pt")
    assert checkpoint["step"] >= 2 and checkpoint["epoch"] in (0, 1)
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.info.status for run in runs] == ["KILLED"]


@pytest.mark.faults
def test_a_tracking_server_that_dies_mid_run_is_reported_once_and_training_goes_on(tmp_path, shapes_root,
                                                                                    mlflow_server):
    uri, server = mlflow_server
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *SETTINGS, f"dataset.root={shapes_root}", "tracking=mlflow",
         f"tracking.uri={uri}", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    wait_for(tmp_path / "run" / "checkpoints" / "step_00000002.pt", process)
    os.killpg(server.pid, signal.SIGKILL)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 8  # no step lost
    assert output.count("lost the MLflow tracking store") == 1
    assert "is incomplete:" in output and "metric values" in output
