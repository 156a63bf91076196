"""More at test time from the same weights: test-time augmentation (the image flipped, at other input
sizes) and sliced inference (overlapping tiles, for small objects in large images), for the SSD and the
R-CNNs alike. Every view of a batch at one input size runs as one batch; detections come back to the
image's pixels (flipped back, shifted by their tile's corner; masks too), less what a tile cuts, and are
merged per class by NMS at the model's threshold, then sorted and capped at its detection count. On the SSD's dense path nothing is
read back to the host until the one read that cuts the merged detections per image."""

import copy
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn
from torchvision.transforms.v2.functional import horizontal_flip_bounding_boxes
from torchvision.tv_tensors import BoundingBoxFormat

from detection.models.postprocess import compacted_nms, dense_nms, per_image

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in the image's pixels


@dataclass(frozen=True)
class View:
    """One view of an image: the `crop` it runs on (None: the whole image), mirrored left-right with
    `flip`, resized to input `size` (None: the model's own)."""

    flip: bool = False
    crop: Optional[Box] = None
    size: Optional[int] = None


def tiles(height: int, width: int, size: int, overlap: float) -> list[Box]:
    """size x size tiles (cut to the image where it is smaller) covering the image, neighbours sharing
    `overlap` of a tile; the last of each row and column flush with the image's edge."""
    def starts(length: int) -> list[int]:
        if length <= size:
            return [0]
        stride = max(1, int(size * (1 - overlap)))
        count = math.ceil((length - size) / stride) + 1
        return sorted({min(i * stride, length - size) for i in range(count)})

    return [(x, y, min(x + size, width), min(y + size, height)) for y in starts(height) for x in starts(width)]


def views_of(height: int, width: int, *, flip: bool, sizes: Sequence[int], tile: Optional[int],
             overlap: float) -> list[View]:
    """The whole image at the model's size and at each of `sizes`, each also flipped with `flip`; then,
    with `tile`, the tiles (`tiles`) at the model's size, less one that is the whole image (the first view)."""
    mirrors = (False, True) if flip else (False,)
    whole = [View(flip=mirrored, size=size) for size in (None, *sizes) for mirrored in mirrors]
    parts = tiles(height, width, tile, overlap) if tile else []
    return whole + [View(crop=box) for box in parts if box != (0, 0, width, height)]


def view_image(image: torch.Tensor, view: View) -> torch.Tensor:
    """[3, H, W] -> the view's pixels [3, h, w]."""
    if view.crop is not None:
        x0, y0, x1, y1 = view.crop
        image = image[:, y0:y1, x0:x1]
    return image.flip(-1) if view.flip else image


def boxes_back(boxes: torch.Tensor, view: View, width: int) -> torch.Tensor:
    """float [..., 4] xyxy in a view's pixels (`width` its width) -> the image's pixels."""
    if view.flip:  # its height does not matter to a horizontal flip
        boxes = horizontal_flip_bounding_boxes(boxes, BoundingBoxFormat.XYXY, canvas_size=(1, width))
    if view.crop is not None:
        x0, y0 = view.crop[:2]
        boxes = torch.stack([boxes[..., 0] + x0, boxes[..., 1] + y0, boxes[..., 2] + x0, boxes[..., 3] + y0], dim=-1)
    return boxes


EDGE_MARGIN = 0.01  # of a tile's side: a box this near an edge the tile shares with the image's inside is cut


def whole_in_tile(boxes: torch.Tensor, view: View, height: int, width: int) -> torch.Tensor:
    """bool [...]: which boxes (float [..., 4], xyxy in the view's pixels) are not cut by the view's tile,
    i.e. keep clear of every tile edge that lies inside the image (`height`, `width`); all true for a whole
    view. An object cut by a tile shows there only in part: it is whole in a neighbouring tile or the image."""
    if view.crop is None:
        return torch.ones_like(boxes[..., 0], dtype=torch.bool)
    x0, y0, x1, y1 = view.crop
    margin = EDGE_MARGIN * max(x1 - x0, y1 - y0)
    whole = torch.ones_like(boxes[..., 0], dtype=torch.bool)  # (tiles are not mirrored: views_of)
    for beyond, edge in ((x0, boxes[..., 0] <= margin), (y0, boxes[..., 1] <= margin),
                         (width - x1, boxes[..., 2] >= x1 - x0 - margin),
                         (height - y1, boxes[..., 3] >= y1 - y0 - margin)):
        if beyond > 0:
            whole &= ~edge
    return whole


def masks_back(masks: torch.Tensor, view: View, height: int, width: int) -> torch.Tensor:
    """float [K, 1, h, w] in a view's pixels -> [K, 1, height, width], the image's (zero outside a tile)."""
    if view.flip:
        masks = masks.flip(-1)
    if view.crop is None:
        return masks
    x0, y0, x1, y1 = view.crop
    whole = masks.new_zeros(masks.shape[0], 1, height, width)
    whole[:, :, y0:y1, x0:x1] = masks
    return whole


def resized(model: nn.Module, size: Optional[int]) -> nn.Module:
    """The model resizing its inputs to `size`, sharing its weights: the SSD's `at_input_size`; an R-CNN with
    its transform's short side `size` and long side scaled with it."""
    if size is None:
        return model
    if hasattr(model, "at_input_size"):
        return model.at_input_size(size)
    twin = copy.copy(model)
    twin._modules = dict(model._modules)
    twin.transform = copy.copy(model.transform)
    twin.transform.max_size = round(model.transform.max_size * size / model.transform.min_size[-1])
    twin.transform.min_size = (size,)
    return twin


def padded_outputs(model: nn.Module, images: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The model's eval detections of `images`, padded: boxes float [N, L, 4], labels int64 [N, L], scores
    [N, L], valid bool [N, L] and masks (a list of [K, 1, h, w] per image, or None). The SSD's padded
    path reads nothing back; an R-CNN's own eval does."""
    if hasattr(model, "padded_predictions"):
        boxes, labels, scores, counts = model.padded_predictions(images)
        valid = torch.arange(boxes.shape[1], device=boxes.device) < counts[:, None]
        return boxes, labels, scores, valid, None
    outputs = model(images)
    pad = torch.nn.utils.rnn.pad_sequence
    boxes = pad([o["boxes"] for o in outputs], batch_first=True)
    valid = pad([torch.ones_like(o["labels"], dtype=torch.bool) for o in outputs], batch_first=True)
    return (boxes, pad([o["labels"] for o in outputs], batch_first=True),
            pad([o["scores"] for o in outputs], batch_first=True), valid,
            [o["masks"] for o in outputs] if outputs and "masks" in outputs[0] else None)


def merged(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, *,
           threshold: float, limit: int, dense: bool) -> tuple[torch.Tensor, ...]:
    """Per image, NMS within each class over all its views' detections (boxes float [B, N, 4], labels
    [B, N], scores [B, N], valid bool [B, N]), then the `limit` best: boxes, labels, scores [B, L], counts
    [B] (as `padded_best_detections`) and index int64 [B, L], where each came from in N. `dense`: NMS
    without host reads (`dense_nms`), else `compacted_nms`."""
    order = torch.where(valid, scores, -1.0).argsort(dim=1, descending=True)
    boxes, labels, scores, valid = (boxes.gather(1, order[..., None].expand(-1, -1, 4)), labels.gather(1, order),
                                    scores.gather(1, order), valid.gather(1, order))
    apart = (boxes.amax() + 1) * labels[..., None]  # each class moved off the others: no overlap across classes
    keep = (dense_nms if dense else compacted_nms)(boxes + apart, scores, valid, threshold)
    best, index = torch.where(keep, scores, -1.0).topk(min(limit, scores.shape[1]), dim=1)
    chosen = best >= 0
    return (boxes.gather(1, index[..., None].expand(-1, -1, 4)) * chosen[..., None],
            torch.where(chosen, labels.gather(1, index), 0), best.clamp(min=0), chosen.sum(dim=1),
            order.gather(1, index))


def merge_settings(model: nn.Module) -> tuple[float, int]:
    """The model's own NMS IoU threshold and detections per image (SSD, or torchvision's R-CNN heads)."""
    if hasattr(model, "nms_threshold"):
        return model.nms_threshold, model.detections_per_image
    return model.roi_heads.nms_thresh, model.roi_heads.detections_per_img


def padded_rows(rows: torch.Tensor, length: int) -> torch.Tensor:
    """[n, ...] with zero rows appended to `length`."""
    return torch.cat([rows, rows.new_zeros(length - rows.shape[0], *rows.shape[1:])])


class TestTimeModel(nn.Module):
    """A detector in eval mode that looks at each image in more views (`views_of`: `flip`, input `sizes`,
    `tile`s overlapping by `overlap`) and returns their merged detections under torchvision's contract:
    per image {'boxes' float [K, 4] xyxy in its pixels, 'labels' int64 [K], 'scores' [K](, 'masks' float
    [K, 1, H, W])}, at most the model's detections per image, best first."""

    def __init__(self, model: nn.Module, *, flip: bool = False, sizes: Sequence[int] = (), tile: Optional[int] = None,
                 overlap: float = 0.2):
        super().__init__()
        self.model, self.flip, self.sizes, self.tile, self.overlap = model, flip, tuple(sizes), tile, overlap
        self.twins: dict[Optional[int], nn.Module] = {}  # the model at each input size, made once

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        if self.training:
            raise ValueError("test-time views are for evaluation: call .eval() first")
        pairs = [(index, view) for index, image in enumerate(images) for view in
                 views_of(*image.shape[-2:], flip=self.flip, sizes=self.sizes, tile=self.tile, overlap=self.overlap)]
        if len(pairs) == len(images):  # the plain view only: the model's own detections
            return self.model(images)
        chunks: list[list[tuple]] = [[] for _ in images]  # per image, each view's detections in its pixels
        for size in dict.fromkeys(view.size for _, view in pairs):  # one batch per input size
            group = [(index, view) for index, view in pairs if view.size == size]
            crops = [view_image(images[index], view) for index, view in group]
            if size not in self.twins:
                self.twins[size] = resized(self.model, size)
            boxes, labels, scores, valid, masks = padded_outputs(self.twins[size], crops)
            for row, ((index, view), crop) in enumerate(zip(group, crops)):
                back = None if masks is None else padded_rows(masks_back(masks[row], view, *images[index].shape[-2:]),
                                                              boxes.shape[1])
                whole = whole_in_tile(boxes[row], view, *images[index].shape[-2:])
                chunks[index].append((boxes_back(boxes[row], view, crop.shape[-1]), labels[row], scores[row],
                                      valid[row] & whole, back))
        return self.merge(chunks, images[0].device)

    def merge(self, chunks: list[list[tuple]], device: torch.device) -> list[dict[str, torch.Tensor]]:
        """Each image's chunks (boxes, labels, scores, valid, masks or None per view) merged (`merged`);
        the one host read cuts them per image."""
        length = max([1, *(sum(chunk[0].shape[0] for chunk in image) for image in chunks)])
        parts = [torch.stack([padded_rows(torch.cat([chunk[part] for chunk in image]), length) for image in chunks])
                 for part in range(4)]
        threshold, limit = merge_settings(self.model)
        dense = self.model.dense_nms(device) if hasattr(self.model, "dense_nms") else device.type != "cpu"
        *best, index = merged(*parts, threshold=threshold, limit=limit, dense=dense)
        detections = per_image(*best)
        if chunks[0][0][4] is not None:
            for number, (image, found) in enumerate(zip(chunks, detections)):
                found["masks"] = torch.cat([chunk[4] for chunk in image])[index[number, :len(found["boxes"])]]
        return detections
