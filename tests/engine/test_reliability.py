"""Nothing lost: a run killed at any step resumes to the weights of the uninterrupted run; SIGTERM, to the
process or its whole group, ends cleanly with a checkpoint and a KILLED MLflow run; the printed resume
command continues the run exactly; one process resumes a checkpoint at a time; a failed write says why."""

import os
import random
import re
import resource
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
import torch

from conftest import REPO, SMALL_SHAPES, run_script, scores, serve_mlflow, stop_server
from detection.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

# 2 epochs of 4 steps, a checkpoint every step, augmentation on and a loader worker: everything that could
# make a resumed run differ is in play
SETTINGS = ["debug=smoke", "backbone=resnet18", "anchors=shapes128", "augment=ssd", *SMALL_SHAPES,
            "trainer.limit_train_images=8", "trainer.max_epochs=2", "trainer.checkpoint_every=1",
            "trainer.keep_last=8", "trainer.num_workers=1", "tracking=none"]  # every step's file kept to wait for


def start_training(folder, shapes_root, *overrides, start_new_session=False):
    folder.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *SETTINGS, f"dataset.root={shapes_root}",
                             *overrides, f"hydra.run.dir={folder}/run"], cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=start_new_session)


def wait_for(path, process, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"training ended before {path} appeared:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shapes_root):
    """The last checkpoint of the run that nothing interrupts."""
    folder = tmp_path_factory.mktemp("whole")
    whole = run_script("train.py", *SETTINGS, f"dataset.root={shapes_root}", cwd=folder)
    assert whole.returncode == 0, whole.stderr
    return load_checkpoint(folder / "run" / "checkpoints" / "last.pt")


def assert_same_run(final, expected, note=""):
    assert final["step"] == expected["step"] == 8
    mismatched = [key for key in expected["model"] if not torch.equal(expected["model"][key], final["model"][key])]
    assert not mismatched, f"{note}: {mismatched[:5]} differ"
    np.testing.assert_equal(scores(final["metrics"]), scores(expected["metrics"]))  # nan (nothing to measure) too


def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_weights(tmp_path, shapes_root, uninterrupted):
    # from step 2: a kill between step_00000001.pt and the first last.pt leaves nothing to resume, rightly
    kill_step = random.Random().randint(2, 7)
    process = start_training(tmp_path / "killed", shapes_root)
    wait_for(tmp_path / "killed" / "run" / "checkpoints" / f"step_{kill_step:08d}.pt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    last = tmp_path / "killed" / "run" / "checkpoints" / "last.pt"
    interrupted = load_checkpoint(last)
    assert interrupted["step"] >= kill_step - 1  # killed between step_<k>.pt and re-pointing last.pt: k - 1

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    resumed = run_script("train.py", *SETTINGS, f"dataset.root={shapes_root}", f"ckpt_path={last}", cwd=resumed_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(load_checkpoint(resumed_dir / "run" / "checkpoints" / "last.pt"), uninterrupted,
                    f"killed after step {interrupted['step']}")


def test_sigterm_to_the_process_group_checkpoints_and_the_printed_command_resumes_exactly(
        tmp_path, shapes_root, uninterrupted):
    """SIGTERM to the whole group, as `timeout`, SLURM and Kubernetes send it, reaches the 2 loader workers
    too; the run still checkpoints, ends KILLED and exits 143. The command it prints, run as printed (no
    settings repeated), continues in the same MLflow run to the end the run was configured for."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    process = start_training(tmp_path / "run_dir", shapes_root, "trainer.num_workers=2", "tracking=mlflow",
                             f"tracking.uri={store}", "tracking.system_metrics=false", start_new_session=True)
    wait_for(tmp_path / "run_dir" / "run" / "checkpoints" / "step_00000002.pt", process)
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "DataLoader worker" not in output
    client = mlflow.MlflowClient(store)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED"

    # pasted as printed, from another folder, in a shell whose PATH has no python of this environment
    command = re.search(r"resume with (.+)$", output, re.M).group(1)
    resumed = subprocess.run(["bash", "-c", f"{command} hydra.run.dir={tmp_path}/resumed"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt"), uninterrupted)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # one value per step, none twice


def test_one_checkpoint_is_resumed_by_one_process_at_a_time(tmp_path, shapes_root):
    first = start_training(tmp_path / "first", shapes_root, "trainer.max_epochs=1")
    first.communicate(timeout=300)
    checkpoint = tmp_path / "first" / "run" / "checkpoints" / "step_00000002.pt"
    more = ["trainer.max_epochs=8", f"ckpt_path={checkpoint}"]
    resuming = start_training(tmp_path / "resume_a", shapes_root, *more)
    wait_for(tmp_path / "resume_a" / "run" / "checkpoints" / ".lock", resuming)
    (tmp_path / "resume_b").mkdir()
    second = run_script("train.py", *SETTINGS, f"dataset.root={shapes_root}", *more, cwd=tmp_path / "resume_b")
    resuming.send_signal(signal.SIGTERM)
    resuming.communicate(timeout=300)
    assert resuming.returncode == 128 + signal.SIGTERM  # it was still training when the second was refused
    assert second.returncode != 0
    assert f"{checkpoint.parent} is in use by another training process (pid {resuming.pid}" in second.stdout + second.stderr


def test_a_finished_run_resumed_says_so_and_trains_only_when_max_epochs_is_raised(tmp_path, shapes_root,
                                                                                   uninterrupted):
    finished = tmp_path / "finished.pt"
    torch.save(uninterrupted, finished)
    again = run_script("train.py", f"ckpt_path={finished}", cwd=tmp_path)
    assert again.returncode == 0 and "ends a finished run: epoch 2 of trainer.max_epochs=2" in again.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()
    longer = run_script("train.py", f"ckpt_path={finished}", "trainer.max_epochs=3", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 12


@pytest.mark.faults
def test_a_checkpoint_that_cannot_be_written_stops_the_run_naming_path_cause_and_last_good(tmp_path, shapes_root):
    """A real write error from the kernel: the file-size limit (EFBIG) below a checkpoint's size."""
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 20, 20 << 20))

    result = subprocess.run([sys.executable, str(REPO / "train.py"), *SETTINGS, f"dataset.root={shapes_root}",
                             f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size)
    assert result.returncode != 0
    path = tmp_path / "run" / "checkpoints" / "step_00000001.pt"
    assert f"could not write checkpoint {path}: OSError: [Errno 27] File too large" in result.stderr
    assert "the run stops, no checkpoint was written" in result.stderr
    assert not list(path.parent.glob(".step_*"))  # no partial file left


@pytest.mark.faults
def test_a_tracking_server_that_dies_mid_run_ends_the_process_in_seconds_and_the_spool_replays_it_whole(
        tmp_path, shapes_root, mlflow_server):
    uri, server = mlflow_server
    # MLflow's own retries left at their defaults (minutes per call): the run must not wait on them
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *SETTINGS, f"dataset.root={shapes_root}", "tracking=mlflow",
         f"tracking.uri={uri}", "tracking.system_metrics_interval=1", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(tmp_path / "run" / "checkpoints" / "step_00000002.pt", process)
    stop_server(server)
    killed = time.monotonic()
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    assert time.monotonic() - killed < 30, output  # the rest of training included
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 8  # no step lost
    spool = tmp_path / "run" / "tracking_spool.jsonl"
    assert output.count("did not take a record") == 1 and "not logging the model to MLflow" in output
    assert "is incomplete" in output and f"{sys.executable} -m detection.tracking {spool}" in output, output
    # the store back (same port, same database): the printed command sends what it missed, in order
    server = serve_mlflow(tmp_path, int(uri.rsplit(":", 1)[1]))
    try:
        replay = subprocess.run([sys.executable, "-m", "detection.tracking", str(spool)], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0 and "records sent" in replay.stdout, replay.stderr
        client = mlflow.MlflowClient(uri)
        [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert run.info.status == "FINISHED" and not spool.exists()
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 9))
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/map")] == [4, 8]
    finally:
        stop_server(server)
