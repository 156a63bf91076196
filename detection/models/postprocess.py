"""Per-class NMS for every image and class of a batch in one call, and each image's best detections.

Two exact greedy NMS implementations with one signature, chosen by device:
- `dense_nms` (accelerators): IoU matrices of all (image, class) groups at once and a loop over the K
  candidate ranks that stays on the device; no host reads, fixed shapes.
- `compacted_nms` (the CPU): the candidates above the score threshold gathered first (a read, which costs
  nothing where there is no device to wait for), then one torchvision `nms` over boxes offset per group;
  the dense loop's K steps cost more than torchvision's kernel on a CPU.
"""

import torch
from torchvision.ops import nms


def dense_nms(boxes: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS within each group, all groups at once, without host reads.

    Args:
        boxes: float [G, K, 4] xyxy; scores: float [G, K], each row best first; valid: bool [G, K], the
            candidates taking part (a prefix of each row).
    Returns:
        bool [G, K], the candidates kept: a box is dropped when a kept box before it overlaps it by IoU >
        `threshold`, as torchvision's `nms` decides.
    """
    areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    top_left = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    bottom_right = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=-1)  # [G, K, K]
    union = areas[:, :, None] + areas[:, None, :] - intersection
    suppresses = (intersection > threshold * union).triu(diagonal=1)  # i suppresses a later j
    keep = valid.clone()
    for rank in range(boxes.shape[1]):  # rank is final once every better box has had its say
        keep &= ~(suppresses[:, rank] & keep[:, rank, None])
    return keep


def compacted_nms(boxes: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """`dense_nms`'s result by torchvision's kernel over the valid candidates, the groups kept apart by
    offsetting their boxes. One host read (the number of valid candidates)."""
    group, rank = valid.nonzero(as_tuple=True)
    offset = (boxes.max() + 1) * group.to(boxes.dtype)
    kept = nms(boxes[group, rank] + offset[:, None], scores[group, rank], threshold)
    keep = torch.zeros_like(valid)
    keep[group[kept], rank[kept]] = True
    return keep


def best_detections(boxes: torch.Tensor, scores: torch.Tensor, keep: torch.Tensor,
                    limit: int) -> list[dict[str, torch.Tensor]]:
    """Each image's `limit` best kept candidates, best first.

    Args:
        boxes: float [B, C, K, 4]; scores: float [B, C, K] (>= 0); keep: bool [B, C, K]; class c is label c + 1.
    Returns:
        per image {'boxes' float [N, 4], 'labels' int64 [N], 'scores' float [N]}. The per-image counts are
        the call's one read back to the host.
    """
    batch, classes, per_class = scores.shape
    best, index = torch.where(keep, scores, -1.0).flatten(1).topk(min(limit, classes * per_class), dim=1)
    # a real copy, so that the read is one op a dispatch counter sees on the CPU as on CUDA
    counts = (best >= 0).sum(dim=1).to("cpu", copy=True).tolist()
    chosen = boxes.flatten(1, 2).gather(1, index[..., None].expand(-1, -1, 4))
    labels = index // per_class + 1
    return [{"boxes": chosen[image, :count], "labels": labels[image, :count], "scores": best[image, :count]}
            for image, count in enumerate(counts)]
