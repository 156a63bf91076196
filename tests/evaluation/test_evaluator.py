"""VOC metrics on hand-computed cases."""

import math

import pytest
import torch

from detection.evaluation import DetectionEvaluator, validation_metrics
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
    # F1 along the ranking: 2/3 (P 1, R .5), 1/2 (P .5, R .5), 4/5 (P 2/3, R 1): the last point is P and R
    assert (result["precision"], result["recall"]) == pytest.approx((2 / 3, 1.0))


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


def devkit_average_precisions(predictions, targets, num_classes, eleven_point):
    """The official devkit's voc_eval loop, transcribed: one detection at a time, per class."""
    aps = {}
    for label in range(1, num_classes + 1):
        objects = {i: (t["boxes"][t["labels"] == label].numpy(), t["difficult"][t["labels"] == label].numpy())
                   for i, t in enumerate(targets)}
        npos = sum(int((~difficult).sum()) for _, difficult in objects.values())
        if npos == 0:
            continue
        dets = [(float(s), i, b.numpy()) for i, p in enumerate(predictions)
                for b, l, s in zip(p["boxes"], p["labels"], p["scores"]) if l == label]
        dets.sort(key=lambda d: -d[0])
        used = {i: np.zeros(len(boxes), bool) for i, (boxes, _) in objects.items()}
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for rank, (_, image, box) in enumerate(dets):
            boxes, difficult = objects[image]
            ious = voc_iou(box.astype(np.float64), boxes.astype(np.float64)) if len(boxes) else np.zeros(0)
            if len(ious) and ious.max() > 0.5:
                best = ious.argmax()
                if difficult[best]:
                    continue
                if not used[image][best]:
                    tp[rank], used[image][best] = 1, True
                else:
                    fp[rank] = 1
            else:
                fp[rank] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        aps[label] = average_precision(tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps),
                                       eleven_point=eleven_point)
    return aps


def random_split(seed, images=30, classes=3):
    generator = torch.Generator().manual_seed(seed)
    predictions, targets = [], []
    for image in range(images):
        count = int(torch.randint(0, 5, (1,), generator=generator))
        corner = torch.rand(count, 2, generator=generator) * 60
        boxes = torch.cat([corner, corner + 5 + torch.rand(count, 2, generator=generator) * 30], 1)
        labels = torch.randint(1, classes + 1, (count,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels, "image_id": torch.tensor(image),
                        "difficult": torch.rand(count, generator=generator) < 0.2})
        jitter = torch.randn(count, 4, generator=generator) * 3
        extra = torch.rand(4, 2, generator=generator) * 60
        predictions.append({
            "boxes": torch.cat([boxes + jitter, boxes + jitter * 0.5, torch.cat([extra, extra + 20], 1)]),
            "labels": torch.cat([labels, labels, torch.randint(1, classes + 1, (4,), generator=generator)]),
            "scores": torch.rand(2 * count + 4, generator=generator)})
    return predictions, targets


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_voc_equals_the_devkit_loop_on_random_splits(seed):
    predictions, targets = random_split(seed)
    result = evaluate(predictions, targets, classes=("a", "b", "c"))
    for eleven_point, metric in ((True, "voc07"), (False, "voc")):
        expected = devkit_average_precisions(predictions, targets, 3, eleven_point)
        assert {label: result[f"{metric}_ap/{'abc'[label - 1]}"] for label in expected} == pytest.approx(expected)


def test_coco_single_true_positive_and_a_loose_box():
    exact = evaluate([prediction([[10, 10, 50, 50]], [1], [0.9])], [target([[10, 10, 50, 50]], [1])])
    assert exact["coco_map"] == pytest.approx(1.0) and exact["coco_map_75"] == pytest.approx(1.0)
    # IoU 40*40 / (40*50) = 0.8: a true positive at thresholds 0.5 ... 0.8 (7 of 10)
    loose = evaluate([prediction([[10, 10, 60, 50]], [1], [0.9])], [target([[10, 10, 50, 50]], [1])])
    assert loose["coco_map"] == pytest.approx(0.7) and loose["coco_map_50"] == pytest.approx(1.0)
    assert loose["coco_map_75"] == pytest.approx(1.0) and loose["coco_ap/a"] == pytest.approx(0.7)
    assert loose["coco_map_medium"] == pytest.approx(0.7)  # 40x40 = 1600 px: medium (32^2 .. 96^2)


def test_coco_difficult_objects_count_neither_way():
    result = evaluate([prediction([[0, 0, 40, 40], [50, 50, 90, 90]], [1, 1], [0.9, 0.8])],
                      [target([[0, 0, 40, 40], [50, 50, 90, 90]], [1, 1], [True, False])])
    assert result["coco_map"] == pytest.approx(1.0)


def test_faster_coco_eval_gives_the_numbers_of_pycocotools():
    predictions, targets = random_split(7, images=60)
    results = {}
    for backend in ("faster-coco-eval", "pycocotools"):
        evaluator = DetectionEvaluator(class_names=("a", "b", "c"), metrics=("coco",), coco_backend=backend)
        evaluator.update(predictions, targets)
        results[backend] = evaluator.compute()
    assert 0 < results["pycocotools"]["coco_map"] < 1
    np.testing.assert_equal(results["faster-coco-eval"], results["pycocotools"])  # nan (nothing to measure) too


def test_mask_metrics_come_with_masks():
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:40, 10:40] = 1
    half = masks.clone()
    half[0, 25:40] = 0  # half the object: mask IoU 0.5
    evaluator = DetectionEvaluator(class_names=("a",), metrics=("coco",))
    evaluator.update([{**prediction([[10, 10, 40, 40]], [1], [0.9]), "masks": half[:, None].float()}],
                     [{**target([[10, 10, 40, 40]], [1]), "masks": masks}])
    result = evaluator.compute()
    assert result["coco_map"] == pytest.approx(1.0)
    assert result["coco_mask_map_50"] == pytest.approx(1.0) and result["coco_mask_map_75"] == 0.0


def test_every_result_gets_one_name_of_the_logged_scheme():
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:40, 10:40] = 1
    evaluator = DetectionEvaluator(class_names=("a", "b"))
    evaluator.update([{**prediction([[10, 10, 40, 40]], [1], [0.9]), "masks": masks[:, None].float()}],
                     [{**target([[10, 10, 40, 40]], [1]), "masks": masks}])
    results = evaluator.compute()
    named = validation_metrics(results)
    assert len(named) == len(results)  # one key per number
    assert named["val/map"] == results["voc07_map"] and named["val/map50_95"] == results["coco_map"]
    assert named["val/map50_coco"] == results["coco_map_50"] and named["val/mask_map50_95"] == results["coco_mask_map"]
    assert named["val_class/ap50_voc07/a"] == results["voc07_ap/a"]
    assert named["val_class/mask_ap50_95/a"] == results["coco_mask_ap/a"]
    assert named["val/errors/background_count"] == results["errors/background_count"]
    assert all(key.startswith(("val/map", "val/mask_map", "val/errors/", "val_class/")) for key in named
               if key not in ("val/precision", "val/recall"))
    assert named["val/precision"] == named["val/recall"] == 1.0


def test_no_ground_truth_anywhere_gives_nan_maps_not_zero():
    result = evaluate([prediction([[0, 0, 10, 10]], [1], [0.9])], [target([], [])])
    assert all(math.isnan(result[key]) for key in ("voc07_map", "voc_map", "coco_map", "coco_map_50"))


def test_unknown_metric_or_backend_is_refused():
    with pytest.raises(ValueError, match="unknown metrics"):
        DetectionEvaluator(class_names=("a",), metrics=("f1",))
    with pytest.raises(ValueError, match="unknown COCO backend"):
        DetectionEvaluator(class_names=("a",), coco_backend="mine")


def test_each_class_threshold_is_the_score_where_its_f1_is_highest():
    # class a: TP 0.9, FP 0.8 (a duplicate), TP 0.7 over 2 objects: F1 2/3, 1/2, 4/5 -> keep from 0.7
    # class b: one object, its TP at 0.6 then two FPs at 0.5 and 0.4: F1 1, 2/3, 1/2 -> keep from 0.6
    predictions = [prediction([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70],
                               [80, 80, 90, 90]], [1, 1, 1, 2, 2, 2], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])]
    targets = [target([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 1, 2])]
    evaluator = DetectionEvaluator(class_names=("a", "b"))
    evaluator.update(predictions, targets)
    thresholds = evaluator.class_thresholds()
    assert thresholds["a"] == pytest.approx({"threshold": 0.7, "f1": 0.8, "precision": 2 / 3, "recall": 1.0})
    assert thresholds["b"] == pytest.approx({"threshold": 0.6, "f1": 1.0, "precision": 1.0, "recall": 1.0})
    at = evaluator.f1_at({"a": 0.85, "b": 0.45})  # a keeps its first detection; b its first two
    assert at["a"] == pytest.approx({"f1": 2 / 3, "precision": 1.0, "recall": 0.5})
    assert at["b"] == pytest.approx({"f1": 2 / 3, "precision": 0.5, "recall": 1.0})
    assert evaluator.f1_at({"a": 0.95, "b": 1.0})["a"] == {"f1": 0.0, "precision": 0.0, "recall": 0.0}
