"""One training step, the same in the loop and in bench/train_step.py: autocast forward, the losses, one
check agreed by every rank (the step's one read back to the host), backward, clipping, the optimiser and
the scheduler. And the network's preparation for speed: channels_last, torch.compile, cudnn autotuning,
data parallelism."""

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detection.engine.device import to_device
from detection.engine.distributed import DistributedContext, agreed
from detection.engine.precision import FP32, Precision

log = logging.getLogger(__name__)


@dataclass
class StepOutcome:
    """What one step did. `losses`: detached, on the device (empty when this rank had no images)."""

    losses: dict[str, torch.Tensor]
    images: int  # on this rank
    applied: bool  # the update was made
    empty: bool  # some rank's batch had no images (every sample unreadable): no update
    nonfinite: bool  # some rank's loss was not finite: no update
    stop: bool  # some rank was asked to stop (a signal)


class TrainStep:
    """Trains `network` (the model, or its DDP / compiled wrapper) one batch at a time.

    Args:
        model: the module whose state is saved; `network` runs it (default: the model itself).
        precision: the autocast dtype; fp16 brings a GradScaler on CUDA.
        grad_clip: max gradient norm, or None.
        augment: the batch's augmentation on the device, called as augment(images, targets, device) on the
            loader's batch (a DeviceSSDAugmentation), or None.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, *, device: torch.device,
                 precision: Precision = FP32, grad_clip: Optional[float] = None, network: Optional[nn.Module] = None,
                 augment: Optional[Callable] = None):
        self.model = model
        self.network = network or model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.precision = precision
        self.grad_clip = grad_clip
        self.augment = augment
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision.needs_grad_scaler and device.type == "cuda")

    def on_device(self, images: list[torch.Tensor], targets: list[dict]) -> tuple[list[torch.Tensor], list[dict]]:
        """A batch from the loader on the step's device, augmented there when the step has `augment`."""
        if self.augment is not None:
            return self.augment(images, targets, self.device)
        return to_device(images, targets, self.device)

    def __call__(self, images: list[torch.Tensor], targets: list[dict], *,
                 stop_requested: Callable[[], bool] = lambda: False) -> StepOutcome:
        """One step on a batch (images [3, H, W], uint8 or float in [0, 1]; targets with xyxy pixel boxes and
        int64 labels) on any device; skipped by every rank when some rank has no images or a non-finite loss.
        `stop_requested` is asked after the forward pass, and its answer agreed with the other ranks'."""
        images, targets = to_device(images, targets, self.device)
        self.network.train()
        flags = torch.ones(3, dtype=torch.int32, device=self.device)  # has images, finite loss, go on
        losses, loss = {}, None
        if images:
            with self.precision.autocast(self.device):
                losses = self.network(images, targets)
            loss = sum(losses.values())
            flags[1] = torch.isfinite(loss)
        else:
            flags[0] = 0
        if stop_requested():
            flags[2] = 0
        has_images, finite, go_on = agreed(flags)  # the step's one read back to the host
        self.optimizer.zero_grad(set_to_none=True)
        if has_images and finite:
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        return StepOutcome({name: value.detach() for name, value in losses.items()}, len(images),
                           applied=has_images and finite, empty=not has_images, nonfinite=has_images and not finite,
                           stop=not go_on)


def network_parts(model: nn.Module) -> list[nn.Module]:
    """The modules that are the network proper, what torch.compile takes: an SSD's features and head, an
    R-CNN's backbone (the rest, matching and NMS, has data-dependent shapes)."""
    return [part for name in ("features", "head", "backbone")
            if isinstance(part := getattr(model, name, None), nn.Module)]


def compiler_problem(device: torch.device) -> Optional[str]:
    """Why torch.compile cannot run on `device` here (a tiny function compiled and run), or None."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(4, device=device))
    except Exception as error:  # no C++ compiler, no Triton, an unsupported Python: all end up here
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return None


def prepare_network(model: nn.Module, *, device: torch.device, channels_last: bool = False, compile: bool = False,
                    cudnn_benchmark: bool = True, context: DistributedContext = DistributedContext(),
                    sync_batchnorm: bool = False) -> tuple[nn.Module, nn.Module]:
    """Moves `model` to `device` and readies it for speed. `compile` falls back to eager mode, with a
    warning naming the cause, where the platform has no compiler.

    Returns:
        the model (whose state is saved) and the network that runs it (DDP-wrapped under several ranks).
    """
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
    if compile:
        problem = compiler_problem(device)
        if problem:
            log.warning("trainer.compile=true, but torch.compile cannot run on %s here (%s): training without "
                        "compiling", device, problem)
        else:
            for part in network_parts(model):
                part.compile()
    if not context.enabled:
        return model, model
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, DistributedDataParallel(model, device_ids=[context.local_rank] if device.type == "cuda" else None)
