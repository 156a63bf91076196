"""Per-class NMS for every image and class of a batch in one call, and each image's best detections.

Two exact greedy NMS implementations with one signature, chosen by device:
- `dense_nms` (accelerators): IoU matrices of all (image, class) groups at once and a loop over the K
  candidate ranks that stays on the device; no host reads, fixed shapes.
- `compacted_nms` (the CPU): the candidates above the score threshold gathered first, then torchvision's
  `batched_nms`, which on a CPU offsets the boxes per group for a few candidates and runs one NMS per
  group for many (one NMS over all would compare every pair across groups). It reads back to the host,
  which costs nothing where there is no device to wait for; the dense walk's K steps cost more there.
"""

import torch
from torchvision.ops import batched_nms


def dense_nms(boxes: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS within each group, all groups at once, without host reads.

    Args:
        boxes: float [G, K, 4] xyxy, each row in descending score order; scores: float [G, K] (not read:
            the order says it all; taken so both methods share one signature); valid: bool [G, K], the
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
    """`dense_nms`'s result by torchvision's `batched_nms` over the valid candidates (for the CPU: it reads
    back to the host)."""
    group, rank = valid.nonzero(as_tuple=True)
    kept = batched_nms(boxes[group, rank], scores[group, rank], group, threshold)
    keep = torch.zeros_like(valid)
    keep[group[kept], rank[kept]] = True
    return keep


def padded_best_detections(boxes: torch.Tensor, scores: torch.Tensor, keep: torch.Tensor, limit: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image's `limit` best kept candidates, best first, in fixed shapes (what an export returns).

    Args:
        boxes: float [B, C, K, 4]; scores: float [B, C, K] (>= 0); keep: bool [B, C, K]; class c is label c + 1.
    Returns:
        boxes float [B, L, 4], labels int64 [B, L], scores float [B, L] and counts int64 [B]: the first
        counts[b] rows of image b are its detections; the rows after them are zero.
    """
    batch, classes, per_class = scores.shape
    best, index = torch.where(keep, scores, -1.0).flatten(1).topk(min(limit, classes * per_class), dim=1)
    valid = best >= 0
    chosen = boxes.flatten(1, 2).gather(1, index[..., None].expand(-1, -1, 4))
    labels = index // per_class + 1
    return (chosen * valid[..., None], torch.where(valid, labels, 0), best.clamp(min=0), valid.sum(dim=1))


def per_image(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor
              ) -> list[dict[str, torch.Tensor]]:
    """`padded_best_detections`' tensors cut to each image's count: {'boxes', 'labels', 'scores'} per image.
    The counts are the one read back to the host."""
    # a real copy, so that the read is one op a dispatch counter sees on the CPU as on CUDA
    counts = counts.to("cpu", copy=True).tolist()
    return [{"boxes": boxes[image, :count], "labels": labels[image, :count], "scores": scores[image, :count]}
            for image, count in enumerate(counts)]
