"""Datasets in the PASCAL VOC layout: JPEGImages/, Annotations/*.xml, ImageSets/Main/<split>.txt and,
for instance masks, SegmentationObject/*.png."""

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from detection.data.targets import check_boxes

VOID_INDEX = 255  # SegmentationObject's border / ignore value


@dataclass(frozen=True)
class Annotation:
    """One image's objects. boxes float32 [N, 4] continuous xyxy pixels; labels int64 [N]; difficult bool [N];
    instance_ids int64 [N], each object's 1-based position in the XML (its SegmentationObject index)."""

    image_path: Path
    mask_path: Path
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    instance_ids: np.ndarray


def parse_voc_xml(xml_path: Path, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads one VOC annotation file.

    VOC boxes are 1-based and pixel-inclusive; they become continuous xyxy once, here:
    x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax.

    Returns:
        boxes float32 [N, 4], labels int64 [N] (class_names[k - 1] has label k), difficult bool [N].
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{xml_path}: malformed XML ({error})") from error
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = obj.findtext("name", "").strip()
        if name not in class_names:
            raise ValueError(f"{xml_path}: unknown class {name!r} (expected one of {list(class_names)})")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{xml_path}: object {name!r} has no bndbox")
        xmin, ymin, xmax, ymax = (float(box.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
        labels.append(class_names.index(name) + 1)
        difficult.append(obj.findtext("difficult", "0").strip() == "1")
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64),
            np.asarray(difficult, dtype=bool))


class VOCDetection(Dataset):
    """One split of a VOC-layout folder, yielding (image, target) in torchvision's detection contract.

    image: float32 [3, H, W] in [0, 1], RGB. target: 'boxes' float32 [N, 4] xyxy pixels, 'labels' int64
    [N] (0 = background), 'difficult' bool [N], 'image_id' int64 (index in this split), and with
    `with_masks` 'masks' uint8 [N, H, W] from SegmentationObject (instance k is the k-th XML object).

    Args:
        root: the folder holding JPEGImages/, Annotations/, ImageSets/Main/.
        split: the name of the ImageSets/Main/<split>.txt id list.
        class_names: foreground classes in label order.
        transforms: called as transforms(image=, bboxes=, labels=, difficult=[, masks=]) (albumentations).
        keep_difficult: False drops difficult objects (for training; evaluation wants them).
    """

    def __init__(self, *, root: str, split: str, class_names: Sequence[str],
                 transforms: Optional[Callable] = None, keep_difficult: bool = True, with_masks: bool = False):
        self.root = Path(root).expanduser()
        self.class_names = tuple(class_names)
        self.transforms = transforms
        self.with_masks = with_masks
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"{split_file}: split file not found (expected a VOC layout under {self.root})")
        ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        self.annotations = [self._annotation(image_id, keep_difficult) for image_id in ids]

    def _annotation(self, image_id: str, keep_difficult: bool) -> Annotation:
        xml_path = self.root / "Annotations" / f"{image_id}.xml"
        boxes, labels, difficult = parse_voc_xml(xml_path, self.class_names)
        check_boxes(torch.from_numpy(boxes), str(xml_path))
        keep = np.ones_like(difficult) if keep_difficult else ~difficult
        return Annotation(self.root / "JPEGImages" / f"{image_id}.jpg",
                          self.root / "SegmentationObject" / f"{image_id}.png",
                          boxes[keep], labels[keep], difficult[keep], np.flatnonzero(keep) + 1)

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        annotation = self.annotations[index]
        with Image.open(annotation.image_path) as image:
            pixels = np.array(image.convert("RGB"))
        sample = {"image": pixels, "bboxes": annotation.boxes, "labels": annotation.labels,
                  "difficult": annotation.difficult}
        masks = self._instance_masks(annotation, pixels.shape[:2]) if self.with_masks else None
        if masks is not None and len(masks):  # albumentations cannot stack zero masks
            sample["masks"] = masks
        if self.transforms is not None:
            sample = self.transforms(**sample)
        target = {
            "boxes": torch.as_tensor(np.asarray(sample["bboxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(sample["labels"], dtype=np.int64)),
            "difficult": torch.as_tensor(np.asarray(sample["difficult"], dtype=bool)),
            "image_id": torch.tensor(index),
        }
        if self.with_masks:
            height, width = sample["image"].shape[:2]
            target["masks"] = torch.as_tensor(np.asarray(sample.get("masks", np.zeros((0, height, width))), dtype=np.uint8))
        image = torch.from_numpy(np.ascontiguousarray(sample["image"])).permute(2, 0, 1).float().div_(255)
        return image, target

    def _instance_masks(self, annotation: Annotation, size: tuple[int, int]) -> np.ndarray:
        """uint8 [N, H, W], one mask per kept object from its SegmentationObject index; 255 (void) is left out."""
        with Image.open(annotation.mask_path) as png:
            instance_map = np.asarray(png)
        if instance_map.shape != size:
            raise ValueError(f"{annotation.mask_path}: mask size {instance_map.shape} differs from image {size}")
        return (instance_map[None] == annotation.instance_ids.reshape(-1, 1, 1)).astype(np.uint8)


def collate_detection(batch: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Keeps images and targets as lists: detection images differ in size and object count."""
    images, targets = zip(*batch)
    return list(images), list(targets)
