"""The batched postprocess gives the detections of the per-image reference (torchvision's batched_nms, then
a boolean cut per image), with either NMS method, on an untrained model and on a confident one."""

import copy

import pytest
import torch
from hydra import compose, initialize_config_dir
from torchvision.ops import batched_nms, clip_boxes_to_image

from conftest import REPO, SMALL_SHAPES
from detection.models.postprocess import compacted_nms, dense_nms
from detection.cli.assembly import build_model


def reference_postprocess(model, loc, cls, image_sizes):
    """The SSD postprocess before it was batched: candidates cut by a boolean mask, torchvision's
    batched_nms over (image, class) groups, each image's detections cut out by a boolean scan."""
    batch, num_anchors, num_classes = cls.shape
    scores = torch.softmax(cls.float(), dim=-1)[..., 1:].transpose(1, 2)
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


def assert_same_detections(ours, reference):
    assert len(ours) == len(reference)
    for mine, theirs in zip(ours, reference):
        assert len(mine["scores"]) == len(theirs["scores"])
        # the same set, best first; ties in score may come in either order, so compare sorted by score
        order_mine = torch.argsort(mine["scores"], descending=True, stable=True)
        order_theirs = torch.argsort(theirs["scores"], descending=True, stable=True)
        torch.testing.assert_close(mine["scores"][order_mine], theirs["scores"][order_theirs])
        torch.testing.assert_close(mine["boxes"][order_mine], theirs["boxes"][order_theirs], atol=1e-4, rtol=1e-5)
        assert torch.equal(mine["labels"][order_mine], theirs["labels"][order_theirs])


@pytest.fixture(scope="module")
def shapes_model(shapes_root):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset.root={shapes_root}", "tracking=none", "anchors=shapes128",
                                          *SMALL_SHAPES])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def with_class_head_scaled(model, factor: float):
    """A fresh initialisation saturates the softmax here (scores of exactly 1.0, ties everywhere); scaling
    the class head's weights gives distinct scores: x0.02 puts every class's 400 candidates above the
    score threshold (the worst case for NMS), x0.1 gives peaked scores, as a trained model does."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for conv in model.head.cls:
            conv.weight.mul_(factor)
    return model


@pytest.mark.parametrize("nms_method", ["dense", "compacted"])
@pytest.mark.parametrize("factor", [0.02, 0.1])
def test_the_batched_postprocess_gives_the_reference_detections(shapes_model, nms_method, factor):
    model = with_class_head_scaled(shapes_model, factor)
    model.nms_method = nms_method
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 128, 128, generator=generator), torch.rand(3, 96, 160, generator=generator),
              torch.rand(3, 128, 128, generator=generator)]
    with torch.no_grad():
        loc, cls = model.head(model.features(model.preprocess(images)))
        sizes = [tuple(image.shape[-2:]) for image in images]
        ours = model.postprocess(loc, cls, sizes)
        reference = reference_postprocess(model, loc, cls, sizes)
    assert sum(len(d["scores"]) for d in reference) > 0
    assert_same_detections(ours, reference)


def random_groups(groups: int, per_group: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(groups, per_group, 2, generator=generator) * 100
    side = torch.rand(groups, per_group, 2, generator=generator) * 40 + 1
    scores = torch.rand(groups, per_group, generator=generator).sort(dim=1, descending=True).values
    return torch.cat([corner, corner + side], dim=-1), scores


@pytest.mark.parametrize("seed", range(3))
def test_both_nms_methods_keep_what_torchvision_keeps(seed):
    boxes, scores = random_groups(6, 50, seed)
    valid = scores > 0.3  # a prefix of each row, some rows empty
    valid[2] = False
    expected = torch.zeros_like(valid)
    for group in range(len(boxes)):
        kept = batched_nms(boxes[group][valid[group]], scores[group][valid[group]],
                           torch.zeros(int(valid[group].sum()), dtype=torch.int64), 0.45)
        expected[group, kept] = True
    assert torch.equal(dense_nms(boxes, scores, valid, 0.45), expected)
    assert torch.equal(compacted_nms(boxes, scores, valid, 0.45), expected)


def test_no_candidate_above_the_threshold_gives_empty_detections(shapes_model):
    model = copy.deepcopy(shapes_model)
    model.score_threshold = 1.0
    with torch.no_grad():
        detections = model([torch.rand(3, 128, 128), torch.rand(3, 64, 64)])
    assert [len(d["boxes"]) for d in detections] == [0, 0]
    assert detections[0]["boxes"].shape == (0, 4) and detections[0]["labels"].dtype == torch.int64
