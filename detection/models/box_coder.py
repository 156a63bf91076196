"""Matching ground truth to anchors and encoding boxes as SSD regression targets."""

from typing import Sequence

import torch
from torch import nn
from torchvision.ops import box_convert, box_iou


def bipartite_match(iou: torch.Tensor) -> torch.Tensor:
    """Greedy bipartite matching of the original SSD: repeatedly pair the highest-IoU (box, anchor)
    among boxes and anchors not paired yet, so every box gets its own anchor.

    Args:
        iou: float [G, A] with G <= A.
    Returns:
        int64 [G], the anchor index each box takes.
    """
    remaining = iou.clone()
    num_anchors = iou.shape[1]
    anchor_per_box = torch.empty(iou.shape[0], dtype=torch.int64, device=iou.device)
    for _ in range(iou.shape[0]):
        flat_index = int(remaining.argmax())
        box, anchor = divmod(flat_index, num_anchors)
        anchor_per_box[box] = anchor
        remaining[box, :] = -1.0
        remaining[:, anchor] = -1.0
    return anchor_per_box


class SSDBoxCoder(nn.Module):
    """Encodes one image's ground truth against fixed anchors, and decodes regressions back to boxes.

    Offsets are the SSD ones with variances (v0, v1): ((c - c_a) / (v0 * wh_a), log(wh / wh_a) / v1).

    Args:
        anchors: float32 [A, 4], xyxy in model-input pixels.
        iou_threshold: an anchor whose best IoU reaches this takes that box (SSD paper: 0.5).
        variances: (centre, size) scales of the offsets.
    """

    def __init__(self, anchors: torch.Tensor, *, iou_threshold: float = 0.5,
                 variances: Sequence[float] = (0.1, 0.2)):
        super().__init__()
        self.register_buffer("anchors", anchors, persistent=False)
        self.iou_threshold = float(iou_threshold)
        self.variances = tuple(float(v) for v in variances)

    def encode(self, boxes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            boxes: float [G, 4], xyxy in model-input pixels.
            labels: int64 [G], 1..num_classes-1.
        Returns:
            loc_targets float32 [A, 4] (zeros where background) and cls_targets int64 [A] (0 = background).
        """
        num_anchors = self.anchors.shape[0]
        if boxes.numel() == 0:
            return (torch.zeros(num_anchors, 4, device=self.anchors.device),
                    torch.zeros(num_anchors, dtype=torch.int64, device=self.anchors.device))
        iou = box_iou(boxes, self.anchors)  # [G, A]
        best_iou, box_per_anchor = iou.max(dim=0)
        matched = best_iou >= self.iou_threshold
        forced_anchors = bipartite_match(iou)
        box_per_anchor[forced_anchors] = torch.arange(boxes.shape[0], device=boxes.device)
        matched[forced_anchors] = True
        cls_targets = torch.where(matched, labels[box_per_anchor], torch.zeros_like(box_per_anchor))
        loc_targets = self.encode_offsets(boxes[box_per_anchor]) * matched.unsqueeze(1)
        return loc_targets, cls_targets

    def encode_offsets(self, boxes: torch.Tensor) -> torch.Tensor:
        """float [A, 4] xyxy boxes, one per anchor, to float [A, 4] SSD offsets."""
        centre_wh = box_convert(boxes, "xyxy", "cxcywh")
        anchor_centre_wh = box_convert(self.anchors, "xyxy", "cxcywh")
        centre = (centre_wh[:, :2] - anchor_centre_wh[:, :2]) / (self.variances[0] * anchor_centre_wh[:, 2:])
        size = torch.log(centre_wh[:, 2:] / anchor_centre_wh[:, 2:]) / self.variances[1]
        return torch.cat([centre, size], dim=1)

    def decode(self, offsets: torch.Tensor) -> torch.Tensor:
        """float [..., A, 4] SSD offsets to float [..., A, 4] xyxy boxes in model-input pixels."""
        anchor_centre_wh = box_convert(self.anchors, "xyxy", "cxcywh")
        centre = offsets[..., :2] * self.variances[0] * anchor_centre_wh[:, 2:] + anchor_centre_wh[:, :2]
        size = torch.exp(offsets[..., 2:] * self.variances[1]) * anchor_centre_wh[:, 2:]
        return torch.cat([centre - size / 2, centre + size / 2], dim=-1)
