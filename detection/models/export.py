"""A detector as one tensor in, one tensor out, for serving and for MLflow's pyfunc flavour."""

import torch
from torch import nn


class BatchedDetector(nn.Module):
    """Wraps an eval-mode detector with torchvision's contract (a list of images in, a list of dicts out).

    forward: images float [N, 3, H, W] in [0, 1] -> float [N, max_detections, 6], each row
    (x1, y1, x2, y2, score, label) in pixels of the input, by descending score; rows past an image's
    detections are zero (score 0, label 0 = background).
    """

    def __init__(self, detector: nn.Module, max_detections: int = 100):
        super().__init__()
        self.detector = detector.eval()
        self.max_detections = max_detections

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = images.new_zeros(len(images), self.max_detections, 6)
        for row, detections in zip(out, self.detector(list(images))):
            count = min(len(detections["scores"]), self.max_detections)
            row[:count, :4] = detections["boxes"][:count]
            row[:count, 4] = detections["scores"][:count]
            row[:count, 5] = detections["labels"][:count].to(row.dtype)
        return out
