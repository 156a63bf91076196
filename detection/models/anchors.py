"""SSD default boxes ("anchors") laid out per feature map, as in Liu et al., SSD (ECCV 2016), sec. 2.2."""

import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnchorSpec:
    """The anchor layout of one SSD.

    Map k has `2 + 2 * len(aspect_ratios[k])` anchors per location: two squares of side s_k and
    sqrt(s_k * s_{k+1}), and per ratio r the pair (s_k sqrt(r), s_k / sqrt(r)) and its transpose,
    centred at ((j + 0.5) * step_k, (i + 0.5) * step_k).

    Args:
        image_size: side of the square model input, in pixels.
        box_sizes: s_1..s_{m+1} in input pixels (one more than the number of maps).
        aspect_ratios: per map, the ratios r > 1 used besides the squares.
        feature_map_sizes: per map, its side; None takes them from the network's dry run.
        steps: per map, its stride in input pixels; None takes image_size / feature_map_size.
    """

    image_size: int
    box_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    feature_map_sizes: Optional[tuple[int, ...]] = None
    steps: Optional[tuple[float, ...]] = None

    def __post_init__(self):
        # Hydra hands lists; coerce so that specs compare, hash and pickle as plain tuples.
        object.__setattr__(self, "box_sizes", tuple(float(s) for s in self.box_sizes))
        object.__setattr__(self, "aspect_ratios", tuple(tuple(float(r) for r in rs) for rs in self.aspect_ratios))
        if self.feature_map_sizes is not None:
            object.__setattr__(self, "feature_map_sizes", tuple(int(s) for s in self.feature_map_sizes))
        if self.steps is not None:
            object.__setattr__(self, "steps", tuple(float(s) for s in self.steps))
        num_maps = len(self.aspect_ratios)
        if len(self.box_sizes) != num_maps + 1:
            raise ValueError(f"anchors: {num_maps} maps need {num_maps + 1} box_sizes, got {len(self.box_sizes)}")
        for name in ("feature_map_sizes", "steps"):
            values = getattr(self, name)
            if values is not None and len(values) != num_maps:
                raise ValueError(f"anchors: {num_maps} maps need {num_maps} {name}, got {len(values)}")

    @property
    def num_maps(self) -> int:
        return len(self.aspect_ratios)

    @property
    def anchors_per_location(self) -> list[int]:
        return [2 + 2 * len(ratios) for ratios in self.aspect_ratios]

    def with_feature_map_sizes(self, measured: Sequence[int]) -> "AnchorSpec":
        """This spec completed by the sizes a dry run measured; configured sizes must agree with them. A
        layout without configured sizes drops the maps the network does not produce (its last, coarsest
        ones: a small input ends at a 1x1 map sooner), saying so."""
        measured = tuple(int(s) for s in measured)
        if len(measured) < self.num_maps and self.feature_map_sizes is None:
            kept = len(measured)
            log.info("anchors: the network produces %d feature maps at input %d, not %d: the %d coarsest dropped "
                     "(box sizes %s kept)", kept, self.image_size, self.num_maps, self.num_maps - kept,
                     list(self.box_sizes[:kept + 1]))
            return AnchorSpec(self.image_size, self.box_sizes[:kept + 1], self.aspect_ratios[:kept],
                              steps=self.steps[:kept] if self.steps else None).with_feature_map_sizes(measured)
        if len(measured) != self.num_maps:
            raise ValueError(
                f"anchors define {self.num_maps} feature maps (aspect_ratios) but the network produces "
                f"{len(measured)} at input {self.image_size}: {list(measured)}; to change the input size, set "
                f"image_size={self.image_size} instead of anchors.image_size (the layout follows it)")
        if self.feature_map_sizes is not None and self.feature_map_sizes != measured:
            raise ValueError(
                f"anchors.feature_map_sizes {list(self.feature_map_sizes)} do not match the feature maps the "
                f"network produces at input {self.image_size}: {list(measured)}; to change the input size, set "
                f"image_size={self.image_size} instead of anchors.image_size (the layout follows it)")
        steps = self.steps or tuple(self.image_size / size for size in measured)
        return AnchorSpec(self.image_size, self.box_sizes, self.aspect_ratios, measured, steps)


def prior_shapes(spec: AnchorSpec, k: int) -> list[tuple[float, float]]:
    """(width, height) of map k's anchors at one location, in their order: the squares s_k and
    sqrt(s_k * s_{k+1}), then per ratio r (s_k sqrt(r), s_k / sqrt(r)) and its transpose."""
    small, large = spec.box_sizes[k], spec.box_sizes[k + 1]
    shapes = [(small, small), (math.sqrt(small * large),) * 2]
    for ratio in spec.aspect_ratios[k]:
        root = math.sqrt(ratio)
        shapes += [(small * root, small / root), (small / root, small * root)]
    return shapes


def generate_anchors(spec: AnchorSpec) -> torch.Tensor:
    """All anchors of a complete spec, ordered by map, row, column, then anchor at that location.

    Returns:
        float32 [A, 4], xyxy in the pixels of the model input.
    """
    if spec.feature_map_sizes is None or spec.steps is None:
        raise ValueError("generate_anchors needs feature_map_sizes and steps; complete the spec with a dry run")
    per_map = []
    for k, (size, step) in enumerate(zip(spec.feature_map_sizes, spec.steps)):
        wh = torch.tensor(prior_shapes(spec, k), dtype=torch.float64)  # [a, 2]
        centres_1d = (torch.arange(size, dtype=torch.float64) + 0.5) * step
        cy, cx = torch.meshgrid(centres_1d, centres_1d, indexing="ij")
        centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # [size*size, 1, 2]
        boxes = torch.cat([centres - wh / 2, centres + wh / 2], dim=-1)  # [size*size, a, 4]
        per_map.append(boxes.reshape(-1, 4))
    return torch.cat(per_map).float()
