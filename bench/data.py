"""Data pipeline speed in the steady state: images/s of the training loader (persistent workers, decoding,
augmentation, uint8 hand-over, collation) on the BCCD JPEGs (640x480) repeated to `--images`, after a
warm-up pass that starts the workers; `augment=none` is the baseline of the same run, then the SSD recipe
(`augment=ssd`) at 300 and 512.

    python bench/data.py [--workers N] [--images 2000] [--batch 32]

BCCD_ROOT moves the data (default ../shared/data/BCCD_Dataset/BCCD).
"""

import argparse
import os
import time

import torch
from hydra.utils import instantiate
from torch.utils.data import Dataset

from common import compose_config, device_name
from detection.data.loader import build_loader

SETTINGS = {"none": ("augment=none", "anchors=ssd300"), "ssd at 300": ("augment=ssd", "anchors=ssd300"),
            "ssd at 512": ("augment=ssd", "anchors=voc512")}


class Repeated(Dataset):
    """`dataset` repeated to `length` items, with its transforms (what the loader reseeds)."""

    def __init__(self, dataset: Dataset, length: int):
        self.dataset, self.length, self.transforms = dataset, length, dataset.transforms

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


def images_per_second(overrides: tuple[str, ...], *, images: int, workers: int, batch: int) -> float:
    """Images/s over a second pass of the training loader (the first starts the workers and is not timed)."""
    cfg = compose_config("dataset=bccd", *overrides)
    train_set = instantiate(cfg.dataset.train)
    loader = build_loader(Repeated(train_set, images), batch_size=batch, shuffle=True, num_workers=workers, seed=0,
                          augmentation=train_set.transforms, persistent_workers=True, prefetch_factor=4)
    for _ in loader.epoch(0):
        pass
    start = time.perf_counter()
    seen = sum(len(batch_images) for batch_images, _, _ in loader.epoch(1))
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) - 2),
                        help="loader processes (default: the cores minus 2, at least 1)")
    parser.add_argument("--images", type=int, default=2000, help="images per pass (BCCD's 205 repeated)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    print(f"{device_name(torch.device('cpu'))}; {args.workers} worker(s), {args.images} images a pass, batch "
          f"{args.batch}")
    baseline = None
    for name, overrides in SETTINGS.items():
        speed = images_per_second(overrides, images=args.images, workers=args.workers, batch=args.batch)
        baseline = baseline or speed
        print(f"augment={name:<12} {speed:8.1f} images/s  {speed / baseline:5.2f}x of augment=none  "
              f"({speed / args.workers:.1f} per worker)")


if __name__ == "__main__":
    main()
