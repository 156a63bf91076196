"""Collects predictions and ground truth over a split and computes detection metrics."""

from typing import Any, Callable, Sequence

import numpy as np
import torch

from detection.evaluation.voc import average_precision, match_detections

METRICS = ("voc07", "voc")


class DetectionEvaluator:
    """VOC metrics over a whole split.

    Args:
        class_names: foreground classes; label k is class_names[k - 1].
        metrics: any of 'voc07' (11-point AP at IoU 0.5, VOC2007 test) and 'voc' (area under the
            precision envelope, VOC2010+).

    `compute()` returns a flat dict: '<metric>_map' and '<metric>_ap/<class>' per metric; the mean is
    over classes that have ground truth.
    """

    def __init__(self, *, class_names: Sequence[str], metrics: Sequence[str] = METRICS):
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {list(METRICS)}")
        self.class_names = tuple(class_names)
        self.metrics = tuple(metrics)
        self.reset()

    def reset(self) -> None:
        self._image_ids: list[int] = []
        self._predictions: list[dict[str, np.ndarray]] = []
        self._targets: list[dict[str, np.ndarray]] = []

    def update(self, predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> None:
        """predictions: 'boxes' float [K, 4] xyxy pixels, 'labels' int64 [K], 'scores' float [K];
        targets: 'boxes' float [N, 4], 'labels' int64 [N], optionally 'difficult' bool [N] and 'image_id'.
        Only what the metrics read is kept (no masks, no images)."""
        for prediction, target in zip(predictions, targets, strict=True):
            self._image_ids.append(int(target.get("image_id", len(self._image_ids))))
            self._predictions.append({key: prediction[key].detach().cpu().numpy() for key in ("boxes", "labels", "scores")})
            difficult = target.get("difficult", torch.zeros(len(target["labels"]), dtype=torch.bool))
            self._targets.append({"boxes": target["boxes"].cpu().numpy(), "labels": target["labels"].cpu().numpy(),
                                  "difficult": difficult.cpu().numpy().astype(bool)})

    def synchronize(self, gather: Callable[[list[Any]], list[Any]]) -> None:
        """Replaces this process's records with those `gather` collects from every process (data
        parallelism), in image_id order, so every process computes the single-process metrics."""
        records = sorted(gather(list(zip(self._image_ids, self._predictions, self._targets))), key=lambda r: r[0])
        self._image_ids = [image_id for image_id, _, _ in records]
        self._predictions = [prediction for _, prediction, _ in records]
        self._targets = [target for _, _, target in records]

    def compute(self) -> dict[str, float]:
        results: dict[str, float] = {}
        aps: dict[str, list[float]] = {metric: [] for metric in self.metrics}
        for label, name in enumerate(self.class_names, start=1):
            curve = self._precision_recall(label)
            if curve is None:
                continue
            recall, precision = curve
            for metric in self.metrics:
                ap = average_precision(recall, precision, eleven_point=metric == "voc07")
                results[f"{metric}_ap/{name}"] = ap
                aps[metric].append(ap)
        for metric in self.metrics:
            results[f"{metric}_map"] = float(np.mean(aps[metric])) if aps[metric] else 0.0
        return results

    def _precision_recall(self, label: int):
        """Recall and precision float [D] of one class over the split, or None without ground truth."""
        gt_per_image, num_positives = {}, 0
        det_images, det_scores, det_boxes = [], [], []
        for image, (prediction, target) in enumerate(zip(self._predictions, self._targets)):
            mine = target["labels"] == label
            if mine.any():
                gt_per_image[image] = (target["boxes"][mine], target["difficult"][mine])
                num_positives += int((~target["difficult"][mine]).sum())
            detected = prediction["labels"] == label
            det_images.append(np.full(int(detected.sum()), image))
            det_scores.append(prediction["scores"][detected])
            det_boxes.append(prediction["boxes"][detected].reshape(-1, 4))
        if num_positives == 0:
            return None
        true_positive, false_positive = match_detections(np.concatenate(det_images), np.concatenate(det_scores),
                                                         np.concatenate(det_boxes), gt_per_image)
        true_positive, false_positive = np.cumsum(true_positive), np.cumsum(false_positive)
        recall = true_positive / num_positives
        precision = true_positive / np.maximum(true_positive + false_positive, np.finfo(np.float64).eps)
        return recall, precision
