"""Hot paths stay on the device: the ops that read a value back to the host (and so stall a GPU) are
counted on the CPU with a TorchDispatchMode, around the SSD's training forward, backward and update. (The
eval call is not sync-free yet: its NMS still cuts candidates by score on the host; see the README.)"""

import pytest
import torch
from hydra.utils import instantiate
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import SMALL_SHAPES

HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
              torch.ops.aten.is_nonzero.default, torch.ops.aten.item.default}


class HostReads(TorchDispatchMode):
    """Counts the ops that force a device-to-host read: .item(), bool(), nonzero, and indexing with a
    boolean mask (which calls nonzero inside)."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        indices = args[1] if func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default,
                                      torch.ops.aten.index_put.default) else ()
        if func in HOST_READS or any(i is not None and i.dtype == torch.bool for i in indices):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def batch(size: int, boxes_per_image: int):
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=generator) for _ in range(size)]
    corner = torch.rand(size, boxes_per_image, 2, generator=generator) * 80
    extent = 8 + torch.rand(size, boxes_per_image, 2, generator=generator) * 40
    targets = [{"boxes": torch.cat([c, c + e], dim=1), "labels": torch.randint(1, 5, (boxes_per_image,), generator=generator)}
               for c, e in zip(corner, extent)]
    return images, targets


@pytest.mark.parametrize("backbone", ["resnet18", "vgg16"])
def test_an_ssd_training_step_reads_nothing_back_to_the_host(compose_train, backbone):
    model = instantiate(compose_train(f"backbone={backbone}", "anchors=shapes128", *SMALL_SHAPES).model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, targets = batch(8, 6)
    with HostReads() as counter:
        loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert counter.reads == []


def test_the_counter_sees_each_kind_of_host_read():
    values = torch.rand(5, 4)
    with HostReads() as counter:
        values[values > 0.5].sum()
        bool(values.any())
        int(values.argmax())
        values.nonzero()
    assert counter.reads == ["aten.index.Tensor", "aten._local_scalar_dense.default",
                             "aten._local_scalar_dense.default", "aten.nonzero.default"]

