"""What every dataset shares: the annotation record, reading pixels upright and in 8-bit RGB, the read /
check / skip / convert path of a sample (`AnnotatedImages`), the torchvision (image, target) pair, list
batches."""

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from detection.data.errors import BAD_SAMPLE_ADVICE, BadSample

log = logging.getLogger(__name__)
T = TypeVar("T")

# PIL's process-wide decompression-bomb check raises an error that names no file; each dataset's
# `max_image_pixels` replaces it, checked from the header before decoding.
Image.MAX_IMAGE_PIXELS = None
MAX_IMAGE_PIXELS = 178_956_970  # the default: where PIL's own check raised (twice its warning level)
EXIF_ORIENTATION = 0x0112
JPEG_START = b"\xff\xd8"  # the SOI marker every JPEG file begins with
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # grayscale of up to 16 bits a pixel


@dataclass(frozen=True)
class Annotation:
    """One image's objects, as every reader records them. boxes float32 [N, 4] continuous xyxy pixels;
    labels int64 [N] (1..K, 0 is background); difficult bool [N] (COCO's iscrowd); instance_ids int64 [N],
    where each object's mask is found (VOC: its 1-based SegmentationObject index; COCO: its place in the
    dataset's list of segmentations); source, the file the objects come from; size, the (width, height)
    that file gives the image, upright, or None."""

    source: Path
    image_path: Optional[Path]
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    instance_ids: np.ndarray
    size: Optional[tuple[int, int]]

    def kept(self, keep: np.ndarray) -> "Annotation":
        """The objects where bool [N] `keep` is true."""
        return replace(self, **{name: getattr(self, name)[keep] for name in ("boxes", "labels", "difficult",
                                                                             "instance_ids")})


def skips_bad_samples(on_bad_sample: str) -> bool:
    """A dataset's `on_bad_sample` setting: 'error' (False) raises on a bad sample, 'skip' (True) leaves it out."""
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
    return on_bad_sample == "skip"


def clip_to_image(boxes: np.ndarray, width: float, height: float, fixes: Counter) -> tuple[np.ndarray, np.ndarray]:
    """Boxes float [N, 4] xyxy clipped to the image, and bool [N]: which are still non-empty. Both fixes
    are counted in `fixes` ('boxes clipped to the image', 'empty boxes dropped')."""
    clipped = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    fixes["boxes clipped to the image"] += int((clipped != boxes).any(axis=1).sum())
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    fixes["empty boxes dropped"] += int((~keep).sum())
    return clipped, keep


def split_fingerprint(records: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> str:
    """sha256 of a split's records, (image file name, boxes float32 [N, 4], labels int64 [N]) in order:
    equal for two copies of the same data wherever they live, different when any image, box or label
    differs. A resumed run checks it so that data that moved is the data it trained on."""
    digest = hashlib.sha256()
    for name, boxes, labels in records:
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(boxes, dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _unreadable(path: Path, error: BaseException) -> ValueError:
    return ValueError(f"{path}: unreadable image ({type(error).__name__}: {error})")


class ImageTooLarge(ValueError):
    """An image over the dataset's `max_image_pixels`."""


def _check_pixels(path: Path, width: int, height: int, max_image_pixels: Optional[int]) -> None:
    if max_image_pixels is not None and width * height > max_image_pixels:
        raise ImageTooLarge(f"{path}: {width}x{height} = {width * height:,} pixels, over "
                         f"max_image_pixels={max_image_pixels:,} (the dataset's setting; raise it to read the image)")


def image_header(path: Path, max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS) -> tuple[tuple[int, int], int]:
    """From the header alone: the image's (width, height) as it shows upright, and its EXIF orientation
    (1: stored upright, or a value outside 1..8, which nothing turns; 5 to 8: turned by 90 degrees).
    ValueError naming the file when it is unreadable or over `max_image_pixels`."""
    try:
        with Image.open(path) as image:
            (width, height), orientation = image.size, image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError) as error:
        raise _unreadable(path, error) from error
    _check_pixels(path, width, height, max_image_pixels)
    orientation = orientation if orientation in range(1, 9) else 1  # as PIL's exif_transpose: others turn nothing
    return ((height, width) if orientation in (5, 6, 7, 8) else (width, height)), orientation


def read_pixels(path: Path, *, max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The pixels of an image file as uint8 [H, W, 3] RGB, upright: its EXIF orientation applied, as viewers
    and annotation tools show it. 16-bit grayscale and RGB are scaled to 8 bits (x 255 / 65535); palette,
    grayscale, bilevel and CMYK images are converted; an alpha channel is dropped (each pixel keeps its
    stored colour, nothing is composited). A missing, empty, truncated or corrupt file, or one over
    `max_image_pixels` (None: no limit), is a ValueError naming it."""
    try:
        with Image.open(path) as image:
            _check_pixels(path, *image.size, max_image_pixels)
            # exif_transpose copies every image; an upright one (most) is decoded once, into the array
            turned = image.getexif().get(EXIF_ORIENTATION, 1) != 1
            upright = ImageOps.exif_transpose(image) if turned else image
            if upright.mode in SIXTEEN_BIT_MODES:
                gray = np.round(np.asarray(upright, dtype=np.float64) * (255 / 65535)).clip(0, 255)
                return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
            return np.array(upright if upright.mode == "RGB" else upright.convert("RGB"))
    except ImageTooLarge:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise _unreadable(path, error) from error


def read_mask(path: Path) -> np.ndarray:
    """A palette PNG's indices as uint8 [H, W] (no orientation, no conversion); ValueError naming an
    unreadable file."""
    try:
        with Image.open(path) as image:
            return np.array(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise _unreadable(path, error) from error


class AnnotatedImages(Dataset):
    """The path every reader's samples take, yielding (image, target) in torchvision's detection contract.

    image: uint8 [3, H, W], RGB (detection.models take it as it is). target: 'boxes' float32 [N, 4] xyxy
    pixels, 'labels' int64 [N] (0 = background), 'difficult' bool [N], 'image_id' int64 (index in this
    split), and with `with_masks` 'masks' uint8 [N, H, W] (from the reader's `instance_masks`).

    A reader fills `annotations` with `collect`; a sample is then its image read upright (EXIF orientation
    applied), checked against the annotation's size, its masks read, `transforms` applied and converted.
    With `on_bad_sample='skip'` a sample that fails any of it is logged, counted (`fixes`) and left out
    (None, which the collate function drops); with 'error' the error names the file.
    """

    def __init__(self, *, transforms: Optional[Callable], with_masks: bool, on_bad_sample: str,
                 max_image_pixels: Optional[int]):
        self.transforms = transforms
        self.with_masks = with_masks
        self.skip_bad = skips_bad_samples(on_bad_sample)
        self.max_image_pixels = max_image_pixels
        self.fixes: Counter = Counter()
        self.annotations: list[Annotation] = []

    def collect(self, items: Iterable[T], read: Callable[[T], Annotation], where: Path) -> None:
        """`annotations` from `read(item)` for each item; a read failing with OSError or ValueError raises,
        or with 'skip' is logged and counted. The fixes are logged once, and no readable sample at all is an
        error naming `where`."""
        for item in items:
            try:
                self.annotations.append(read(item))
            except (OSError, ValueError) as error:
                if not self.skip_bad:
                    raise
                self.fixes["skipped samples"] += 1
                log.warning("skipped: %s", error)
        self.fixes = +self.fixes  # without the zero counts
        if self.fixes:
            log.warning("%s: %s", where, ", ".join(f"{n} {kind}" for kind, n in self.fixes.items()))
        if not self.annotations:
            raise ValueError(f"{where}: no readable samples ({dict(self.fixes)})")

    def __len__(self) -> int:
        return len(self.annotations)

    def image_paths(self) -> list[Path]:
        """Each sample's image file, in order."""
        return [annotation.image_path for annotation in self.annotations]

    def records(self) -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
        """(image file name, boxes, labels) per sample, in order (for `split_fingerprint`)."""
        return ((a.image_path.name, a.boxes, a.labels) for a in self.annotations)

    def __getitem__(self, index: int) -> Optional[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        annotation = self.annotations[index]
        return load_or_skip(annotation.image_path, lambda: self.sample(annotation, index), skip=self.skip_bad)

    def sample(self, annotation: Annotation, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if getattr(self.transforms, "decodes_on_device", False):
            return self.planned_sample(annotation, index)
        pixels = read_pixels(annotation.image_path, max_image_pixels=self.max_image_pixels)
        height, width = pixels.shape[:2]
        check_size(annotation, width, height)
        masks = self.instance_masks(annotation, height, width) if self.with_masks else None
        sample = {"image": pixels, "bboxes": annotation.boxes, "labels": annotation.labels,
                  "difficult": annotation.difficult, "masks": masks}
        return to_image_and_target(augmented(self.transforms, sample, annotation.image_path), index)

    def planned_sample(self, annotation: Annotation, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """For augmentation on the device: the JPEG's bytes uint8 [L] as stored, or, for other formats and
        images turned by EXIF (the GPU decoder ignores the orientation), the pixels uint8 [3, H, W]; with the
        target the transforms' `plan` draws. Instance masks are not read (nothing on the device moves them)."""
        path = annotation.image_path
        (width, height), orientation = image_header(path, self.max_image_pixels)
        check_size(annotation, width, height)
        data = np.fromfile(path, dtype=np.uint8)
        if orientation != 1 or data[:2].tobytes() != JPEG_START:
            data = read_pixels(path, max_image_pixels=self.max_image_pixels).transpose(2, 0, 1)
        return self.transforms.plan(torch.from_numpy(np.ascontiguousarray(data)), width, height, boxes=annotation.boxes,
                                    labels=annotation.labels, difficult=annotation.difficult, index=index)

    def instance_masks(self, annotation: Annotation, height: int, width: int) -> np.ndarray:
        """uint8 [N, height, width], one mask per object of `annotation`."""
        raise NotImplementedError(f"{type(self).__name__} has no instance masks")


def check_size(annotation: Annotation, width: int, height: int) -> None:
    """ValueError naming both files when the image is not the size its annotation gives."""
    if annotation.size is not None and annotation.size != (width, height):
        raise ValueError(f"{annotation.image_path} is {width}x{height} but {annotation.source} says "
                         f"{annotation.size[0]}x{annotation.size[1]}")


def load_or_skip(path: Path, load: Callable[[], T], *, skip: bool) -> Optional[T]:
    """`load()`, one sample's read, checks and augmentation: any failure in it is a BadSample naming `path`
    and the setting that skips it, or, with `skip`, logged and None (the collate function drops and counts
    it)."""
    try:
        return load()
    except Exception as error:
        message = str(error) if str(path) in str(error) else f"{path}: {type(error).__name__}: {error}"
        if not skip:
            raise BadSample(f"{message}; {BAD_SAMPLE_ADVICE}") from error
        log.warning("skipped: %s", message)
        return None


def augmented(transforms: Optional[Callable], sample: dict[str, Any], path: Path) -> dict[str, Any]:
    """`transforms(**sample)` (the sample as it is without them); a failure inside names `path`."""
    if transforms is None:
        return sample
    try:
        return transforms(**sample)
    except Exception as error:
        raise ValueError(f"{path}: augmentation failed ({type(error).__name__}: {error})") from error


def to_image_and_target(sample: dict[str, Any], index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """An (augmented) sample of uint8 [H, W, 3] 'image', 'bboxes', 'labels', 'difficult' and, when not None,
    'masks' (plus 'iscrowd' when present) as torchvision's pair, the image left in bytes: uint8 [3, H, W]
    (a view of the HWC pixels; the model makes it float on its device, so the CPU never touches float pixels);
    target 'boxes' float32 [N, 4] xyxy pixels, 'labels' int64 [N], 'difficult' bool [N], 'image_id' int64
    (`index`), 'masks' uint8 [N, H, W]."""
    target = {"boxes": torch.as_tensor(np.asarray(sample["bboxes"], dtype=np.float32).reshape(-1, 4)),
              "labels": torch.as_tensor(np.asarray(sample["labels"], dtype=np.int64)),
              "difficult": torch.as_tensor(np.asarray(sample["difficult"], dtype=bool)),
              "image_id": torch.tensor(index)}
    if sample.get("masks") is not None:
        target["masks"] = torch.as_tensor(np.asarray(sample["masks"], dtype=np.uint8))
    return torch.from_numpy(np.ascontiguousarray(sample["image"])).permute(2, 0, 1), target


def collate_detection(batch: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], int]:
    """Keeps images and targets as lists (detection images differ in size and object count), dropping
    the samples a dataset skipped (None). Returns (images, targets, number skipped)."""
    kept = [item for item in batch if item is not None]
    return [image for image, _ in kept], [target for _, target in kept], len(batch) - len(kept)
