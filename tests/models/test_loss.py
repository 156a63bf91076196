import torch

from detection.models.loss import MultiBoxLoss


def test_all_background_batch_gives_finite_zero_loss():
    loss = MultiBoxLoss()(torch.randn(2, 50, 4), torch.randn(2, 50, 5, requires_grad=True),
                          torch.zeros(2, 50, 4), torch.zeros(2, 50, dtype=torch.int64))
    assert all(torch.isfinite(v) for v in loss.values())
    assert loss["classification"].item() == 0.0 and loss["bbox_regression"].item() == 0.0


def test_hard_negatives_are_three_per_positive_with_the_highest_loss():
    logits = torch.zeros(1, 10, 2)
    logits[0, :, 1] = torch.arange(10.0)  # anchor k has background loss growing with k
    cls_targets = torch.zeros(1, 10, dtype=torch.int64)
    cls_targets[0, 0] = 1
    loc = torch.zeros(1, 10, 4)
    result = MultiBoxLoss(neg_pos_ratio=3)(loc, logits, loc, cls_targets)
    ce = torch.nn.functional.cross_entropy(logits[0], cls_targets[0], reduction="none")
    expected = ce[0] + ce[[7, 8, 9]].sum()  # the positive plus the three hardest negatives
    assert torch.isclose(result["classification"], expected)


def test_regression_is_smooth_l1_over_positives_normalised_by_their_count():
    loc_preds = torch.zeros(1, 4, 4)
    loc_targets = torch.full((1, 4, 4), 2.0)
    cls_targets = torch.tensor([[1, 1, 0, 0]])
    result = MultiBoxLoss()(loc_preds, torch.zeros(1, 4, 3), loc_targets, cls_targets)
    assert torch.isclose(result["bbox_regression"], torch.tensor(2 * 4 * 1.5 / 2))


def reference_loss(loc_preds, cls_logits, loc_targets, cls_targets, neg_pos_ratio=3.0):
    """The loss this one replaced: two sorts for the ranks, boolean indexing for the sums."""
    positive = cls_targets > 0
    ce = torch.nn.functional.cross_entropy(cls_logits.flatten(0, 1), cls_targets.flatten(),
                                           reduction="none").view_as(cls_targets)
    rank = ce.masked_fill(positive, float("-inf")).argsort(dim=1, descending=True).argsort(dim=1)
    hard_negative = rank < (neg_pos_ratio * positive.sum(dim=1, keepdim=True)).long()
    normaliser = positive.sum().float().clamp(min=1.0)
    regression = torch.nn.functional.smooth_l1_loss(loc_preds[positive], loc_targets[positive], reduction="sum")
    return {"bbox_regression": regression / normaliser, "classification": ce[positive | hard_negative].sum() / normaliser}


def test_the_loss_equals_the_two_sort_reference_with_ties_and_empty_images():
    generator = torch.Generator().manual_seed(0)
    loc_preds, loc_targets = torch.randn(4, 300, 4, generator=generator), torch.randn(4, 300, 4, generator=generator)
    cls_logits = torch.randn(4, 300, 6, generator=generator)
    cls_logits[2] = 0.0  # every anchor of image 2 ties
    cls_targets = torch.randint(0, 6, (4, 300), generator=generator) * (torch.rand(4, 300, generator=generator) < 0.05)
    cls_targets[1] = 0  # an image without objects
    ours = MultiBoxLoss()(loc_preds, cls_logits, loc_targets, cls_targets)
    expected = reference_loss(loc_preds, cls_logits, loc_targets, cls_targets)
    for key in expected:
        assert torch.allclose(ours[key], expected[key], rtol=1e-6), key
