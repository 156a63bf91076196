"""Debug artifacts of a training run: images with ground truth and predictions drawn, every N steps and
at each validation, and at each validation a per-class precision-recall plot and the error plots (TIDE's
dAP per error type, the confusion matrix). Each is written under the
run directory (nothing depends on the tracker being up) and sent to the tracker."""

import contextlib
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from detection.evaluation import DetectionEvaluator, class_aps
from detection.tracking import Tracker
from detection.reporting.drawing import draw_detections, save_image
from detection.reporting.plots import save_error_plots, save_precision_recall_plot

VALIDATION_IMAGES = 8  # validation debug images take turns among this many


class DebugArtifacts:
    """Args:
        folder: the run directory; images go to debug_images/, plots to precision_recall/ and errors/.
        class_names: label k is class_names[k - 1].
        every: steps between training debug images (None: only at validation).
        autocast: the context the loop runs the model in (bf16 / fp16 autocast or none).
    """

    def __init__(self, folder: Path, tracker: Tracker, class_names: Sequence[str], *, every: Optional[int],
                 autocast=None):
        self.folder = folder
        self.tracker = tracker
        self.class_names = list(class_names)
        self.every = every
        self.autocast = autocast

    def training_step(self, model: nn.Module, step: int, image: torch.Tensor, target: dict) -> None:
        """Every `every` steps: the batch's first image as the model now sees it."""
        if self.every and step % self.every == 0:
            self._debug_image(model, image, target, f"train_step_{step:07d}.png")

    def validation(self, model: nn.Module, step: int, epoch: int, dataset: Sequence, evaluator: DetectionEvaluator,
                   metrics: dict[str, float]) -> None:
        """After a validation: a validation image (the epoch's turn in a fixed, seeded set of them; none
        when it is unreadable), the PR curves and the error plots."""
        index = self.validation_image(epoch, len(dataset))
        sample = dataset[index] if index is not None else None
        if sample is not None:
            self._debug_image(model, *sample, f"val_step_{step:07d}_image_{index:05d}.png")
        path = save_precision_recall_plot(evaluator.precision_recall(), class_aps(metrics, self.class_names),
                                          self.folder / "precision_recall" / f"step_{step:07d}.png",
                                          class_names=self.class_names,
                                          title=f"precision-recall at IoU 0.5, epoch {epoch} (step {step})")
        self.tracker.log_artifact(path, artifact_path="precision_recall")
        if path.with_suffix(".classes.txt").is_file():  # the classes the font could not draw by name
            self.tracker.log_artifact(path.with_suffix(".classes.txt"), artifact_path="precision_recall")
        if "errors" in evaluator.metrics:
            for path in save_error_plots(evaluator.error_breakdown(), self.folder / "errors" / f"step_{step:07d}",
                                         title=f"epoch {epoch} (step {step})"):
                self.tracker.log_artifact(path, artifact_path=f"errors/step_{step:07d}")

    @staticmethod
    def validation_image(epoch: int, size: int) -> Optional[int]:
        """The validation image drawn after `epoch` (1, 2, ...): the same VALIDATION_IMAGES images of the
        split, chosen with a fixed seed, in turn; None for an empty split."""
        if size == 0:
            return None
        chosen = torch.randperm(size, generator=torch.Generator().manual_seed(0))[:VALIDATION_IMAGES]
        return int(chosen[(epoch - 1) % len(chosen)])

    @torch.no_grad()
    def _debug_image(self, model: nn.Module, image: torch.Tensor, target: dict, name: str) -> None:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with self.autocast() if self.autocast else contextlib.nullcontext():
            prediction = model([image.to(device)])[0]
        model.train(was_training)
        prediction = {key: value.float() if value.is_floating_point() else value for key, value in prediction.items()}
        drawn = draw_detections(image, target, prediction, self.class_names)
        self.tracker.log_artifact(save_image(drawn, self.folder / "debug_images" / name), artifact_path="debug_images")
