"""A VOC-layout dataset read the way training reads it, every image decoded in full, reporting what would hurt
training, by file: errors (a missing, truncated or undecodable image, an unreadable annotation, an XML
<size> the image disagrees with, an unknown class, a zero-area box, a box listed twice, one image file in
both splits) and warnings (a box reaching outside the image, which the loader clips; a box with a side
under 2 pixels; an image without objects, which trains as a negative; an XML <filename> naming another
image; one image file under two ids of a split); and statistics of what is there."""

import functools
import hashlib
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from detection.data.samples import read_pixels
from detection.data.voc import find_image, names_another_file, parse_voc_xml, split_ids

ERRORS = ("missing or unreadable image", "unreadable annotation", "size disagrees with the image", "unknown class",
          "zero-area box", "duplicate box", "image in both splits")
WARNINGS = ("box outside the image", "tiny box", "image without objects", "<filename> names another image",
            "image under two ids")
TINY = 2.0  # pixels: a box with a side under it is more likely a stray click than an object


@dataclass
class ImageAudit:
    """One image id: its problems as (kind, 'file: detail'); boxes float [N, 4] xyxy pixels and labels
    int64 [N] (None when the annotation is unreadable); the image file's SHA-1 (None when unreadable)."""

    image_id: str
    problems: list[tuple[str, str]] = field(default_factory=list)
    boxes: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    digest: Optional[str] = None


@dataclass
class SplitAudit:
    """One split: `problems` maps each kind (ERRORS, WARNINGS) to its 'file: detail' lines; boxes float
    [N, 4] xyxy pixels and labels int64 [N] of every readable object; objects per image; each readable
    image file's SHA-1 and the ids it was listed under."""

    name: str
    images: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    boxes: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    objects_per_image: list[int] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, image: ImageAudit) -> None:
        self.images += 1
        for kind, line in image.problems:
            self.problems[kind].append(line)
        if image.boxes is not None:
            self.boxes.append(image.boxes)
            self.labels.append(image.labels)
            self.objects_per_image.append(len(image.boxes))
        if image.digest is not None:
            self.files[image.digest].append(image.image_id)


def audit_image(root: Path, image_id: str, class_names: Sequence[str]) -> ImageAudit:
    """Reads one image's annotation and decodes its image in full, as training would."""
    audit = ImageAudit(image_id)
    xml_path = root / "Annotations" / f"{image_id}.xml"
    try:
        objects, filename, unknown = parse_voc_xml(xml_path, class_names, ignore_unknown=True)
    except (OSError, ValueError) as error:
        audit.problems.append(("unreadable annotation", str(error)))
        return audit
    if unknown:
        audit.problems.append(("unknown class", f"{xml_path}: unknown class {', '.join(map(repr, unknown))} "
                                                f"(expected one of {list(class_names)})"))
    try:
        image_path = find_image(root, image_id, xml_path)
        height, width = read_pixels(image_path).shape[:2]
        size = (width, height)
        audit.digest = hashlib.sha1(image_path.read_bytes()).hexdigest()
        if names_another_file(image_id, filename):
            line = f"{xml_path}: <filename> {filename}, but the image of {image_id} is {image_path.name} (read)"
            audit.problems.append(("<filename> names another image", line))
    except (OSError, ValueError) as error:
        audit.problems.append(("missing or unreadable image", str(error)))
        size = objects.size
    if objects.size is not None and size is not None and objects.size != size:
        audit.problems.append(("size disagrees with the image", f"{xml_path}: <size> {objects.size[0]}x"
                                                                 f"{objects.size[1]}, image {size[0]}x{size[1]}"))
    audit.problems += box_problems(xml_path, objects, size, class_names)
    audit.boxes, audit.labels = objects.boxes, objects.labels
    return audit


def box_problems(xml_path: Path, objects, size: Optional[tuple[int, int]],
                 class_names: Sequence[str]) -> list[tuple[str, str]]:
    """Zero-area, tiny, outside (of an image `size` = (width, height)) and repeated boxes, and no box at all."""
    boxes, problems = objects.boxes, []
    for index in np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])):
        problems.append(("zero-area box", f"{xml_path}: object {objects.instance_ids[index]} {boxes[index].tolist()}"))
    sides = boxes[:, 2:] - boxes[:, :2]
    for index in np.flatnonzero((sides > 0).all(axis=1) & (sides < TINY).any(axis=1)):
        problems.append(("tiny box", f"{xml_path}: object {objects.instance_ids[index]} {boxes[index].tolist()}"))
    if size is not None:
        outside = (boxes[:, :2] < 0).any(axis=1) | (boxes[:, 2] > size[0]) | (boxes[:, 3] > size[1])
        for index in np.flatnonzero(outside):
            problems.append(("box outside the image", f"{xml_path}: object {objects.instance_ids[index]} "
                                                      f"{boxes[index].tolist()} in {size[0]}x{size[1]}"))
    seen = Counter((int(label), *box.tolist()) for label, box in zip(objects.labels, boxes))
    for (label, *box), count in seen.items():
        if count > 1:
            problems.append(("duplicate box", f"{xml_path}: {class_names[label - 1]} {box} listed {count} times"))
    if len(boxes) == 0:
        problems.append(("image without objects", str(xml_path)))
    return problems


def audit_split(root: Path, split: str, class_names: Sequence[str], *, workers: int = 0,
                progress: bool = False) -> SplitAudit:
    """Every image the split file lists (a missing split file raises, naming it), read by `workers`
    processes (0: in this one), in the file's order; the same image file under two ids is a warning."""
    ids = split_ids(root / "ImageSets" / "Main" / f"{split}.txt")
    audit = SplitAudit(split)
    read = functools.partial(audit_image, root, class_names=class_names)
    with get_context("spawn").Pool(workers) if workers else nullcontext() as pool:
        images = pool.imap(read, ids, chunksize=8) if pool else map(read, ids)
        for image in tqdm(images, total=len(ids), desc=f"decoding {split}", disable=not progress, leave=False):
            audit.add(image)
    for listed in audit.files.values():
        if len(listed) > 1:
            audit.problems["image under two ids"].append(f"{root / 'ImageSets' / 'Main' / f'{split}.txt'}: "
                                                         f"{', '.join(listed)} are one image file")
    return audit


def leaked_images(train: SplitAudit, val: SplitAudit) -> None:
    """Files listed in both splits, as errors of the validation split (its scores would flatter the model)."""
    for digest in train.files.keys() & val.files.keys():
        val.problems["image in both splits"].append(f"{val.name} {', '.join(val.files[digest])} is the image of "
                                                    f"{train.name} {', '.join(train.files[digest])}")


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
