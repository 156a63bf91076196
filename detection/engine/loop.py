"""The training loop: plain PyTorch, the same for every detector with torchvision's contract."""

import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from detection.engine.artifacts import DebugArtifacts
from detection.engine.checkpoint import CheckpointKeeper, rng_state, set_rng_state
from detection.engine.distributed import DistributedContext, all_ranks_agree, gather_to_all
from detection.engine.precision import FP32, Precision
from detection.evaluation import DetectionEvaluator
from detection.tracking import Tracker

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_device(images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device):
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return images, targets


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, evaluator: DetectionEvaluator, *, device: torch.device,
             precision: Precision = FP32, progress: bool = True) -> dict[str, float]:
    """Runs the model in eval mode over `loader` (this rank's share of the split) and returns the
    evaluator's metrics over the whole split: the records of all ranks are gathered in image_id order,
    so every rank gets exactly the metrics of a single-process evaluation."""
    model.eval()
    evaluator.reset()
    skipped = 0
    for images, targets, skipped_in_batch in tqdm(loader, desc="validate", disable=not progress, leave=False,
                                                  dynamic_ncols=True):
        skipped += skipped_in_batch
        if not images:
            continue
        images, _ = to_device(images, [], device)
        with precision.autocast(device):
            predictions = model(images)
        evaluator.update([{k: v.float() if v.is_floating_point() else v for k, v in p.items()} for p in predictions],
                         targets)
    evaluator.synchronize(gather_to_all)
    skipped = sum(gather_to_all([skipped]))
    if skipped:
        log.warning("validation skipped %d unreadable samples (dataset.on_bad_sample=skip)", skipped)
    return {**evaluator.compute(), "skipped_samples": float(skipped)}


def validation_metrics(results: dict[str, float]) -> dict[str, float]:
    """Evaluator results as `val/...` metrics; `val/map` is VOC07 mAP@0.5, `val/ap/<class>` its per-class AP."""
    metrics = {"val/map": results["voc07_map"], "val/map_50": results["voc07_map"]}
    for key, value in results.items():
        if key.startswith("voc07_ap/"):
            metrics[f"val/ap/{key.removeprefix('voc07_ap/')}"] = value
        else:
            metrics[f"val/{key}"] = value
    return metrics


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)  # USR2: SLURM's warning before pre-emption


class TrainingInterrupted(Exception):
    """A stop signal (STOP_SIGNALS) stopped training after a step whose checkpoint was written."""

    def __init__(self, signal_number: int, checkpoint: Path):
        self.signal_number = signal_number
        self.checkpoint = checkpoint
        super().__init__(f"{signal.Signals(signal_number).name} received: stopped after a checkpoint; resume with "
                         f"python train.py ckpt_path={checkpoint}")


class StopOnSignal:
    """Within `with`, the first stop signal (STOP_SIGNALS) only sets `signal_number`, so the loop can finish
    its step and checkpoint; a second SIGINT interrupts at once, as usual. The handlers there were before
    (submitit's, for one) are restored on the way out."""

    def __init__(self):
        self.signal_number: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def _handle(self, number, frame):
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number
        log.warning("%s received: stopping after this step", signal.Signals(number).name)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def fit(*, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: DataLoader, val_loader: Iterable, evaluator: DetectionEvaluator, tracker: Tracker,
        checkpoint_dir: Path, max_epochs: int, device: torch.device, precision: Precision = FP32,
        grad_clip: Optional[float] = None, log_every: int = 10, max_nonfinite_in_row: int = 10,
        checkpoint_every: Optional[int] = None, keep_last: int = 3, progress: bool = True,
        resume: Optional[dict[str, Any]] = None, checkpoint_extras: Optional[Callable[[], dict[str, Any]]] = None,
        context: DistributedContext = DistributedContext(), sync_batchnorm: bool = False,
        artifacts: Optional[DebugArtifacts] = None) -> dict[str, float]:
    """Trains for `max_epochs`, validating each epoch and checkpointing at each epoch end and every
    `checkpoint_every` steps (`step_<n>.pt`, the newest `keep_last` kept; `last.pt`; `best.pt` by val/map).

    A checkpoint holds the model, optimizer, scheduler, scaler, RNG states and the position in the
    epoch, so resuming from any of them continues exactly as the uninterrupted run would have. SIGINT,
    SIGTERM or SIGUSR2 finish the current step, checkpoint and raise TrainingInterrupted.

    Under data parallelism (`context.enabled`) the model is wrapped in DistributedDataParallel, and
    only rank 0 shows progress and writes checkpoints (the caller gives other ranks a NullTracker).

    Args:
        train_loader: from `build_loader(shuffle=True)` (a ResumableSampler over a SeededAugmentation).
        resume: a checkpoint of an earlier run of the same configuration.
        checkpoint_extras: returns what else each checkpoint holds (config, class names, run id).
        sync_batchnorm: with several ranks, BatchNorm statistics over the global batch.
        artifacts: debug images and precision-recall plots (rank 0 only).
    Returns:
        the last validation metrics (`val/map`, ...).
    """
    model.to(device)
    network = model
    if context.enabled:
        if sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        network = DistributedDataParallel(model, device_ids=[context.local_rank] if device.type == "cuda" else None)
    progress = progress and context.is_main
    scaler = torch.amp.GradScaler("cuda", enabled=precision.needs_grad_scaler and device.type == "cuda")
    keeper = CheckpointKeeper(checkpoint_dir, keep_last=keep_last)
    start_epoch, batches_done, step, best_map, metrics = 0, 0, 0, -math.inf, {}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        start_epoch, batches_done, step = resume["epoch"], resume["batches_done"], resume["step"]
        best_map, metrics = resume["best_map"], resume["metrics"]
        set_rng_state(resume["rng"])
        log.info("resumed at epoch %d after %d batches, step %d", start_epoch + 1, batches_done, step)

    def checkpoint(epoch: int, batches: int, is_best: bool = False) -> Path:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                 "batches_done": batches, "step": step, "best_map": best_map, "metrics": metrics,
                 "rng": rng_state(), **(checkpoint_extras() if checkpoint_extras else {})}
        return keeper.save(state, step=step, is_best=is_best) if context.is_main else keeper.last

    nonfinite_in_row = 0
    with StopOnSignal() as stop:
        for epoch in range(start_epoch, max_epochs):
            train_loader.sampler.set_epoch(epoch)
            train_loader.dataset.set_epoch(epoch)
            train_loader.sampler.skip_batches(batches_done)
            network.train()
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{max_epochs}", disable=not progress, dynamic_ncols=True)
            window_start, window_images, skipped = time.perf_counter(), 0, 0
            for images, targets, skipped_in_batch in bar:
                batches_done += 1
                skipped += skipped_in_batch
                if not all_ranks_agree(bool(images), device):
                    continue  # every sample of the batch was skipped (on some rank)
                images, targets = to_device(images, targets, device)
                with precision.autocast(device):
                    loss_dict = network(images, targets)
                loss = sum(loss_dict.values())
                # decided together: a rank that skipped backward alone would leave the others waiting in DDP
                if all_ranks_agree(bool(torch.isfinite(loss)), device):
                    nonfinite_in_row = 0
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step += 1
                    window_images += len(images)
                    if step % log_every == 0:
                        images_per_s = window_images / (time.perf_counter() - window_start)
                        window_start, window_images = time.perf_counter(), 0
                        scalars = {"train/loss": loss.item(), **{f"train/{k}": v.item() for k, v in loss_dict.items()},
                                   "train/lr": optimizer.param_groups[0]["lr"], "train/images_per_s": images_per_s}
                        tracker.log_metrics(scalars, step=step)
                        bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{images_per_s:.1f}")
                    if artifacts is not None:
                        artifacts.training_step(model, step, images[0], targets[0])
                else:
                    nonfinite_in_row += 1
                    log.warning("non-finite loss at step %d (%d in a row): step skipped", step, nonfinite_in_row)
                    tracker.log_metrics({"train/nonfinite_in_row": nonfinite_in_row}, step=step)
                    optimizer.zero_grad(set_to_none=True)
                    if nonfinite_in_row > max_nonfinite_in_row:
                        raise NonFiniteLossError(
                            f"{nonfinite_in_row} non-finite losses in a row at step {step} "
                            f"(trainer.max_nonfinite_in_row={max_nonfinite_in_row}); lower the learning rate or "
                            f"check the data. The last good checkpoint is {keeper.last}")
                if not all_ranks_agree(stop.signal_number is None, device):
                    raise TrainingInterrupted(stop.signal_number or signal.SIGTERM, checkpoint(epoch, batches_done))
                if checkpoint_every and step % checkpoint_every == 0 and nonfinite_in_row == 0:
                    checkpoint(epoch, batches_done)
            batches_done = 0
            skipped = sum(gather_to_all([skipped]))
            if skipped:
                log.warning("epoch %d skipped %d unreadable samples (dataset.on_bad_sample=skip)", epoch + 1, skipped)
                tracker.log_metrics({"train/skipped_samples": skipped}, step=step)
            metrics = validation_metrics(evaluate(model, val_loader, evaluator, device=device, precision=precision,
                                                  progress=progress))
            tracker.log_metrics({**metrics, "epoch": epoch + 1}, step=step)
            if artifacts is not None:
                artifacts.validation(model, step, val_loader.dataset[0], evaluator, metrics)
            log.info("epoch %d/%d: val/map %.4f", epoch + 1, max_epochs, metrics["val/map"])
            is_best = metrics["val/map"] > best_map
            best_map = max(best_map, metrics["val/map"])
            checkpoint(epoch + 1, 0, is_best=is_best)
    return metrics
