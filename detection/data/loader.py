"""DataLoaders for detection: list batches, seeded shuffling and augmentation, resumable mid-epoch."""

import signal
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from detection.data.samples import collate_detection


def _transforms_of(dataset: Dataset):
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "transforms", None)


class SeededAugmentation(Dataset):
    """Reseeds the augmentation before each item from (seed, epoch, index), so an item's augmentation
    depends on nothing else: not the worker that loads it, nor whether the run was resumed part-way."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        transforms = _transforms_of(self.dataset)
        if hasattr(transforms, "set_random_seed"):
            transforms.set_random_seed(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))
        return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """A DistributedSampler whose next epoch can start after the items of `skip_batches` batches, so a
    run resumed part-way through an epoch sees exactly the batches it had left."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int, batch_size: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.skipped = 0

    def skip_batches(self, batches: int) -> None:
        self.skipped = batches * self.batch_size

    def __iter__(self):
        indices = list(super().__iter__())[self.skipped:]
        self.skipped = 0
        return iter(indices)

    def __len__(self) -> int:
        return super().__len__() - self.skipped


def ignore_stop_signals(worker_id: int) -> None:
    """A loader worker leaves SIGINT, SIGTERM and SIGUSR2 (the training loop's stop signals) to the main
    process: a signal sent to the whole process group (Ctrl-C, `timeout`, `kill -- -pgid`, SLURM,
    Kubernetes) then stops training after a checkpoint instead of killing the workers under the main
    process. Workers still end with it."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        signal.signal(number, signal.SIG_IGN)


def build_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int, seed: int,
                 limit: Optional[int] = None, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader yielding (list of images, list of targets), this rank's share of `dataset`.

    Training (`shuffle`): a ResumableSampler (a DistributedSampler, also for one process), so that the
    order depends only on the seed and the epoch, and rank r of W takes every W-th item of the one
    permutation: W ranks with batch b see exactly the batches of one process with batch W * b. Each
    item's augmentation is seeded from (seed, epoch, index). The loop calls `set_epoch` on both.
    Evaluation: rank r takes items r, r + W, ... with no padding, so no image is counted twice.

    Args:
        seed: seeds the shuffling and the augmentation.
        limit: use only the first `limit` items of `dataset`.
    """
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    sampler = None
    if shuffle:
        dataset = SeededAugmentation(dataset, seed)
        sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, seed=seed, batch_size=batch_size)
    elif world_size > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world_size))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_detection, pin_memory=torch.cuda.is_available(),
                      worker_init_fn=ignore_stop_signals)
