"""Counting the reads back to the host that stall a GPU, on any device (the CPU included), so that a test
or a benchmark can hold the hot paths to a budget."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
              torch.ops.aten.is_nonzero.default, torch.ops.aten.item.default}


class HostReads(TorchDispatchMode):
    """Counts the ops that force a device-to-host read: .item(), bool(), nonzero, indexing with a boolean
    mask (which calls nonzero inside), and an explicit copy to the host (`.to("cpu", copy=True)`, which
    on the CPU is the only form of `.cpu()` that reaches the dispatcher)."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        indices = args[1] if func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default,
                                      torch.ops.aten.index_put.default) else ()
        to_host = func is torch.ops.aten._to_copy.default and (kwargs or {}).get("device") == torch.device("cpu")
        if func in HOST_READS or to_host or any(i is not None and i.dtype == torch.bool for i in indices):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))
