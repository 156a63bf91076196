"""Augmentation pipelines built on albumentations, moving boxes, labels, difficult flags and masks together."""

from typing import Optional, Sequence

import albumentations as A


def build_augmentation(*, transforms: Sequence[A.BasicTransform]) -> Optional[A.Compose]:
    """An albumentations pipeline over VOC-style xyxy pixel boxes ('pascal_voc') whose `labels` and
    `difficult` follow the boxes; called as pipeline(image=, bboxes=, labels=, difficult=[, masks=]).
    No transforms gives None: the dataset then skips augmentation."""
    if not transforms:
        return None
    return A.Compose(list(transforms),
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "difficult"]))
