"""COCO-json datasets: an image folder and an annotation file (instances_*.json)."""

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from detection.data.classes import checked_class_names
from detection.data.samples import MAX_IMAGE_PIXELS, AnnotatedImages, Annotation, clip_to_image

log = logging.getLogger(__name__)


def is_finite_number(value: Any) -> bool:
    """Whether a JSON value is a finite int or float (not a bool, not a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class COCODetection(AnnotatedImages):
    """A COCO-json split, yielding (image, target) in torchvision's detection contract (see AnnotatedImages):
    boxes from COCO's xywh, labels 1..K (the position of the category's name in `class_names`), 'iscrowd'
    bool [N] and 'difficult' equal to it (VOC metrics ignore crowd regions as they ignore difficult
    objects), masks decoded from polygons or RLE. `category_ids[label]` is the file's category id again,
    for results in COCO's terms.

    Args:
        image_folder: where the annotation file's `file_name`s are.
        annotation_file: the COCO json.
        class_names: category names in label order; categories of the file not listed are an error
            naming the file and the category, or left out (counted) with `ignore_unknown_classes`.
        transforms: a DetectionAugmentation.
        keep_crowd: False leaves crowd annotations out (for training).
        on_bad_sample: 'error' or 'skip' (counted) for an image that is missing, unreadable, over
            `max_image_pixels` (None: no limit), not the width and height the file gives it (read upright,
            EXIF orientation applied), or whose augmentation fails.

    Boxes outside the image are clipped to it, and empty ones dropped; both counted in `fixes`.
    Images without annotations stay, as negatives.
    """

    def __init__(self, *, image_folder: str, annotation_file: str, class_names: Sequence[str],
                 transforms: Optional[Callable] = None, with_masks: bool = False, keep_crowd: bool = True,
                 on_bad_sample: str = "error", ignore_unknown_classes: bool = False,
                 max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS):
        super().__init__(transforms=transforms, with_masks=with_masks, on_bad_sample=on_bad_sample,
                         max_image_pixels=max_image_pixels)
        self.image_folder = Path(image_folder).expanduser()
        self.annotation_file = Path(annotation_file).expanduser()
        self.class_names = checked_class_names(class_names)
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f"{self.annotation_file}: COCO annotation file not found")
        if not self.image_folder.is_dir():
            raise FileNotFoundError(f"{self.image_folder}: image folder not found (expected the files named in "
                                    f"{self.annotation_file})")
        try:
            data = json.loads(self.annotation_file.read_text())
            images, annotations, categories = data["images"], data.get("annotations", []), data["categories"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{self.annotation_file}: not a COCO annotation file ({type(error).__name__}: {error})") from error
        label_of = self._labels(categories, ignore_unknown_classes)
        self.category_ids = {label: category_id for category_id, label in label_of.items()}
        by_image = self._by_image(images, annotations, label_of, keep_crowd)
        self.image_ids: list[int] = []  # the file's id of each sample, in order: results keep the file's ids
        self.segmentations: list = []  # of every annotation kept, in order: the instance_ids point here
        self.collect(images, lambda image: self._annotation(image, by_image[image["id"]], label_of), self.annotation_file)

    def _labels(self, categories: list[dict], ignore_unknown: bool) -> dict[int, int]:
        """The file's category id -> label 1..K (the place of its name in `class_names`)."""
        label_of = {}
        for category in categories:
            if not isinstance(category, dict) or not {"id", "name"} <= set(category):
                raise ValueError(f"{self.annotation_file}: category {category!r} needs an 'id' and a 'name'")
            if category["name"] in self.class_names:
                label_of[category["id"]] = self.class_names.index(category["name"]) + 1
            elif not ignore_unknown:
                raise ValueError(f"{self.annotation_file}: unknown category {category['name']!r} "
                                 f"(expected one of {list(self.class_names)})")
        return label_of

    def _by_image(self, images: list[dict], annotations: list[dict], label_of: dict[int, int], keep_crowd: bool
                  ) -> dict[Any, list[dict]]:
        """Each listed image's annotations. An image id listed twice is an error (one image would be served
        with the other's boxes); an annotation of an image the file does not list is left out, counted and
        named in the log."""
        if not images:
            raise ValueError(f"{self.annotation_file}: the file lists no images")
        if not all(isinstance(image, dict) and "id" in image for image in images):
            raise ValueError(f"{self.annotation_file}: an image entry without an 'id'")
        repeated = sorted(str(i) for i, count in Counter(image["id"] for image in images).items() if count > 1)
        if repeated:
            raise ValueError(f"{self.annotation_file}: image ids listed more than once: {repeated[:10]}; give each "
                             f"image one id")
        by_image: dict[Any, list[dict]] = {image["id"]: [] for image in images}
        orphans = []
        for annotation in annotations:
            if annotation.get("image_id") not in by_image:
                orphans.append(annotation.get("id"))
            elif annotation.get("category_id") not in label_of:
                self.fixes["ignored unknown-class objects"] += 1
            elif keep_crowd or not annotation.get("iscrowd", 0):
                by_image[annotation["image_id"]].append(annotation)
        if orphans:
            self.fixes["annotations of images the file does not list"] += len(orphans)
            log.warning("%s: annotations %s name images the file does not list: left out", self.annotation_file,
                        orphans[:10])
        return by_image

    def _annotation(self, image: dict, annotations: list[dict], label_of: dict[int, int]) -> Annotation:
        """One image's annotation: xyxy boxes clipped to the image, empty ones dropped (counted). A width,
        height or bbox that is not numbers is an error naming the file and the image or annotation id."""
        width, height = image.get("width"), image.get("height")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
            raise ValueError(f"{self.annotation_file}: image {image['id']} has width={width!r}, height={height!r}; "
                             f"expected positive integers")
        for annotation in annotations:
            box = annotation.get("bbox")
            if not (isinstance(box, list) and len(box) == 4 and all(is_finite_number(v) for v in box)
                    and box[2] >= 0 and box[3] >= 0):
                raise ValueError(f"{self.annotation_file}: annotation {annotation.get('id')} has bbox {box!r}; "
                                 f"expected [x, y, width, height], 4 finite numbers, width and height >= 0")
        xywh = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        clipped, keep = clip_to_image(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), width,
                                      height, self.fixes)
        kept = [a for a, k in zip(annotations, keep) if k]
        instance_ids = np.arange(len(self.segmentations), len(self.segmentations) + len(kept), dtype=np.int64)
        self.segmentations += [a.get("segmentation") for a in kept]
        self.image_ids.append(image["id"])
        return Annotation(self.annotation_file, self.image_folder / image["file_name"], clipped[keep],
                          np.array([label_of[a["category_id"]] for a in kept], dtype=np.int64),
                          np.array([bool(a.get("iscrowd", 0)) for a in kept], dtype=bool), instance_ids,
                          (width, height))

    def sample(self, annotation: Annotation, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pixels, target = super().sample(annotation, index)
        target["iscrowd"] = target["difficult"].clone()  # crowd regions travel as the difficult flag
        return pixels, target

    def instance_masks(self, annotation: Annotation, height: int, width: int) -> np.ndarray:
        """uint8 [N, H, W] from each object's polygons or RLE (compressed or not)."""
        masks = np.zeros((len(annotation.labels), height, width), dtype=np.uint8)
        for mask, instance_id in zip(masks, annotation.instance_ids):
            segmentation = self.segmentations[instance_id]
            if not segmentation:
                continue
            if isinstance(segmentation, list):  # polygons
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = segmentation
            mask[:] = mask_utils.decode(rle)
        return masks
