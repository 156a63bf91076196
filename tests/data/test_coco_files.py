"""A COCO file's faults are refused or counted by file and id."""

import json
import re

import pytest

from conftest import write_coco
from detection.data.coco import COCODetection


@pytest.mark.faults
@pytest.mark.parametrize("change, message", [
    (lambda data: data["images"].append(dict(data["images"][0], file_name="1.jpg")),
     "image ids listed more than once: ['5000']"),
    (lambda data: data["annotations"][0].update(bbox=[1, 2, 3]), "annotation 900 has bbox [1, 2, 3]"),
    (lambda data: data["images"][0].update(width="64"), "image 5000 has width='64'"),
    (lambda data: data["annotations"][0].update(bbox=[1, 2, float("nan"), 4]), "annotation 900 has bbox"),
])
def test_a_malformed_coco_file_is_refused_naming_the_file_and_the_id(tmp_path, change, message):
    images = [{"id": 5000 + 7 * i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in range(2)]
    annotations = [{"id": 900, "image_id": 5000, "category_id": 7, "bbox": [4, 4, 20, 16]}]
    path = write_coco(tmp_path, images, annotations, [{"id": 7, "name": "dog"}])
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        COCODetection(image_folder=str(tmp_path / "images"), annotation_file=str(path), class_names=["dog"])


@pytest.mark.faults
def test_coco_annotations_of_images_the_file_does_not_list_are_counted_and_left_out(tmp_path):
    images = [{"id": 1, "file_name": "0.jpg", "width": 64, "height": 48}]
    annotations = [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [4, 4, 20, 16]},
                   {"id": 6, "image_id": 99, "category_id": 7, "bbox": [4, 4, 20, 16]}]
    path = write_coco(tmp_path, images, annotations, [{"id": 7, "name": "dog"}])
    dataset = COCODetection(image_folder=str(tmp_path / "images"), annotation_file=str(path), class_names=["dog"])
    assert dataset.fixes["annotations of images the file does not list"] == 1 and len(dataset[0][1]["boxes"]) == 1
