"""The target contract shared by datasets and models."""

import torch


def check_boxes(boxes: torch.Tensor, source: str) -> None:
    """Raises ValueError naming `source` unless `boxes` is float [N, 4] xyxy with x1 < x2 and y1 < y2."""
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{source}: boxes must have shape [N, 4], got {list(boxes.shape)}")
    degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
    if degenerate.any():
        raise ValueError(f"{source}: degenerate box {boxes[degenerate].tolist()} (need x1 < x2 and y1 < y2)")
