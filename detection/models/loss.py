"""The SSD MultiBox loss with hard-negative mining (Liu et al., SSD, sec. 2.2 "Training objective")."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def positives_normaliser(num_positives: torch.Tensor) -> torch.Tensor:
    """max(1, positives) / world size, the positives counted over all ranks: DDP averages gradients over
    ranks, so each rank's loss divided by this equals one process that saw every rank's images."""
    count = num_positives.detach().float()
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world_size > 1:
        count = count.clone()
        dist.all_reduce(count)
    return count.clamp(min=1.0) / world_size


class MultiBoxLoss(nn.Module):
    """Smooth-L1 on positive anchors plus cross-entropy on positives and the hardest negatives.

    Per image, the negatives kept are the `neg_pos_ratio * num_positives` with the highest background
    loss (3:1 in the paper). Both terms are divided by max(1, positives in the (global) batch), so a
    batch without objects gives a finite (zero) loss.
    """

    def __init__(self, *, neg_pos_ratio: float = 3.0):
        super().__init__()
        self.neg_pos_ratio = float(neg_pos_ratio)

    def forward(self, loc_preds: torch.Tensor, cls_logits: torch.Tensor,
                loc_targets: torch.Tensor, cls_targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args:
            loc_preds: float [B, A, 4] offsets; cls_logits: float [B, A, C].
            loc_targets: float [B, A, 4]; cls_targets: int64 [B, A], 0 = background.
        Returns:
            {'bbox_regression': scalar, 'classification': scalar}.
        """
        positive = cls_targets > 0
        num_positives = positive.sum()
        ce_per_anchor = F.cross_entropy(cls_logits.flatten(0, 1).float(), cls_targets.flatten(),
                                        reduction="none").view_as(cls_targets)
        with torch.no_grad():  # the hardest negatives: one sort, then the first k of each row
            negative_loss = ce_per_anchor.masked_fill(positive, float("-inf"))
            order = negative_loss.argsort(dim=1, descending=True)
            num_negatives = (self.neg_pos_ratio * positive.sum(dim=1, keepdim=True)).long()
            in_first_k = torch.arange(order.shape[1], device=order.device) < num_negatives
            hard_negative = torch.zeros_like(positive).scatter_(1, order, in_first_k)
        normaliser = positives_normaliser(num_positives)
        # masked sums rather than boolean indexing, which would read the mask's size back to the host
        regression = (F.smooth_l1_loss(loc_preds.float(), loc_targets, reduction="none").sum(dim=-1) * positive).sum()
        classification = (ce_per_anchor * (positive | hard_negative)).sum()
        return {"bbox_regression": regression / normaliser, "classification": classification / normaliser}
