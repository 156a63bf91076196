"""Shared pieces of the benchmarks: models built from the real configs, timing, synthetic batches."""

import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from hydra import compose, initialize_config_dir

from detection.cli import assembly
from detection.cli.schema import register

register()  # the configs' typed schemas, as the entry points register them

REPO = Path(__file__).resolve().parents[1]
VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=["tracking=none", *overrides])


def build_model(*overrides: str, class_names=VOC_CLASSES) -> torch.nn.Module:
    cfg = compose_config(*overrides)
    cfg.dataset.classes = class_names
    return assembly.build_model(cfg)


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


def device(name: str = "auto") -> torch.device:
    """cpu, cuda, or auto (CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(dev: torch.device) -> str:
    """The GPU's name, or the CPU's model, core count and the kernels torch runs on it."""
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").is_file() else "CPU"
    return (f"{model}, {torch.get_num_threads()} threads, kernels {torch.backends.cpu.get_cpu_capability()} "
            f"(torch {torch.__version__})")


def add_device_arguments(parser) -> None:
    """--device, --batch, --repeat, --amp, --channels-last: what every step benchmark takes."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch", type=int, default=None, help="default: 32 on CUDA, 8 on the CPU")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--amp", action="store_true", help="fp16 autocast on CUDA, bf16 on the CPU")
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights (trainer.channels_last)")
    parser.add_argument("--models", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))


# the four SSD layouts the benchmarks measure: overrides of `model=ssd`
LAYOUTS = {"SSD300-VGG16": ("backbone=vgg16", "anchors=ssd300"),
           "SSD300-ResNet50": ("backbone=resnet50", "anchors=ssd300"),
           "SSD512-ResNet50": ("backbone=resnet50", "anchors=voc512"),
           "SSD512-VGG16": ("backbone=vgg16", "anchors=voc512")}


def image_size(layout: str) -> int:
    return int(layout[3:6])


def on_device(images, targets, dev: torch.device):
    return [image.to(dev) for image in images], [{k: v.to(dev) for k, v in t.items()} for t in targets]
