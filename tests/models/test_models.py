"""Both detectors honour torchvision's contract: losses in training, detections in eval, input pixels out."""

import pytest
import torch

from detection.cli.assembly import build_model


def tiny_targets(sizes):
    return [{"boxes": torch.tensor([[0.1 * w, 0.2 * h, 0.6 * w, 0.7 * h]]), "labels": torch.tensor([2]),
             "masks": torch.zeros(1, h, w, dtype=torch.uint8).index_fill_(1, torch.arange(int(0.2 * h), int(0.7 * h)), 1),
             "image_id": torch.tensor(i)} for i, (h, w) in enumerate(sizes)]


@pytest.fixture
def ssd(compose_train):
    return build_model(compose_train("backbone=resnet18", "anchors=shapes128"))


def test_ssd_training_returns_finite_losses_that_backpropagate(ssd):
    sizes = [(90, 120), (128, 128)]
    images = [torch.rand(3, h, w) for h, w in sizes]
    targets = tiny_targets(sizes)
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}  # no objects
    losses = ssd.train()(images, targets)
    assert set(losses) == {"bbox_regression", "classification"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert ssd.head.cls[0].weight.grad.abs().sum() > 0


def test_ssd_eval_returns_detections_in_each_input_images_pixels(ssd):
    ssd.eval()
    images = [torch.rand(3, 60, 300), torch.rand(3, 256, 64)]
    with torch.no_grad():
        detections = ssd(images)
    assert len(detections) == 2
    for detection, image in zip(detections, images):
        assert detection["boxes"].dtype == torch.float32 and detection["labels"].dtype == torch.int64
        assert len(detection["boxes"]) == len(detection["labels"]) == len(detection["scores"]) <= 200
        assert (detection["labels"] >= 1).all() and (detection["scores"] > 0.05).all()
        if len(detection["boxes"]):
            height, width = image.shape[-2:]
            assert detection["boxes"][:, 2].max() <= width + 1e-3 and detection["boxes"][:, 3].max() <= height + 1e-3


def test_ssd_decode_maps_a_confident_anchor_back_to_input_pixels(ssd):
    """With the head forced to predict class 3 on one anchor with zero offsets, eval returns that anchor,
    scaled from the 128-pixel model input to the 64x256 image."""
    ssd.eval()
    anchor = 10
    with torch.no_grad():
        for conv in [*ssd.head.loc, *ssd.head.cls]:
            conv.weight.zero_()
            conv.bias.zero_()
        loc = torch.zeros(1, ssd.box_coder.anchors.shape[0], 4)
        cls = torch.zeros(1, ssd.box_coder.anchors.shape[0], 5)
        cls[0, :, 0] = 10.0
        cls[0, anchor, 0], cls[0, anchor, 3] = 0.0, 10.0
        detections = ssd.postprocess(loc, cls, [(64, 256)])
    expected = ssd.box_coder.anchors[anchor].clamp(0, 128) * torch.tensor([2.0, 0.5, 2.0, 0.5])
    assert detections[0]["labels"].tolist() == [3]
    assert torch.allclose(detections[0]["boxes"][0], expected, atol=1e-4)


def test_ssd_rejects_a_degenerate_target_box(ssd):
    """A device-side assertion (no host read on CUDA); the datasets name the file of such a box."""
    targets = [{"boxes": torch.tensor([[1.0, 1, 5, 5]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 10.0, 10.0, 40.0]]), "labels": torch.tensor([1])}]
    with pytest.raises(RuntimeError, match="SSD targets: a degenerate box"):
        ssd.train()([torch.rand(3, 64, 64)] * 2, targets)


@pytest.mark.parametrize("model_option", ["maskrcnn", "fasterrcnn"])
def test_two_stage_training_and_eval_contract(compose_train, model_option):
    model = build_model(compose_train(f"model={model_option}", "model.min_size=128", "model.max_size=160"))
    sizes = [(96, 128), (128, 100)]
    images = [torch.rand(3, h, w) for h, w in sizes]
    targets = tiny_targets(sizes)
    if model_option == "fasterrcnn":  # box-only data: no masks in the targets, none in the detections
        targets = [{key: value for key, value in target.items() if key != "masks"} for target in targets]
    losses = model.train()(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert ("loss_mask" in losses) == (model_option == "maskrcnn")
    assert torch.isfinite(sum(losses.values()))
    with torch.no_grad():
        detections = model.eval()(images)
    assert {"boxes", "labels", "scores"} <= set(detections[0])
    assert ("masks" in detections[0]) == (model_option == "maskrcnn")


@pytest.mark.parametrize("overrides", [("backbone=resnet18", "anchors=shapes128"),
                                       ("model=maskrcnn", "fpn=resnet18", "model.min_size=96", "model.max_size=128")])
def test_uint8_images_give_the_detections_of_their_float_equivalent(compose_train, overrides):
    """The loaders hand images over as bytes; the model makes them float on its device."""
    model = build_model(compose_train(*overrides)).eval()
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=generator) for _ in range(2)]
    with torch.no_grad():
        from_bytes, from_floats = model(images), model([image.float() / 255 for image in images])
    for a, b in zip(from_bytes, from_floats):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
