"""COCO metrics (AP over IoU 0.5:0.95, AP50, AP75, small/medium/large) for boxes and masks.

The numbers are COCOeval's; the backend is `faster-coco-eval` (the same algorithm in C++, identical
numbers, tested) or the reference `pycocotools`.
"""

import contextlib
import io
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

BACKENDS = ("faster-coco-eval", "pycocotools")
SUMMARY = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")  # COCOeval.stats[0:6]


def coco_metrics(detections: dict[str, np.ndarray], objects: dict[str, np.ndarray], *,
                 images: dict[int, tuple[int, int]],
                 class_names: Sequence[str], iou_type: str = "bbox",
                 backend: str = "faster-coco-eval") -> dict[str, float]:
    """COCOeval's summary and per-class AP (IoU 0.5:0.95, all areas, 100 detections) over a split.

    Difficult objects are crowd regions for COCOeval: detections on them count neither way.

    Args:
        detections: 'image' int [D], 'labels' int [D] (1..K), 'scores' float [D], 'boxes' float [D, 4] xyxy
            pixels, and for iou_type='segm' 'masks': a list of D COCO RLEs.
        objects: 'image' int [G], 'labels', 'boxes', 'difficult' bool [G], optionally 'iscrowd' bool [G], and
            for 'segm' 'masks': G RLEs.
        images: image id -> (height, width), every image of the split (those without objects or
            detections count too); the sizes matter only for masks.
    Returns:
        'map', 'map_50', 'map_75', 'map_small', 'map_medium', 'map_large' and 'ap/<class>'.
    """
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO as FasterCOCO, COCOeval_faster

        def COCO():
            return FasterCOCO(print_function=_silent)

        def COCOeval(ground_truth, results, iou_type):
            return COCOeval_faster(ground_truth, results, iou_type, print_function=_silent)
    elif backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"unknown COCO backend {backend!r}; choose from {list(BACKENDS)}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground_truth = _indexed(COCO(), _ground_truth(objects, images, class_names, with_masks=iou_type == "segm"))
        results = _indexed(COCO(), {**ground_truth.dataset, "annotations": coco_results(detections, iou_type)})
        evaluation = COCOeval(ground_truth, results, iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # COCOeval's -1 means "nothing to measure" (no objects of that kind): nan, never a score of 0
    metrics = {name: float(value) if value > -1 else float("nan") for name, value in zip(SUMMARY, evaluation.stats)}
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # [IoU, recall, class] at all areas, 100 dets
    for index, category in enumerate(evaluation.params.catIds):
        values = precision[:, :, index]
        if (values > -1).any():
            metrics[f"ap/{class_names[category - 1]}"] = float(values[values > -1].mean())
    return metrics


def _ground_truth(objects, images, class_names, *, with_masks: bool) -> dict:
    boxes = objects["boxes"].astype(np.float64)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    crowd = objects["difficult"] | objects.get("iscrowd", np.zeros(len(boxes), dtype=bool))
    annotations = []
    for index in range(len(boxes)):
        annotation = {"id": index + 1, "image_id": int(objects["image"][index]),
                      "category_id": int(objects["labels"][index]), "iscrowd": int(crowd[index]),
                      "bbox": [boxes[index, 0], boxes[index, 1], widths[index], heights[index]],
                      "area": float(widths[index] * heights[index])}
        if with_masks:
            annotation["segmentation"] = objects["masks"][index]
            annotation["area"] = float(mask_utils.area(objects["masks"][index]))
        annotations.append(annotation)
    return {"images": [{"id": image, "height": height, "width": width} for image, (height, width) in images.items()],
            "annotations": annotations,
            "categories": [{"id": label, "name": name} for label, name in enumerate(class_names, start=1)]}


def coco_results(detections, iou_type: str) -> list[dict]:
    """Detections (flat: 'image', 'labels', 'scores', 'boxes' xyxy pixels, 'masks' RLEs for 'segm') as COCO
    result annotations (bbox xywh), built directly rather than through loadRes (which takes longer over
    them than the evaluation itself)."""
    boxes = detections["boxes"].astype(np.float64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    areas = xywh[:, 2] * xywh[:, 3]
    results = [{"id": index, "image_id": image, "category_id": label, "score": score, "bbox": box,
                "area": area, "iscrowd": 0}
               for index, (image, label, score, box, area) in enumerate(zip(
                   detections["image"].tolist(), detections["labels"].tolist(), detections["scores"].tolist(),
                   xywh.tolist(), areas.tolist()), start=1)]
    if iou_type == "segm":
        for result, rle in zip(results, detections["masks"]):
            result["segmentation"] = rle
            result["area"] = float(mask_utils.area(rle))
    return results


def _silent(*args, **kwargs) -> None:
    """faster-coco-eval logs its progress and summary at INFO through this; we report the numbers ourselves."""


def _indexed(coco, dataset: dict):
    coco.dataset = dataset
    coco.createIndex()
    return coco


def encode_masks(masks: np.ndarray) -> list[dict]:
    """uint8 [N, H, W] binary masks -> N COCO RLEs (counts as str, so they pickle and gather compactly)."""
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))) if len(masks) else []
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return list(rles)
