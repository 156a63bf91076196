"""Matching ground truth to anchors and encoding boxes as SSD regression targets."""

from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_convert, box_iou


def greedy_bipartite_match(iou: torch.Tensor, num_boxes: torch.Tensor) -> torch.Tensor:
    """Greedy bipartite matching of the original SSD for a whole batch: repeatedly pair, in each image, the
    highest-IoU (box, anchor) among boxes and anchors not paired yet, so every box gets its own anchor (ties
    go to the lower box, then the lower anchor). A loop over box slots that stays on the device: no host
    reads, whatever the number of boxes per image.

    Args:
        iou: float [B, G, A] with G <= A; rows of padding slots (past num_boxes) hold -1.
        num_boxes: int64 [B], the real boxes per image.
    Returns:
        int64 [B, G], the anchor each box takes (0 in padding slots).
    """
    batch, slots, num_anchors = iou.shape
    remaining = iou.clone()
    anchor_per_box = torch.zeros(batch, slots, dtype=torch.int64, device=iou.device)
    images = torch.arange(batch, device=iou.device)
    for step in range(slots):
        flat = remaining.flatten(1).argmax(dim=1)  # [B], stays on the device
        box, anchor = flat // num_anchors, flat % num_anchors
        live = step < num_boxes  # images that still have a box to pair
        anchor_per_box[images, box] = torch.where(live, anchor, anchor_per_box[images, box])
        remaining[images, box, :] = -1.0
        remaining[images, :, anchor] = -1.0
    return anchor_per_box


def pad_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Per-image boxes float [N_i, 4] and labels int64 [N_i] as one padded batch: boxes float [B, G, 4]
    (padding slots hold the unit box, so that encoding them stays finite), labels int64 [B, G] (0 in
    padding) and valid bool [B, G], G the largest N_i. Sizes come from shapes: no host reads."""
    counts = torch.tensor([len(image_boxes) for image_boxes in boxes], device=boxes[0].device)
    padded_boxes = pad_sequence([b.reshape(-1, 4) for b in boxes], batch_first=True)
    valid = torch.arange(padded_boxes.shape[1], device=counts.device) < counts[:, None]
    unit_box = padded_boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    return (torch.where(valid[..., None], padded_boxes, unit_box),
            pad_sequence(list(labels), batch_first=True).to(torch.int64), valid)


class SSDBoxCoder(nn.Module):
    """Encodes ground truth against fixed anchors (a batch at once, or one image), and decodes regressions
    back to boxes.

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
        """One image: `encode_batch` of boxes float [G, 4] and labels int64 [G]; returns loc_targets float32
        [A, 4] and cls_targets int64 [A]."""
        loc_targets, cls_targets = self.encode_batch(*pad_targets([boxes], [labels]))
        return loc_targets[0], cls_targets[0]

    def encode_batch(self, boxes: torch.Tensor, labels: torch.Tensor,
                     valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The SSD targets of a batch at once: each box first takes its own anchor (greedy bipartite
        matching), then every anchor whose best IoU reaches `iou_threshold` takes that box. No host reads.

        Args:
            boxes: float [B, G, 4], xyxy in model-input pixels; labels: int64 [B, G], 1..num_classes-1;
            valid: bool [B, G], the real boxes (the rest is padding, as `pad_targets` makes it).
        Returns:
            loc_targets float32 [B, A, 4] (zeros where background), cls_targets int64 [B, A] (0 = background).
        """
        batch, slots = labels.shape
        num_anchors = self.anchors.shape[0]
        if slots == 0:
            return (torch.zeros(batch, num_anchors, 4, device=self.anchors.device),
                    torch.zeros(batch, num_anchors, dtype=torch.int64, device=self.anchors.device))
        iou = box_iou(boxes.reshape(-1, 4), self.anchors).view(batch, slots, num_anchors)
        iou = iou.masked_fill(~valid[..., None], -1.0)
        best_iou, box_per_anchor = iou.max(dim=1)  # [B, A]
        matched = best_iou >= self.iou_threshold
        forced = greedy_bipartite_match(iou, valid.sum(dim=1))
        # each real box's own anchor takes it; padding slots write into a spare column, then dropped
        forced = torch.where(valid, forced, num_anchors)
        spare = box_per_anchor.new_zeros(batch, 1)
        box_per_anchor = torch.cat([box_per_anchor, spare], 1).scatter_(
            1, forced, torch.arange(slots, device=iou.device).expand(batch, slots))[:, :num_anchors]
        matched = torch.cat([matched, spare.bool()], 1).scatter_(1, forced, True)[:, :num_anchors]
        cls_targets = torch.where(matched, labels.gather(1, box_per_anchor), torch.zeros_like(box_per_anchor))
        matched_boxes = boxes.gather(1, box_per_anchor[..., None].expand(batch, num_anchors, 4))
        loc_targets = self.encode_offsets(matched_boxes) * matched.unsqueeze(-1)
        return loc_targets, cls_targets

    def encode_offsets(self, boxes: torch.Tensor) -> torch.Tensor:
        """float [..., A, 4] xyxy boxes, one per anchor, to float [..., A, 4] SSD offsets."""
        centre_wh = box_convert(boxes, "xyxy", "cxcywh")
        anchor_centre_wh = box_convert(self.anchors, "xyxy", "cxcywh")
        centre = (centre_wh[..., :2] - anchor_centre_wh[:, :2]) / (self.variances[0] * anchor_centre_wh[:, 2:])
        size = torch.log(centre_wh[..., 2:] / anchor_centre_wh[:, 2:]) / self.variances[1]
        return torch.cat([centre, size], dim=-1)

    def decode(self, offsets: torch.Tensor) -> torch.Tensor:
        """float [..., A, 4] SSD offsets to float [..., A, 4] xyxy boxes in model-input pixels."""
        anchor_centre_wh = box_convert(self.anchors, "xyxy", "cxcywh")
        centre = offsets[..., :2] * self.variances[0] * anchor_centre_wh[:, 2:] + anchor_centre_wh[:, :2]
        size = torch.exp(offsets[..., 2:] * self.variances[1]) * anchor_centre_wh[:, 2:]
        return torch.cat([centre - size / 2, centre + size / 2], dim=-1)
