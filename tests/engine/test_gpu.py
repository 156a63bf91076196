"""On CUDA: the training step and the eval call wait for the GPU once each (CUDA's own sync debug mode
counts), and give what they give on the CPU. Skipped without a GPU."""

import warnings

import pytest
import torch

from conftest import SMALL_SHAPES
from detection.profiling.host_reads import HostReads
from detection.engine.precision import Precision
from detection.engine.step import TrainStep
from detection.cli.assembly import build_model
from test_host_syncs import batch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def synchronisations(fn) -> int:
    """How many times `fn` made the host wait for the GPU (torch.cuda.set_sync_debug_mode's warnings)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


@pytest.fixture
def model(compose_train):
    return build_model(compose_train("backbone=resnet18", "anchors=shapes128", *SMALL_SHAPES)).cuda()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_cuda_training_step_synchronises_once(model, dtype):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    train_step = TrainStep(model, optimizer, scheduler, device=torch.device("cuda"), precision=Precision(dtype, "test"),
                           grad_clip=10.0)
    images, targets = batch(8, 6)  # on the GPU already, as a pinned loader's copies are by then
    images = [image.cuda() for image in images]
    targets = [{key: value.cuda() for key, value in target.items()} for target in targets]
    train_step(images, targets)  # warm-up: cuDNN, allocator
    assert synchronisations(lambda: train_step(images, targets)) == 1
    with HostReads() as counter:
        train_step(images, targets)
    assert counter.reads == ["aten._to_copy.default"]


def test_a_cuda_eval_call_synchronises_once_and_matches_the_cpu(model):
    with torch.no_grad():
        for conv in model.head.cls:  # distinct scores, all above the threshold
            conv.weight.mul_(0.02)
    model.eval()
    images, _ = batch(8, 6)
    gpu_images = [image.cuda() for image in images]
    with torch.no_grad():
        model(gpu_images)
        assert synchronisations(lambda: model(gpu_images)) == 1
        on_gpu = model(gpu_images)
        on_cpu = model.cpu()(images)
    for gpu, cpu in zip(on_gpu, on_cpu):
        torch.testing.assert_close(gpu["scores"].cpu(), cpu["scores"], atol=1e-4, rtol=1e-4)
        assert len(gpu["boxes"]) == len(cpu["boxes"])


def test_test_time_views_on_cuda_synchronise_once_and_match_the_cpu(model):
    from detection.engine.test_time import TestTimeModel

    with torch.no_grad():
        for conv in model.head.cls:
            conv.weight.mul_(0.1)
    images, _ = batch(4, 6)
    gpu_images = [image.cuda() for image in images]
    views = TestTimeModel(model.eval(), flip=True, sizes=[160], tile=64, overlap=0.25).eval()
    with torch.no_grad():
        views(gpu_images)  # the model at 160 is made on the first call
        assert synchronisations(lambda: views(gpu_images)) == 1  # the dense merge: the per-image cut only
        on_gpu = views(gpu_images)
        on_cpu = TestTimeModel(model.cpu(), flip=True, sizes=[160], tile=64, overlap=0.25).eval()(images)
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert abs(len(gpu["boxes"]) - len(cpu["boxes"])) <= 2
        torch.testing.assert_close(gpu["scores"][:20].cpu(), cpu["scores"][:20], atol=1e-3, rtol=1e-3)
