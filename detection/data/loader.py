"""DataLoaders for detection: list batches, seeded shuffling and seeded augmentation in every worker."""

from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from detection.data.voc import collate_detection


def _transforms_of(dataset: Dataset):
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "transforms", None)


def _seed_worker_transforms(worker_id: int) -> None:
    """albumentations pipelines keep their own RNG: give each worker its own seed, derived from the
    loader's seed, so workers differ from each other and runs repeat."""
    transforms = _transforms_of(torch.utils.data.get_worker_info().dataset)
    if hasattr(transforms, "set_random_seed"):
        transforms.set_random_seed(torch.initial_seed() % 2**32)


def build_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int, seed: int,
                 limit: Optional[int] = None) -> DataLoader:
    """A DataLoader yielding (list of images, list of targets).

    Args:
        seed: seeds the shuffling generator (checkpointed by the loop) and the augmentation RNGs.
        limit: use only the first `limit` items of `dataset`.
    """
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    transforms = _transforms_of(dataset)
    if num_workers == 0 and hasattr(transforms, "set_random_seed"):
        transforms.set_random_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_detection, generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=_seed_worker_transforms, pin_memory=torch.cuda.is_available())
