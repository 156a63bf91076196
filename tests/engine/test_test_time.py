"""Test-time augmentation and sliced inference keep the detectors' contract: the plain view alone (or one
tile holding the whole image) gives the model's own detections, flipped and tiled detections come back to
the image's pixels exactly, and the SSD's dense path still reads back once per call."""

import pytest
import torch
from torch import nn

from conftest import SMALL_SHAPES
from detection.cli.assembly import build_model
from detection.engine.test_time import TestTimeModel, View, boxes_back, tiles, views_of
from detection.profiling.host_reads import HostReads

RECTANGLE = (40, 24, 90, 60)  # x0, y0, x1, y1 of the planted object


class PlantedDetector(nn.Module):
    """Finds the bright rectangle of an image: its box (label 1, scored by its area: what a view sees whole
    ranks first) and mask, in that image's pixels."""

    nms_threshold, detections_per_image = 0.5, 10

    def forward(self, images):
        found = []
        for image in images:
            mask = image[0] > 128
            rows, columns = mask.any(dim=1).nonzero()[:, 0], mask.any(dim=0).nonzero()[:, 0]
            if len(rows):
                box = torch.tensor([[columns[0], rows[0], columns[-1] + 1, rows[-1] + 1]], dtype=torch.float32)
                area = (box[0, 2] - box[0, 0]) * (box[0, 3] - box[0, 1])
                found.append({"boxes": box, "labels": torch.tensor([1]), "scores": (area / 10_000)[None],
                              "masks": mask[None, None].float()})
            else:
                found.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                              "scores": torch.zeros(0), "masks": torch.zeros(0, 1, *image.shape[-2:])})
        return found


def planted_image(height=100, width=140):
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    x0, y0, x1, y1 = RECTANGLE
    image[:, y0:y1, x0:x1] = 255
    return image


@pytest.fixture(scope="module")
def dense_ssd(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["tracking=none", "anchors=shapes128", "model.nms_method=dense", *SMALL_SHAPES])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for conv in model.head.cls:  # distinct scores, many above the threshold
            conv.weight.mul_(0.1)
    return model


def test_tiles_cover_the_image_overlap_as_asked_and_end_flush_with_its_edges():
    boxes = tiles(300, 500, 200, 0.25)
    assert boxes == [(0, 0, 200, 200), (150, 0, 350, 200), (300, 0, 500, 200),
                     (0, 100, 200, 300), (150, 100, 350, 300), (300, 100, 500, 300)]
    assert tiles(100, 140, 200, 0.2) == [(0, 0, 140, 100)]  # a tile larger than the image is the image


def test_views_are_the_image_at_each_size_each_flipped_then_the_tiles():
    views = views_of(100, 140, flip=True, sizes=[352], tile=100, overlap=0.5)
    assert views[:4] == [View(), View(flip=True), View(size=352), View(flip=True, size=352)]
    assert [view.crop for view in views[4:]] == [(0, 0, 100, 100), (40, 0, 140, 100)]


def test_a_flipped_and_shifted_box_comes_back_exactly():
    box = torch.tensor([[10.0, 5.0, 30.0, 25.0]])
    flipped = boxes_back(box, View(flip=True), width=100)
    assert flipped.tolist() == [[70.0, 5.0, 90.0, 25.0]]
    assert boxes_back(flipped, View(flip=True), width=100).tolist() == box.tolist()
    assert boxes_back(box, View(crop=(40, 60, 140, 160)), width=100).tolist() == [[50.0, 65.0, 70.0, 85.0]]


@pytest.mark.parametrize("options", [dict(flip=True), dict(tile=64, overlap=0.5), dict(flip=True, tile=100)])
def test_planted_detections_come_back_to_the_image_and_merge_into_one(options):
    image = planted_image()
    [found] = TestTimeModel(PlantedDetector(), **options).eval()([image])
    boxes, rectangle = found["boxes"].tolist(), [float(v) for v in RECTANGLE]
    x0, y0, x1, y1 = RECTANGLE
    expected = torch.zeros(1, 1, 100, 140)
    expected[..., y0:y1, x0:x1] = 1
    # the mirror's and a whole tile's detection are the same box, merged into it; a tile that cuts the object
    # (its box on the tile's edge inside the image) keeps its part out of the merge
    assert boxes == [rectangle] and found["labels"].tolist() == [1] and torch.equal(found["masks"], expected)


def test_a_tile_drops_what_it_cuts_but_keeps_what_touches_the_images_own_edge():
    from detection.engine.test_time import whole_in_tile

    boxes = torch.tensor([[0.0, 10.0, 20.0, 30.0], [30.0, 10.0, 64.0, 30.0], [10.0, 10.0, 30.0, 30.0]])
    # a tile at the image's left edge, with image beyond its right side: the box on its right edge is cut
    assert whole_in_tile(boxes, View(crop=(0, 0, 64, 64)), 100, 140).tolist() == [True, False, True]
    # a tile inside the image: the box on its left edge is cut too
    assert whole_in_tile(boxes, View(crop=(40, 20, 104, 84)), 100, 140).tolist() == [False, False, True]
    assert whole_in_tile(boxes, View(), 100, 140).all()


def test_the_plain_view_or_one_whole_image_tile_gives_the_models_own_detections(dense_ssd):
    assert views_of(80, 80, flip=False, sizes=[], tile=200, overlap=0.2) == [View()]  # that tile is the plain view
    images = [torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8), torch.randint(0, 256, (3, 80, 80), dtype=torch.uint8)]
    with torch.no_grad():
        plain = dense_ssd(images)
        for views in (TestTimeModel(dense_ssd), TestTimeModel(dense_ssd, tile=200)):
            merged = views.eval()(images)
            for mine, theirs in zip(merged, plain):
                assert len(theirs["boxes"]) > 20
                assert torch.equal(mine["labels"], theirs["labels"]) and torch.equal(mine["scores"], theirs["scores"])
                torch.testing.assert_close(mine["boxes"], theirs["boxes"])


def test_views_keep_the_contract_and_the_dense_path_reads_back_once(dense_ssd):
    images = [torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8) for _ in range(2)]
    views = TestTimeModel(dense_ssd, flip=True, sizes=[160], tile=64, overlap=0.25).eval()
    with torch.no_grad():
        views(images)  # the model at input 160 is made on the first call
        with HostReads() as counter:
            detections = views(images)
    assert counter.reads == ["aten._to_copy.default"]  # the per-image counts, as the plain call
    for found, image in zip(detections, images):
        assert len(found["boxes"]) == dense_ssd.detections_per_image and found["labels"].dtype == torch.int64
        assert (found["scores"][:-1] >= found["scores"][1:]).all() and found["labels"].min() >= 1
        assert (found["boxes"][:, 2:] <= torch.tensor([128.0, 96.0])).all() and (found["boxes"] >= 0).all()


def test_the_ssd_at_another_input_size_shares_its_weights_and_keeps_the_original(dense_ssd, compose_train):
    anchors = dense_ssd.box_coder.anchors.clone()
    twin = dense_ssd.at_input_size(160)
    assert twin.image_size == 160 and twin.head is dense_ssd.head and len(twin.box_coder.anchors) > len(anchors)
    assert twin.anchor_spec.box_sizes[0] == dense_ssd.anchor_spec.box_sizes[0] * 160 / 128
    assert dense_ssd.image_size == 128 and torch.equal(dense_ssd.box_coder.anchors, anchors)
    ssd300 = build_model(compose_train("anchors=ssd300", "backbone=resnet18")).eval()  # its last map is unpadded
    with pytest.raises(ValueError, match="an SSD laid out for 300 cannot run at input 256"):
        ssd300.at_input_size(256)


def test_a_mask_rcnn_keeps_its_contract_with_flip_sizes_and_tiles(compose_train):
    model = build_model(compose_train("experiment=maskrcnn_shapes")).eval()
    images = [torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)]
    with torch.no_grad():
        plain = model(images)
        alone = TestTimeModel(model).eval()(images)
        [found] = TestTimeModel(model, flip=True, sizes=[192], tile=64).eval()(images)
    assert torch.equal(alone[0]["scores"], plain[0]["scores"]) and torch.equal(alone[0]["masks"], plain[0]["masks"])
    assert set(found) == {"boxes", "labels", "scores", "masks"}
    assert found["masks"].shape[1:] == (1, 96, 128) and len(found["masks"]) == len(found["boxes"]) <= 100
