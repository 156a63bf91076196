"""The one inference loop evaluation and prediction share (`infer`), and a model's metrics over a loader,
scored by an evaluator across all ranks (`evaluate`)."""

import logging
import time
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn
from tqdm import tqdm

from detection.engine.device import to_device
from detection.engine.distributed import gather_to_all
from detection.engine.precision import EVALUATION, Precision
from detection.evaluation import DetectionEvaluator

log = logging.getLogger(__name__)


def synchronised(device: torch.device) -> float:
    """The time once `device` has done its queued work (for timing; on the CPU there is nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def infer(model: nn.Module, batches: Iterable[tuple[list[torch.Tensor], Any]],
          on_batch: Callable[[list[dict[str, torch.Tensor]], Any, float], None], *, device: torch.device,
          precision: Precision = EVALUATION, timed: bool = False, progress: bool = True, desc: str = "infer",
          total: Optional[int] = None) -> None:
    """Runs the model in eval mode over `batches` of (images uint8 [3, H, W], what the consumer needs of
    the batch) and hands each batch's predictions (fp32; 'boxes' xyxy in each image's pixels, 'labels',
    'scores'(, 'masks'), on the device) to `on_batch(predictions, rest, seconds)`. `seconds` is the model
    call's time with the device synchronised around it, only when `timed` (0 otherwise: evaluation does not
    wait on the device). A batch without images is handed on with no predictions."""
    model.eval()
    for images, rest in tqdm(batches, total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        predictions, seconds = [], 0.0
        if images:
            images, _ = to_device(images, [], device)
            start = synchronised(device) if timed else 0.0
            with precision.autocast(device):
                predictions = model(images)
            seconds = synchronised(device) - start if timed else 0.0
            predictions = [{key: value.float() if value.is_floating_point() else value for key, value in p.items()}
                           for p in predictions]
        on_batch(predictions, rest, seconds)


def evaluate(model: nn.Module, loader: Iterable, evaluator: DetectionEvaluator, *, device: torch.device,
             precision: Precision = EVALUATION, progress: bool = True, desc: str = "validate") -> dict[str, float]:
    """Runs the model over `loader` (this rank's share of the split: (images, targets, skipped) batches)
    and returns the evaluator's metrics over the whole split (`map`, `ap/<class>`, ...; see
    DetectionEvaluator) and `skipped_samples`: the records of all ranks are gathered in image_id order, so
    every rank gets exactly the metrics of a single-process evaluation. `desc`: the progress bar's label."""
    evaluator.reset()
    skipped = 0

    def batches():
        nonlocal skipped
        for images, targets, skipped_in_batch in loader:
            skipped += skipped_in_batch
            yield images, targets

    infer(model, batches(), lambda predictions, targets, _: evaluator.update(predictions, targets), device=device,
          precision=precision, progress=progress, desc=desc,
          total=len(loader) if hasattr(loader, "__len__") else None)
    evaluator.synchronize(gather_to_all)
    skipped = sum(gather_to_all([skipped]))
    if skipped:
        log.warning("validation skipped %d unreadable samples (dataset.on_bad_sample=skip)", skipped)
    return {**evaluator.compute(), "skipped_samples": float(skipped)}
