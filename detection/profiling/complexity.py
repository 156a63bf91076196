"""What a model costs: its parameters (all and trainable) and its multiply-accumulates on one image at its
input size, counted with `torch.utils.flop_counter` (which counts FLOPs; MACs = FLOPs / 2, the unit
torchvision's model metadata gives as "GFLOPS"), in total and per top-level part."""

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# the parts a detector is reported by, where it has them: the SSD's trunk, extra layers and head;
# an R-CNN's backbone (with its FPN), region proposal network and RoI heads
PARTS = ("features.trunk", "features.extras", "head", "backbone", "rpn", "roi_heads")


@dataclass
class Complexity:
    """params, trainable: counts; gmacs: multiply-accumulates (1e9) of one eval forward on an image of
    `input` (height, width); parts: name -> (params, gmacs)."""

    params: int
    trainable: int
    gmacs: float
    input: tuple[int, int]
    parts: dict[str, tuple[int, float]] = field(default_factory=dict)

    def as_params(self) -> dict[str, str]:
        """As MLflow params: model/params, model/trainable_params, model/gmacs, model/input, and per part
        model/<part>/params and model/<part>/gmacs."""
        params = {"model/params": str(self.params), "model/trainable_params": str(self.trainable),
                  "model/gmacs": f"{self.gmacs:.3f}", "model/input": f"{self.input[0]}x{self.input[1]}"}
        for name, (count, gmacs) in self.parts.items():
            params[f"model/{name}/params"], params[f"model/{name}/gmacs"] = str(count), f"{gmacs:.3f}"
        return params

    def table(self) -> str:
        """The counts as an aligned text table, the total last."""
        rows = [(name, count, gmacs) for name, (count, gmacs) in self.parts.items()]
        rows.append(("total", self.params, self.gmacs))
        lines = [f"{'part':<16} {'params':>12} {'GMACs':>9}"]
        lines += [f"{name:<16} {count:>12,} {gmacs:>9.3f}" for name, count, gmacs in rows]
        return "\n".join(lines) + f"\n(one {self.input[0]}x{self.input[1]} image; FLOPs = 2 x MACs)"


def input_size(model: nn.Module) -> tuple[int, int]:
    """The (height, width) a model's cost is counted at: an SSD's square input; for an R-CNN a 3:4 image
    whose short side is its resize's (`transform.min_size`), the long side within `max_size`."""
    if hasattr(model, "image_size"):
        return model.image_size, model.image_size
    short = model.transform.min_size[-1]
    return short, min(round(short * 4 / 3), model.transform.max_size)


@torch.no_grad()
def measure_complexity(model: nn.Module) -> Complexity:
    """Counts `model` (in eval mode for the count, its mode restored) on one random image of
    `input_size(model)` on its device. An R-CNN's count depends on how many proposals and detections the
    image yields (1,000 proposals go through the box head; the mask head runs on the detections)."""
    device = next(model.parameters()).device
    height, width = input_size(model)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model([torch.rand(3, height, width, device=device)])
    model.train(was_training)
    flops = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}
    prefix = type(model).__name__
    parts = {}
    for name in PARTS:
        module = submodule(model, name)
        if module is not None:
            parts[name] = (sum(p.numel() for p in module.parameters()), part_flops(flops, f"{prefix}.{name}") / 2e9)
    params, gmacs = sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2e9
    rest = (params - sum(count for count, _ in parts.values()), gmacs - sum(macs for _, macs in parts.values()))
    if rest[0] or rest[1] > 1e-6:  # what no part holds (the SSD's L2 normalisation of its first map)
        parts["other"] = rest
    return Complexity(params=params, trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                      gmacs=gmacs, input=(height, width), parts=parts)


def part_flops(flops: dict[str, int], key: str) -> int:
    """The FLOPs the counter gave module `key`; for a container it never calls (a ModuleList), the sum of
    its children's."""
    if key in flops:
        return flops[key]
    return sum(count for name, count in flops.items() if name.startswith(f"{key}.") and "." not in name[len(key) + 1:])


def submodule(model: nn.Module, name: str) -> "nn.Module | None":
    """`model`'s submodule at dotted `name`, None where it has none."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None
