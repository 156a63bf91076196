"""SSD: a trunk split at stride 8 and 16, extra layers down to 1x1, 3x3 heads, MultiBox loss, per-class NMS."""

import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import clip_boxes_to_image

from detection.models.anchors import AnchorSpec, generate_anchors
from detection.models.backbones import SSDTrunk
from detection.models.box_coder import SSDBoxCoder, pad_targets
from detection.models.images import as_float_image
from detection.models.postprocess import compacted_nms, dense_nms, padded_best_detections, per_image


def check_boxes(boxes: torch.Tensor, valid: torch.Tensor) -> None:
    """Fails unless every real box of a padded batch (float [B, G, 4] xyxy, valid bool [B, G]) has x1 < x2
    and y1 < y2. An asynchronous device assertion: no host read on CUDA (on the CPU it raises at once)."""
    proper = (boxes[..., 2:] > boxes[..., :2]).all(dim=-1) | ~valid
    torch._assert_async(proper.all(), "SSD targets: a degenerate box (need x1 < x2 and y1 < y2); the datasets "
                                      "drop such boxes, so check the targets given to the model")


class L2Norm(nn.Module):
    """Per-location L2 normalisation across channels with a learned per-channel scale (ParseNet; SSD
    initialises the scale to 20 on conv4_3)."""

    def __init__(self, channels: int, initial_scale: float = 20.0):
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(initial_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1, eps=1e-10) * self.scale.view(1, -1, 1, 1)


class SSDFeatures(nn.Module):
    """The trunk's two maps (the first L2-normalised) followed by the extra layers' maps."""

    def __init__(self, trunk: SSDTrunk, extras: nn.ModuleList):
        super().__init__()
        self.trunk = trunk
        self.l2norm = L2Norm(trunk.out_channels[0])
        self.extras = extras

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        first, x = self.trunk(images)
        maps = [self.l2norm(first), x]
        for extra in self.extras:
            x = extra(x)
            maps.append(x)
        return maps

    @torch.no_grad()
    def map_sizes(self, size: int) -> list[int]:
        """Each map's side at a size x size input, by a dry run in eval mode (BatchNorm's statistics stay as
        they are); the mode is put back after."""
        training, device = self.training, self.l2norm.scale.device
        try:
            return [m.shape[-1] for m in self.eval()(torch.zeros(1, 3, size, size, device=device))]
        finally:
            self.train(training)


def build_extras(in_channels: int, in_size: int, num_extras: int) -> tuple[nn.ModuleList, list[int]]:
    """The SSD extra layers: each a 1x1 bottleneck then a 3x3 convolution that halves the map
    (stride 2, padding 1), or takes a 3x3 map to 1x1 (no padding), as in SSD300 and SSD512. Stops
    early at a 1x1 map, so that a layout asking for more maps fails at the anchor check.

    Returns:
        the layers and the output channels of each.
    """
    layers, channels, size = nn.ModuleList(), [], in_size
    while len(layers) < num_extras and size > 1:
        out = 512 if not layers else 256
        if size == 3:
            last = nn.Conv2d(out // 2, out, kernel_size=3)
            size = 1
        else:
            last = nn.Conv2d(out // 2, out, kernel_size=3, stride=2, padding=1)
            size = (size + 1) // 2
        layers.append(nn.Sequential(nn.Conv2d(in_channels, out // 2, kernel_size=1), nn.ReLU(inplace=True),
                                    last, nn.ReLU(inplace=True)))
        channels.append(out)
        in_channels = out
    return layers, channels


class SSDHead(nn.Module):
    """A 3x3 convolution per map for box offsets (4 per anchor) and one for class logits."""

    def __init__(self, in_channels: Sequence[int], anchors_per_location: Sequence[int], num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.loc = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(in_channels, anchors_per_location))
        self.cls = nn.ModuleList(nn.Conv2d(c, a * num_classes, 3, padding=1)
                                 for c, a in zip(in_channels, anchors_per_location))
        for conv in [*self.loc, *self.cls]:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns offsets float [B, A, 4] and logits float [B, A, C], anchors ordered map, row, column, anchor."""
        batch = maps[0].shape[0]
        loc = [conv(x).permute(0, 2, 3, 1).reshape(batch, -1, 4) for conv, x in zip(self.loc, maps)]
        cls = [conv(x).permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes) for conv, x in zip(self.cls, maps)]
        return torch.cat(loc, dim=1), torch.cat(cls, dim=1)


NMS_METHODS = ("auto", "dense", "compacted")


class SSD(nn.Module):
    """Single Shot MultiBox Detector with torchvision's detection contract.

    forward(images, targets=None):
        images: list of float [3, H, W] in [0, 1], any sizes (each is resized to the square input).
        targets (training): list of {'boxes': float [N, 4] xyxy in that image's pixels, 'labels': int64 [N]}.
        Returns in training a dict of scalar losses; in eval a list of {'boxes' float [K, 4] xyxy in the
        input image's pixels, 'labels' int64 [K], 'scores' float [K]}.
    """

    def __init__(self, *, features: SSDFeatures, head: SSDHead, box_coder: SSDBoxCoder, loss: nn.Module,
                 anchor_spec: AnchorSpec, image_mean: Sequence[float], image_std: Sequence[float],
                 score_threshold: float, nms_threshold: float, detections_per_image: int,
                 candidates_per_class: int, nms_method: str = "auto"):
        super().__init__()
        self.features = features
        self.head = head
        self.box_coder = box_coder
        self.loss = loss
        self.anchor_spec = anchor_spec
        self.image_size = anchor_spec.image_size
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.candidates_per_class = candidates_per_class
        if nms_method not in NMS_METHODS:
            raise ValueError(f"nms_method={nms_method!r}: must be one of {', '.join(NMS_METHODS)}")
        self.nms_method = nms_method

    def preprocess(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Resizes each image (uint8 or float in [0, 1], [3, H, W]) to the square input and normalises:
        float [B, 3, S, S]."""
        size = (self.image_size, self.image_size)
        images = [as_float_image(image) for image in images]
        resized = [image if image.shape[-2:] == size else
                   F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
                   for image in images]
        return self.normalise(torch.stack(resized))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """float [B, 3, S, S] in [0, 1] -> the network's input (less the mean, over the deviation)."""
        return (images - self.image_mean) / self.image_std

    def forward(self, images: list[torch.Tensor], targets: Optional[list[dict[str, torch.Tensor]]] = None):
        image_sizes = [tuple(image.shape[-2:]) for image in images]
        loc, cls = self.head(self.features(self.preprocess(images)))
        if self.training:
            if targets is None:
                raise ValueError("SSD in training mode needs targets")
            return self.compute_loss(loc, cls, targets, image_sizes)
        return self.postprocess(loc, cls, image_sizes)

    def compute_loss(self, loc: torch.Tensor, cls: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                     image_sizes: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """The MultiBox loss of a batch, its targets padded and encoded at once (no host reads)."""
        boxes, labels, valid = pad_targets([t["boxes"] for t in targets], [t["labels"] for t in targets])
        check_boxes(boxes, valid)
        scale = boxes.new_tensor([[self.image_size / width, self.image_size / height] * 2
                                  for height, width in image_sizes])
        loc_targets, cls_targets = self.box_coder.encode_batch(boxes * scale[:, None], labels, valid)
        return self.loss(loc, cls, loc_targets, cls_targets)

    @torch.no_grad()
    def postprocess(self, loc: torch.Tensor, cls: torch.Tensor,
                    image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """Each image's detections (see `padded_detections`), in its own pixels. One host read."""
        return per_image(*self.padded_postprocess(loc, cls, image_sizes))

    @torch.no_grad()
    def padded_postprocess(self, loc: torch.Tensor, cls: torch.Tensor, image_sizes: list[tuple[int, int]]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`padded_detections` in each image's pixels, computed in fp32 whatever autocast the network ran
        under (decoding and NMS in half precision move boxes and reorder ties); no host read on the dense path."""
        scale = loc.new_tensor([[width / self.image_size, height / self.image_size] * 2
                                for height, width in image_sizes]).float()
        with torch.autocast(loc.device.type, enabled=False):
            return self.padded_detections(loc.float(), cls.float(), scale, dense=self.dense_nms(loc.device))

    @torch.no_grad()
    def padded_predictions(self, images: list[torch.Tensor]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eval on a list of images as `forward`, but padded (`padded_best_detections`' boxes, labels,
        scores, counts) and without the host read that cuts them per image."""
        loc, cls = self.head(self.features(self.preprocess(images)))
        return self.padded_postprocess(loc, cls, [tuple(image.shape[-2:]) for image in images])

    def at_input_size(self, size: int) -> "SSD":
        """A twin sharing this model's weights that resizes images to `size` instead: its box sizes scaled
        with the input, its feature maps and anchors from a dry run at that size (as `image_size=` lays them
        out for training). A size at which the network makes another number of maps is refused."""
        spec = AnchorSpec(size, [s * size / self.image_size for s in self.anchor_spec.box_sizes],
                          self.anchor_spec.aspect_ratios)
        try:
            measured = self.features.map_sizes(size)
        except RuntimeError as error:  # a map shrinks below a layer's kernel
            raise ValueError(f"an SSD laid out for {self.image_size} cannot run at input {size} ({error}): "
                             f"choose a size nearer {self.image_size}") from None
        if len(measured) != self.anchor_spec.num_maps:
            raise ValueError(f"an SSD with {self.anchor_spec.num_maps} maps at {self.image_size} makes "
                             f"{len(measured)} at input {size}: choose a size nearer {self.image_size}")
        spec = spec.with_feature_map_sizes(measured)
        twin = copy.copy(self)
        twin._modules = dict(self._modules)  # its own module table: the new box coder is not the original's
        twin.box_coder = SSDBoxCoder(generate_anchors(spec).to(self.image_mean.device), iou_threshold=self.box_coder.iou_threshold,
                                     variances=self.box_coder.variances)
        twin.anchor_spec, twin.image_size = spec, size
        return twin

    def padded_detections(self, loc: torch.Tensor, cls: torch.Tensor, scale: torch.Tensor, *, dense: bool
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Softmax, each class's best `candidates_per_class` anchors above the score threshold, NMS for all
        images and classes at once (`dense`: `dense_nms`, in fixed shapes; else `compacted_nms`), then each
        image's best `detections_per_image`, boxes scaled by float [B, 4] `scale` (input to image pixels);
        as `padded_best_detections` returns them."""
        batch, num_anchors, num_classes = cls.shape
        scores = F.softmax(cls.float(), dim=-1)[..., 1:].transpose(1, 2)  # [B, C-1, A]
        boxes = clip_boxes_to_image(self.box_coder.decode(loc.float()), (self.image_size,) * 2)  # [B, A, 4]
        top_scores, top_anchors = scores.topk(min(self.candidates_per_class, num_anchors), dim=-1)  # best first
        candidates = boxes.gather(1, top_anchors.flatten(1)[..., None].expand(-1, -1, 4))
        candidates = candidates.view(*top_scores.shape, 4)  # [B, C-1, K, 4]
        nms = dense_nms if dense else compacted_nms
        keep = nms(candidates.flatten(0, 1), top_scores.flatten(0, 1), top_scores.flatten(0, 1) > self.score_threshold,
                   self.nms_threshold).view_as(top_scores)
        return padded_best_detections(candidates * scale[:, None, None], top_scores, keep, self.detections_per_image)

    def dense_nms(self, device: torch.device) -> bool:
        """Whether NMS runs as `dense_nms` (no host reads) rather than `compacted_nms` (one)."""
        return self.nms_method == "dense" or (self.nms_method == "auto" and device.type != "cpu")


def build_ssd(*, backbone: SSDTrunk, anchors: AnchorSpec, class_names: Sequence[str], loss: nn.Module,
              iou_threshold: float = 0.5, variances: Sequence[float] = (0.1, 0.2),
              score_threshold: float = 0.05, nms_threshold: float = 0.45, detections_per_image: int = 200,
              candidates_per_class: int = 400, nms_method: str = "auto") -> SSD:
    """An SSD whose extra layers, anchors and head are derived from the trunk and a dry run.

    Args:
        backbone: the trunk; its two maps are the first two feature maps.
        anchors: the anchor layout; its configured feature-map sizes must match the dry run.
        class_names: the foreground classes; label k is class_names[k - 1], 0 is background.
        loss: called as loss(loc_preds, cls_logits, loc_targets, cls_targets) -> dict of losses.
        nms_method: 'dense' (no host reads; the default on accelerators), 'compacted' (torchvision's
            kernel; the default on the CPU) or 'auto'. Both give the same detections.
    """
    with torch.no_grad():
        _, stride16_map = backbone.eval()(torch.zeros(1, 3, anchors.image_size, anchors.image_size))
    extras, extra_channels = build_extras(backbone.out_channels[1], stride16_map.shape[-1], anchors.num_maps - 2)
    backbone.train()
    features = SSDFeatures(backbone, extras)
    spec = anchors.with_feature_map_sizes(features.map_sizes(anchors.image_size))
    num_classes = len(class_names) + 1
    head = SSDHead([*backbone.out_channels, *extra_channels], spec.anchors_per_location, num_classes)
    box_coder = SSDBoxCoder(generate_anchors(spec), iou_threshold=iou_threshold, variances=variances)
    return SSD(features=features, head=head, box_coder=box_coder, loss=loss, anchor_spec=spec,
               image_mean=backbone.image_mean, image_std=backbone.image_std, score_threshold=score_threshold,
               nms_threshold=nms_threshold, detections_per_image=detections_per_image,
               candidates_per_class=candidates_per_class, nms_method=nms_method)
