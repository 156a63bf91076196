"""The training loop: skipped non-finite steps, the stop after too many, checkpoints and resume state."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra.utils import instantiate

from conftest import REPO, SMALL_SHAPES
from detection.data.loader import build_loader
from detection.engine.checkpoint import load_checkpoint, save_checkpoint
from detection.engine.hooks import Checkpoints, Hook, MetricLogger, Validation
from detection.engine.loop import TrainingInterrupted, fit
from detection.engine.precision import FP32, Precision
from detection.engine.settings import TrainerSettings
from detection.engine.state import NonFiniteLossError, TrainingState
from detection.engine.step import TrainStep
from detection.evaluation import DetectionEvaluator
from detection.tracking import NullTracker
from detection.cli.assembly import build_model


class PoisonedLosses(torch.nn.Module):
    """A real SSD whose training loss becomes NaN on the steps listed."""

    def __init__(self, model, nan_steps):
        super().__init__()
        self.model, self.nan_steps, self.calls = model, set(nan_steps), 0

    def forward(self, images, targets=None):
        output = self.model(images, targets)
        if self.training:
            self.calls += 1
            if self.calls in self.nan_steps:
                output = {k: v * float("nan") for k, v in output.items()}
        return output


def setup(compose_train, tmp_path, nan_steps, max_in_row=10):
    cfg = compose_train("backbone=resnet18", "anchors=shapes128", "debug=smoke", *SMALL_SHAPES)
    model = PoisonedLosses(build_model(cfg), nan_steps)
    train_set = instantiate(cfg.dataset.train)
    loader = build_loader(train_set, batch_size=2, shuffle=True, num_workers=0, seed=0,
                          augmentation=train_set.transforms)
    val = build_loader(instantiate(cfg.dataset.val), batch_size=2, shuffle=False, num_workers=0, seed=0)
    return dict(model=model, loader=loader, val_loader=val, classes=list(cfg.dataset.classes), folder=tmp_path,
                settings=TrainerSettings(max_epochs=1, progress=False, max_nonfinite_in_row=max_in_row))


def run_fit(model, loader, val_loader, classes, folder, settings, *, precision=FP32, every=None, keep_last=1,
            extras=None):
    """fit() as train.py assembles it, with a null tracker."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    device = torch.device("cpu")
    state = TrainingState(TrainStep(model, optimizer, scheduler, device=device, precision=precision), extras=extras)
    hooks = [MetricLogger(NullTracker(), every=settings.log_every),
             Validation(val_loader, DetectionEvaluator(class_names=classes), NullTracker(), device=device,
                        progress=False)]
    return fit(state, loader, settings, hooks=hooks, checkpoints=Checkpoints(folder, every=every, keep_last=keep_last))


@pytest.mark.faults
def test_non_finite_losses_skip_their_step(compose_train, tmp_path):
    args = setup(compose_train, tmp_path, nan_steps=[2])
    before = [p.detach().clone() for p in args["model"].parameters()]
    run_fit(**args)
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["step"] == 3  # 8 images in batches of 2: 4 batches, one skipped
    assert all(torch.isfinite(p).all() for p in args["model"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, args["model"].parameters()))


@pytest.mark.faults
def test_too_many_non_finite_losses_in_a_row_stop_the_run(compose_train, tmp_path):
    args = setup(compose_train, tmp_path, nan_steps=[1, 2, 3], max_in_row=2)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        run_fit(**args)


def test_checkpoint_holds_everything_to_resume_and_loads_without_code(compose_train, tmp_path):
    args = setup(compose_train, tmp_path, nan_steps=[])
    run_fit(**args, extras={"config": {"seed": 0}, "class_names": ["a"]})
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "batches_done", "step", "rng", "config",
            "class_names", "best_map", "metrics"} <= set(checkpoint)
    assert checkpoint["epoch"] == 1 and checkpoint["batches_done"] == 0 and (tmp_path / "best.pt").is_file()


def test_only_the_newest_step_checkpoints_are_kept_beside_last_and_best(compose_train, tmp_path):
    args = setup(compose_train, tmp_path, nan_steps=[])
    run_fit(**{**args, "settings": TrainerSettings(max_epochs=2, progress=False)}, every=1, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "step_00000007.pt", "step_00000008.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert load_checkpoint(tmp_path / "best.pt")["step"] in (4, 8)  # an epoch end


class SignalAtStep(torch.nn.Module):
    """A real SSD that sends this process SIGTERM during training step `at_step`."""

    def __init__(self, model, at_step):
        super().__init__()
        self.model, self.at_step, self.calls = model, at_step, 0

    def forward(self, images, targets=None):
        if self.training:
            self.calls += 1
            if self.calls == self.at_step:
                os.kill(os.getpid(), signal.SIGTERM)
        return self.model(images, targets)


def test_sigterm_finishes_the_step_checkpoints_and_stops(compose_train, tmp_path):
    args = setup(compose_train, tmp_path, nan_steps=[])
    args["model"] = SignalAtStep(args["model"].model, at_step=2)
    with pytest.raises(TrainingInterrupted, match=f"SIGTERM.*ckpt_path={tmp_path / 'step_00000002.pt'}"):
        run_fit(**args)
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["step"] == 2 and checkpoint["batches_done"] == 2 and checkpoint["epoch"] == 0
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone after fit


@pytest.mark.faults
def test_atomic_write_leaves_the_previous_checkpoint_when_saving_fails(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.faults
def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"checkpoint {path} is truncated, corrupt or not a checkpoint"):
        load_checkpoint(path)


def test_bf16_autocast_trains_with_finite_weights(compose_train, tmp_path):
    args = setup(compose_train, tmp_path, nan_steps=[])
    run_fit(**args, precision=Precision(torch.bfloat16, "test"))
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4
    assert all(torch.isfinite(p).all() for p in args["model"].parameters())


class RecordingMetrics(NullTracker):
    def __init__(self):
        super().__init__()
        self.logged = []

    def log_metrics(self, metrics, step):
        self.logged.append(dict(metrics))


class SlowBatches:
    """A training loader whose every batch takes `delay` seconds to arrive."""

    def __init__(self, loader, delay):
        self.loader, self.delay = loader, delay

    def epoch(self, epoch, *, skip_batches=0):
        self.loader.epoch(epoch, skip_batches=skip_batches)
        return self

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.delay)
            yield batch


def test_the_loop_measures_and_warns_once_when_it_waits_for_data(compose_train, tmp_path, caplog):
    args = setup(compose_train, tmp_path, nan_steps=[])
    optimizer = torch.optim.SGD(args["model"].parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = TrainingState(TrainStep(args["model"], optimizer, scheduler, device=torch.device("cpu"), precision=FP32))
    tracker = RecordingMetrics()
    settings = TrainerSettings(max_epochs=2, progress=False, log_every=1)
    with caplog.at_level(logging.WARNING):
        fit(state, SlowBatches(args["loader"], delay=1.0), settings,
            hooks=[MetricLogger(tracker, every=1, warn_data_wait=0.2)], checkpoints=Checkpoints(tmp_path))
    waits = [m["train/data_wait_fraction"] for m in tracker.logged if "train/data_wait_fraction" in m]
    assert len(waits) == 8 and all(0.2 < wait < 1 for wait in waits)  # a step of the small SSD takes under 4 s
    assert state.data_wait_s >= 8.0
    warnings = [r.getMessage() for r in caplog.records if "waited for data" in r.getMessage()]
    assert len(warnings) == 1 and "trainer.num_workers" in warnings[0]


def test_a_printed_resume_command_pastes_safely_whatever_the_folder_is_called(tmp_path):
    checkpoint = tmp_path / "my runs" / "$(touch pwned)" / "last.pt"
    message = str(TrainingInterrupted(signal.SIGTERM, checkpoint))
    command = message.split("resume with ", 1)[1]
    assert command.startswith(f"{sys.executable} {REPO / 'train.py'} ")
    echoed = subprocess.run(["bash", "-c", command.replace(f"{sys.executable} {REPO / 'train.py'}", "printf %s", 1)],
                            cwd=tmp_path,
                            capture_output=True, text=True)
    assert echoed.stdout == f"ckpt_path={checkpoint}" and not (tmp_path / "pwned").exists()


class StopAfter(Hook):
    """Asks the loop to stop after epoch `epoch`, as a pruned trial's hook does."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def after_epoch(self, state):
        if state.epoch == self.epoch:
            state.stop_early("planted")


def test_a_hook_ends_training_after_its_epoch_with_the_checkpoint_written(compose_train, tmp_path, caplog):
    args = setup(compose_train, tmp_path, nan_steps=[])
    optimizer = torch.optim.SGD(args["model"].parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = TrainingState(TrainStep(args["model"], optimizer, scheduler, device=torch.device("cpu"), precision=FP32))
    with caplog.at_level(logging.INFO):
        fit(state, args["loader"], TrainerSettings(max_epochs=3, progress=False), hooks=[StopAfter(1)],
            checkpoints=Checkpoints(tmp_path))
    assert state.epoch == 1 and state.stopped_early == "planted"
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1  # the epoch it stopped after, saved
    assert "training stopped after epoch 1 of 3: planted" in caplog.text
