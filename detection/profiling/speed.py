"""Where a detector's time goes, per image, as ultralytics reports it: preprocess (the model's resize,
normalisation and batching), network (trunk to heads) and postprocess (decoding, NMS, boxes and masks back
in the image's pixels), timed by hooks on the model's own modules with the device synchronised at the
stage edges. Used around evaluation only, never around a training step."""

import time
from typing import Optional

import torch
from torch import nn

# a detector's first and last network modules: the SSD's features and head, an R-CNN's backbone and RoI heads
STAGE_EDGES = (("features", "head"), ("backbone", "roi_heads"))


class StageTimes:
    """Within `with`: the milliseconds each call of `model` spends per stage, summed, and the images it
    was called on. A model without STAGE_EDGES (an exported file run back, test-time views) is not timed."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.edges = next(((getattr(model, first), getattr(model, last)) for first, last in STAGE_EDGES
                           if isinstance(getattr(model, first, None), nn.Module)
                           and isinstance(getattr(model, last, None), nn.Module)), None)
        self.seconds = {"preprocess": 0.0, "network": 0.0, "postprocess": 0.0}
        self.images, self._handles, self._marks = 0, [], {}

    def _mark(self, name: str):
        def hook(module, args, *outputs):
            if name == "call":
                self.images += len(args[0])
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._marks[name] = time.perf_counter()
            if name == "returned":
                marks = self._marks
                self.seconds["preprocess"] += marks["network"] - marks["call"]
                self.seconds["network"] += marks["heads_done"] - marks["network"]
                self.seconds["postprocess"] += marks["returned"] - marks["heads_done"]
        return hook

    def __enter__(self) -> "StageTimes":
        if self.edges is not None:
            first, last = self.edges
            self._handles = [self.model.register_forward_pre_hook(self._mark("call")),
                             first.register_forward_pre_hook(self._mark("network")),
                             last.register_forward_hook(self._mark("heads_done")),
                             self.model.register_forward_hook(self._mark("returned"))]
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def per_image(self) -> dict[str, float]:
        """{'preprocess_ms', 'network_ms', 'postprocess_ms'} per image; {} when nothing was timed."""
        if not self.images:
            return {}
        return {f"{stage}_ms": 1000 * seconds / self.images for stage, seconds in self.seconds.items()}


def speed_line(times: dict[str, float], *, device: torch.device, batch_size: Optional[int]) -> str:
    """'speed per image on cpu, batch 8: preprocess 1.2 ms, network 30.4 ms, postprocess 3.1 ms' ('not
    timed' for a model StageTimes cannot time)."""
    stages = ", ".join(f"{key.removesuffix('_ms')} {value:.1f} ms" for key, value in times.items()) or "not timed"
    return f"speed per image on {device}, batch {batch_size}: {stages}"
