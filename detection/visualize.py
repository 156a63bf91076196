"""Pictures of what a detector does: debug images with boxes and masks drawn, precision-recall plots."""

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

GROUND_TRUTH_COLOUR = "lime"
PREDICTION_COLOUR = "red"
MASK_THRESHOLD = 0.5


def draw_detections(image: torch.Tensor, target: dict[str, torch.Tensor], prediction: dict[str, torch.Tensor],
                    class_names: Sequence[str], *, score_threshold: float = 0.3, max_predictions: int = 30,
                    min_side: int = 320) -> torch.Tensor:
    """The image with ground truth (green, class name) and the `max_predictions` best predictions scoring
    at least `score_threshold` (red, class name and score) drawn; predicted masks (Mask R-CNN) overlaid.
    Images with a side under `min_side` are enlarged by a whole factor, so that the labels stay legible.

    Args:
        image: float [3, H, W] in [0, 1]; target 'boxes' [N, 4] xyxy pixels and 'labels' [N];
        prediction: 'boxes', 'labels', 'scores' (descending) and optionally 'masks' float [K, 1, H, W].
    Returns:
        uint8 [3, H * f, W * f], f = max(1, min_side // min(H, W)).
    """
    factor = max(1, min_side // min(image.shape[1:]))
    canvas = (image.detach().cpu().clamp(0, 1) * 255).to(torch.uint8)
    canvas = canvas.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    keep = (prediction["scores"].detach().cpu() >= score_threshold).nonzero().flatten()[:max_predictions]
    boxes = prediction["boxes"].detach().cpu().float()[keep] * factor
    labels = prediction["labels"].detach().cpu()[keep]
    scores = prediction["scores"].detach().cpu()[keep]
    if "masks" in prediction and len(keep):
        masks = prediction["masks"].detach().cpu()[keep][:, 0] > MASK_THRESHOLD
        masks = masks.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.4, colors=PREDICTION_COLOUR)
    if len(target["boxes"]):
        canvas = draw_bounding_boxes(canvas, target["boxes"].detach().cpu().float() * factor,
                                     colors=GROUND_TRUTH_COLOUR,
                                     labels=[class_names[int(label) - 1] for label in target["labels"]])
    if len(boxes):
        canvas = draw_bounding_boxes(canvas, boxes, colors=PREDICTION_COLOUR,
                                     labels=[f"{class_names[int(label) - 1]} {score:.2f}"
                                             for label, score in zip(labels, scores)])
    return canvas


def save_image(image: torch.Tensor, path: Path) -> Path:
    """Writes uint8 [3, H, W] as a PNG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return path


def save_precision_recall_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], aps: dict[str, float],
                               path: Path, *, title: str) -> Path:
    """One precision-recall curve per class (recall, precision arrays as the evaluator ranks detections),
    labelled with its AP, written as a PNG."""
    import matplotlib  # here, not at the top: a second of every start-up, needed only at validation

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    for name, (recall, precision) in curves.items():
        axes.plot(recall, precision, label=f"{name} (AP {aps.get(name, float('nan')):.3f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(loc="lower left", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
