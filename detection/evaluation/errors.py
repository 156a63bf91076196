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
BLOCK = 2 ** 16  # elements of the [images, detections, objects] IoU arrays worked on at once
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
    """(IoU float [..., G, R], intersection float [..., G, R], the others' areas float [..., 1, R]) of
    boxes float [..., G, 4] with others float [..., R, 4], xyxy pixels in COCO's continuous convention."""
    first = [boxes[..., :, None, k] for k in range(4)]  # each [..., G, 1]
    second = [others[..., None, :, k] for k in range(4)]  # each [..., 1, R]
    width = np.minimum(first[2], second[2]) - np.maximum(first[0], second[0])
    height = np.minimum(first[3], second[3]) - np.maximum(first[1], second[1])
    intersection = np.maximum(width, 0.0) * np.maximum(height, 0.0)
    area = (first[2] - first[0]) * (first[3] - first[1])
    areas = (second[2] - second[0]) * (second[3] - second[1])
    union = np.maximum(area + areas - intersection, np.finfo(np.float64).tiny)
    return intersection / union, intersection, areas


def padded(sorted_image: np.ndarray, order: np.ndarray, images: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions int [I, width] of the items of each of `images`, given the items' image ids in
    `sorted_image` (ascending) at the positions `order`, and their validity bool [I, width]."""
    starts = np.searchsorted(sorted_image, images)
    counts = np.searchsorted(sorted_image, images, side="right") - starts
    slots = starts[:, None] + np.arange(width)
    valid = np.arange(width) < counts[:, None]
    return order[np.minimum(slots, max(len(order) - 1, 0))] if len(order) else np.zeros_like(slots), valid


def packed(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions int [I, W] of each row's True entries of mask bool [I, R] first, in order (W the most
    in one row), and which of them are True bool [I, W]."""
    width = int(mask.sum(axis=1).max(initial=0))
    pick = np.argsort(~mask, axis=1, kind="stable")[:, :width]
    return pick, np.take_along_axis(mask, pick, axis=1)


def greedy_match(candidates: np.ndarray, eligible: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    """Detections, best first, each take the unmatched object they overlap most, at IoU >= threshold.
    candidates float [I, G, R]: the IoU with each object a detection may take (0 where it may not);
    eligible bool [I, R]: the detections that take part and reach the threshold with some object ->
    (matched bool [I, R], their object int [I, R], objects taken bool [I, G]). A loop over ranks, every
    image at once, over the eligible detections only (packed to the front of each image, in order)."""
    count, width, ranks = candidates.shape
    rows = np.arange(count)
    taken = np.zeros((count, width), dtype=bool)
    matched = np.zeros((count, ranks), dtype=bool)
    chosen = np.zeros((count, ranks), dtype=np.int64)
    pick, pick_eligible = packed(eligible)
    for rank in range(pick.shape[1] if width else 0):
        position = pick[:, rank]
        free = np.where(taken, 0.0, candidates[rows, :, position])  # [I, G]
        best = free.argmax(axis=1)
        hit = pick_eligible[:, rank] & (free[rows, best] >= threshold)
        taken[rows[hit], best[hit]] = True
        matched[rows, position], chosen[rows, position] = hit, best
    return matched, chosen, taken


def classify_errors(own: np.ndarray, other: np.ndarray, best_own: np.ndarray, best_other: np.ndarray,
                    real: np.ndarray, taken: np.ndarray, foreground: float,
                    background: float) -> tuple[np.ndarray, np.ndarray]:
    """TIDE's error type (index into ERROR_TYPES) of every detection of [I, R] and the object int [I, R] a
    classification or localisation error would take. own, other float [I, G, R]: the IoU with the real
    objects (neither padding nor ignored) of the detection's class and of the others, 0 elsewhere; best_own,
    best_other [I, R] their maxima; `real` bool [I, G]; `taken` bool [I, G] the objects matched."""
    if own.shape[1] == 0:  # no image of the block has objects
        return np.full(own.shape[:2], ERROR_TYPES.index("background")), np.full(own.shape[:2], -1)
    duplicate = best_own >= foreground  # only then can an object it overlaps that much be taken
    duplicate[duplicate] = (own.transpose(0, 2, 1)[duplicate] * taken[np.nonzero(duplicate)[0]]).max(axis=1) >= foreground
    kinds = [("localisation", (best_own >= background) & (best_own <= foreground)),
             ("classification", best_other >= foreground), ("duplicate", duplicate),
             ("background", np.maximum(best_own, best_other) <= background), ("both", np.ones_like(best_own, dtype=bool))]
    error = np.full(best_own.shape, -1)
    for name, applies in reversed(kinds):  # the first kind that applies wins
        error[applies] = ERROR_TYPES.index(name)
    error[~real.any(axis=1)] = ERROR_TYPES.index("background")  # an image with no objects
    target = np.full(best_own.shape, -1)
    for name, overlaps in (("localisation", own), ("classification", other)):
        chosen = error == ERROR_TYPES.index(name)
        target[chosen] = overlaps.transpose(0, 2, 1)[chosen].argmax(axis=1)
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
    first = np.flatnonzero(np.r_[True, sorted_image[1:] != sorted_image[:-1]]) if len(order) else np.zeros(0, int)
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))  # within its image
    kept = order[rank < max_detections]
    object_order = np.argsort(objects["image"], kind="stable")
    images = np.unique(np.concatenate([sorted_image[first], objects["image"]]))
    sorted_image, sorted_object_image = detections["image"][kept], objects["image"][object_order]
    widths = np.searchsorted(sorted_image, images, side="right") - np.searchsorted(sorted_image, images)
    depths = np.searchsorted(sorted_object_image, images, side="right") - np.searchsorted(sorted_object_image, images)
    by_depth = np.argsort(depths, kind="stable")  # blocks of images with about as many objects: little padding
    images, widths, depths = images[by_depth], widths[by_depth], depths[by_depth]
    object_ignored = objects["difficult"] | objects["iscrowd"]
    count = len(kept)
    result = {"true_positive": np.zeros(count, bool), "ignored": np.zeros(count, bool),  # every detection
              "error": np.full(count, ERROR_TYPES.index("background")), "target": np.full(count, -1)}  # near no object
    position = np.empty(len(detections["scores"]), dtype=np.int64)
    position[kept] = np.arange(count)
    matched = np.zeros(len(object_ignored), dtype=bool)
    confusion = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    width, start = int(widths.max(initial=1)), 0
    while start < len(images):
        least = max(1, depths[start])  # a block's depth at most doubles, and it holds about BLOCK IoUs
        stop = min(np.searchsorted(depths, 2 * least, side="right"), start + max(1, BLOCK // (width * least)))
        rows = slice(start, stop)
        slot, slot_valid = padded(sorted_image, kept, images[rows], int(widths[rows].max()))
        item, item_valid = padded(sorted_object_image, object_order, images[rows], int(depths[stop - 1]))
        parts = chunk_outcomes(detections, objects, object_ignored, slot, slot_valid, item, item_valid,
                               foreground, background, score_threshold, confusion)
        where = position[parts["slot"][parts["slot_valid"]]]
        for key in result:
            result[key][where] = parts[key][parts["slot_valid"]]
        matched[item[parts["taken"]]] = True
        start = stop
    real = ~object_ignored
    fixable = result["target"] >= 0
    usable = np.zeros(len(real), dtype=bool)
    usable[result["target"][fixable]] = True
    return Outcomes(kept, result["true_positive"], result["ignored"], result["error"], result["target"],
                    object_ignored, matched, real & ~matched & ~usable, confusion)


def chunk_outcomes(detections, objects, object_ignored, slot, slot_valid, item, item_valid, foreground, background,
                   score_threshold, confusion) -> dict[str, np.ndarray]:
    """`outcomes` for one block of images (padded [I, R] detection and [I, G] object positions), of the
    detections near an object: those overlapping no real object by `background` and inside no ignored one
    are background errors and match nothing (the caller's default). Returns their outcomes [I, R'] with
    their positions 'slot' and validity 'slot_valid', and the objects 'taken' [I, G]; adds the block's
    confusion counts into `confusion`."""
    # pairs [I, G, R], objects by detections: reductions over the few objects run along the middle axis
    iou, intersection, area = box_overlaps(objects["boxes"][item].astype(np.float64),
                                           detections["boxes"][slot].astype(np.float64))
    ignore = item_valid & object_ignored[item]
    real = item_valid & ~ignore
    real_iou = np.where(real[:, :, None], iou, 0.0)
    # more than `foreground` of the detection inside a difficult or crowd object (COCOeval's crowd overlap)
    inside = (intersection > foreground * area) & ignore[:, :, None] if ignore.any() else np.zeros(iou.shape, bool)
    near = slot_valid & ((real_iou.max(axis=1, initial=0.0) >= background) | inside.any(axis=1))
    active = slot_valid & (detections["scores"][slot] >= score_threshold)
    far_labels = detections["labels"][slot[active & ~near]]
    confusion[-1, :-1] += np.bincount(far_labels - 1, minlength=len(confusion) - 1)  # background, unmatched
    pick, slot_valid = packed(near)
    slot, active = np.take_along_axis(slot, pick, axis=1), np.take_along_axis(active, pick, axis=1) & slot_valid
    real_iou, inside = (np.take_along_axis(pairs, pick[:, None, :], axis=2) for pairs in (real_iou, inside))
    labels, objects_labels = detections["labels"][slot], objects["labels"][item]
    same_class = objects_labels[:, :, None] == labels[:, None, :]
    own = np.where(same_class, real_iou, 0.0)
    other = real_iou - own
    best_own, best_other = own.max(axis=1, initial=0.0), other.max(axis=1, initial=0.0)
    true_positive, _, taken = greedy_match(own, slot_valid & (best_own >= foreground), foreground)
    ignored = slot_valid & ~true_positive & (inside & same_class).any(axis=1)
    error, target = classify_errors(own, other, best_own, best_other, real, taken, foreground, background)
    negative = slot_valid & ~true_positive & ~ignored
    rows = np.arange(len(slot))[:, None]
    if item.shape[1]:  # object positions in the split's arrays (a block without objects has no targets)
        target = np.where(negative & (target >= 0), item[rows, np.maximum(target, 0)], -1)
    # the confusion matrix: detections above the threshold matched to objects of any class
    hit, whose, covered = greedy_match(real_iou, active & (np.maximum(best_own, best_other) >= foreground), foreground)
    off = active & ~hit & inside.any(axis=1)  # inside a difficult or crowd object
    if hit.any():
        np.add.at(confusion, (objects_labels[rows, whose][hit] - 1, labels[hit] - 1), 1)
    np.add.at(confusion, (-1, labels[active & ~hit & ~off] - 1), 1)
    np.add.at(confusion, (objects_labels[real & ~covered] - 1, -1), 1)
    return {"true_positive": true_positive, "ignored": ignored, "error": np.where(negative, error, -1),
            "target": target, "taken": taken, "slot": slot, "slot_valid": slot_valid}


def descending(scores: np.ndarray) -> np.ndarray:
    """np.argsort(-scores, kind="stable") for scores float [N], by four stable 16-bit radix passes over an
    order-keeping integer image of the float64 values: about twice as fast as numpy's float sort."""
    bits = (scores.astype(np.float64) + 0.0).view(np.uint64)  # + 0.0: -0.0 becomes 0.0, as a comparison sees it
    sign = np.uint64(1 << 63)
    key = ~np.where(bits & sign, ~bits, bits | sign)  # larger floats, smaller keys
    order = np.arange(len(key))
    for shift in range(0, 64, 16):
        order = order[np.argsort((key[order] >> np.uint64(shift)).astype(np.uint16), kind="stable")]
    return order


def ranked(labels: np.ndarray, by_score: np.ndarray) -> np.ndarray:
    """The order class_aps takes detections in: by label, then by descending score (ties in given order);
    `by_score` is the detections' order by descending score (one sort serves every labelling)."""
    return by_score[np.argsort(labels[by_score].astype(np.int16), kind="stable")]


def class_aps(labels: np.ndarray, hits: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """TIDE's AP float [K] of each class 1..K over detections already `ranked` (labels int, hits bool: true
    positive): COCO's 101-point interpolation of the precision envelope; 0 for a class with detections but no
    objects, nan for a class with neither (left out of the mean). `positives` int [K + 1]: objects per label.
    Only the true positives are read: a recall is first reached at one, and the envelope there is the best
    precision of the true positives from it on (a false positive's precision is below the one before it).
    All classes at once: each class's values are offset by twice its index, so that running maxima and
    searches over the whole array stay inside each class."""
    classes = np.arange(1, len(positives))
    starts, ends = np.searchsorted(labels, classes), np.searchsorted(labels, classes, side="right")
    true = np.flatnonzero(hits)
    true_labels = labels[true]
    first_true = np.searchsorted(true_labels, classes)
    seen = true + 1 - starts[true_labels - 1]  # detections of its class up to each true positive
    tp = np.arange(1, len(true) + 1) - first_true[true_labels - 1]
    offset = 2.0 * (true_labels - 1)  # labels are 1..K
    precision = np.maximum.accumulate((tp / seen - offset)[::-1])[::-1] + offset  # the envelope, per class
    recall = tp / np.maximum(positives[true_labels], 1) + offset
    found = np.searchsorted(recall, (RECALL_POINTS[None, :] + 2.0 * (classes - 1)[:, None]).ravel(), side="left")
    found = found.reshape(len(classes), len(RECALL_POINTS))
    inside = found < np.searchsorted(true_labels, classes, side="right")[:, None]
    aps = np.where(inside, precision[np.minimum(found, max(len(true) - 1, 0))] if len(true) else 0.0,
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
    scores = detections["scores"][result.index][counted]
    hits, error, target = result.true_positive[counted], result.error[counted], result.target[counted]
    real = ~result.object_ignored
    positives = np.bincount(objects["labels"][real], minlength=num_classes + 1)
    # the first (best-scored) classification or localisation error on each unmatched object is the one fixed
    fixable = np.flatnonzero(target >= 0)
    fixable = fixable[~result.matched[target[fixable]]]
    first = np.zeros(len(target), dtype=bool)
    first[fixable[np.unique(target[fixable], return_index=True)[1]]] = True
    by_score = descending(scores)
    order = ranked(labels, by_score)  # serves every fix that keeps the labels and scores
    labels, hits, error, target, first = (a[order] for a in (labels, hits, error, target, first))
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
    # every false positive below every true one: the first detections of each class as many as it has hits
    class_start = np.searchsorted(labels, np.arange(1, num_classes + 1))[labels - 1]
    true_first = np.arange(len(labels)) - class_start < np.bincount(labels[hits], minlength=num_classes + 1)[labels]
    fixed["false_positives"] = class_aps(labels, true_first, positives)
    unmatched = np.bincount(objects["labels"][real & ~result.matched], minlength=num_classes + 1)
    fixed["false_negatives"] = class_aps(labels, hits, positives - unmatched)
    counts = {name: (np.bincount(labels[error == index], minlength=num_classes + 1) if name != "missed"
                     else np.bincount(missed_labels, minlength=num_classes + 1)) for index, name in enumerate(ERROR_TYPES)}
    return summary(base, fixed, counts, class_names, result.confusion)


def per_image(result: Outcomes, detections: dict[str, np.ndarray], objects: dict[str, np.ndarray],
              num_classes: int) -> list[dict]:
    """One row per image with objects or counted detections, by image id: its AP50 (TIDE's AP over that
    image's classes; nan without objects or detections of any class), objects, counted detections, true
    positives and the count of each ERROR_TYPES; summed over the images, the counts are `breakdown`'s."""
    counted = np.flatnonzero(~result.ignored)
    det_image = detections["image"][result.index[counted]]
    det_order, obj_real = counted[np.argsort(det_image, kind="stable")], np.flatnonzero(~result.object_ignored)
    obj_order = obj_real[np.argsort(objects["image"][obj_real], kind="stable")]
    det_sorted, obj_sorted = detections["image"][result.index[det_order]], objects["image"][obj_order]
    rows = []
    for image in np.unique(np.concatenate([det_sorted, obj_sorted])):
        mine = det_order[np.searchsorted(det_sorted, image):np.searchsorted(det_sorted, image, side="right")]
        theirs = obj_order[np.searchsorted(obj_sorted, image):np.searchsorted(obj_sorted, image, side="right")]
        labels, hits = detections["labels"][result.index[mine]], result.true_positive[mine]
        order = ranked(labels, descending(detections["scores"][result.index[mine]]))
        positives = np.bincount(objects["labels"][theirs], minlength=num_classes + 1)
        errors = np.bincount(result.error[mine][result.error[mine] >= 0], minlength=len(ERROR_TYPES))
        rows.append({"image": int(image), "ap50": mean(class_aps(labels[order], hits[order], positives)),
                     "objects": len(theirs), "detections": len(mine), "true_positives": int(hits.sum()),
                     **{name: int(errors[k]) for k, name in enumerate(ERROR_TYPES[:-1])},
                     "missed": int(result.missed[theirs].sum())})
    return rows


def mean(aps: np.ndarray) -> float:
    """The mean of per-class APs over the classes that have one (nan when none has)."""
    return float(np.nanmean(aps)) if np.isfinite(aps).any() else float("nan")


def gain(after: np.ndarray, before: np.ndarray, clamp: bool) -> float:
    """The mean AP a fix gains. TIDE clamps the main types' gains at 0 (a loss there is an interpolation
    artefact); a class that has no detections and no objects left gains nothing."""
    value = mean(after) - mean(before)
    value = 0.0 if value != value else value
    return max(value, 0.0) if clamp else value


def summary(base: np.ndarray, fixed: dict[str, np.ndarray], counts: dict[str, np.ndarray], class_names: list[str],
            confusion: np.ndarray) -> dict:
    """The breakdown as `breakdown` returns it, from the per-class APs before (`base`) and after each fix,
    and the per-class counts (indexed by label) of each error type."""
    per_class = {}
    for label, class_name in enumerate(class_names, start=1):
        ap = base[label - 1:label]
        per_class[class_name] = {"ap": float(ap[0]), "counts": {name: int(c[label]) for name, c in counts.items()},
                                 "dap": {name: gain(aps[label - 1:label], ap, name in ERROR_TYPES)
                                         for name, aps in fixed.items()}}
    return {"ap": mean(base),
            "counts": {name: int(c.sum()) for name, c in counts.items()},
            "dap": {name: gain(aps, base, name in ERROR_TYPES) for name, aps in fixed.items()},
            "per_class": per_class, "confusion": confusion.tolist(),
            "confusion_labels": {"rows": [*class_names, "background"], "columns": [*class_names, "missed"]}}
