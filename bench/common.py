"""Shared pieces of the benchmarks: models built from the real configs, timing, synthetic batches."""

import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import schema  # noqa: F401  (registers the configs' typed schemas, as the entry points do)

REPO = Path(__file__).resolve().parents[1]
VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=["tracking=none", *overrides])


def build_model(*overrides: str, class_names=VOC_CLASSES) -> torch.nn.Module:
    cfg = compose_config(*overrides)
    cfg.dataset.classes = class_names
    return instantiate(cfg.model)


def batch(size: int, image_size: int, *, seed: int = 0, objects: int = 3):
    """`size` random images of side `image_size` with `objects` random boxes each (labels 1..20)."""
    generator = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, image_size, image_size, generator=generator) for _ in range(size)]
    targets = []
    for _ in range(size):
        corner = torch.rand(objects, 2, generator=generator) * image_size * 0.6
        side = torch.rand(objects, 2, generator=generator) * image_size * 0.35 + image_size * 0.05
        targets.append({"boxes": torch.cat([corner, corner + side], dim=1),
                        "labels": torch.randint(1, 21, (objects,), generator=generator)})
    return images, targets


def seconds(fn: Callable[[], object], *, warmup: int = 1, repeat: int = 5) -> float:
    """Median wall time of fn() over `repeat` runs after `warmup` runs (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def best_interleaved(functions: dict[str, Callable[[], object]], *, rounds: int = 3) -> dict[str, float]:
    """Best wall time of each function over `rounds` rounds that run them in turn: the machine drifts
    over minutes by more than the differences measured, so alternating is fairer than one after another."""
    for fn in functions.values():
        fn()  # warm-up
    best = {name: float("inf") for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            best[name] = min(best[name], seconds(fn, warmup=0, repeat=1))
    return best


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
