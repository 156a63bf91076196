import torch
from torchvision.ops import box_iou

from detection.models.anchors import AnchorSpec, generate_anchors
from detection.models.box_coder import SSDBoxCoder, greedy_bipartite_match, pad_targets


def coder() -> SSDBoxCoder:
    spec = AnchorSpec(image_size=128, box_sizes=[12, 26, 48, 72, 100, 132], aspect_ratios=[[2], [2, 3], [2, 3], [2], [2]],
                      feature_map_sizes=[16, 8, 4, 2, 1], steps=[8, 16, 32, 64, 128])
    return SSDBoxCoder(generate_anchors(spec))


def test_encode_decode_round_trip_on_matched_anchors():
    box_coder = coder()
    boxes = torch.tensor([[10.0, 12.0, 50.0, 40.0], [60.0, 5.0, 120.0, 110.0], [3.0, 90.0, 9.0, 97.0]])
    labels = torch.tensor([1, 2, 3])
    loc_targets, cls_targets = box_coder.encode(boxes, labels)
    assert loc_targets.dtype == torch.float32 and loc_targets.shape == (box_coder.anchors.shape[0], 4)
    assert cls_targets.dtype == torch.int64
    positive = cls_targets > 0
    decoded = box_coder.decode(loc_targets)[positive]
    # every positive anchor decodes back to the box it was matched to
    best = box_iou(decoded, boxes).argmax(dim=1)
    assert torch.allclose(decoded, boxes[best], atol=1e-4)
    assert torch.equal(cls_targets[positive], labels[best])


def test_every_ground_truth_gets_an_anchor_even_when_tiny_or_competing():
    box_coder = coder()
    # a tiny box (IoU < 0.5 with every anchor) and two near-identical boxes wanting the same best anchor
    boxes = torch.tensor([[1.0, 1.0, 4.0, 4.0], [30.0, 30.0, 70.0, 70.0], [30.5, 30.5, 70.5, 70.5]])
    assert box_iou(boxes[:1], box_coder.anchors).max() < 0.5
    loc_targets, cls_targets = box_coder.encode(boxes, torch.tensor([1, 2, 3]))
    decoded = box_coder.decode(loc_targets)
    for index, box in enumerate(boxes):
        assigned = torch.isclose(decoded, box, atol=1e-4).all(dim=1) & (cls_targets == index + 1)
        assert assigned.any(), f"ground truth {index} has no anchor"


def test_bipartite_match_gives_distinct_anchors_on_ties():
    iou = torch.tensor([[0.9, 0.8, 0.1], [0.9, 0.85, 0.2]])
    anchors = greedy_bipartite_match(iou[None], torch.tensor([2]))[0]
    assert anchors.unique().numel() == 2
    assert anchors.tolist() == [0, 1]


def test_empty_image_encodes_to_all_background():
    box_coder = coder()
    loc_targets, cls_targets = box_coder.encode(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert (cls_targets == 0).all() and (loc_targets == 0).all()


def test_threshold_matches_take_the_best_box():
    box_coder = coder()
    box = torch.tensor([[32.0, 32.0, 96.0, 96.0]])
    _, cls_targets = box_coder.encode(box, torch.tensor([2]))
    expected = box_iou(box, box_coder.anchors)[0] >= 0.5
    assert torch.equal(cls_targets[expected], torch.full((int(expected.sum()),), 2))
    assert int((cls_targets > 0).sum()) >= int(expected.sum())


def reference_encode(box_coder: SSDBoxCoder, boxes: torch.Tensor, labels: torch.Tensor):
    """The per-image encoding the batched one replaced, with its host-read loop: the reference it must equal."""
    num_anchors = box_coder.anchors.shape[0]
    if boxes.numel() == 0:
        return torch.zeros(num_anchors, 4), torch.zeros(num_anchors, dtype=torch.int64)
    iou = box_iou(boxes, box_coder.anchors)
    best_iou, box_per_anchor = iou.max(dim=0)
    matched = best_iou >= box_coder.iou_threshold
    remaining = iou.clone()
    forced = torch.empty(len(boxes), dtype=torch.int64)
    for _ in range(len(boxes)):
        box, anchor = divmod(int(remaining.argmax()), num_anchors)
        forced[box] = anchor
        remaining[box, :] = -1.0
        remaining[:, anchor] = -1.0
    box_per_anchor[forced] = torch.arange(len(boxes))
    matched[forced] = True
    cls_targets = torch.where(matched, labels[box_per_anchor], torch.zeros_like(box_per_anchor))
    return box_coder.encode_offsets(boxes[box_per_anchor]) * matched.unsqueeze(1), cls_targets


def random_boxes(generator, count: int, *, side=(4.0, 80.0)) -> torch.Tensor:
    corner = torch.rand(count, 2, generator=generator) * 100
    size = side[0] + torch.rand(count, 2, generator=generator) * (side[1] - side[0])
    return torch.cat([corner, corner + size], dim=1)


def test_the_batched_encoding_equals_the_per_image_reference():
    box_coder = coder()
    generator = torch.Generator().manual_seed(0)
    duplicated = random_boxes(generator, 3).repeat(2, 1)  # exact ties: the same box twice
    images = [random_boxes(generator, 6), torch.zeros(0, 4), duplicated, random_boxes(generator, 300),
              random_boxes(generator, 5, side=(0.5, 2.0)),  # smaller than every anchor
              box_coder.anchors[[10, 10, 500]].clone()]  # boxes equal to anchors, one anchor twice
    labels = [torch.randint(1, 4, (len(boxes),), generator=generator) for boxes in images]
    loc_targets, cls_targets = box_coder.encode_batch(*pad_targets(images, labels))
    for index, (boxes, image_labels) in enumerate(zip(images, labels)):
        expected_loc, expected_cls = reference_encode(box_coder, boxes, image_labels)
        assert torch.equal(cls_targets[index], expected_cls), f"image {index}"
        assert torch.equal(loc_targets[index], expected_loc), f"image {index}"
        single_loc, single_cls = box_coder.encode(boxes, image_labels)
        assert torch.equal(single_cls, expected_cls) and torch.equal(single_loc, expected_loc)


def test_a_batch_without_any_box_encodes_to_background():
    loc_targets, cls_targets = coder().encode_batch(*pad_targets([torch.zeros(0, 4)] * 2,
                                                                 [torch.zeros(0, dtype=torch.int64)] * 2))
    assert loc_targets.shape[0] == 2 and not loc_targets.any() and not cls_targets.any()
