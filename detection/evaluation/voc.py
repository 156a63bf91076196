"""PASCAL VOC average precision, computed as the official devkit does."""

import numpy as np


def voc_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box float [4] with float [G, 4] in the devkit's pixel-inclusive convention (+1 on
    widths and heights), so that numbers match published VOC tables."""
    inter_w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + 1.0, 0, None)
    inter_h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + 1.0, 0, None)
    inter = inter_w * inter_h
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    areas = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    return inter / (area + areas - inter)


def average_precision(recall: np.ndarray, precision: np.ndarray, *, eleven_point: bool) -> float:
    """VOC2007's 11-point interpolated AP, or (VOC2010+) the area under the monotone precision envelope."""
    if eleven_point:
        return float(np.mean([precision[recall >= t].max(initial=0.0) for t in np.linspace(0, 1, 11)]))
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def match_detections(det_images: np.ndarray, det_scores: np.ndarray, det_boxes: np.ndarray,
                     gt_per_image: dict[int, tuple[np.ndarray, np.ndarray]],
                     iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Marks one class's detections, in descending score order, as true or false positives.

    A detection is a true positive when its best-IoU ground truth (IoU > threshold) is not difficult
    and not matched yet; a match to a difficult object is neither true nor false positive.

    Args:
        det_images: int [D] image index per detection; det_scores float [D]; det_boxes float [D, 4] xyxy.
        gt_per_image: image index -> (boxes float [G, 4], difficult bool [G]) of this class.
    Returns:
        true_positive and false_positive, float [D] each, in descending score order.
    """
    order = np.argsort(-det_scores, kind="stable")
    true_positive = np.zeros(len(order))
    false_positive = np.zeros(len(order))
    matched = {image: np.zeros(len(boxes), dtype=bool) for image, (boxes, _) in gt_per_image.items()}
    for rank, det in enumerate(order):
        gt = gt_per_image.get(int(det_images[det]))
        if gt is None or len(gt[0]) == 0:
            false_positive[rank] = 1
            continue
        boxes, difficult = gt
        ious = voc_iou(det_boxes[det], boxes)
        best = int(ious.argmax())
        if ious[best] <= iou_threshold:
            false_positive[rank] = 1
        elif difficult[best]:
            continue
        elif not matched[int(det_images[det])][best]:
            true_positive[rank] = 1
            matched[int(det_images[det])][best] = True
        else:
            false_positive[rank] = 1
    return true_positive, false_positive
