"""PASCAL VOC average precision, computed as the official devkit does, vectorised over a whole split."""

import numpy as np

CHUNK = 65536  # detections per IoU block: bounds the [chunk, max objects per image and class] matrix


def voc_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU float [..., G] of boxes float [..., 4] with others float [..., G, 4] in the devkit's
    pixel-inclusive convention (+1 on widths and heights), so that numbers match published VOC tables."""
    boxes = boxes[..., None, :]
    inter_w = np.clip(np.minimum(boxes[..., 2], others[..., 2]) - np.maximum(boxes[..., 0], others[..., 0]) + 1.0, 0, None)
    inter_h = np.clip(np.minimum(boxes[..., 3], others[..., 3]) - np.maximum(boxes[..., 1], others[..., 1]) + 1.0, 0, None)
    inter = inter_w * inter_h
    area = (boxes[..., 2] - boxes[..., 0] + 1.0) * (boxes[..., 3] - boxes[..., 1] + 1.0)
    areas = (others[..., 2] - others[..., 0] + 1.0) * (others[..., 3] - others[..., 1] + 1.0)
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


def best_objects(detections: dict[str, np.ndarray], objects: dict[str, np.ndarray], num_classes: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's best-IoU object of its own image and class (VOC's inclusive-pixel IoU), as int [D]
    indices into `objects` (-1: none there) and float [D] IoUs (0 where none). Arguments as in
    `precision_recall_curves`."""
    # objects grouped by (image, label); each detection looks only at its own group, padded to a matrix
    group_keys = objects["image"].astype(np.int64) * (num_classes + 1) + objects["labels"]
    by_group = np.argsort(group_keys, kind="stable")
    keys, starts, counts = np.unique(group_keys[by_group], return_index=True, return_counts=True)
    width = int(counts.max(initial=1))
    slots = starts[:, None] + np.arange(width)  # [groups, width] positions in by_group
    valid = np.arange(width) < counts[:, None]
    padded_boxes = objects["boxes"][by_group][np.minimum(slots, len(by_group) - 1)] if len(by_group) else \
        np.zeros((0, width, 4))

    det_keys = detections["image"].astype(np.int64) * (num_classes + 1) + detections["labels"]
    group = np.searchsorted(keys, det_keys)
    has_group = (group < len(keys)) & (keys[np.minimum(group, len(keys) - 1)] == det_keys) if len(keys) else \
        np.zeros(len(det_keys), dtype=bool)
    best_object = np.full(len(det_keys), -1)
    best_iou = np.zeros(len(det_keys))
    for start in range(0, len(det_keys), CHUNK):
        chunk = np.flatnonzero(has_group[start:start + CHUNK]) + start
        ious = np.where(valid[group[chunk]], voc_iou(detections["boxes"][chunk].astype(np.float64),
                                                     padded_boxes[group[chunk]]), -np.inf)
        best = ious.argmax(axis=1)
        best_iou[chunk] = ious[np.arange(len(chunk)), best]
        best_object[chunk] = by_group[slots[group[chunk], best]]
    return best_object, best_iou


def best_f1_index(recall: np.ndarray, precision: np.ndarray) -> int:
    """The point of a class's curve (its detections by descending score) where F1 is highest; -1 for a
    class without detections."""
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return int(np.argmax(f1)) if len(f1) else -1


def best_f1_point(recall: np.ndarray, precision: np.ndarray) -> tuple[float, float]:
    """(precision, recall) where the curve's F1 is highest (as ultralytics' P and R pick their score
    threshold); (0, 0) for a class without detections."""
    best = best_f1_index(recall, precision)
    return (float(precision[best]), float(recall[best])) if best >= 0 else (0.0, 0.0)


def precision_recall_curves(detections: dict[str, np.ndarray], objects: dict[str, np.ndarray], num_classes: int,
                            iou_threshold: float = 0.5) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each class's recall and precision over a split, as the devkit ranks and matches detections.

    A detection (in descending score order within its class) is a true positive when its best-IoU object
    of the same class and image has IoU > threshold, is not difficult and is not matched yet; a match to
    a difficult object is neither true nor false positive; difficult objects are not in the recall
    denominator. So a detection is a true positive exactly when it is the highest-scored one whose best
    object is that (non-difficult) object, which is what makes this a few array operations.

    Args:
        detections: 'image' int [D], 'labels' int [D] (1..num_classes), 'scores' float [D], 'boxes' float [D, 4].
        objects: 'image' int [G], 'labels' int [G], 'boxes' float [G, 4], 'difficult' bool [G].
    Returns:
        label -> (recall float [D_c], precision float [D_c]) for every class with a non-difficult object.
    """
    best_object, best_iou = best_objects(detections, objects, num_classes)
    order = np.lexsort((-detections["scores"], detections["labels"]))  # by class, then descending score
    hit = best_iou[order] > iou_threshold
    hit_difficult = np.zeros(len(order), dtype=bool)
    hit_difficult[hit] = objects["difficult"][best_object[order][hit]]
    candidate = hit & ~hit_difficult
    first_of_object = np.zeros(len(order), dtype=bool)
    _, first = np.unique(best_object[order][candidate], return_index=True)
    first_of_object[np.flatnonzero(candidate)[first]] = True
    true_positive = first_of_object.astype(np.float64)
    false_positive = (~first_of_object & ~hit_difficult).astype(np.float64)

    curves = {}
    sorted_labels = detections["labels"][order]
    for label in range(1, num_classes + 1):
        num_positives = int(((objects["labels"] == label) & ~objects["difficult"]).sum())
        if num_positives == 0:
            continue
        lo, hi = np.searchsorted(sorted_labels, [label, label + 1])
        tp, fp = np.cumsum(true_positive[lo:hi]), np.cumsum(false_positive[lo:hi])
        curves[label] = (tp / num_positives, tp / np.maximum(tp + fp, np.finfo(np.float64).eps))
    return curves
