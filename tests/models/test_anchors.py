import math

import pytest
import torch
from hydra.utils import instantiate

from detection.models.anchors import AnchorSpec, generate_anchors


def complete(spec: AnchorSpec) -> AnchorSpec:
    return spec.with_feature_map_sizes(spec.feature_map_sizes)


def test_voc512_has_24564_anchors_with_the_seed_layout(compose_train):
    spec = complete(instantiate(compose_train("anchors=voc512").anchors))
    anchors = generate_anchors(spec)
    assert anchors.shape == (24564, 4)
    assert spec.anchors_per_location == [4, 6, 6, 6, 6, 4, 4]
    # first location of the 64x64 map: centre (4, 4), the small square 35.84 then sqrt(35.84 * 76.8)
    assert torch.allclose(anchors[0], torch.tensor([4 - 17.92, 4 - 17.92, 4 + 17.92, 4 + 17.92]))
    big = math.sqrt(35.84 * 76.8)
    assert torch.allclose(anchors[1], torch.tensor([4 - big / 2, 4 - big / 2, 4 + big / 2, 4 + big / 2]))
    # ratio 2 on the first map: (s*sqrt2, s/sqrt2) then its transpose
    w, h = 35.84 * math.sqrt(2), 35.84 / math.sqrt(2)
    assert torch.allclose(anchors[2], torch.tensor([4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2]))
    assert torch.allclose(anchors[3], torch.tensor([4 - h / 2, 4 - w / 2, 4 + h / 2, 4 + w / 2]))
    # next location steps 8 pixels along x
    assert torch.allclose(anchors[4], anchors[0] + torch.tensor([8.0, 0, 8, 0]))
    # the last anchor: the 1x1 map centred at 256 with ratio 2 transposed, s = 460.8
    w, h = 460.8 / math.sqrt(2), 460.8 * math.sqrt(2)
    assert torch.allclose(anchors[-1], torch.tensor([256 - w / 2, 256 - h / 2, 256 + w / 2, 256 + h / 2]))


def test_ssd300_has_8732_anchors(compose_train):
    spec = complete(instantiate(compose_train("anchors=ssd300").anchors))
    assert generate_anchors(spec).shape == (8732, 4)
    assert spec.anchors_per_location == [4, 6, 6, 6, 4, 4]


def test_measured_sizes_must_match_configured_ones_and_the_error_names_both():
    spec = AnchorSpec(image_size=128, box_sizes=[10, 20, 30], aspect_ratios=[[2], [2]], feature_map_sizes=[16, 8])
    with pytest.raises(ValueError, match=r"\[16, 8\].*\[15, 8\]"):
        spec.with_feature_map_sizes([15, 8])


def test_unconfigured_sizes_and_steps_come_from_the_dry_run():
    spec = AnchorSpec(image_size=96, box_sizes=[10, 20, 30], aspect_ratios=[[2], [2]])
    completed = spec.with_feature_map_sizes([12, 6])
    assert completed.feature_map_sizes == (12, 6) and completed.steps == (8.0, 16.0)
    assert generate_anchors(completed).shape == (12 * 12 * 4 + 6 * 6 * 4, 4)


def test_box_sizes_must_be_one_more_than_maps():
    with pytest.raises(ValueError, match="box_sizes"):
        AnchorSpec(image_size=128, box_sizes=[10, 20], aspect_ratios=[[2], [2]])
