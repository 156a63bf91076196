"""COCO-json datasets: an image folder and an annotation file (instances_*.json)."""

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from detection.data.samples import (MAX_IMAGE_PIXELS, augmented, clip_to_image, load_or_skip, read_pixels,
                                    skips_bad_samples, to_image_and_target)

log = logging.getLogger(__name__)


class COCODetection(Dataset):
    """A COCO-json split, yielding (image, target) in torchvision's detection contract.

    image: float32 [3, H, W] in [0, 1], RGB. target: 'boxes' float32 [N, 4] xyxy pixels (from COCO's xywh),
    'labels' int64 [N] (1..K, the position of the category's name in `class_names`), 'iscrowd' bool [N],
    'difficult' bool [N] (= iscrowd: VOC metrics ignore crowd regions as they ignore difficult objects),
    'image_id' int64 (index in this split), and with `with_masks` 'masks' uint8 [N, H, W] decoded from
    polygons or RLE. `category_ids[label]` is the file's category id again, for results in COCO's terms.

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
        self.skip_bad = skips_bad_samples(on_bad_sample)
        self.max_image_pixels = max_image_pixels
        self.image_folder = Path(image_folder).expanduser()
        self.annotation_file = Path(annotation_file).expanduser()
        self.class_names = tuple(class_names)
        self.transforms = transforms
        self.with_masks = with_masks
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
        self.fixes: Counter = Counter()
        label_of = {}
        for category in categories:
            if category["name"] in self.class_names:
                label_of[category["id"]] = self.class_names.index(category["name"]) + 1
            elif not ignore_unknown_classes:
                raise ValueError(f"{self.annotation_file}: unknown category {category['name']!r} "
                                 f"(expected one of {list(self.class_names)})")
        self.category_ids = {label: category_id for category_id, label in label_of.items()}
        by_image: dict[int, list[dict]] = {image["id"]: [] for image in images}
        for annotation in annotations:
            if annotation["category_id"] not in label_of:
                self.fixes["ignored unknown-class objects"] += 1
            elif annotation["image_id"] in by_image and (keep_crowd or not annotation.get("iscrowd", 0)):
                by_image[annotation["image_id"]].append(annotation)
        self.images = images
        self.objects = [self._objects(image, by_image[image["id"]], label_of) for image in images]
        self.fixes = +self.fixes
        if self.fixes:
            log.warning("%s: %s", self.annotation_file, ", ".join(f"{n} {kind}" for kind, n in self.fixes.items()))
        if not self.images:
            raise ValueError(f"{self.annotation_file}: the file lists no images")

    def _objects(self, image: dict, annotations: list[dict], label_of: dict[int, int]) -> dict:
        """One image's annotations: xyxy boxes clipped to the image, empty ones dropped (counted)."""
        width, height = image["width"], image["height"]
        xywh = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        clipped, keep = clip_to_image(boxes, width, height, self.fixes)
        kept = [a for a, k in zip(annotations, keep) if k]
        return {"boxes": clipped[keep], "labels": np.array([label_of[a["category_id"]] for a in kept], dtype=np.int64),
                "iscrowd": np.array([bool(a.get("iscrowd", 0)) for a in kept], dtype=bool),
                "segmentations": [a.get("segmentation") for a in kept]}

    def __len__(self) -> int:
        return len(self.images)

    def records(self) -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
        """(image file name, boxes, labels) per sample, in order (for `split_fingerprint`)."""
        return ((image["file_name"], objects["boxes"], objects["labels"]) for image, objects in zip(self.images, self.objects))

    def __getitem__(self, index: int) -> Optional[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """The sample, or None when its image cannot be read, is not the size the file says, or its
        augmentation fails, with `on_bad_sample='skip'`."""
        path = self.image_folder / self.images[index]["file_name"]
        return load_or_skip(path, lambda: self._sample(index, path), skip=self.skip_bad)

    def _sample(self, index: int, path: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, objects = self.images[index], self.objects[index]
        pixels = read_pixels(path, max_image_pixels=self.max_image_pixels)
        height, width = pixels.shape[:2]
        if (width, height) != (image["width"], image["height"]):
            raise ValueError(f"{path} is {width}x{height} but {self.annotation_file} says "
                             f"{image['width']}x{image['height']}")
        masks = self._masks(objects, height, width) if self.with_masks else None
        sample = {"image": pixels, "bboxes": objects["boxes"], "labels": objects["labels"],
                  "difficult": objects["iscrowd"], "masks": masks}
        pixels, target = to_image_and_target(augmented(self.transforms, sample, path), index)
        target["iscrowd"] = target["difficult"].clone()  # crowd regions travel as the difficult flag
        return pixels, target

    def _masks(self, objects: dict, height: int, width: int) -> np.ndarray:
        """uint8 [N, H, W] from each object's polygons or RLE (compressed or not)."""
        masks = np.zeros((len(objects["labels"]), height, width), dtype=np.uint8)
        for mask, segmentation in zip(masks, objects["segmentations"]):
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
