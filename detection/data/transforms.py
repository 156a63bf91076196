"""Augmentation pipelines built on albumentations, moving boxes, labels, difficult flags and masks together,
and SSD's geometric recipe (zoom-out onto a mean-filled canvas, min-IoU crop, flip, resize) as one warp."""

from typing import Any, Optional, Sequence

import albumentations as A
import numpy as np
from albumentations.core.transforms_interface import DualTransform

from detection.data.geometry import IMAGENET_MEAN_PIXEL, SSDGeometry, map_boxes, warp_pixels


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


class SSDWarp(DualTransform):
    """SSD's zoom-out, min-IoU crop, flip and resize as one albumentations transform, drawn by
    `geometry` and applied as one warp: the pixels are resampled once (bilinear, `fill` outside the image;
    masks nearest, 0 outside), and objects whose centre falls outside the crop are dropped.

    Args:
        geometry: draws each image's affine map (an SSDGeometry).
        fill: RGB canvas colour, 0..255.
    """

    def __init__(self, geometry: SSDGeometry, fill: Sequence[float] = IMAGENET_MEAN_PIXEL, p: float = 1.0):
        super().__init__(p=p)
        self.geometry = geometry
        self.fill = tuple(fill)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        bboxes = np.asarray(data.get("bboxes", np.zeros((0, 4))))
        boxes = bboxes[:, :4] * [width, height, width, height]
        return {"matrix": self.geometry.sample(self.random_generator, boxes, width, height)}

    def apply(self, img: np.ndarray, matrix: np.ndarray, **params) -> np.ndarray:
        return warp_pixels(img, matrix, self.geometry.size, fill=self.fill[: img.shape[2]] if img.ndim == 3 else self.fill[0])

    def apply_to_mask(self, mask: np.ndarray, matrix: np.ndarray, **params) -> np.ndarray:
        return warp_pixels(mask, matrix, self.geometry.size, fill=0, nearest=True)

    def apply_to_bboxes(self, bboxes: np.ndarray, matrix: np.ndarray, shape, **params) -> np.ndarray:
        """bboxes: [N, 4 + extra] normalised xyxy (albumentations' internal format) in the image, to the output."""
        height, width = shape[:2]
        boxes, keep = map_boxes(bboxes[:, :4] * [width, height, width, height], matrix, self.geometry.size)
        return np.concatenate([boxes / self.geometry.size, bboxes[:, 4:]], axis=1)[keep]

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("geometry", "fill")
