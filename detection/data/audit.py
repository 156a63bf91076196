"""A VOC-layout dataset read the way training reads it, reporting what would hurt training, by file:
errors (a missing or unreadable image or annotation, an XML <size> the image disagrees with, an unknown
class, a zero-area box, a box listed twice) and warnings (a box reaching outside the image, which the loader
clips; a box with a side under 2 pixels; an image without objects, which trains as a negative); and
statistics of what is there."""

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from detection.data.samples import image_header
from detection.data.voc import find_image, names_another_file, parse_voc_xml, split_ids

ERRORS = ("missing or unreadable image", "unreadable annotation", "size disagrees with the image", "unknown class",
          "zero-area box", "duplicate box")
WARNINGS = ("box outside the image", "tiny box", "image without objects", "<filename> names another image")
TINY = 2.0  # pixels: a box with a side under it is more likely a stray click than an object


@dataclass
class SplitAudit:
    """One split: `problems` maps each kind (ERRORS, WARNINGS) to its 'file: detail' lines; boxes float
    [N, 4] xyxy pixels and labels int64 [N] of every readable object; objects per image."""

    name: str
    images: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    boxes: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    objects_per_image: list[int] = field(default_factory=list)


def audit_image(root: Path, image_id: str, class_names: Sequence[str], audit: SplitAudit) -> None:
    """Reads one image's annotation and image header into `audit`."""
    xml_path = root / "Annotations" / f"{image_id}.xml"
    try:
        objects, filename, unknown = parse_voc_xml(xml_path, class_names, ignore_unknown=True)
    except (OSError, ValueError) as error:
        audit.problems["unreadable annotation"].append(str(error))
        return
    if unknown:
        audit.problems["unknown class"].append(f"{xml_path}: unknown class {', '.join(map(repr, unknown))} "
                                               f"(expected one of {list(class_names)})")
    try:
        image_path = find_image(root, image_id, xml_path)
        size, _ = image_header(image_path)
        if names_another_file(image_id, filename):
            audit.problems["<filename> names another image"].append(
                f"{xml_path}: <filename> {filename}, but the image of {image_id} is {image_path.name} (read)")
    except (OSError, ValueError) as error:
        audit.problems["missing or unreadable image"].append(str(error))
        size = objects.size
    if objects.size is not None and size is not None and objects.size != size:
        audit.problems["size disagrees with the image"].append(
            f"{xml_path}: <size> {objects.size[0]}x{objects.size[1]}, image {size[0]}x{size[1]}")
    boxes = objects.boxes
    for index in np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])):
        audit.problems["zero-area box"].append(f"{xml_path}: object {objects.instance_ids[index]} {boxes[index].tolist()}")
    sides = boxes[:, 2:] - boxes[:, :2]
    for index in np.flatnonzero((sides > 0).all(axis=1) & (sides < TINY).any(axis=1)):
        audit.problems["tiny box"].append(f"{xml_path}: object {objects.instance_ids[index]} {boxes[index].tolist()}")
    if size is not None:
        outside = (boxes[:, :2] < 0).any(axis=1) | (boxes[:, 2] > size[0]) | (boxes[:, 3] > size[1])
        for index in np.flatnonzero(outside):
            audit.problems["box outside the image"].append(
                f"{xml_path}: object {objects.instance_ids[index]} {boxes[index].tolist()} in {size[0]}x{size[1]}")
    seen = Counter((int(label), *box.tolist()) for label, box in zip(objects.labels, boxes))
    for (label, *box), count in seen.items():
        if count > 1:
            audit.problems["duplicate box"].append(f"{xml_path}: {class_names[label - 1]} {box} listed {count} times")
    if len(boxes) == 0:
        audit.problems["image without objects"].append(str(xml_path))
    audit.boxes.append(boxes)
    audit.labels.append(objects.labels)
    audit.objects_per_image.append(len(boxes))


def audit_split(root: Path, split: str, class_names: Sequence[str]) -> SplitAudit:
    """Every image the split file lists (a missing split file raises, naming it)."""
    audit = SplitAudit(split)
    for image_id in split_ids(root / "ImageSets" / "Main" / f"{split}.txt"):
        audit.images += 1
        audit_image(root, image_id, class_names, audit)
    return audit


def statistics(audit: SplitAudit, class_names: Sequence[str]) -> dict:
    """Objects per class and per image, box width, height, area and aspect ratio (width / height)
    quantiles, in pixels of the image."""
    boxes = np.concatenate(audit.boxes) if audit.boxes else np.zeros((0, 4))
    labels = np.concatenate(audit.labels) if audit.labels else np.zeros(0, dtype=np.int64)
    quantiles = (0.0, 0.1, 0.5, 0.9, 1.0)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sane = (width > 0) & (height > 0)

    def spread(values: np.ndarray) -> dict:
        return {str(q): float(v) for q, v in zip(quantiles, np.quantile(values, quantiles))} if len(values) else {}

    return {"images": audit.images, "objects": int(len(labels)),
            "objects_per_class": {name: int((labels == label).sum()) for label, name in enumerate(class_names, 1)},
            "images_per_class": {name: int(sum((image == label).any() for image in audit.labels))
                                 for label, name in enumerate(class_names, 1)},
            "objects_per_image": spread(np.asarray(audit.objects_per_image)),
            "width": spread(width[sane]), "height": spread(height[sane]),
            "area": spread((width * height)[sane]), "aspect_ratio": spread((width / np.where(sane, height, 1))[sane])}


def error_count(audits: Sequence[SplitAudit]) -> int:
    return sum(len(audit.problems.get(kind, ())) for audit in audits for kind in ERRORS)
