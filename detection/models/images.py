"""The images detectors here take: torchvision's float [3, H, W] in [0, 1], or uint8 [3, H, W] as the
loaders hand them over (a quarter of the bytes), made float on the model's device."""

from typing import Optional

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection.transform import GeneralizedRCNNTransform


def as_float_image(image: torch.Tensor) -> torch.Tensor:
    """float [3, H, W] in [0, 1] from uint8 (divided by 255) or float (as it is) [3, H, W]."""
    return image.float().div_(255) if image.dtype == torch.uint8 else image


class ByteImageRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's R-CNN resize and normalisation, taking uint8 images too, and traced for ONNX with the
    resized size eager mode computes."""

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return super().normalize(as_float_image(image))

    def resize(self, image: torch.Tensor, target: Optional[dict[str, torch.Tensor]] = None):
        if not torchvision._is_tracing() or target is not None or self.fixed_size is not None:
            return super().resize(image, target)
        # Traced, torchvision computes the size in float32 and lands a pixel short of eager mode's float64
        # where the product is an integer (227 * (256 / 227) -> 255.99998); every detection then moves.
        # Here the traced graph computes it in float64, as eager mode does, with no Python number in the
        # arithmetic (the exporter would make that float32 again).
        shape = torch._shape_as_tensor(image)[-2:].to(torch.float64)
        limits = torch.tensor([float(self.min_size[-1]), float(self.max_size)], dtype=torch.float64)
        scale = (limits / torch.stack([shape.min(), shape.max()])).min()
        height, width = torch.floor(shape * scale).to(torch.int64).unbind()
        return F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0], target
