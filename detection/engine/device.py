"""Where the work runs: the device a setting names, and a batch moved onto it."""

from typing import Any

import torch


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_device(images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device):
    """The images and the targets' tensors on `device`, copied without waiting where the memory is pinned."""
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return images, targets
