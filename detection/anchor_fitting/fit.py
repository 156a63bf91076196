"""Priors fitted to a dataset's boxes: a seeded differential evolution (scipy) over the prior sizes (per map,
or s_min/s_max of the SSD paper's linear rule) and each map's aspect ratios, the maps, their grids and (by
default) the priors per location kept, so that heads and checkpoints still fit. The objective is the best
possible recall at the IoU threshold, then the mean best IoU."""

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.optimize import differential_evolution

from detection.models.anchors import AnchorSpec, prior_shapes

SIZE_BOUNDS = (4.0, 1.5)  # prior sides from 4 pixels to 1.5 x the input side
RATIO_BOUNDS = (1.0, 5.0)  # each ratio r > 1 gives the pair (r, 1/r)


def best_ious(boxes: np.ndarray, spec: AnchorSpec) -> np.ndarray:
    """Each box's best IoU float [G] over all of `spec`'s priors, boxes float [G, 4] xyxy in model-input
    pixels. Exact without the [G, A] matrix: two boxes' IoU only falls as their centres move apart along
    either axis, so on each map the best prior sits at the grid centre nearest the box's."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    best = np.zeros(len(boxes))
    for k, (cells, step) in enumerate(zip(spec.feature_map_sizes, spec.steps)):
        nearest = (np.clip(np.floor(centre / step), 0, cells - 1) + 0.5) * step
        offset = np.abs(centre - nearest)[:, None]  # [G, 1, 2]
        shapes = np.asarray(prior_shapes(spec, k))[None]  # [1, a, 2]
        overlap = np.clip(np.minimum(np.minimum(size[:, None], shapes), (size[:, None] + shapes) / 2 - offset), 0, None)
        intersection = overlap.prod(axis=-1)
        union = size.prod(axis=-1)[:, None] + shapes.prod(axis=-1) - intersection
        best = np.maximum(best, (intersection / union).max(axis=1))
    return best


def coverage(boxes: np.ndarray, spec: AnchorSpec, iou_threshold: float) -> tuple[float, float]:
    """(best possible recall, mean best IoU) of boxes float [G, 4] under `spec`."""
    best = best_ious(boxes, spec)
    return float((best >= iou_threshold).mean()), float(best.mean())


@dataclass(frozen=True)
class Layout:
    """How a parameter vector becomes a spec: `paper` (2 sizes, s_min and s_max, the rest linear between)
    or one size per map boundary; `ratios_per_map` per map."""

    base: AnchorSpec
    paper: bool
    ratios_per_map: tuple[int, ...]

    def bounds(self) -> list[tuple[float, float]]:
        sizes = [(np.log(SIZE_BOUNDS[0]), np.log(SIZE_BOUNDS[1] * self.base.image_size))]
        sizes *= 2 if self.paper else self.base.num_maps + 1
        return sizes + [tuple(np.log(RATIO_BOUNDS))] * sum(self.ratios_per_map)

    def spec(self, x: np.ndarray) -> AnchorSpec:
        count = 2 if self.paper else self.base.num_maps + 1
        sizes = np.exp(x[:count])
        if self.paper:
            sizes = np.linspace(min(sizes), max(sizes), self.base.num_maps + 1)
        ratios = np.exp(x[count:])
        bounds = np.cumsum((0, *self.ratios_per_map))
        return AnchorSpec(self.base.image_size, tuple(np.round(sizes, 2)),
                          tuple(tuple(np.round(ratios[a:b], 3)) for a, b in zip(bounds[:-1], bounds[1:])),
                          self.base.feature_map_sizes, self.base.steps)

    def vector(self, spec: AnchorSpec) -> np.ndarray:
        sizes = (spec.box_sizes[0], spec.box_sizes[-1]) if self.paper else spec.box_sizes
        return np.log(np.clip([*sizes, *(r for rs in spec.aspect_ratios for r in rs)],
                              *zip(*np.exp(self.bounds()))))


def fit_priors(boxes: np.ndarray, base: AnchorSpec, *, iou_threshold: float = 0.5, paper_scales: bool = False,
               ratios_per_map: Optional[int] = None, seed: int = 0, generations: int = 60,
               population: int = 15) -> AnchorSpec:
    """The spec maximising best possible recall, then mean best IoU, over boxes float [G, 4] (model-input
    pixels), started from `base` (a complete spec, whose maps and grids are kept). `ratios_per_map`: None
    keeps each map's count (so the heads keep their shapes, and `base` is in the first population: the
    result is never worse than it); an int gives every map that many."""
    counts = tuple(len(rs) for rs in base.aspect_ratios) if ratios_per_map is None else (ratios_per_map,) * base.num_maps
    layout = Layout(base, paper_scales, counts)

    def loss(x: np.ndarray) -> float:
        recall, mean_iou = coverage(boxes, layout.spec(x), iou_threshold)
        return -(recall + mean_iou / (len(boxes) + 1))  # recall first: one more box covered outweighs any IoU

    start = layout.vector(base) if ratios_per_map is None else None
    result = differential_evolution(loss, layout.bounds(), seed=seed, maxiter=generations, popsize=population,
                                    tol=0, polish=False, x0=start)
    return layout.spec(result.x)
