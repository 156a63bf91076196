"""SSD's geometric augmentation as one affine map. Zoom-out onto a mean-filled canvas, the min-IoU crop,
the horizontal flip and the resize to the model's input are drawn together as one 2x3 matrix, so the
pixels are resampled once (cv2.warpAffine in a CPU worker, grid_sample on the GPU) and the boxes are moved
by the same matrix. Coordinates are continuous pixels: pixel (i, j) covers [j, j + 1] x [i, i + 1]."""

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

IMAGENET_MEAN_PIXEL = (123.675, 116.28, 103.53)  # RGB, 0..255: the canvas colour the network sees as zero


@dataclass(frozen=True)
class SSDGeometry:
    """The SSD paper's geometric recipe, drawn per image as an affine map to a `size` x `size` output.

    Zoom-out (probability `zoom_p`): the image at a random place on a canvas uniform(1, `max_zoom`) times
    its sides. Min-IoU crop: a threshold drawn from `min_ious` (None keeps the whole canvas), then up to
    `trials` patches of `min_scale`..1 of each side with height/width in `aspect_range`, the first that
    holds some object's centre and overlaps some object with at least that IoU. Flip with `flip_p`.
    """

    size: int
    max_zoom: float = 4.0
    zoom_p: float = 0.5
    min_ious: Sequence[Optional[float]] = (None, 0.1, 0.3, 0.5, 0.7, 0.9)
    min_scale: float = 0.3
    aspect_range: Sequence[float] = (0.5, 2.0)
    trials: int = 50
    flip_p: float = 0.5

    MAX_THRESHOLD_DRAWS = 100  # then the whole canvas: a threshold list without None cannot loop forever

    def sample(self, rng: np.random.Generator, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """float64 [2, 3] mapping source pixels (x, y, 1) to output pixels, for an image of `width` x
        `height` with xyxy pixel boxes [N, 4]."""
        left = top = 0
        canvas_w, canvas_h = width, height
        if rng.random() < self.zoom_p:
            scale = rng.uniform(1.0, self.max_zoom)
            canvas_w, canvas_h = int(width * scale), int(height * scale)
            left, top = int(rng.integers(0, canvas_w - width + 1)), int(rng.integers(0, canvas_h - height + 1))
        shift = np.array([left, top, left, top], dtype=np.float64)
        x1, y1, x2, y2 = self.sample_crop(rng, np.asarray(boxes, np.float64).reshape(-1, 4) + shift, canvas_w, canvas_h)
        scale_x, scale_y = self.size / (x2 - x1), self.size / (y2 - y1)
        matrix = np.array([[scale_x, 0.0, (left - x1) * scale_x], [0.0, scale_y, (top - y1) * scale_y]])
        if rng.random() < self.flip_p:
            matrix[0] = [-scale_x, 0.0, self.size - matrix[0, 2]]
        return matrix

    def sample_crop(self, rng: np.random.Generator, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """The min-IoU patch of a `width` x `height` canvas holding xyxy pixel `boxes` [N, 4], as integer
        xyxy; the whole canvas when there are no boxes, when None is drawn or when no patch qualifies."""
        whole = np.array([0, 0, width, height], dtype=np.float64)
        if len(boxes) == 0:
            return whole
        for _ in range(self.MAX_THRESHOLD_DRAWS):  # as the paper: a new threshold whenever every trial fails
            min_iou = self.min_ious[int(rng.integers(len(self.min_ious)))]
            if min_iou is None:
                return whole
            sides = rng.uniform(self.min_scale, 1.0, (self.trials, 2)) * [width, height]
            corners = rng.uniform(0.0, 1.0, (self.trials, 2)) * ([width, height] - sides)
            crops = np.floor(np.concatenate([corners, corners + sides], axis=1))
            aspect = sides[:, 1] / sides[:, 0]
            fits = ((aspect >= self.aspect_range[0]) & (aspect <= self.aspect_range[1])
                    & (crops[:, 2] > crops[:, 0]) & (crops[:, 3] > crops[:, 1]) & centres_inside(boxes, crops).any(1))
            overlap = box_iou(torch.from_numpy(crops), torch.from_numpy(boxes)).amax(dim=1).numpy()
            good = fits & (overlap >= min_iou)
            if good.any():
                return crops[good.argmax()]
        return whole


def centres_inside(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """bool [R, N]: whether the centre of each xyxy box [N, 4] lies strictly inside each xyxy region [R, 4]."""
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    regions = np.asarray(regions, dtype=np.float64).reshape(-1, 4)[:, :, None]
    return (centre_x > regions[:, 0]) & (centre_x < regions[:, 2]) & (centre_y > regions[:, 1]) & (centre_y < regions[:, 3])


def map_boxes(boxes: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """xyxy pixel boxes [N, 4] moved by `matrix` (float [2, 3], scale and flip only) into a `size` x `size`
    output and clipped to it, and bool [N]: which to keep (the centre lies strictly inside the output;
    others fell outside the crop)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xs = boxes[:, [0, 2]] * matrix[0, 0] + matrix[0, 2]
    ys = boxes[:, [1, 3]] * matrix[1, 1] + matrix[1, 2]
    moved = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
    keep = centres_inside(moved, np.array([0, 0, size, size]))[0]
    return np.clip(moved, 0, size), keep


def warp_pixels(pixels: np.ndarray, matrix: np.ndarray, size: int, *, fill, nearest: bool = False) -> np.ndarray:
    """uint8 [H, W(, C)] resampled once by `matrix` (source to output pixels) to [size, size(, C)];
    bilinear (nearest for masks), `fill` outside the source."""
    centred = matrix.copy()  # cv2 puts pixel centres at integers: shift by half a pixel either side
    centred[:, 2] += centred[:, :2].sum(axis=1) * 0.5 - 0.5
    return cv2.warpAffine(pixels, centred, (size, size), flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
