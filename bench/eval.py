"""Evaluator speed on a VOC-sized split: 5,000 images x 20 classes x 100 detections per image.

Prints the time (the fastest of 5) of VOC07 + VOC-area AP together, of the TIDE error breakdown with the
confusion matrix against them (target: at most 2x), and of the COCO metrics with our backend
(faster-coco-eval) against plain pycocotools on the same data, with the numbers of both.

    python bench/eval.py [--images 5000]
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import VOC_CLASSES  # noqa: E402
from detection.evaluation import DetectionEvaluator  # noqa: E402


def synthetic_split(num_images: int, *, detections_per_image: int = 100, seed: int = 0):
    """Ground truth (2-6 objects of random classes in a 500x375 image) and detections: a jittered copy of
    each object with a high score, the rest random boxes of random classes with lower scores, each image's
    best first, as the detectors here return them."""
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for image_id in range(num_images):
        count = int(rng.integers(2, 7))
        corner = rng.uniform(0, [400, 300], size=(count, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(10, [100, 75], size=(count, 2))], axis=1)
        labels = rng.integers(1, len(VOC_CLASSES) + 1, count)
        difficult = rng.random(count) < 0.1
        noise = detections_per_image - count
        random_corner = rng.uniform(0, [400, 300], size=(noise, 2))
        det_boxes = np.concatenate([boxes + rng.normal(0, 4, boxes.shape),
                                    np.concatenate([random_corner, random_corner + rng.uniform(5, 100, (noise, 2))], 1)])
        det_labels = np.concatenate([labels, rng.integers(1, len(VOC_CLASSES) + 1, noise)])
        det_scores = np.concatenate([rng.uniform(0.5, 1.0, count), rng.uniform(0.0, 0.8, noise)])
        best_first = np.argsort(-det_scores, kind="stable")
        det_boxes, det_labels, det_scores = det_boxes[best_first], det_labels[best_first], det_scores[best_first]
        predictions.append({"boxes": torch.tensor(det_boxes, dtype=torch.float32), "labels": torch.tensor(det_labels),
                            "scores": torch.tensor(det_scores, dtype=torch.float32)})
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                        "difficult": torch.tensor(difficult), "image_id": torch.tensor(image_id)})
    return predictions, targets


def timed(metrics, predictions, targets, repeat: int = 1, **options):
    """The fastest of `repeat` computations of `metrics` (seconds) and its results."""
    evaluator = DetectionEvaluator(class_names=VOC_CLASSES, metrics=metrics, **options)
    evaluator.update(predictions, targets)
    fastest = float("inf")
    for _ in range(repeat):
        evaluator.update([], [])  # forgets the cached breakdown, keeps the records
        start = time.perf_counter()
        results = evaluator.compute()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    args = parser.parse_args()
    predictions, targets = synthetic_split(args.images)
    print(f"{args.images} images x {len(VOC_CLASSES)} classes x 100 detections per image")

    seconds, voc = timed(("voc07", "voc"), predictions, targets, repeat=5)
    print(f"VOC07 + VOC area:            {seconds:6.2f} s   (target <= 2 s)  voc07_map {voc['voc07_map']:.4f} "
          f"voc_map {voc['voc_map']:.4f}")
    errors_seconds, errors = timed(("errors",), predictions, targets, repeat=5)
    print(f"TIDE errors + confusion:     {errors_seconds:6.2f} s   {errors_seconds / seconds:.2f}x the VOC metrics "
          f"(target <= 2x)  dAP: " + " ".join(f"{name} {value:.4f}" for name, value in errors.items()
                                               if not name.endswith("_count")))
    ours, faster = timed(("coco",), predictions, targets, coco_backend="faster-coco-eval")
    reference, plain = timed(("coco",), predictions, targets, coco_backend="pycocotools")
    print(f"COCO, pycocotools:           {reference:6.2f} s   coco_map {plain['coco_map']:.6f} "
          f"map_50 {plain['coco_map_50']:.6f} map_75 {plain['coco_map_75']:.6f}")
    print(f"COCO, faster-coco-eval:      {ours:6.2f} s   coco_map {faster['coco_map']:.6f} "
          f"map_50 {faster['coco_map_50']:.6f} map_75 {faster['coco_map_75']:.6f}")
    same = all(abs(faster[key] - plain[key]) < 1e-12 or (math.isnan(faster[key]) and math.isnan(plain[key]))
               for key in plain)
    print(f"speed-up {reference / ours:.1f}x (target >= 5x); identical numbers: {same}")


if __name__ == "__main__":
    main()
