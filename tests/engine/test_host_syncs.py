"""Hot paths stay on the device: the ops that read a value back to the host (and so stall a GPU) are
counted on the CPU with a TorchDispatchMode, around the SSD's training forward, backward and update, and
around an eval call."""

import pytest
import torch

from conftest import SMALL_SHAPES
from detection.profiling.host_reads import HostReads
from detection.engine.step import TrainStep
from detection.cli.assembly import build_model


def batch(size: int, boxes_per_image: int):
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=generator) for _ in range(size)]
    corner = torch.rand(size, boxes_per_image, 2, generator=generator) * 80
    extent = 8 + torch.rand(size, boxes_per_image, 2, generator=generator) * 40
    targets = [{"boxes": torch.cat([c, c + e], dim=1), "labels": torch.randint(1, 5, (boxes_per_image,), generator=generator)}
               for c, e in zip(corner, extent)]
    return images, targets


@pytest.mark.parametrize("backbone", ["resnet18", "vgg16"])
def test_an_ssd_training_step_reads_back_once(compose_train, backbone):
    """The loop's step (forward, losses, the agreed non-finite and stop check, backward, clipping, update,
    scheduler) reads one thing back: the check's flags. The model's part reads nothing."""
    model = build_model(compose_train(f"backbone={backbone}", "anchors=shapes128", *SMALL_SHAPES))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    train_step = TrainStep(model, optimizer, scheduler, device=torch.device("cpu"), grad_clip=10.0)
    images, targets = batch(8, 6)
    with HostReads() as counter:
        outcome = train_step(images, targets)
    assert outcome.applied
    assert counter.reads == ["aten._to_copy.default"]
    with HostReads() as counter:
        model.train()(images, targets)
    assert counter.reads == []


def test_the_counter_sees_each_kind_of_host_read():
    values = torch.rand(5, 4)
    with HostReads() as counter:
        values[values > 0.5].sum()
        bool(values.any())
        int(values.argmax())
        values.nonzero()
        values.to("cpu", copy=True).tolist()
        values.float()  # a copy, not to the host
    assert counter.reads == ["aten.index.Tensor", "aten._local_scalar_dense.default",
                             "aten._local_scalar_dense.default", "aten.nonzero.default", "aten._to_copy.default"]



def test_an_ssd_eval_call_reads_back_once(compose_train):
    """With the dense NMS (what runs on a GPU) the call's one read is the per-image counts. (The CPU's
    compacted NMS, torchvision's batched_nms, reads back freely: on a CPU there is no device to wait for.)"""
    cfg = compose_train("anchors=shapes128", "model.nms_method=dense", *SMALL_SHAPES)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for conv in model.head.cls:  # distinct scores, all above the threshold: every candidate in play
            conv.weight.mul_(0.02)
    images, _ = batch(8, 6)
    with torch.no_grad(), HostReads() as counter:
        detections = model(images)
    assert counter.reads == ["aten._to_copy.default"]
    assert all(len(d["boxes"]) == model.detections_per_image for d in detections)
