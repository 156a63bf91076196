"""The images detectors here take: torchvision's float [3, H, W] in [0, 1], or uint8 [3, H, W] as the
loaders hand them over (a quarter of the bytes), made float on the model's device."""

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform


def as_float_image(image: torch.Tensor) -> torch.Tensor:
    """float [3, H, W] in [0, 1] from uint8 (divided by 255) or float (as it is) [3, H, W]."""
    return image.float().div_(255) if image.dtype == torch.uint8 else image


class ByteImageRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's R-CNN resize and normalisation, taking uint8 images too."""

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return super().normalize(as_float_image(image))
