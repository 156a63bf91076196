"""SSD's augmentation with the pixels on the GPU: a loader worker only reads the JPEG's bytes and draws each
item's plan (the affine map of SSDGeometry, which also moves its boxes, and the colour changes), seeded per
item like the CPU recipe; the device then decodes the batch (nvJPEG through torchvision.io.decode_jpeg) and
applies the plan to all images at once: colour, then one warp (affine_grid + grid_sample)."""

import functools
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from detection.data.geometry import IMAGENET_MEAN_PIXEL, SSDGeometry, map_boxes
from detection.engine.device import to_device

# ITU-R 601 luma, and RGB <-> YIQ, where a hue shift is a rotation about the luma axis
LUMA = (0.299, 0.587, 0.114)
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)


class DeviceSSDAugmentation:
    """`augment=ssd_gpu`: the SSD recipe of `augment=ssd` with decoding and pixels on the training device.

    In the dataset (a worker), `plan` takes the image's bytes and annotation and returns the pair the loader
    hands over: the bytes (uint8 [L]; or pixels uint8 [3, H, W] where the worker had to decode: not a JPEG,
    or turned by EXIF) and the target already moved by the drawn map, with 'warp' float32 [2, 3] (source
    to output pixels) and 'colour' float32 [7] (brightness, contrast, saturation and hue factors, then the
    channel order). On the device, `__call__` decodes and augments the batch. Masks are not moved.

    Args:
        geometry: draws the affine map (zoom-out, min-IoU crop, flip, resize).
        brightness, contrast, saturation, hue: ColorJitter's ranges (factors 1 +- range; hue in turns),
            applied together with probability `colour_p`, in that order.
        channel_shuffle_p: probability of a random channel order.
        fill: RGB canvas colour, 0..255.
        min_side: boxes narrower or lower than this (output pixels) are dropped.
    """

    decodes_on_device = True

    def __init__(self, geometry: SSDGeometry, *, brightness: float = 0.125, contrast: float = 0.5,
                 saturation: float = 0.5, hue: float = 0.05, colour_p: float = 0.5, channel_shuffle_p: float = 0.5,
                 fill: Sequence[float] = IMAGENET_MEAN_PIXEL, min_side: float = 1.0):
        self.geometry = geometry
        self.ranges = np.array([brightness, contrast, saturation, hue])
        self.colour_p, self.channel_shuffle_p = colour_p, channel_shuffle_p
        self.fill = tuple(fill)
        self.min_side = min_side
        self.rng = np.random.default_rng()

    def set_random_seed(self, seed: int) -> None:
        """Makes the next plans reproducible (the loader reseeds before each item)."""
        self.rng = np.random.default_rng(seed)

    def plan(self, image: torch.Tensor, width: int, height: int, *, boxes: np.ndarray, labels: np.ndarray,
             difficult: np.ndarray, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`image` (bytes or pixels of a `width` x `height` image) and its target, for `__call__`: boxes
        float32 [N, 4] xyxy in output pixels, labels int64 [N], difficult bool [N], image_id, warp, colour."""
        warp = self.geometry.sample(self.rng, boxes, width, height)
        moved, keep = map_boxes(boxes, warp, self.geometry.size)
        keep &= (moved[:, 2] - moved[:, 0] >= self.min_side) & (moved[:, 3] - moved[:, 1] >= self.min_side)
        factors = np.array([0.0, 0.0, 0.0, 0.0])  # the identity: factors 1, hue shift 0
        if self.rng.random() < self.colour_p:
            factors = self.rng.uniform(-self.ranges, self.ranges)
        order = self.rng.permutation(3) if self.rng.random() < self.channel_shuffle_p else np.arange(3)
        colour = np.concatenate([1 + factors[:3], factors[3:], order])
        target = {"boxes": torch.as_tensor(moved[keep], dtype=torch.float32),
                  "labels": torch.as_tensor(labels[keep], dtype=torch.int64),
                  "difficult": torch.as_tensor(difficult[keep], dtype=torch.bool), "image_id": torch.tensor(index),
                  "warp": torch.as_tensor(warp, dtype=torch.float32),
                  "colour": torch.as_tensor(colour, dtype=torch.float32)}
        return image, target

    def __call__(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], device: torch.device
                 ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """A batch from the loader (on the CPU) to augmented uint8 [3, size, size] images on `device`, and
        the targets there without 'warp' and 'colour'. Nothing is read back to the host."""
        targets = to_device([], targets, device)[1]
        if not images:
            return [], targets
        pixels, valid = padded_batch(decoded(images, device))
        pixels = colour_jitter(pixels, valid, torch.stack([t["colour"] for t in targets]))
        fill = device_constant(self.fill, device).view(1, 3, 1, 1)
        warped = warp_batch((pixels - fill) * valid, torch.stack([t["warp"] for t in targets]), self.geometry.size)
        out = (warped + fill).round_().clamp_(0, 255).to(torch.uint8)
        kept = [{k: v for k, v in t.items() if k not in ("warp", "colour")} for t in targets]
        return list(out.unbind(0)), kept


@functools.lru_cache(maxsize=64)
def device_constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """float [len(values)] on `device`, copied there once: a copy from the host's ordinary memory waits for
    the GPU's queue, so a constant made afresh for each batch would stall it."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def decoded(images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 [3, H, W] RGB images on `device`: JPEG bytes (uint8 [L]) decoded there in one batched call,
    already decoded pixels moved."""
    encoded = [image for image in images if image.dim() == 1]
    if encoded:
        with warnings.catch_warnings():  # deprecated since torchvision 0.29 (for TorchCodec), still the GPU's batch decoder
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            encoded = iter(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    return [next(encoded) if image.dim() == 1 else image.to(device, non_blocking=True) for image in images]


def padded_batch(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [3, H_i, W_i] images as float [B, 3, H, W] (H, W the largest; zeros beyond each image) and
    float [B, 1, H, W]: 1 on each image's own pixels."""
    height, width = max(image.shape[1] for image in images), max(image.shape[2] for image in images)
    device = images[0].device
    pixels = torch.zeros(len(images), 3, height, width, device=device)
    valid = torch.zeros(len(images), 1, height, width, device=device)
    for slot, mask, image in zip(pixels, valid, images):  # copies of views, queued without a read to the host
        slot[:, : image.shape[1], : image.shape[2]] = image
        mask[:, : image.shape[1], : image.shape[2]] = 1
    return pixels, valid


def colour_jitter(pixels: torch.Tensor, valid: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] RGB 0..255 with each image's brightness, contrast (about its mean luma over
    `valid`), saturation and hue (a rotation in YIQ) factors, then channel order, from `colour` [B, 7];
    clipped to 0..255 after each change, as ColorJitter does on 8-bit images."""
    brightness, contrast, saturation, hue = (colour[:, k].view(-1, 1, 1, 1) for k in range(4))
    luma_weights = device_constant(LUMA, pixels.device).view(1, 3, 1, 1)
    pixels = (pixels * brightness).clamp(0, 255)
    mean_luma = (pixels * luma_weights * valid).sum((1, 2, 3), keepdim=True) / valid.sum((1, 2, 3), keepdim=True)
    pixels = ((pixels - mean_luma) * contrast + mean_luma).clamp(0, 255)
    luma = (pixels * luma_weights).sum(1, keepdim=True)
    pixels = ((pixels - luma) * saturation + luma).clamp(0, 255)
    pixels = torch.einsum("bij,bjhw->bihw", hue_rotation(hue.view(-1)).to(pixels.dtype), pixels).clamp(0, 255)
    order = colour[:, 4:].long().view(-1, 3, 1, 1).expand_as(pixels)
    return pixels.gather(1, order)


def hue_rotation(turns: torch.Tensor) -> torch.Tensor:
    """float [B, 3, 3] RGB-to-RGB matrices turning the hue by `turns` [B] (fractions of a full turn)."""
    angle = turns * 2 * torch.pi
    cos, sin, one, zero = angle.cos(), angle.sin(), torch.ones_like(angle), torch.zeros_like(angle)
    rotation = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=1).view(-1, 3, 3)
    to_yiq, to_rgb = (device_constant(tuple(matrix.flat), turns.device).view(3, 3) for matrix in (RGB_TO_YIQ, YIQ_TO_RGB))
    return to_rgb @ rotation @ to_yiq


def warp_batch(pixels: torch.Tensor, warp: torch.Tensor, size: int) -> torch.Tensor:
    """float [B, C, H, W] resampled (bilinear, zeros outside) to [B, C, size, size] by `warp` [B, 2, 3],
    each image's map from its source pixels to output pixels (continuous, as SSDGeometry draws it)."""
    height, width = pixels.shape[2:]
    inverse = inverse_2x2(warp[:, :, :2])  # output pixels to source pixels: inverse @ (out - shift)
    to_input = device_constant((2 / width, 2 / height), pixels.device).view(1, 2, 1)  # to grid_sample's [-1, 1]
    linear = to_input * inverse * (size / 2)
    shift = to_input * (inverse @ (size / 2 - warp[:, :, 2:])) - 1
    grid = F.affine_grid(torch.cat([linear, shift], dim=2), [len(pixels), pixels.shape[1], size, size], align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def inverse_2x2(matrices: torch.Tensor) -> torch.Tensor:
    """The inverses of invertible float [B, 2, 2] matrices, in closed form (torch.linalg.inv checks for
    singular input, a read back to the host on a GPU)."""
    (a, b), (c, d) = matrices[:, 0].unbind(1), matrices[:, 1].unbind(1)
    adjugate = torch.stack([d, -b, -c, a], dim=1).view(-1, 2, 2)
    return adjugate / (a * d - b * c).view(-1, 1, 1)
