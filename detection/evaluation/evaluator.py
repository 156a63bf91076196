"""Collects predictions and ground truth over a split and computes detection metrics."""

import logging
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from detection.evaluation.coco import BACKENDS, coco_metrics, coco_results, encode_masks
from detection.evaluation.errors import ERROR_TYPES, Outcomes, breakdown, outcomes, per_image
from detection.evaluation.voc import average_precision, best_f1_index, best_f1_point, precision_recall_curves

log = logging.getLogger(__name__)

METRICS = ("voc07", "voc", "coco", "errors")
MASK_THRESHOLD = 0.5  # predicted mask probabilities above it are the instance
EMPTY = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "scores": np.zeros(0, np.float32),
         "difficult": np.zeros(0, bool), "iscrowd": np.zeros(0, bool)}


class DetectionEvaluator:
    """VOC and COCO metrics over a whole split, for boxes and (when both sides have them) masks.

    Args:
        class_names: foreground classes; label k is class_names[k - 1].
        metrics: any of 'voc07' (11-point AP at IoU 0.5, VOC2007 test), 'voc' (area under the precision
            envelope, VOC2010+) and 'coco' (COCOeval: AP at IoU 0.5:0.95, AP50, AP75, by object size).
        coco_backend: 'faster-coco-eval' or 'pycocotools' (identical numbers; the first is faster).
        confusion_score_threshold: the detections the confusion matrix counts ('errors').

    `compute()` returns a flat dict: '<metric>_map' and '<metric>_ap/<class>' for voc07 and voc (the mean
    is over classes with ground truth, nan when no class has any); for coco 'coco_map', 'coco_map_50', 'coco_map_75',
    'coco_map_small|medium|large', 'coco_ap/<class>', and the same with 'coco_mask_' when masks were given;
    for errors (TIDE's breakdown at IoU 0.5, `detection.evaluation.errors`) 'errors/<type>' (the dAP of each
    type, false_positives and false_negatives) and 'errors/<type>_count'. `error_breakdown()` gives the whole
    breakdown: per class too, and the confusion matrix.
    """

    def __init__(self, *, class_names: Sequence[str], metrics: Sequence[str] = METRICS,
                 coco_backend: str = "faster-coco-eval", confusion_score_threshold: float = 0.5):
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {list(METRICS)}")
        if coco_backend not in BACKENDS:
            raise ValueError(f"unknown COCO backend {coco_backend!r}; choose from {list(BACKENDS)}")
        self.class_names = tuple(class_names)
        self.metrics = tuple(metrics)
        self.coco_backend = coco_backend
        self.confusion_score_threshold = confusion_score_threshold
        self.reset()

    def reset(self) -> None:
        self._records: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
        self._breakdown: dict[str, Any] | None = None
        self._result: Outcomes | None = None

    def update(self, predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> None:
        """predictions: 'boxes' float [K, 4] xyxy pixels, 'labels' int64 [K], 'scores' float [K], optionally
        'masks' float [K, 1, H, W] probabilities; targets: 'boxes' float [N, 4], 'labels' int64 [N],
        optionally 'difficult' bool [N], 'iscrowd' [N], 'masks' uint8 [N, H, W] and 'image_id'.
        Only what the metrics read is kept: masks as COCO RLEs, no images."""
        for prediction, target in zip(predictions, targets, strict=True):
            image_id = int(target.get("image_id", len(self._records)))
            detections = {key: prediction[key].detach().cpu().numpy() for key in ("boxes", "labels", "scores")}
            objects = {"boxes": target["boxes"].cpu().numpy(), "labels": target["labels"].cpu().numpy()}
            for side in (detections, objects):  # labels index arrays (an empty tensor comes as float)
                side["labels"] = side["labels"].astype(np.int64)
            for flag in ("difficult", "iscrowd"):
                objects[flag] = (target[flag].cpu().numpy().astype(bool) if flag in target
                                 else np.zeros(len(objects["labels"]), dtype=bool))
            if "coco" in self.metrics and "masks" in prediction and "masks" in target:
                predicted = prediction["masks"].detach().reshape(-1, *prediction["masks"].shape[-2:]) > MASK_THRESHOLD
                detections["masks"] = encode_masks(predicted.cpu().numpy())
                objects["masks"] = encode_masks(target["masks"].cpu().numpy())
                objects["image_size"] = tuple(target["masks"].shape[-2:])  # (H, W), for COCOeval's masks
            self._records.append((image_id, detections, objects))
        self._breakdown, self._result = None, None

    def synchronize(self, gather: Callable[[list[Any]], list[Any]]) -> None:
        """Replaces this process's records with those `gather` collects from every process (data
        parallelism), in image_id order, so every process computes the single-process metrics."""
        self._records = sorted(gather(self._records), key=lambda record: record[0])
        self._breakdown, self._result = None, None

    def error_breakdown(self) -> dict[str, Any]:
        """TIDE's error counts and dAPs (overall and per class) and the confusion matrix, as
        `detection.evaluation.errors.breakdown` returns them; computed once per set of records."""
        if self._breakdown is None:
            detections, objects = self._concatenated()
            self._breakdown = breakdown(self._outcomes(), detections, objects, list(self.class_names))
        return self._breakdown

    def per_image(self) -> list[dict]:
        """Per image with objects or detections, by split index (`image`): AP50, objects, detections, true
        positives and TIDE's error counts (`detection.evaluation.errors.per_image`)."""
        detections, objects = self._concatenated()
        return per_image(self._outcomes(), detections, objects, len(self.class_names))

    def outcomes_of(self, image: int) -> dict[str, Any]:
        """What became of one image's detections and objects, for drawing: detections 'boxes' float [D, 4],
        'labels', 'scores', 'kind' (per detection 'correct', an error type, or 'ignored'); objects 'boxes',
        'labels', 'kind' ('found'; 'missed'; 'near', unmatched where a classification or localisation error
        lies; 'ignored')."""
        detections, objects = self._concatenated()
        result = self._outcomes()
        mine = np.flatnonzero(detections["image"][result.index] == image)
        kinds = np.array([*ERROR_TYPES, "correct", "ignored"])
        kind = np.where(result.true_positive[mine], len(ERROR_TYPES), np.where(result.ignored[mine], len(kinds) - 1,
                                                                                result.error[mine]))
        theirs = np.flatnonzero(objects["image"] == image)
        found = np.select([result.object_ignored[theirs], result.matched[theirs], result.missed[theirs]],
                          ["ignored", "found", "missed"], "near")
        index = result.index[mine]
        return {"detections": {"boxes": detections["boxes"][index], "labels": detections["labels"][index],
                               "scores": detections["scores"][index], "kind": kinds[kind].tolist()},
                "objects": {"boxes": objects["boxes"][theirs], "labels": objects["labels"][theirs],
                            "kind": found.tolist()}}

    def _outcomes(self) -> Outcomes:
        """TIDE's outcome of every detection and object, computed once per set of records."""
        if self._result is None:
            detections, objects = self._concatenated()
            self._result = outcomes(detections, objects, len(self.class_names),
                                    score_threshold=self.confusion_score_threshold)
        return self._result

    def detection_records(self, *, image_ids: Optional[Sequence[int]] = None,
                          category_ids: Optional[Mapping[int, int]] = None) -> list[dict[str, Any]]:
        """Every detection evaluated as a COCO result (image_id, category_id and category_name, bbox
        [x, y, width, height] pixels, score; 'segmentation' RLE where masks were kept), loadRes-ready.

        Args:
            image_ids: the dataset file's id of each split index (a COCO file's `images[].id`); None keeps
                the split index.
            category_ids: the file's category id of each label 1..K; None keeps the label."""
        detections, _ = self._concatenated()
        records = coco_results(detections, "segm" if "masks" in detections else "bbox")
        for record in records:
            label = record["category_id"]
            record["category_name"] = self.class_names[label - 1]
            record["image_id"] = int(image_ids[record["image_id"]]) if image_ids is not None else record["image_id"]
            record["category_id"] = int(category_ids[label]) if category_ids is not None else label
        return records

    def precision_recall(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """class name -> (recall, precision) at IoU 0.5 as VOC ranks detections, for classes with objects."""
        return self._curves(*self._concatenated())

    def class_thresholds(self) -> dict[str, dict[str, float]]:
        """Per class with objects: the score threshold at which its F1 at IoU 0.5 is highest (its detections
        scoring at least that are kept), with that F1, precision and recall; a class without detections
        gets threshold 1.0 and F1 0."""
        thresholds = {}
        for name, (scores, recall, precision) in self._ranked().items():
            best = best_f1_index(recall, precision)
            thresholds[name] = {"threshold": float(scores[best]) if best >= 0 else 1.0,
                                **f1_point(recall, precision, best)}
        return thresholds

    def f1_at(self, thresholds: dict[str, float]) -> dict[str, dict[str, float]]:
        """Per class with objects: F1, precision and recall at IoU 0.5 keeping its detections that score
        at least `thresholds[class]` (a held-out check of thresholds chosen on other images)."""
        return {name: f1_point(recall, precision, int(np.sum(scores >= thresholds[name])) - 1)
                for name, (scores, recall, precision) in self._ranked().items()}

    def _ranked(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """class name -> (its detections' scores, descending: the curve's order; recall; precision)."""
        detections, objects = self._concatenated()
        ranked = {}
        for name, (recall, precision) in self._curves(detections, objects).items():
            label = self.class_names.index(name) + 1
            ranked[name] = (np.sort(detections["scores"][detections["labels"] == label])[::-1], recall, precision)
        return ranked

    def compute(self) -> dict[str, float]:
        results: dict[str, float] = {}
        detections, objects = self._concatenated()
        voc_metrics = [metric for metric in ("voc07", "voc") if metric in self.metrics]
        curves = self._curves(detections, objects) if voc_metrics else {}
        if voc_metrics and not curves:
            log.warning("the evaluated split has no ground-truth objects: its mAP is nan, not 0")
        for metric in voc_metrics:
            aps = {name: average_precision(recall, precision, eleven_point=metric == "voc07")
                   for name, (recall, precision) in curves.items()}
            results.update({f"{metric}_ap/{name}": ap for name, ap in aps.items()})
            results[f"{metric}_map"] = float(np.mean(list(aps.values()))) if aps else float("nan")
        if curves:
            points = np.array([best_f1_point(recall, precision) for recall, precision in curves.values()])
            results["precision"], results["recall"] = (float(value) for value in points.mean(axis=0))
        if "errors" in self.metrics:
            errors = self.error_breakdown()
            results.update({f"errors/{name}": value for name, value in errors["dap"].items()})
            results.update({f"errors/{name}_count": float(count) for name, count in errors["counts"].items()})
        if "coco" in self.metrics:
            images = {image_id: record.get("image_size", (0, 0)) for image_id, _, record in self._records}
            iou_types = {"coco": "bbox", **({"coco_mask": "segm"} if "masks" in objects else {})}
            for prefix, iou_type in iou_types.items():
                metrics = coco_metrics(detections, objects, images=images, class_names=self.class_names,
                                       iou_type=iou_type, backend=self.coco_backend)
                results.update({f"{prefix}_{key}": value for key, value in metrics.items()})
        return results

    def _curves(self, detections: dict[str, Any], objects: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        curves = precision_recall_curves(detections, objects, len(self.class_names))
        return {self.class_names[label - 1]: curve for label, curve in curves.items()}

    def _concatenated(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """All records as flat arrays, with 'image' the image_id of each detection and object; masks
        (RLE lists) only when every record has them."""
        image_ids = [image_id for image_id, _, _ in self._records]
        flat = []
        for side, keys in ((1, ("boxes", "labels", "scores")), (2, ("boxes", "labels", "difficult", "iscrowd"))):
            parts = [record[side] for record in self._records]
            sizes = [len(part["labels"]) for part in parts]
            arrays: dict[str, Any] = {"image": np.repeat(np.array(image_ids, dtype=np.int64), sizes)}
            for key in keys:
                arrays[key] = np.concatenate([part[key] for part in parts] or [EMPTY[key]])
            arrays["boxes"] = arrays["boxes"].reshape(-1, 4)
            if parts and all("masks" in part for part in parts):
                arrays["masks"] = [rle for part in parts for rle in part["masks"]]
            flat.append(arrays)
        return flat[0], flat[1]


def f1_point(recall: np.ndarray, precision: np.ndarray, index: int) -> dict[str, float]:
    """F1, precision and recall at point `index` of a class's curve (-1: no detection kept, all 0)."""
    p, r = (float(precision[index]), float(recall[index])) if index >= 0 else (0.0, 0.0)
    return {"f1": 2 * p * r / max(p + r, 1e-12), "precision": p, "recall": r}


# compute()'s summary keys -> the names a run logs under val/ (one key per number; COCO's with mask_ too)
SUMMARY_NAMES = {"voc07_map": "map", "voc_map": "map50_voc", "coco_map": "map50_95", "coco_map_50": "map50_coco",
                 "coco_map_75": "map75", "coco_map_small": "map50_95_small", "coco_map_medium": "map50_95_medium",
                 "coco_map_large": "map50_95_large"}
CLASS_MEASURES = {"voc07": "ap50_voc07", "voc": "ap50_voc", "coco": "ap50_95"}  # per-class AP, under val_class/
METRIC_GUIDE = """\
What this run's metrics mean (markdown: MLflow shows it as the run's description):
- `val/map`: the headline, VOC2007's mAP at IoU 0.5 (11-point AP, as the SSD paper reports it).
- `val/map50_voc`: the same IoU, VOC2010+'s area under the precision envelope.
- `val/precision`, `val/recall`: at IoU 0.5, each class's at the score threshold where its F1 is highest,
  averaged over the classes (ultralytics' P and R pick one threshold for all).
- `val/map50_95`, `val/map50_coco`, `val/map75`, `val/map50_95_small|medium|large`: COCO's AP (101 points)
  over IoU 0.5:0.95 (what ultralytics calls mAP50-95), at 0.5, at 0.75, and by object size; `val/mask_...`
  the same for masks.
- `val_class/<measure>/<class>`: the per-class APs of those measures (`ap50_voc07` is `val/map`'s).
- `val/errors/<type>`: TIDE's dAP at IoU 0.5 (the AP50 that fixing that error type gains); `<type>_count`.
- `val/speed/preprocess_ms|network_ms|postprocess_ms`: milliseconds per image of each stage in validation.
- `key/...`: the headline numbers again (val/map, mAP50, mAP50-95, precision, recall, train loss), first.
- `train/...`: losses and learning rate; `system/...`: MLflow's CPU, memory and GPU readings."""


def validation_name(key: str) -> str:
    """The logged name of one of compute()'s keys (see METRIC_GUIDE); any other key keeps its name under
    val/ (`errors/<type>`, `skipped_samples`)."""
    mask = "mask_" if key.startswith("coco_mask_") else ""
    key = key.replace("coco_mask_", "coco_", 1)
    measure, per_class, class_name = key.partition("_ap/")
    if per_class:
        return f"val_class/{mask}{CLASS_MEASURES[measure]}/{class_name}"
    return f"val/{mask}{SUMMARY_NAMES.get(key, key)}"


def validation_metrics(results: dict[str, float]) -> dict[str, float]:
    """The one place metric names are made: `compute()`'s results as the metrics a run logs, named as
    METRIC_GUIDE says (`val/map`, `val/map50_95`, `val_class/ap50_voc07/<class>`, `val/errors/<type>`, ...)."""
    return {validation_name(key): value for key, value in results.items()}


def class_aps(metrics: dict[str, float], class_names: Sequence[str], measure: str = "ap50_voc07") -> dict[str, float]:
    """Per-class AP of `validation_metrics`' output: measure 'ap50_voc07' (val/map's), 'ap50_voc' or
    'ap50_95'; nan for a class without ground truth."""
    return {name: metrics.get(f"val_class/{measure}/{name}", float("nan")) for name in class_names}
