"""What every dataset shares: reading pixels, the torchvision (image, target) pair, list batches."""

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from PIL import Image


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


def read_pixels(path: Path, mode: Optional[str]) -> np.ndarray:
    """The decoded pixels of an image file (converted to `mode` when given); a missing, empty, truncated
    or corrupt file is a ValueError naming it."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert(mode) if mode else image)
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"{path}: unreadable image ({type(error).__name__}: {error})") from error


def to_image_and_target(sample: dict[str, Any], index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """An (augmented) sample of uint8 [H, W, 3] 'image', 'bboxes', 'labels', 'difficult' and, when not None,
    'masks' (plus 'iscrowd' when present) as torchvision's pair: image float32 [3, H, W] in [0, 1];
    target 'boxes' float32 [N, 4] xyxy pixels, 'labels' int64 [N], 'difficult' bool [N], 'image_id' int64
    (`index`), 'masks' uint8 [N, H, W]."""
    target = {"boxes": torch.as_tensor(np.asarray(sample["bboxes"], dtype=np.float32).reshape(-1, 4)),
              "labels": torch.as_tensor(np.asarray(sample["labels"], dtype=np.int64)),
              "difficult": torch.as_tensor(np.asarray(sample["difficult"], dtype=bool)),
              "image_id": torch.tensor(index)}
    if sample.get("masks") is not None:
        target["masks"] = torch.as_tensor(np.asarray(sample["masks"], dtype=np.uint8))
    image = torch.from_numpy(np.ascontiguousarray(sample["image"])).permute(2, 0, 1).float().div_(255)
    return image, target


def collate_detection(batch: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], int]:
    """Keeps images and targets as lists (detection images differ in size and object count), dropping
    the samples a dataset skipped (None). Returns (images, targets, number skipped)."""
    kept = [item for item in batch if item is not None]
    return [image for image, _ in kept], [target for _, target in kept], len(batch) - len(kept)
