"""Data parallelism on the CPU with gloo: 2 ranks match 1 process; sweeps through submitit's local launcher."""

import json
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from conftest import REPO, run_script, scores
from detection.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# VGG16 has no BatchNorm, so 2 ranks of batch 2 must equal 1 process of batch 4 up to float rounding
SETTINGS = ["debug=smoke", "model=ssd", "backbone=vgg16", "anchors=shapes128", "augment=none", "trainer.amp=false",
            "dataset.num_train=8", "dataset.num_val=5", "trainer.limit_train_images=8",
            "trainer.limit_val_images=null", "optimizer.lr=0.01", "tracking=none"]


def test_two_ranks_train_and_evaluate_like_one_process(tmp_path, shapes_root):
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    data = f"dataset.root={shapes_root}"
    result = run_script("train.py", *SETTINGS, data, "trainer.batch_size=4", cwd=single)
    assert result.returncode == 0, result.stderr
    result = run_script("train.py", *SETTINGS, data, "trainer.batch_size=2", cwd=double, launcher=TORCHRUN)
    assert result.returncode == 0, result.stderr
    one = load_checkpoint(single / "run" / "checkpoints" / "last.pt")
    two = load_checkpoint(double / "run" / "checkpoints" / "last.pt")
    assert one["step"] == two["step"] == 2
    for key, weight in one["model"].items():
        assert torch.allclose(weight, two["model"][key], rtol=1e-4, atol=1e-5), key  # summation order only

    # resume under DDP continues at the next epoch and step
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    result = run_script("train.py", *SETTINGS, data, "trainer.batch_size=2", "trainer.max_epochs=2",
                        f"ckpt_path={double / 'run' / 'checkpoints' / 'last.pt'}", cwd=resumed, launcher=TORCHRUN)
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(resumed / "run" / "checkpoints" / "last.pt")["step"] == 4

    # evaluation: 2 ranks split the 5 validation images 3 + 2 and report the single-process metrics
    checkpoint = single / "run" / "checkpoints" / "last.pt"
    metrics = {}
    for name, launcher in (("one", None), ("two", TORCHRUN)):
        folder = tmp_path / f"eval_{name}"
        folder.mkdir()
        result = run_script("evaluate.py", f"ckpt_path={checkpoint}", "tracking=none", cwd=folder, launcher=launcher)
        assert result.returncode == 0, result.stderr
        metrics[name] = json.loads((folder / "run" / "metrics.json").read_text())
    assert scores(metrics["one"]) == scores(metrics["two"])


def test_a_failing_rank_brings_the_job_down_with_its_error(tmp_path, shapes_root):
    # rank 0 gets batch size 0 (an error), rank 1 batch size 1 and goes on to wait for rank 0 in DDP:
    # the job must end with rank 0's error and rank 1 ended, not hang. Rank 0 leaves the process group on
    # its way out, so rank 1 usually fails on the closed connection before torchrun would SIGTERM it.
    result = run_script("train.py", *SETTINGS, f"dataset.root={shapes_root}",
                        "trainer.batch_size='${oc.decode:${oc.env:RANK}}'", cwd=tmp_path, launcher=TORCHRUN, timeout=240)
    output = result.stderr + result.stdout
    assert result.returncode != 0
    assert "trainer.batch_size=0: must be an integer >= 1" in output
    assert "Connection closed by peer" in output or "SIGTERM" in output


def test_sweep_through_the_submitit_local_launcher(tmp_path, shapes_root):
    result = run_script("train.py", "-m", "hydra/launcher=submitit_local", *SETTINGS, f"dataset.root={shapes_root}",
                        "backbone=resnet18", "seed=1,2", cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr
    checkpoints = sorted((tmp_path / "multirun").glob("*/checkpoints/last.pt"))
    assert len(checkpoints) == 2
    seeds = {load_checkpoint(path)["config"]["seed"] for path in checkpoints}
    assert seeds == {1, 2}
    shutil.rmtree(tmp_path / "multirun")


def test_a_submitit_job_of_two_tasks_trains_data_parallel(tmp_path, shapes_root):
    result = run_script("train.py", "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                        *SETTINGS, f"dataset.root={shapes_root}", "trainer.batch_size=2", cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr
    logs = "".join(path.read_text() for path in (tmp_path / "multirun").rglob("*.log"))
    assert "(rank 0 of 2)" in logs and "(rank 1 of 2)" in logs
    # 8 images over 2 ranks of batch 2: 2 steps
    assert load_checkpoint(tmp_path / "multirun" / "0" / "checkpoints" / "last.pt")["step"] == 2


def test_a_preempted_submitit_job_checkpoints_requeues_and_continues_from_its_last_checkpoint(tmp_path, shapes_root):
    """SIGUSR2 to a submitit_local job's task, as SLURM sends it before pre-emption or the time limit (and
    as submitit_local does itself 30 s before its own): the job checkpoints after its step, submitit
    requeues it, and the new attempt continues from last.pt in the same run folder to the configured end."""
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=submitit_local",
                                "hydra.launcher.timeout_min=2", "+hydra.launcher.max_num_timeout=10", *SETTINGS,
                                f"dataset.root={shapes_root}", "backbone=resnet18", "trainer.max_epochs=20",
                                f"hydra.sweep.dir={tmp_path}/multirun"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    first_epoch = tmp_path / "multirun" / "0" / "checkpoints" / "step_00000004.pt"
    deadline = time.monotonic() + 300
    while not first_epoch.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    tasks = [task for task in psutil.process_iter(["cmdline"])
             if "submitit.core._submit" in " ".join(task.info["cmdline"] or []) and str(tmp_path) in " ".join(task.info["cmdline"])]
    assert len(tasks) == 1, process.communicate()[0] if process.poll() is not None else tasks
    tasks[0].send_signal(signal.SIGUSR2)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output
    logs = "".join(path.read_text() for path in (tmp_path / "multirun").rglob("*.log"))
    assert "SIGUSR2 received: stopped after a checkpoint" in logs
    assert "this run continues from it (a requeued job)" in logs
    final = load_checkpoint(tmp_path / "multirun" / "0" / "checkpoints" / "last.pt")
    assert final["epoch"] == 20 and final["step"] == 20 * 4
