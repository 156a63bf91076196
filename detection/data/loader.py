"""DataLoaders for detection: list batches, seeded shuffling and seeded augmentation in every worker."""

from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

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
                 limit: Optional[int] = None, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader yielding (list of images, list of targets), this rank's share of `dataset`.

    Training (`shuffle`): a DistributedSampler, also for one process, so that the order depends only on
    the seed and the epoch (`sampler.set_epoch`), and rank r of W takes every W-th item of the one
    permutation: W ranks with batch b see exactly the batches of one process with batch W * b.
    Evaluation: rank r takes items r, r + W, ... with no padding, so no image is counted twice.

    Args:
        seed: seeds the shuffling (the same on every rank); the augmentation RNGs get seed + rank.
        limit: use only the first `limit` items of `dataset`.
    """
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    sampler = None
    if shuffle:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    elif world_size > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world_size))
    transforms = _transforms_of(dataset)
    if num_workers == 0 and hasattr(transforms, "set_random_seed"):
        transforms.set_random_seed(seed + rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_detection, generator=torch.Generator().manual_seed(seed + rank),
                      worker_init_fn=_seed_worker_transforms, pin_memory=torch.cuda.is_available())
