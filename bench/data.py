"""Data pipeline speed in the steady state: images/s of the training loader (persistent workers, decoding,
augmentation, uint8 hand-over, collation) on the BCCD JPEGs (640x480) repeated to `--images`, after a
warm-up pass that starts the workers; `augment=none` is the baseline of the same run, then the SSD recipe
(`augment=ssd`) at 300 and 512. Where CUDA is present, also the GPU path (`augment=ssd_gpu` at 512): the
loader handing over JPEG bytes with the device decoding and augmenting each batch, and the device's half
alone on batches read beforehand (the target: 2,000 augmented 512-pixel images/s from JPEG bytes).

    python bench/data.py [--workers N] [--images 2000] [--batch 32] [--device auto|cpu|cuda]

(`--device cpu` runs the GPU path on CPU tensors: a check that it works, not a speed anyone needs.)

BCCD_ROOT moves the data (default ../shared/data/BCCD_Dataset/BCCD).
"""

import argparse
import os
import time

import torch
from hydra.utils import instantiate
from torch.utils.data import Dataset

from common import compose_config, device, device_name
from detection.cli.assembly import device_augmentation
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


def training_loader(overrides: tuple[str, ...], *, images: int, workers: int, batch: int):
    """The training loader of BCCD repeated to `images`, and the device's augmentation (None on the CPU path)."""
    train_set = instantiate(compose_config("dataset=bccd", *overrides).dataset.train)
    loader = build_loader(Repeated(train_set, images), batch_size=batch, shuffle=True, num_workers=workers, seed=0,
                          augmentation=train_set.transforms, persistent_workers=True, prefetch_factor=4)
    return loader, device_augmentation(train_set)


def synchronise(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def images_per_second(overrides: tuple[str, ...], *, images: int, workers: int, batch: int,
                      dev: torch.device = torch.device("cpu")) -> float:
    """Images/s over a second pass of the training loader (the first starts the workers and is not timed),
    each batch augmented on `dev` where the configuration says so."""
    loader, on_device = training_loader(overrides, images=images, workers=workers, batch=batch)
    for passed in range(2):
        start, seen = time.perf_counter(), 0
        for batch_images, targets, _ in loader.epoch(passed):
            if on_device is not None:
                on_device(batch_images, targets, dev)
            seen += len(batch_images)
        synchronise(dev)
    return seen / (time.perf_counter() - start)


def device_images_per_second(overrides: tuple[str, ...], *, images: int, workers: int, batch: int,
                             dev: torch.device) -> float:
    """Images/s of the device's half alone (batched decode, colour, warp) on the loader's batches read first;
    the best of 3 passes."""
    loader, on_device = training_loader(overrides, images=images, workers=workers, batch=batch)
    batches = [(batch_images, targets) for batch_images, targets, _ in loader.epoch(0)]
    best = float("inf")
    for _ in range(3):
        synchronise(dev)
        start = time.perf_counter()
        for batch_images, targets in batches:
            on_device(batch_images, targets, dev)
        synchronise(dev)
        best = min(best, time.perf_counter() - start)
    return sum(len(batch_images) for batch_images, _ in batches) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) - 2),
                        help="loader processes (default: the cores minus 2, at least 1)")
    parser.add_argument("--images", type=int, default=2000, help="images per pass (BCCD's 205 repeated)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="the GPU path's device")
    args = parser.parse_args()
    print(f"{device_name(torch.device('cpu'))}; {args.workers} worker(s), {args.images} images a pass, batch "
          f"{args.batch}")
    baseline = None
    for name, overrides in SETTINGS.items():
        speed = images_per_second(overrides, images=args.images, workers=args.workers, batch=args.batch)
        baseline = baseline or speed
        print(f"augment={name:<12} {speed:8.1f} images/s  {speed / baseline:5.2f}x of augment=none  "
              f"({speed / args.workers:.1f} per worker)")
    dev = device(args.device)
    if dev.type == "cpu" and args.device == "auto":
        print("augment=ssd_gpu: no CUDA here, not measured")
        return
    print(f"the GPU path on {device_name(dev)}:")
    gpu_path = ("augment=ssd_gpu", "anchors=voc512")
    sizes = {"images": args.images, "workers": args.workers, "batch": args.batch, "dev": dev}
    speed = images_per_second(gpu_path, **sizes)
    print(f"augment=ssd_gpu at 512, loader and device {speed:8.1f} images/s  {speed / baseline:5.2f}x of augment=none")
    speed = device_images_per_second(gpu_path, **sizes)
    print(f"augment=ssd_gpu at 512, the device alone  {speed:8.1f} images/s (from JPEG bytes; target 2,000)")


if __name__ == "__main__":
    main()
