"""COCO in, COCO out: results carry the file's ids, and pycocotools scores them as the evaluator does."""

import contextlib
import io

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import write_coco
from detection.data.coco import COCODetection
from detection.evaluation import DetectionEvaluator


def test_coco_results_keep_the_files_ids_and_pycocotools_scores_them_as_the_evaluator_does(tmp_path):
    images = [{"id": 5000 + 7 * i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in range(3)]
    boxes = [[4, 4, 20, 16], [30, 10, 24, 30], [10, 20, 12, 12]]
    annotations = [{"id": 900 + i, "image_id": images[i % 3]["id"], "category_id": (7, 3)[i % 2], "bbox": box,
                    "area": box[2] * box[3], "iscrowd": 0} for i, box in enumerate(boxes * 2)]
    path = write_coco(tmp_path, images, annotations, [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}])
    dataset = COCODetection(image_folder=str(tmp_path / "images"), annotation_file=str(path),
                            class_names=["cat", "dog"])
    evaluator = DetectionEvaluator(class_names=["cat", "dog"])
    for index in range(len(dataset)):
        _, target = dataset[index]
        shifted = target["boxes"] + torch.tensor([index, 0.0, index, 2.0])  # AP between 0 and 1
        false_positive = torch.tensor([[40.0, 30, 60, 46]])
        evaluator.update([{"boxes": torch.cat([shifted, false_positive]), "labels": torch.cat(
            [target["labels"], torch.tensor([1])]), "scores": torch.linspace(0.9, 0.3, len(shifted) + 1)}], [target])
    metrics = evaluator.compute()
    records = evaluator.detection_records(image_ids=dataset.image_ids, category_ids=dataset.category_ids)
    assert {r["image_id"] for r in records} == {5000, 5007, 5014} and {r["category_id"] for r in records} == {3, 7}
    assert all(r["category_name"] == {3: "cat", 7: "dog"}[r["category_id"]] for r in records)
    reference = COCO(str(path))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(reference, reference.loadRes(records), "bbox")
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert 0 < evaluation.stats[0] < 1 and evaluation.stats[0] == pytest.approx(metrics["coco_map"], abs=1e-9)
