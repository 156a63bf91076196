"""What predict.py reads: the images of a folder, a glob or one file (upright, 8-bit RGB), and the frames of
a video (OpenCV), each failure named with its file."""

import glob
import logging
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from detection.data.samples import read_pixels

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def is_video(source: str) -> bool:
    """Whether `source` is an existing file with a video suffix."""
    return Path(source).suffix.lower() in VIDEO_SUFFIXES and Path(source).is_file()


def image_files(source: str) -> tuple[list[Path], int]:
    """The image files `source` names (a folder's, sorted; a glob's matches; one file) and how many other
    files were passed over (by suffix). FileNotFoundError or ValueError, naming `source`, when it names
    nothing or no image."""
    path = Path(source).expanduser()
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.is_file())
    elif any(char in source for char in "*?["):
        candidates = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    elif path.is_file():
        candidates = [path]
    else:
        raise FileNotFoundError(f"{source}: no such file or folder")
    images = [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ValueError(f"{source}: no images ({len(candidates)} other files; images end in "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return images, len(candidates) - len(images)


class ImageFiles(Dataset):
    """The images at `paths`, each as (the path as text, uint8 [3, H, W] upright RGB, or None when unreadable, the
    error message or None)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, Optional[torch.Tensor], Optional[str]]:
        path = self.paths[index]
        try:
            return str(path), torch.from_numpy(read_pixels(path)).permute(2, 0, 1), None
        except ValueError as error:
            return str(path), None, str(error)


def collate_files(batch: list) -> list:
    """ImageFiles' items kept as a list of (path, image or None, error or None): sizes differ, some fail."""
    return batch


class VideoFrames:
    """The frames of a video file as uint8 [3, H, W] RGB, in order; `fps` and `size` (width, height) from
    its header. ValueError naming the file when OpenCV cannot decode it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.capture = cv2.VideoCapture(str(self.path))
        ok, first = self.capture.read() if self.capture.isOpened() else (False, None)
        if not ok:
            self.capture.release()
            raise ValueError(f"{self.path}: cannot be decoded as a video (OpenCV read no frame)")
        self.first = first
        self.fps = self.capture.get(cv2.CAP_PROP_FPS) or 25.0
        self.size = (first.shape[1], first.shape[0])

    def batch_count(self, size: int) -> Optional[int]:
        """How many `batches(size)` there are by the header's frame count (None where it gives none)."""
        frames = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        return (frames + size - 1) // size if frames > 0 else None

    def batches(self, size: int) -> Iterator[list[tuple[str, torch.Tensor, None]]]:
        """Lists of up to `size` (name '<file>#<frame index>', frame, None), as predict_batches takes them."""
        batch = []
        for index, frame in enumerate(self):
            batch.append((f"{self.path.name}#{index}", frame, None))
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        frame = self.first
        try:
            while frame is not None:
                yield torch.from_numpy(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)
                ok, frame = self.capture.read()
                frame = frame if ok else None
        finally:
            self.capture.release()


class VideoWriter:
    """Writes uint8 [3, H, W] RGB frames to an MPEG-4 file (OpenCV's mp4v) at `fps`; frames of another size
    are resized to the first's."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer, self.size = Path(path), fps, None, None

    def write(self, frame: torch.Tensor) -> None:
        pixels = cv2.cvtColor(np.ascontiguousarray(frame.permute(1, 2, 0).numpy()), cv2.COLOR_RGB2BGR)
        if self.writer is None:
            self.size = (pixels.shape[1], pixels.shape[0])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
        if (pixels.shape[1], pixels.shape[0]) != self.size:
            pixels = cv2.resize(pixels, self.size)
        self.writer.write(pixels)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
