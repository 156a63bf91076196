"""Datasets in the PASCAL VOC layout: JPEGImages/, Annotations/*.xml, ImageSets/Main/<split>.txt and,
for instance masks, SegmentationObject/*.png."""

import codecs
import logging
import math
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from detection.data.classes import checked_class_names
from detection.data.samples import MAX_IMAGE_PIXELS, AnnotatedImages, Annotation, clip_to_image, image_header, read_mask

log = logging.getLogger(__name__)

VOID_INDEX = 255  # SegmentationObject's border / ignore value
# a sample's image is JPEGImages/<id><suffix> (as the VOC devkit reads it), in the formats the decoder reads
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".JPG", ".JPEG", ".PNG")
DIFFICULT = {"0": False, "1": True, "false": False, "true": True}


class VOCFile(NamedTuple):
    """One annotation file read: its objects (`image_path` not yet known), its <filename> and the class
    names of the objects left out because they are not in the list (with `ignore_unknown`)."""

    objects: Annotation
    filename: Optional[str]
    unknown: tuple[str, ...]


def parse_voc_xml(xml_path: Path, class_names: Sequence[str], *, ignore_unknown: bool = False) -> VOCFile:
    """Reads one VOC annotation file.

    VOC boxes are 1-based and pixel-inclusive; they become continuous xyxy once, here:
    x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax.

    The objects' instance_ids are their 1-based places in the file (their SegmentationObject index), and
    their size the file's <size> when it gives one.

    Args:
        ignore_unknown: leave out (and name) objects whose class is not in `class_names` instead of
            raising an error that names the file and the class.
    """
    if not xml_path.is_file():
        raise FileNotFoundError(f"{xml_path}: annotation file not found")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{xml_path}: malformed XML ({error})") from error
    boxes, labels, difficult, positions, unknown = [], [], [], [], []
    for position, obj in enumerate(root.iter("object"), start=1):
        name = obj.findtext("name", "").strip()
        if name not in class_names:
            if ignore_unknown:
                unknown.append(name)
                continue
            raise ValueError(f"{xml_path}: unknown class {name!r} (expected one of {list(class_names)})")
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = coordinates = [float(box.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"{xml_path}: object {position} ({name!r}) has no valid bndbox") from None
        if not all(math.isfinite(value) for value in coordinates):
            raise ValueError(f"{xml_path}: object {position} ({name!r}) has bndbox {coordinates}; coordinates must "
                             f"be finite numbers")
        flag = (obj.findtext("difficult") or "0").strip().lower()
        if flag not in DIFFICULT:
            raise ValueError(f"{xml_path}: object {position} ({name!r}) has difficult={flag!r}; expected 0, 1, "
                             f"true or false")
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
        labels.append(class_names.index(name) + 1)
        difficult.append(DIFFICULT[flag])
        positions.append(position)
    objects = Annotation(xml_path, None, np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                         np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool),
                         np.asarray(positions, dtype=np.int64), image_size(root, xml_path))
    return VOCFile(objects, (root.findtext("filename") or "").strip() or None, tuple(unknown))


def image_size(root: ET.Element, xml_path: Path) -> Optional[tuple[int, int]]:
    """The (width, height) an annotation's <size> gives, None when it gives none (or zeros); a value that is
    not a whole number of pixels ('abc', 'inf', '-3', '2.5') is a ValueError naming the file."""
    size = []
    for key in ("width", "height"):
        text = (root.findtext(f"size/{key}") or "0").strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0 and value == int(value)):
            raise ValueError(f"{xml_path}: <size><{key}> is {text!r}; expected a whole number of pixels")
        size.append(int(value))
    return (size[0], size[1]) if all(size) else None


def read_listing(path: Path) -> str:
    """A text file as an editor saved it: UTF-16 (by its byte-order mark) or UTF-8 (a BOM or none); other
    bytes are a ValueError naming the file."""
    data = path.read_bytes()
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    try:
        return data.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: neither UTF-8 nor UTF-16 text ({error}); save it as UTF-8") from None


def split_ids(split_file: Path) -> list[str]:
    """The image ids a split file lists (UTF-8 or UTF-16 by its BOM, CRLF line ends are fine; an id is its whole line);
    a missing or empty file, or an id listed twice, is an error naming the file."""
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file}: split file not found (expected a VOC layout: "
                                f"ImageSets/<image set>/<split>.txt listing image ids)")
    ids = [line.strip() for line in read_listing(split_file).splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{split_file}: the split lists no images")
    repeated = sorted(image_id for image_id, count in Counter(ids).items() if count > 1)
    if repeated:
        raise ValueError(f"{split_file}: ids listed more than once: {repeated[:10]}"
                         f"{f' and {len(repeated) - 10} more' if len(repeated) > 10 else ''}; list each image once")
    return ids


def find_image(root: Path, image_id: str, xml_path: Path) -> Path:
    """root/JPEGImages/<id> with the first image extension found: a sample's image is its id's, as the VOC
    devkit reads it, whatever the XML's <filename> says (see `names_another_file`)."""
    folder = root / "JPEGImages"
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{image_id}{suffix}").is_file():
            return folder / f"{image_id}{suffix}"
    raise FileNotFoundError(f"{xml_path}: its image {folder / image_id}{IMAGE_SUFFIXES[0]} does not exist (nor "
                            f"{image_id} with another image extension)")


def names_another_file(image_id: str, filename: Optional[str]) -> bool:
    """Whether an XML's <filename> names another image than its id's (a copied or renamed annotation: its
    boxes may belong to that other image)."""
    return filename is not None and Path(filename).stem != image_id


class VOCDetection(AnnotatedImages):
    """One split of a VOC-layout folder, yielding (image, target) in torchvision's detection contract (see
    AnnotatedImages), masks from SegmentationObject (instance k is the k-th XML object).

    Args:
        root: the folder holding JPEGImages/, Annotations/, ImageSets/Main/.
        split: the name of the ImageSets/<image_set>/<split>.txt id list.
        image_set: 'Main' (detection) or 'Segmentation' (the VOC2012 subset with instance masks).
        class_names: foreground classes in label order.
        transforms: a DetectionAugmentation, called as transforms(image=, bboxes=, labels=, difficult=, masks=).
        keep_difficult: False drops difficult objects (for training; evaluation wants them).
        on_bad_sample: 'error' raises on a malformed or missing annotation, a missing or unreadable image
            or mask, naming the file; 'skip' leaves such samples out, logs each and counts them
            (`fixes` here; the loop reports the images skipped while loading).
        ignore_unknown_classes: leave out objects of other classes (counted) instead of an error.
        max_image_pixels: larger images are bad samples (None: no limit).

    The split file may come from any editor (a UTF-8 BOM and CRLF line ends are fine; an id is its whole
    line, spaces included); an id listed twice is an error naming the file. The image is JPEGImages/<id>
    with any extension the decoder reads, as the devkit reads it; an XML <filename> naming another image is
    logged and counted. Images are read upright (EXIF
    orientation applied, counted in `fixes`), and the upright size must be the XML's <size>: a mismatch is
    a bad sample naming both. Boxes outside the image are clipped to it, and boxes left empty are dropped;
    both are counted in `fixes` and logged. Images without objects stay, as negatives.
    """

    def __init__(self, *, root: str, split: str, class_names: Sequence[str],
                 transforms: Optional[Callable] = None, keep_difficult: bool = True, with_masks: bool = False,
                 on_bad_sample: str = "error", ignore_unknown_classes: bool = False, image_set: str = "Main",
                 max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS):
        super().__init__(transforms=transforms, with_masks=with_masks, on_bad_sample=on_bad_sample,
                         max_image_pixels=max_image_pixels)
        self.root = Path(root).expanduser()
        self.class_names = checked_class_names(class_names)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset root not found (expected Annotations/, JPEGImages/ "
                                    f"and ImageSets/Main/ there)")
        split_file = self.root / "ImageSets" / image_set / f"{split}.txt"
        ids = split_ids(split_file)
        self.collect(ids, lambda image_id: self._annotation(image_id, keep_difficult, ignore_unknown_classes),
                     split_file)

    def _annotation(self, image_id: str, keep_difficult: bool, ignore_unknown: bool) -> Annotation:
        """One sample's annotation, boxes clipped to the image and emptied ones dropped (both counted)."""
        xml_path = self.root / "Annotations" / f"{image_id}.xml"
        objects, filename, unknown = parse_voc_xml(xml_path, self.class_names, ignore_unknown=ignore_unknown)
        self.fixes["ignored unknown-class objects"] += len(unknown)
        image_path = find_image(self.root, image_id, xml_path)
        if names_another_file(image_id, filename):
            log.warning("%s: <filename> %s is not the id's image; %s is read", xml_path, filename, image_path.name)
            self.fixes["XML <filename>s naming another image (the id's is read)"] += 1
        try:
            size, orientation = image_header(image_path, self.max_image_pixels)
        except ValueError:  # unreadable or too large: reported (or skipped) when the sample is read
            if objects.size is None:
                raise
            size, orientation = objects.size, 1
        if objects.size is not None and objects.size != size:
            turned = f" upright (EXIF orientation {orientation})" if orientation != 1 else ""
            raise ValueError(f"{xml_path}: <size> says {objects.size[0]}x{objects.size[1]} but the image "
                             f"{image_path} is {size[0]}x{size[1]}{turned}")
        if orientation != 1:  # 3, 6, 8 turn the image; 2, 4, 5, 7 mirror it (5 and 7 turning it too)
            self.fixes[f"images {'rotated' if orientation in (3, 6, 8) else 'mirrored'} by their EXIF orientation"] += 1
        clipped, keep = clip_to_image(objects.boxes, *size, self.fixes)
        if not keep_difficult:
            keep &= ~objects.difficult
        return replace(objects, boxes=clipped, image_path=image_path, size=size).kept(keep)

    def instance_masks(self, annotation: Annotation, height: int, width: int) -> np.ndarray:
        """uint8 [N, H, W], one mask per kept object from its SegmentationObject index; 255 (void) is left out."""
        mask_path = self.root / "SegmentationObject" / f"{annotation.source.stem}.png"
        instance_map = read_mask(mask_path)
        if instance_map.shape != (height, width):
            raise ValueError(f"{mask_path}: mask size {instance_map.shape} differs from image {(height, width)}")
        return (instance_map[None] == annotation.instance_ids.reshape(-1, 1, 1)).astype(np.uint8)


class ConcatDetection(ConcatDataset):
    """Several detection datasets as one split (e.g. VOC2007 + VOC2012 trainval): 'image_id' is the index
    in the whole, so that evaluation never confuses two images; the parts share one augmentation."""

    def __init__(self, datasets: Sequence[Dataset]):
        super().__init__(datasets)
        self.transforms = getattr(datasets[0], "transforms", None)
        self.fixes = sum((getattr(dataset, "fixes", Counter()) for dataset in datasets), Counter())

    def records(self) -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
        return (record for dataset in self.datasets for record in dataset.records())

    def image_paths(self) -> list[Path]:
        return [path for dataset in self.datasets for path in dataset.image_paths()]

    def __getitem__(self, index: int):
        item = super().__getitem__(index)
        if item is not None:
            item[1]["image_id"] = torch.tensor(index)
        return item


def build_voc_devkit(*, root: str, sets: Sequence[Sequence[str]], **options) -> ConcatDetection:
    """The union of VOCdevkit (year, split) sets, e.g. [["VOC2007", "trainval"], ["VOC2012", "trainval"]]:
    root/<year>/ImageSets/Main/<split>.txt each; `options` go to every VOCDetection."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(f"{root_path}: VOCdevkit root not found (expected VOC2007/, VOC2012/ there; "
                                f"set dataset.root or the VOC_ROOT environment variable)")
    return ConcatDetection([VOCDetection(root=str(root_path / year), split=split, **options) for year, split in sets])
