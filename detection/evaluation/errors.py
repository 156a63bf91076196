"""Why the mAP is what it is: the TIDE error breakdown (Bolya et al., ECCV 2020) and a detection confusion
matrix, over the evaluator's records of a whole split.

TIDE's rules, as its reference implementation (tidecv 1.0.1) applies them at one IoU: in each image the
best `max_detections` detections, best first, each take the unmatched object of their class they overlap
most, when that IoU reaches `foreground` (0.5). Every other detection is an error of the first kind that
fits it: localisation (its class's best IoU within [background, foreground]), classification (IoU at least
`foreground` with an object of another class), duplicate (IoU at least `foreground` with an object of its
class already matched), background (no object above `background`, 0.1), else both (wrong class and poorly
placed). An object no detection matched and no classification or localisation error could fix is missed.
A type's dAP is the AP gained by fixing its errors alone: a classification or localisation error becomes a
true positive when its object is unmatched and it is the best-scored error on it (the others are dropped),
the other false positives are dropped, and missed objects are taken out of the count. AP is TIDE's:
COCO's 101-point interpolation at the one IoU, averaged over the classes with objects or detections.

Difficult (VOC) and crowd (COCO) objects are ignored as COCOeval ignores crowds: they are no one's object
to miss, and a detection that matches nothing else and lies more than `foreground` inside one (its
intersection over the detection's area) counts neither way.
"""

from dataclasses import dataclass

import numpy as np

ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
BLOCK = 2 ** 18  # elements of the [images, detections, objects] IoU arrays worked on at once
RECALL_POINTS = np.arange(101) / 100  # as COCOeval and TIDE write them (linspace rounds 0.07 otherwise)


@dataclass
class Outcomes:
    """What each kept detection and object came to. Detections (the first `max_detections` of each image):
    index int [D] into the split's detections, true_positive bool [D], ignored bool [D], error int [D]
    (index into ERROR_TYPES, -1 for none), target int [D] (the object a classification or localisation
    error would take, else -1). Objects: ignored bool [G] (difficult or crowd), matched bool [G], missed
    bool [G]. confusion int [K + 1, K + 1]: rows the objects' classes then 'background', columns the
    predicted classes then 'missed'."""

    index: np.ndarray
    true_positive: np.ndarray
    ignored: np.ndarray
    error: np.ndarray
    target: np.ndarray
    object_ignored: np.ndarray
    matched: np.ndarray
    missed: np.ndarray
    confusion: np.ndarray


def box_overlaps(boxes: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(IoU float [..., R, G], intersection float [..., R, G], the first boxes' areas float [..., R, 1]) of
    boxes float [..., R, 4] with others float [..., G, 4], xyxy pixels in COCO's continuous convention."""
    first = [boxes[..., :, None, k] for k in range(4)]  # each [..., R, 1]
    second = [others[..., None, :, k] for k in range(4)]  # each [..., 1, G]
    width = np.minimum(first[2], second[2]) - np.maximum(first[0], second[0])
    height = np.minimum(first[3], second[3]) - np.maximum(first[1], second[1])
    intersection = np.maximum(width, 0.0) * np.maximum(height, 0.0)
    area = (first[2] - first[0]) * (first[3] - first[1])
    areas = (second[2] - second[0]) * (second[3] - second[1])
    union = np.maximum(area + areas - intersection, np.finfo(np.float64).tiny)
    return intersection / union, intersection, area


def padded(image: np.ndarray, images: np.ndarray, width: int, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions int [I, width] of the items (already sorted by `order`, grouped by image) of each of the
    sorted `images`, and their validity bool [I, width]."""
    sorted_image = image[order]
    starts = np.searchsorted(sorted_image, images)
    counts = np.searchsorted(sorted_image, images, side="right") - starts
    slots = starts[:, None] + np.arange(width)
    valid = np.arange(width) < counts[:, None]
    return order[np.minimum(slots, max(len(order) - 1, 0))] if len(order) else np.zeros_like(slots), valid


def greedy_match(candidates: np.ndarray, active: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    """Detections, best first, each take the unmatched object they overlap most, at IoU >= threshold.
    candidates float [I, R, G]: the IoU with each object a detection may take (0 where it may not); active
    bool [I, R] -> (matched bool [I, R], their object int [I, R], objects taken bool [I, G]). A loop over
    the R detection ranks, every image at once."""
    images = np.arange(candidates.shape[0])
    taken = np.zeros((candidates.shape[0], candidates.shape[2]), dtype=bool)
    matched = np.zeros(candidates.shape[:2], dtype=bool)
    chosen = np.zeros(candidates.shape[:2], dtype=np.int64)
    for rank in range(candidates.shape[1] if candidates.shape[2] else 0):
        free = np.where(taken, 0.0, candidates[:, rank])
        best = free.argmax(axis=1)
        hit = active[:, rank] & (free[images, best] >= threshold)
        taken[images[hit], best[hit]] = True
        matched[:, rank], chosen[:, rank] = hit, best
    return matched, chosen, taken


def classify_errors(own: np.ndarray, other: np.ndarray, real: np.ndarray, taken: np.ndarray,
                    foreground: float, background: float) -> tuple[np.ndarray, np.ndarray]:
    """TIDE's error type (index into ERROR_TYPES) of every detection of [I, R] and the object int [I, R] a
    classification or localisation error would take. own, other float [I, R, G]: the IoU with the real
    objects (neither padding nor ignored) of the detection's class and of the others, 0 elsewhere; `real`
    bool [I, G]; `taken` bool [I, G] the objects matched."""
    if own.shape[2] == 0:  # no image of the block has objects
        return np.full(own.shape[:2], ERROR_TYPES.index("background")), np.full(own.shape[:2], -1)
    best_own, best_other = own.max(axis=2), other.max(axis=2)
    best_taken = np.where(taken[:, None], own, 0.0).max(axis=2)
    kinds = [("localisation", (best_own >= background) & (best_own <= foreground)),
             ("classification", best_other >= foreground), ("duplicate", best_taken >= foreground),
             ("background", np.maximum(best_own, best_other) <= background), ("both", np.ones_like(best_own, dtype=bool))]
    error = np.full(best_own.shape, -1)
    for name, applies in reversed(kinds):  # the first kind that applies wins
        error[applies] = ERROR_TYPES.index(name)
    error[~real.any(axis=1)] = ERROR_TYPES.index("background")  # an image with no objects
    target = np.full(best_own.shape, -1)
    for name, overlaps in (("localisation", own), ("classification", other)):
        chosen = error == ERROR_TYPES.index(name)
        target[chosen] = overlaps[chosen].argmax(axis=1)
    return error, target


def image_then_score(image: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The detections' order by image, then by descending score (ties in given order): no sort at all when
    they come so, as a detector's output through the evaluator does."""
    same_image = image[1:] == image[:-1]
    if np.all(image[1:] >= image[:-1]) and np.all(~same_image | (scores[1:] <= scores[:-1])):
        return np.arange(len(image))
    by_score = np.argsort(-scores, kind="stable")
    return by_score[np.argsort(image[by_score], kind="stable")]


def outcomes(detections: dict[str, np.ndarray], objects: dict[str, np.ndarray], num_classes: int, *,
             foreground: float = 0.5, background: float = 0.1, max_detections: int = 100,
             score_threshold: float = 0.5) -> Outcomes:
    """Every detection's and object's outcome under TIDE's rules, and the confusion matrix of the
    detections scoring at least `score_threshold` (matched to any object of any class, best first, at
    IoU >= `foreground`). Arguments as the evaluator flattens its records: detections 'image', 'labels'
    (1..K), 'scores', 'boxes' xyxy pixels; objects 'image', 'labels', 'boxes', 'difficult', 'iscrowd'."""
    order = image_then_score(detections["image"], detections["scores"])
    sorted_image = detections["image"][order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_image, sorted_image)
    kept = order[rank < max_detections]
    object_order = np.argsort(objects["image"], kind="stable")
    images = np.unique(np.concatenate([detections["image"], objects["image"]]))
    width = int(np.bincount(np.searchsorted(images, detections["image"][kept])).max(initial=0))
    depth = int(np.bincount(np.searchsorted(images, objects["image"])).max(initial=0))
    slot, slot_valid = padded(detections["image"], images, width, kept)
    item, item_valid = padded(objects["image"], images, depth, object_order)
    object_ignored = objects["difficult"] | objects["iscrowd"]
    count = len(kept)
    result = {"true_positive": np.zeros(count, bool), "ignored": np.zeros(count, bool),
              "error": np.full(count, -1), "target": np.full(count, -1)}
    position = np.empty(len(detections["scores"]), dtype=np.int64)
    position[kept] = np.arange(count)
    matched = np.zeros(len(object_ignored), dtype=bool)
    confusion = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    chunk = max(1, BLOCK // max(1, width * depth))
    for start in range(0, len(images), chunk):
        rows = slice(start, start + chunk)
        parts = chunk_outcomes(detections, objects, object_ignored, slot[rows], slot_valid[rows], item[rows],
                               item_valid[rows], foreground, background, score_threshold, confusion)
        where = position[slot[rows][slot_valid[rows]]]
        for key in result:
            result[key][where] = parts[key][slot_valid[rows]]
        matched[item[rows][parts["taken"]]] = True
    real = ~object_ignored
    fixable = result["target"] >= 0
    usable = np.zeros(len(real), dtype=bool)
    usable[result["target"][fixable]] = True
    return Outcomes(kept, result["true_positive"], result["ignored"], result["error"], result["target"],
                    object_ignored, matched, real & ~matched & ~usable, confusion)


def chunk_outcomes(detections, objects, object_ignored, slot, slot_valid, item, item_valid, foreground, background,
                   score_threshold, confusion) -> dict[str, np.ndarray]:
    """`outcomes` for one block of images (padded [I, R] detection and [I, G] object positions); adds the
    block's confusion counts into `confusion`."""
    labels, objects_labels = detections["labels"][slot], objects["labels"][item]
    iou, intersection, area = box_overlaps(detections["boxes"][slot].astype(np.float64),
                                           objects["boxes"][item].astype(np.float64))
    ignore = item_valid & object_ignored[item]
    real = item_valid & ~ignore
    same_class = labels[:, :, None] == objects_labels[:, None, :]
    real_iou = np.where(real[:, None], iou, 0.0)
    own = np.where(same_class, real_iou, 0.0)
    other = real_iou - own
    # more than `foreground` of the detection inside a difficult or crowd object (COCOeval's crowd overlap)
    inside = (intersection > foreground * area) & ignore[:, None] if ignore.any() else np.zeros(iou.shape, bool)
    true_positive, _, taken = greedy_match(own, slot_valid, foreground)
    ignored = slot_valid & ~true_positive & (inside & same_class).any(axis=2)
    error, target = classify_errors(own, other, real, taken, foreground, background)
    negative = slot_valid & ~true_positive & ~ignored
    rows = np.arange(len(slot))[:, None]
    if item.shape[1]:  # object positions in the split's arrays (a block without objects has no targets)
        target = np.where(negative & (target >= 0), item[rows, np.maximum(target, 0)], -1)
    # the confusion matrix: detections above the threshold matched to objects of any class
    active = slot_valid & (detections["scores"][slot] >= score_threshold)
    hit, whose, covered = greedy_match(real_iou, active, foreground)
    off = active & ~hit & inside.any(axis=2)  # inside a difficult or crowd object
    if hit.any():
        np.add.at(confusion, (objects_labels[rows, whose][hit] - 1, labels[hit] - 1), 1)
    np.add.at(confusion, (-1, labels[active & ~hit & ~off] - 1), 1)
    np.add.at(confusion, (objects_labels[real & ~covered] - 1, -1), 1)
    return {"true_positive": true_positive, "ignored": ignored, "error": np.where(negative, error, -1),
            "target": target, "taken": taken}


def ranked(labels: np.ndarray, by_score: np.ndarray) -> np.ndarray:
    """The order class_aps takes detections in: by label, then by descending score (ties in given order);
    `by_score` is the detections' order by descending score (one sort serves every labelling)."""
    return by_score[np.argsort(labels[by_score].astype(np.int16), kind="stable")]


def class_aps(labels: np.ndarray, hits: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """TIDE's AP float [K] of each class 1..K over detections already `ranked` (labels int, hits bool: true
    positive): COCO's 101-point interpolation of the precision envelope; 0 for a class with detections but no
    objects, nan for a class with neither (left out of the mean). `positives` int [K + 1]: objects per label.
    All classes at once: each class's values are offset by twice its index, so that running maxima and
    searches over the whole array stay inside each class."""
    classes = np.arange(1, len(positives))
    bounds = np.searchsorted(labels, np.append(classes, len(positives)))
    starts, ends = bounds[:-1], bounds[1:]
    offset = 2.0 * (labels - 1)  # labels are 1..K
    seen = np.arange(1, len(labels) + 1) - starts[labels - 1]  # detections of its class up to each one
    tp = np.cumsum(hits)
    tp = tp - np.append(0, tp)[starts[labels - 1]]
    precision = np.maximum.accumulate((tp / seen - offset)[::-1])[::-1] + offset  # the envelope, per class
    recall = tp / np.maximum(positives[labels], 1) + offset
    found = np.searchsorted(recall, (RECALL_POINTS[None, :] + 2.0 * (classes - 1)[:, None]).ravel(), side="left")
    found = found.reshape(len(classes), len(RECALL_POINTS))
    inside = found < ends[:, None]
    aps = np.where(inside, precision[np.minimum(found, max(len(labels) - 1, 0))] if len(labels) else 0.0,
                   0.0).mean(axis=1)
    aps[positives[1:] <= 0] = 0.0
    aps[(positives[1:] <= 0) & (starts == ends)] = np.nan
    return aps


def breakdown(result: Outcomes, detections: dict[str, np.ndarray], objects: dict[str, np.ndarray],
              class_names: list[str]) -> dict:
    """The error counts and dAPs (TIDE's AP, 0..1) of every type, plus the false-positive dAP (every false
    positive ranked below every true one) and the false-negative dAP (every unmatched object taken out of
    the count), overall and per class; the confusion matrix as nested lists."""
    num_classes = len(class_names)
    counted = ~result.ignored
    labels = detections["labels"][result.index][counted]
    scores = detections["scores"][result.index][counted].astype(np.float64)
    hits, error, target = result.true_positive[counted], result.error[counted], result.target[counted]
    real = ~result.object_ignored
    positives = np.bincount(objects["labels"][real], minlength=num_classes + 1)
    # the first (best-scored) classification or localisation error on each unmatched object is the one fixed
    fixable = np.flatnonzero(target >= 0)
    fixable = fixable[~result.matched[target[fixable]]]
    first = np.zeros(len(target), dtype=bool)
    first[fixable[np.unique(target[fixable], return_index=True)[1]]] = True
    by_score = np.argsort(-scores, kind="stable")
    order = ranked(labels, by_score)  # serves every fix that keeps the labels and scores
    labels, scores, hits, error, target, first = (a[order] for a in (labels, scores, hits, error, target, first))
    ranked_position = np.empty(len(order), dtype=np.int64)
    ranked_position[order] = np.arange(len(order))
    by_score_here = ranked_position[by_score]  # the score order, in positions of the ranked arrays
    base = class_aps(labels, hits, positives)
    fixed = {}
    for index, name in enumerate(ERROR_TYPES[:-1]):
        wrong = error == index
        repaired = wrong & first
        keep = ~wrong | repaired
        if name == "classification":  # repaired detections change class: ranked again
            new_labels = labels.copy()
            new_labels[repaired] = objects["labels"][target[repaired]]
            new_labels = new_labels[keep]
            kept_by_score = (np.cumsum(keep) - 1)[by_score_here[keep[by_score_here]]]  # the same order, renumbered
            again = ranked(new_labels, kept_by_score)
            fixed[name] = class_aps(new_labels[again], (hits | repaired)[keep][again], positives)
        else:
            fixed[name] = class_aps(labels[keep], (hits | repaired)[keep], positives)
    missed_labels = objects["labels"][result.missed]
    fixed["missed"] = class_aps(labels, hits, positives - np.bincount(missed_labels, minlength=num_classes + 1))
    true_first = np.lexsort((~hits, labels))  # every false positive below every true one, class by class
    fixed["false_positives"] = class_aps(labels[true_first], hits[true_first], positives)
    unmatched = np.bincount(objects["labels"][real & ~result.matched], minlength=num_classes + 1)
    fixed["false_negatives"] = class_aps(labels, hits, positives - unmatched)

    def mean(aps: np.ndarray) -> float:
        return float(np.nanmean(aps)) if np.isfinite(aps).any() else float("nan")

    def gain(after: np.ndarray, before: np.ndarray, clamp: bool) -> float:
        """TIDE clamps the main types' gains at 0 (a loss there is an interpolation artefact); a class
        that has no detections and no objects left gains nothing."""
        value = mean(after) - mean(before)
        value = 0.0 if value != value else value
        return max(value, 0.0) if clamp else value

    counts = {name: (np.bincount(labels[error == index], minlength=num_classes + 1) if name != "missed"
                     else np.bincount(missed_labels, minlength=num_classes + 1)) for index, name in enumerate(ERROR_TYPES)}
    per_class = {}
    for label, class_name in enumerate(class_names, start=1):
        ap = base[label - 1:label]
        per_class[class_name] = {"ap": float(ap[0]), "counts": {name: int(c[label]) for name, c in counts.items()},
                                 "dap": {name: gain(aps[label - 1:label], ap, name in ERROR_TYPES)
                                         for name, aps in fixed.items()}}
    return {"ap": mean(base),
            "counts": {name: int(c.sum()) for name, c in counts.items()},
            "dap": {name: gain(aps, base, name in ERROR_TYPES) for name, aps in fixed.items()},
            "per_class": per_class, "confusion": result.confusion.tolist(),
            "confusion_labels": {"rows": [*class_names, "background"], "columns": [*class_names, "missed"]}}
