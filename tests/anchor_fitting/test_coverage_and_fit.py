"""Prior coverage agrees with direct computation and with the box coder's matching; the fit covers what the
default priors do not."""


import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detection.anchor_fitting.coverage import match_image, match_split, report
from detection.anchor_fitting.fit import best_ious, coverage, fit_priors
from detection.models.anchors import AnchorSpec, generate_anchors
from detection.models.box_coder import SSDBoxCoder


SPEC = AnchorSpec(300, (30, 60, 111, 162, 213, 264, 315), ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
                  (38, 19, 10, 5, 3, 1), (8, 16, 32, 64, 100, 300))


def map_of_prior(spec: AnchorSpec) -> torch.Tensor:
    counts = [cells * cells * a for cells, a in zip(spec.feature_map_sizes, spec.anchors_per_location)]
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def random_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    corner = torch.rand(count, 2, generator=generator) * 260
    size = 4 + torch.rand(count, 2, generator=generator) * 200
    return torch.cat([corner, corner + size], dim=1)


def test_a_box_equal_to_a_prior_is_covered_and_a_tiny_box_is_not():
    priors = generate_anchors(SPEC)
    boxes = torch.stack([priors[-1], torch.tensor([150.0, 150.0, 152.0, 152.0])])
    matches = match_split([(boxes, torch.tensor([1, 2]))], priors, map_of_prior(SPEC), 0.5)
    assert matches.best_iou[0] == pytest.approx(1.0) and matches.best_iou[1] < 0.01
    assert matches.positives[1] == 1  # only the forced match
    result = report(matches, map_of_prior(SPEC).numpy(), ["a", "b"], 0.5)
    assert result["overall"]["best_possible_recall"] == 0.5
    assert result["per_class"]["a"]["best_possible_recall"] == 1.0 and result["per_class"]["b"]["best_possible_recall"] == 0.0
    assert result["per_size"]["small"]["boxes"] == 1 and result["per_map"][0]["priors"] == 38 * 38 * 4


def test_matching_is_the_box_coders():
    generator = torch.Generator().manual_seed(0)
    priors = generate_anchors(SPEC)
    boxes = random_boxes(12, generator)
    best_iou, owner = match_image(boxes, priors, 0.5)
    _, cls_targets = SSDBoxCoder(priors).encode(boxes, torch.ones(12, dtype=torch.int64))
    torch.testing.assert_close(best_iou, box_iou(boxes, priors).max(dim=1).values)
    assert torch.equal(owner >= 0, cls_targets > 0)


def test_the_fits_nearest_centre_best_iou_is_exact():
    boxes = random_boxes(300, torch.Generator().manual_seed(1))
    direct = box_iou(boxes, generate_anchors(SPEC)).max(dim=1).values
    np.testing.assert_allclose(best_ious(boxes.numpy().astype(np.float64), SPEC), direct.numpy(), atol=1e-5)


def test_fit_covers_boxes_of_one_shape_that_the_default_misses():
    # 20x80 boxes (ratio 1:4) all over the image: SSD300's priors (ratios up to 3) cover few of them
    generator = np.random.default_rng(0)
    corner = generator.uniform(0, 220, size=(400, 2))
    boxes = np.concatenate([corner, corner + [20.0, 80.0]], axis=1)
    before = coverage(boxes, SPEC, 0.5)
    fitted = fit_priors(boxes, SPEC, generations=30, seed=0)
    after = coverage(boxes, fitted, 0.5)
    assert before[0] < 0.5 and after[0] == 1.0 and after[1] > before[1]
    assert fitted.anchors_per_location == SPEC.anchors_per_location  # heads keep their shapes
