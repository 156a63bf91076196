"""Data pipeline speed: images/s of one DataLoader worker on the BCCD JPEGs (640x480), decoding included,
with the SSD augmentation recipe at 512 (`augment=ssd anchors=voc512`) against no augmentation.

    python bench/data.py [--images 205] [--rounds 2]

BCCD_ROOT moves the data (default ../shared/data/BCCD_Dataset/BCCD).
"""

import argparse
import sys
import time
from pathlib import Path

from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import compose_config  # noqa: E402
from detection.data.loader import build_loader  # noqa: E402


def images_per_second(augment: str, images: int) -> float:
    """One pass over the first `images` training images through a loader with one worker process."""
    cfg = compose_config("dataset=bccd", f"augment={augment}", "anchors=voc512")
    train_set = instantiate(cfg.dataset.train)
    loader = build_loader(train_set, batch_size=8, shuffle=True, num_workers=1, seed=0, limit=images,
                          augmentation=train_set.transforms).epoch(0)
    start = time.perf_counter()
    seen = sum(len(batch_images) for batch_images, _, _ in loader)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=205, help="training images per pass (BCCD has 205)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating passes; the best is reported")
    args = parser.parse_args()
    best = {"none": 0.0, "ssd": 0.0}
    for _ in range(args.rounds):
        for augment in best:
            best[augment] = max(best[augment], images_per_second(augment, args.images))
    print(f"one DataLoader worker, {args.images} BCCD training images (640x480 JPEG)")
    print(f"augment=none:          {best['none']:7.1f} images/s (decode + targets)")
    print(f"augment=ssd at 512:    {best['ssd']:7.1f} images/s  ({best['ssd'] / best['none']:.2f}x of none)")


if __name__ == "__main__":
    main()
