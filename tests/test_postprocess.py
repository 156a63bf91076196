"""The SSD's batched, sync-free postprocess gives the detections of the per-class NMS it replaced."""

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, nms

from conftest import SMALL_SHAPES
from detection.models.nms import greedy_nms


def reference_postprocess(model, loc, cls, image_sizes):
    """The postprocess before: threshold, torchvision's batched_nms over all images and classes, per-image cut."""
    batch, num_anchors, num_classes = cls.shape
    scores = F.softmax(cls.float(), dim=-1)[..., 1:].transpose(1, 2)
    boxes = model.box_coder.decode(loc.float())
    top_scores, top_anchors = scores.topk(min(model.candidates_per_class, num_anchors), dim=-1)
    keep = top_scores > model.score_threshold
    image_index, class_index, _ = keep.nonzero(as_tuple=True)
    candidate_boxes = clip_boxes_to_image(boxes[image_index, top_anchors[keep]], (model.image_size,) * 2)
    candidate_scores = top_scores[keep]
    kept = batched_nms(candidate_boxes, candidate_scores, image_index * num_classes + class_index, model.nms_threshold)
    detections = []
    for index, (height, width) in enumerate(image_sizes):
        mine = kept[image_index[kept] == index][: model.detections_per_image]
        scale = loc.new_tensor([width / model.image_size, height / model.image_size] * 2).float()
        detections.append({"boxes": candidate_boxes[mine] * scale, "labels": class_index[mine] + 1,
                           "scores": candidate_scores[mine]})
    return detections


def assert_same_detections(ours, expected):
    assert len(ours) == len(expected)
    for mine, theirs in zip(ours, expected):
        assert mine["labels"].shape == theirs["labels"].shape
        order_mine = torch.argsort(mine["scores"] * 10 + mine["labels"], descending=True)
        order_theirs = torch.argsort(theirs["scores"] * 10 + theirs["labels"], descending=True)
        assert torch.equal(mine["labels"][order_mine], theirs["labels"][order_theirs])
        assert torch.allclose(mine["scores"][order_mine], theirs["scores"][order_theirs], atol=1e-6)
        assert torch.allclose(mine["boxes"][order_mine], theirs["boxes"][order_theirs], atol=1e-3)


@pytest.fixture
def ssd(compose_train):
    return instantiate(compose_train("backbone=resnet18", "anchors=shapes128", *SMALL_SHAPES).model).eval()


def test_an_untrained_model_gives_the_detections_of_the_reference(ssd):
    """Untrained: every class keeps its 400 candidates, the worst case for NMS."""
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 160), torch.rand(3, 150, 120)]
    with torch.no_grad():
        loc, cls = ssd.head(ssd.features(ssd.preprocess(images)))
        sizes = [tuple(image.shape[-2:]) for image in images]
        assert_same_detections(ssd.postprocess(loc, cls, sizes), reference_postprocess(ssd, loc, cls, sizes))


def test_confident_outputs_like_a_trained_model_give_the_reference_detections(ssd):
    """A trained model: few anchors above the threshold, overlapping ones of one class, an image with none."""
    generator = torch.Generator().manual_seed(0)
    anchors = ssd.box_coder.anchors.shape[0]
    loc = torch.randn(3, anchors, 4, generator=generator) * 0.3
    cls = torch.full((3, anchors, 5), -4.0)
    cls[..., 0] = 6.0
    hits = torch.randint(0, anchors, (3, 40), generator=generator)
    strengths = 8.0 + torch.rand(3, 40, generator=generator) * 2  # distinct scores: no ties for NMS to break
    cls[torch.arange(3)[:, None], hits, torch.randint(1, 5, (3, 40), generator=generator)] = strengths
    cls[2] = torch.tensor([6.0, -4, -4, -4, -4])  # nothing found in the last image
    sizes = [(128, 128), (64, 256), (128, 128)]
    detections = ssd.postprocess(loc, cls, sizes)
    assert_same_detections(detections, reference_postprocess(ssd, loc, cls, sizes))
    assert len(detections[2]["scores"]) == 0 and detections[2]["boxes"].shape == (0, 4)


def test_greedy_nms_keeps_what_torchvision_nms_keeps_per_group():
    generator = torch.Generator().manual_seed(1)
    corner = torch.rand(6, 50, 2, generator=generator) * 60
    boxes = torch.cat([corner, corner + 5 + torch.rand(6, 50, 2, generator=generator) * 30], dim=-1)
    scores = torch.rand(6, 50, generator=generator).sort(dim=1, descending=True).values
    valid = scores > 0.2
    keep = greedy_nms(boxes, valid, 0.45)
    for group in range(6):
        candidates = valid[group].nonzero().flatten()
        expected = candidates[nms(boxes[group, candidates], scores[group, candidates], 0.45)]
        assert sorted(keep[group].nonzero().flatten().tolist()) == sorted(expected.tolist())
    assert box_iou(boxes[0], boxes[0]).shape == (50, 50)
