"""VOC metrics on hand-computed cases."""

import pytest
import torch

from detection.evaluation import DetectionEvaluator
from detection.evaluation.voc import average_precision, voc_iou
import numpy as np


def prediction(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores)}


def target(boxes, labels, difficult=None):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "difficult": torch.tensor(difficult if difficult is not None else [False] * len(labels))}


def evaluate(predictions, targets, classes=("a", "b")):
    evaluator = DetectionEvaluator(class_names=classes)
    evaluator.update(predictions, targets)
    return evaluator.compute()


def test_single_true_positive_gives_ap_one():
    result = evaluate([prediction([[10, 10, 50, 50]], [1], [0.9])], [target([[10, 10, 50, 50]], [1])])
    assert result["voc07_map"] == pytest.approx(1.0) and result["voc_map"] == pytest.approx(1.0)
    assert "voc07_ap/b" not in result  # no ground truth of class b: not in the mean


def test_duplicate_detection_is_a_false_positive():
    # TP at 0.9 then a duplicate FP at 0.8: precision [1, 0.5], recall [1, 1] -> AP 1 either way
    # add a second object detected only at 0.7 after the duplicate: recall [.5, .5, 1], precision [1, .5, 2/3]
    result = evaluate([prediction([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], [1, 1, 1], [0.9, 0.8, 0.7])],
                      [target([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])])
    assert result["voc_ap/a"] == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))
    assert result["voc07_ap/a"] == pytest.approx((6 * 1 + 5 * (2 / 3)) / 11)


def test_match_to_a_difficult_object_is_neither_true_nor_false_positive():
    result = evaluate([prediction([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0.9, 0.8])],
                      [target([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [True, False])])
    assert result["voc_ap/a"] == pytest.approx(1.0)  # only the non-difficult object counts


def test_wrong_class_is_a_false_positive_and_misses_its_object():
    result = evaluate([prediction([[0, 0, 10, 10]], [2], [0.9])], [target([[0, 0, 10, 10]], [1])])
    assert result["voc07_ap/a"] == 0.0 and result["voc07_map"] == 0.0


def test_image_without_ground_truth_contributes_false_positives():
    predictions = [prediction([[0, 0, 10, 10]], [1], [0.5]), prediction([[0, 0, 10, 10]], [1], [0.9])]
    targets = [target([[0, 0, 10, 10]], [1]), target([], [])]
    result = evaluate(predictions, targets)
    # ranked: FP (0.9, empty image), TP (0.5): precision [0, 0.5], recall [0, 1]
    assert result["voc_ap/a"] == pytest.approx(0.5)


def test_eleven_point_and_area_differ_on_the_same_curve():
    recall = np.array([0.25, 0.5, 0.75])
    precision = np.array([1.0, 0.5, 0.6])
    assert average_precision(recall, precision, eleven_point=False) == pytest.approx(0.25 * 1 + 0.5 * 0.6)
    # t = 0, .1, .2: 1.0; t = .3 ... .7: 0.6; t = .8 ... 1: 0
    assert average_precision(recall, precision, eleven_point=True) == pytest.approx((3 * 1 + 5 * 0.6) / 11)


def test_iou_uses_the_devkits_inclusive_pixels():
    assert voc_iou(np.array([0.0, 0, 9, 9]), np.array([[0.0, 0, 9, 9], [5.0, 0, 14, 9]])).tolist() == \
        pytest.approx([1.0, 50 / 150])
