"""Ground-truth boxes against an SSD's priors, matched as `SSDBoxCoder` matches them: each box first takes
its best prior (greedy bipartite), then every prior whose best IoU reaches the threshold takes its best box.
Boxes are xyxy in model-input pixels throughout."""

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from detection.data.loader import SeededAugmentation
from detection.data.samples import AnnotatedImages, image_header
from detection.models.box_coder import greedy_bipartite_match

SIZE_BUCKETS = {"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, float("inf"))}


@dataclass
class SplitMatches:
    """Every ground truth of a split against the priors: best_iou float [G], positives int64 [G] (priors
    that take it), maps_served bool [G, M] (whether map m has a prior taking it), labels int64 [G], areas
    float [G] (model-input pixels), and matched bool [A] (priors that took some box on the split)."""

    best_iou: np.ndarray
    positives: np.ndarray
    maps_served: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    matched: np.ndarray


def split_boxes(dataset: AnnotatedImages, image_size: int, *, augmented_passes: int = 0,
                seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each image's (boxes float [G, 4] xyxy in model-input pixels, labels int64 [G]) as the SSD sees them:
    its annotation resized to the square input (read from the annotations and image headers alone); or,
    with `augmented_passes`, that many passes of the dataset's training transforms, drawn as the training
    epochs draw them (seed, pass, index)."""
    if not augmented_passes:
        images = []
        for annotation in dataset.annotations:
            width, height = annotation.size or image_header(annotation.image_path)[0]
            scale = torch.tensor([image_size / width, image_size / height] * 2)
            images.append((torch.from_numpy(annotation.boxes) * scale, torch.from_numpy(annotation.labels)))
        return images
    seeded = SeededAugmentation(dataset, seed, dataset.transforms)
    images = []
    for epoch in range(augmented_passes):
        for index in range(len(dataset)):
            sample = seeded[epoch, index]
            if sample is None:  # a bad sample, skipped (on_bad_sample=skip)
                continue
            image, target = sample
            height, width = image.shape[-2:]
            scale = torch.tensor([image_size / width, image_size / height] * 2)
            images.append((target["boxes"] * scale, target["labels"]))
    return images


def match_image(boxes: torch.Tensor, priors: torch.Tensor, iou_threshold: float) -> tuple[torch.Tensor, ...]:
    """One image's boxes float [G, 4] against priors float [A, 4]: (best IoU float [G], the box each prior
    takes int64 [A], -1 for none)."""
    iou = box_iou(boxes, priors)
    best_iou_per_prior, box_per_prior = iou.max(dim=0)
    owner = torch.where(best_iou_per_prior >= iou_threshold, box_per_prior, -1)
    forced = greedy_bipartite_match(iou[None], torch.tensor([len(boxes)]))[0]
    owner[forced] = torch.arange(len(boxes))
    return iou.max(dim=1).values, owner


def match_split(images: list[tuple[torch.Tensor, torch.Tensor]], priors: torch.Tensor, map_of_prior: torch.Tensor,
                iou_threshold: float) -> SplitMatches:
    """`images`: per image (boxes float [G, 4] in model-input pixels, labels int64 [G]); `map_of_prior`
    int64 [A], the feature map each prior lies on."""
    num_maps = int(map_of_prior.max()) + 1
    matched = torch.zeros(len(priors), dtype=torch.bool)
    parts = []
    for boxes, labels in images:
        if len(boxes) == 0:
            continue
        best_iou, owner = match_image(boxes.float(), priors, iou_threshold)
        taken = owner >= 0
        matched |= taken
        positives = torch.bincount(owner[taken], minlength=len(boxes))
        served = torch.zeros(len(boxes), num_maps, dtype=torch.bool)
        served[owner[taken], map_of_prior[taken]] = True
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        parts.append((best_iou, positives, served, labels, areas))
    columns = [torch.cat(column).numpy() for column in zip(*parts)] if parts else [np.zeros(0)] * 5
    return SplitMatches(*columns, matched=matched.numpy())


def summary(best_iou: np.ndarray, positives: np.ndarray, iou_threshold: float) -> dict:
    """Best possible recall (share of boxes whose best prior IoU reaches the threshold), the best IoU's
    mean and quantiles, and the positives' per box."""
    if len(best_iou) == 0:
        return {"boxes": 0}
    quantiles = (0.1, 0.25, 0.5, 0.75, 0.9)
    return {"boxes": int(len(best_iou)), "best_possible_recall": float((best_iou >= iou_threshold).mean()),
            "best_iou_mean": float(best_iou.mean()),
            "best_iou_quantiles": {str(q): float(v) for q, v in zip(quantiles, np.quantile(best_iou, quantiles))},
            "positives_mean": float(positives.mean()),
            "positives_quantiles": {str(q): float(v) for q, v in zip(quantiles, np.quantile(positives, quantiles))}}


def report(matches: SplitMatches, map_of_prior: np.ndarray, class_names: list[str], iou_threshold: float) -> dict:
    """The coverage report: overall, per class, per COCO size bucket (model-input pixels) and per map (the
    boxes it serves, the share of its priors no box took on the split)."""
    def subset(keep: np.ndarray) -> dict:
        return summary(matches.best_iou[keep], matches.positives[keep], iou_threshold)

    maps = []
    for index in range(int(map_of_prior.max()) + 1):
        on_map = map_of_prior == index
        maps.append({"map": index, "priors": int(on_map.sum()), "boxes_served": int(matches.maps_served[:, index].sum()),
                     "never_matched": float(1.0 - matches.matched[on_map].mean())})
    return {"iou_threshold": iou_threshold, "overall": subset(np.ones(len(matches.best_iou), dtype=bool)),
            "per_class": {name: subset(matches.labels == label) for label, name in enumerate(class_names, start=1)},
            "per_size": {name: subset((matches.areas >= low) & (matches.areas < high))
                         for name, (low, high) in SIZE_BUCKETS.items()},
            "per_map": maps}
