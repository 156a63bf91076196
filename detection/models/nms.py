"""Exact greedy non-maximum suppression for many groups at once, on the device, with no host reads."""

import torch

GROUPS_PER_CHUNK = 64  # IoU matrices built this many groups at a time, to bound memory


def _suppression(boxes: torch.Tensor, threshold: float) -> torch.Tensor:
    """bool [G, K, K]: box j (after i) overlaps box i by more than `threshold`, per group; boxes [G, K, 4] xyxy."""
    later = torch.ones(boxes.shape[1], boxes.shape[1], dtype=torch.bool, device=boxes.device).triu(1)
    chunks = []
    for chunk in boxes.split(GROUPS_PER_CHUNK):
        top_left = torch.maximum(chunk[:, :, None, :2], chunk[:, None, :, :2])
        bottom_right = torch.minimum(chunk[:, :, None, 2:], chunk[:, None, :, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
        area = (chunk[..., 2:] - chunk[..., :2]).prod(dim=-1)
        iou = inter / (area[:, :, None] + area[:, None, :] - inter)
        chunks.append((iou > threshold) & later)
    return torch.cat(chunks)


def greedy_nms(boxes: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS in each of G groups of K candidates, as torchvision's `nms` does it in one: a candidate
    is kept unless a kept candidate before it overlaps it by more than `threshold` (IoU). Invalid
    candidates are neither kept nor suppress others. A loop over the K candidate positions, each step one
    vectorised update of every group: nothing is read back to the host.

    Args:
        boxes: float [G, K, 4] xyxy, each group sorted by descending score.
        valid: bool [G, K], the candidates that take part (above the score threshold).
    Returns:
        bool [G, K], the candidates kept.
    """
    suppresses = _suppression(boxes, threshold)
    keep = valid.clone()
    for position in range(boxes.shape[1]):
        keep &= ~(suppresses[:, position] & keep[:, position, None])
    return keep
