"""DataLoaders for detection: list batches, seeded shuffling and augmentation, resumable mid-epoch."""

import signal
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from detection.data.samples import collate_detection


class SeededAugmentation(Dataset):
    """Takes (epoch, index) items and reseeds `augmentation` before each from (seed, epoch, index), so an
    item's augmentation depends on nothing else: not the worker that loads it (workers may persist across
    epochs), nor whether the run was resumed part-way.

    Args:
        augmentation: what `dataset` runs on each item, with a `set_random_seed(int)` method (None: nothing
            to reseed).
    """

    def __init__(self, dataset: Dataset, seed: int, augmentation=None):
        self.dataset = dataset
        self.seed = seed
        self.augmentation = augmentation if hasattr(augmentation, "set_random_seed") else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        epoch, index = item
        if self.augmentation is not None:
            self.augmentation.set_random_seed(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
        return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """A DistributedSampler of (epoch, index) items whose epoch can start after the items of some
    batches, so a run resumed part-way through an epoch sees exactly the batches it had left."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int, batch_size: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.skipped = 0

    def start(self, epoch: int, skip_batches: int) -> None:
        self.set_epoch(epoch)
        self.skipped = skip_batches * self.batch_size

    def __iter__(self):
        indices = list(super().__iter__())[self.skipped:]
        self.skipped = 0
        return iter([(self.epoch, index) for index in indices])

    def __len__(self) -> int:
        return super().__len__() - self.skipped


class TrainingLoader(DataLoader):
    """A DataLoader over a ResumableSampler that starts each epoch where it is told."""

    def epoch(self, epoch: int, *, skip_batches: int = 0) -> "TrainingLoader":
        """Itself, ready to yield epoch `epoch`'s batches after its first `skip_batches`."""
        self.sampler.start(epoch, skip_batches)
        return self


def ignore_stop_signals(worker_id: int) -> None:
    """A loader worker leaves SIGINT, SIGTERM and SIGUSR2 (the training loop's stop signals) to the main
    process: a signal sent to the whole process group (Ctrl-C, `timeout`, `kill -- -pgid`, SLURM,
    Kubernetes) then stops training after a checkpoint instead of killing the workers under the main
    process. Workers still end with it."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        signal.signal(number, signal.SIG_IGN)


def stop_workers(*loaders: DataLoader) -> None:
    """Ends the loaders' persistent workers now. They ignore the stop signals (`ignore_stop_signals`), so
    at the interpreter's exit, which ends daemonic processes with SIGTERM and then joins them, a run that
    stopped by an exception would wait on them forever. DataLoader has no public call for this."""
    for loader in loaders:
        if getattr(loader, "_iterator", None) is not None:
            loader._iterator._shutdown_workers()
            loader._iterator = None


def build_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int, seed: int,
                 limit: Optional[int] = None, rank: int = 0, world_size: int = 1, augmentation=None,
                 persistent_workers: bool = False, prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader yielding (list of images, list of targets, skipped count), this rank's share of `dataset`.

    Training (`shuffle`): a TrainingLoader over a ResumableSampler (a DistributedSampler, also for one
    process), so that the order depends only on the seed and the epoch, and rank r of W takes every W-th
    item of the one permutation: W ranks with batch b see exactly the batches of one process with batch
    W * b. `augmentation` (the dataset's transforms) is reseeded for each item from (seed, epoch, index).
    Evaluation: rank r takes items r, r + W, ... with no padding, so no image is counted twice.

    Args:
        seed: seeds the shuffling and the augmentation.
        limit: use only the first `limit` items of `dataset`.
        persistent_workers, prefetch_factor: as DataLoader's, with workers (`num_workers` > 0).
    """
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    options = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=collate_detection,
                   pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_stop_signals)
    if num_workers:
        options.update(persistent_workers=persistent_workers, prefetch_factor=prefetch_factor)
    if shuffle:
        dataset = SeededAugmentation(dataset, seed, augmentation)
        sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, seed=seed, batch_size=batch_size)
        return TrainingLoader(dataset, sampler=sampler, **options)
    if world_size > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world_size))
    return DataLoader(dataset, **options)
