"""A model's predictions over a loader, scored by an evaluator across all ranks."""

import logging
from typing import Iterable

import torch
from torch import nn
from tqdm import tqdm

from detection.engine.device import to_device
from detection.engine.distributed import gather_to_all
from detection.engine.precision import EVALUATION, Precision
from detection.evaluation import DetectionEvaluator

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, evaluator: DetectionEvaluator, *, device: torch.device,
             precision: Precision = EVALUATION, progress: bool = True) -> dict[str, float]:
    """Runs the model in eval mode over `loader` (this rank's share of the split) and returns the
    evaluator's metrics over the whole split (`map`, `ap/<class>`, ...; see DetectionEvaluator) and
    `skipped_samples`: the records of all ranks are gathered in image_id order, so every rank gets exactly
    the metrics of a single-process evaluation."""
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
