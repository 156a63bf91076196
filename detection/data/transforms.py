"""Augmentation pipelines built on albumentations, moving boxes, labels, difficult flags and masks together,
and the two SSD transforms albumentations lacks: zoom-out onto a mean-filled canvas and the min-IoU crop."""

from typing import Any, Optional, Sequence

import albumentations as A
import numpy as np
import torch
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.core.transforms_interface import DualTransform
from torchvision.ops import box_iou

IMAGENET_MEAN_PIXEL = (123.675, 116.28, 103.53)  # RGB, 0..255: the canvas colour the network sees as zero


class DetectionAugmentation:
    """An albumentations pipeline over VOC-style xyxy pixel boxes ('pascal_voc') whose labels, difficult
    flags and instance masks follow the boxes: when a transform drops a box (cropped away, degenerate),
    its mask goes too, so mask k stays the mask of box k.

    Called as augmentation(image=uint8 [H, W, 3], bboxes=float [N, 4], labels=int [N], difficult=bool [N]
    [, masks=uint8 [N, H, W]]) and returns the same keys.

    Args:
        transforms: albumentations transforms, applied in order.
        min_side: boxes narrower or lower than this (pixels) after the transforms are dropped.
    """

    def __init__(self, transforms: Sequence[A.BasicTransform], min_side: float = 1.0):
        self.pipeline = A.Compose(list(transforms), bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["labels", "difficult", "instance"], min_width=min_side,
            min_height=min_side, clip=True))

    def __call__(self, *, image: np.ndarray, bboxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray,
                 masks: Optional[np.ndarray] = None) -> dict[str, Any]:
        sample = {"image": image, "bboxes": bboxes, "labels": labels, "difficult": difficult,
                  "instance": np.arange(len(labels))}
        if masks is not None and len(masks):  # albumentations cannot stack zero masks
            sample["masks"] = masks
        out = self.pipeline(**sample)
        result = {key: out[key] for key in ("image", "bboxes", "labels", "difficult")}
        if masks is not None:
            height, width = out["image"].shape[:2]
            kept = np.asarray(out["instance"], dtype=np.int64)
            result["masks"] = np.asarray(out["masks"])[kept] if len(kept) else np.zeros((0, height, width), np.uint8)
        return result

    def set_random_seed(self, seed: int) -> None:
        """Makes the next calls reproducible (the loader reseeds before each item)."""
        self.pipeline.set_random_seed(seed)


def build_augmentation(*, transforms: Sequence[A.BasicTransform]) -> Optional[DetectionAugmentation]:
    """The `augment=` group's pipeline; no transforms gives None (the dataset then skips augmentation)."""
    return DetectionAugmentation(transforms) if transforms else None


class ZoomOut(DualTransform):
    """SSD's "expand": places the image at a random position on a canvas up to `max_scale` times its
    side, filled with `fill` (the mean pixel), so that objects become smaller. Masks are padded with 0.

    Args:
        max_scale: the canvas side is uniform(1, max_scale) times the image side.
        fill: RGB canvas colour, 0..255.
    """

    def __init__(self, max_scale: float = 4.0, fill: Sequence[float] = IMAGENET_MEAN_PIXEL, p: float = 0.5):
        super().__init__(p=p)
        self.max_scale = max_scale
        self.fill = tuple(fill)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        scale = self.py_random.uniform(1.0, self.max_scale)
        canvas = (int(height * scale), int(width * scale))
        top = self.py_random.randint(0, canvas[0] - height)
        left = self.py_random.randint(0, canvas[1] - width)
        return {"canvas": canvas, "top": top, "left": left}

    def _paste(self, array: np.ndarray, canvas, top: int, left: int, fill) -> np.ndarray:
        out = np.empty((*canvas, *array.shape[2:]), dtype=array.dtype)
        out[...] = np.asarray(fill, dtype=array.dtype)
        out[top:top + array.shape[0], left:left + array.shape[1]] = array
        return out

    def apply(self, img: np.ndarray, canvas, top: int, left: int, **params) -> np.ndarray:
        return self._paste(img, canvas, top, left, self.fill[: img.shape[2]] if img.ndim == 3 else self.fill[0])

    def apply_to_mask(self, mask: np.ndarray, canvas, top: int, left: int, **params) -> np.ndarray:
        return self._paste(mask, canvas, top, left, 0)

    def apply_to_bboxes(self, bboxes: np.ndarray, canvas, top: int, left: int, shape, **params) -> np.ndarray:
        """bboxes: [N, 4 + extra] normalised xyxy (albumentations' internal format) in the image, to the canvas."""
        height, width = shape[:2]
        out = bboxes.copy()
        out[:, [0, 2]] = (bboxes[:, [0, 2]] * width + left) / canvas[1]
        out[:, [1, 3]] = (bboxes[:, [1, 3]] * height + top) / canvas[0]
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_scale", "fill")


class MinIoURandomCrop(BaseCrop):
    """SSD's sampled patch: picks a minimum IoU among `min_ious` (None keeps the whole image), then tries
    up to `trials` patches of side 0.3..1 of the image's and aspect 0.5..2 until one overlaps some object
    with at least that IoU and holds the centre of at least one object. Objects whose centre lies outside
    the patch are dropped; the others are clipped to it. Images without objects are left as they are.
    """

    MAX_THRESHOLD_DRAWS = 100  # then the whole image: a threshold list without None cannot loop forever

    def __init__(self, min_ious: Sequence[Optional[float]] = (None, 0.1, 0.3, 0.5, 0.7, 0.9),
                 min_scale: float = 0.3, aspect_range: tuple[float, float] = (0.5, 2.0), trials: int = 50,
                 p: float = 1.0):
        super().__init__(p=p)
        self.min_ious = tuple(min_ious)
        self.min_scale = min_scale
        self.aspect_range = tuple(aspect_range)
        self.trials = trials

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        whole = (0, 0, width, height)
        bboxes = np.asarray(data.get("bboxes", np.zeros((0, 4))))
        if len(bboxes) == 0:
            return {"crop_coords": whole}
        boxes = bboxes[:, :4] * [width, height, width, height]
        for _ in range(self.MAX_THRESHOLD_DRAWS):  # as the paper: a new threshold whenever every trial fails
            min_iou = self.py_random.choice(self.min_ious)
            if min_iou is None:
                break
            for _ in range(self.trials):
                crop_w = self.py_random.uniform(self.min_scale, 1.0) * width
                crop_h = self.py_random.uniform(self.min_scale, 1.0) * height
                if not self.aspect_range[0] <= crop_h / crop_w <= self.aspect_range[1]:
                    continue
                left = self.py_random.uniform(0, width - crop_w)
                top = self.py_random.uniform(0, height - crop_h)
                crop = (int(left), int(top), int(left + crop_w), int(top + crop_h))
                if crop[2] <= crop[0] or crop[3] <= crop[1] or not _centres_inside(boxes, crop).any():
                    continue
                ious = box_iou(torch.tensor([crop], dtype=torch.float64), torch.from_numpy(boxes).double())
                if float(ious.max()) >= min_iou:
                    return {"crop_coords": crop}
        return {"crop_coords": whole}

    def apply_to_bboxes(self, bboxes: np.ndarray, crop_coords, shape, **params) -> np.ndarray:
        """Drops the boxes whose centre is outside the crop, then crops the rest (albumentations clips them)."""
        height, width = shape[:2]
        inside = _centres_inside(bboxes[:, :4] * [width, height, width, height], crop_coords)
        return super().apply_to_bboxes(bboxes[inside], crop_coords, shape=shape, **params)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_ious", "min_scale", "aspect_range", "trials")


def _centres_inside(boxes: np.ndarray, crop: Sequence[float]) -> np.ndarray:
    """bool [N]: whether the centre of each xyxy pixel box [N, 4] lies strictly inside the xyxy crop."""
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return (centre_x > crop[0]) & (centre_x < crop[2]) & (centre_y > crop[1]) & (centre_y < crop[3])
