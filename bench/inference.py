"""The eval-mode call (resize, normalise, network, decode, NMS, per-image cut) against the network's forward
alone, for four SSD layouts untrained, a trained model, and torchvision's ssd300_vgg16 in the same run;
the host reads per call.

Untrained models are the worst case for NMS (every class keeps its full candidate budget); the trained
model comes from a checkpoint (default: the newest outputs/**/best.pt, which `make train` writes).
Targets: on CUDA at most 1.15x the network for a trained model and 2x for an untrained one; on the CPU
at most 1.10x for a trained model; one host read per call on CUDA.

    python bench/inference.py [--device cpu|cuda] [--batch 32] [--amp] [--checkpoint path/to/best.pt]
"""

import argparse

import torch
import torchvision
from hydra.utils import instantiate

from common import (LAYOUTS, REPO, add_device_arguments, batch, best_interleaved, build_model, device, device_name,
                    image_size)
from detection.profiling.host_reads import HostReads
from detection.cli.assembly import model_from_checkpoint
from detection.engine.step import prepare_network


def measure(name: str, model: torch.nn.Module, images: list[torch.Tensor], autocast, rounds: int,
            network=None) -> None:
    """Prints the network's and the eval call's time, their ratio, the host reads and detections per image."""
    @torch.no_grad()
    def call():
        with autocast():
            return model(images)

    @torch.no_grad()
    def network_only():
        with autocast():
            return network(preprocessed)

    with torch.no_grad():
        preprocessed = model.preprocess(images) if network else None
    best = best_interleaved({"call": call, **({"network": network_only} if network else {})}, rounds=rounds)
    with HostReads() as reads:
        detections = call()
    per_image = sum(len(d["boxes"]) for d in detections) / len(images)
    network_ms = f"{best['network'] * 1000:10.1f}" if network else f"{'':>10}"
    ratio = f"{best['call'] / best['network']:10.3f}x" if network else f"{'':>11}"
    print(f"  {name:<30}{network_ms}{best['call'] * 1000:10.1f}{ratio}{len(reads.reads):>7}{per_image:>8.0f}")


def validation_images(cfg, size: int) -> tuple[list[torch.Tensor], str]:
    """The first `size` images of the checkpoint's validation split where it is readable here, else random."""
    try:
        dataset = instantiate(cfg.dataset.val)
        return [dataset[index % len(dataset)][0] for index in range(size)], f"{cfg.dataset.name} val"
    except Exception as error:  # the data is elsewhere (another machine): random images say so
        print(f"  ({cfg.dataset.name} validation images unreadable here: {type(error).__name__}; random images)")
        return batch(size, cfg.anchors.image_size)[0], "random images"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    dev = device(args.device)
    size = args.batch or (32 if dev.type == "cuda" else 8)
    dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    autocast = lambda: torch.autocast(dev.type, dtype=dtype, enabled=args.amp)  # noqa: E731
    print(f"eval call, batch {size}, {dtype if args.amp else torch.float32}"
          f"{', channels_last' if args.channels_last else ''}, on {device_name(dev)}")
    print(f"  {'model':<30}{'network ms':>10}{'call ms':>10}{'call/net':>11}{'reads':>7}{'det/img':>8}")

    def ready(model):
        return prepare_network(model, device=dev, channels_last=args.channels_last)[0].eval()

    for layout in args.models:
        model = ready(build_model("model=ssd", *LAYOUTS[layout]))
        images = [image.to(dev) for image in batch(size, image_size(layout))[0]]
        measure(f"{layout}, untrained", model, images, autocast, args.repeat,
                network=lambda x, model=model: model.head(model.features(x)))
        if layout == "SSD300-VGG16":
            theirs = ready(torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None,
                                                                    num_classes=21))
            measure("torchvision ssd300, untrained", theirs, images, autocast, args.repeat)
    candidates = sorted(REPO.glob("outputs/**/checkpoints/best.pt"), key=lambda p: p.stat().st_mtime)
    path = args.checkpoint or (candidates[-1] if candidates else None)
    if path is None:
        print("  (no trained checkpoint: run `make train` or pass --checkpoint)")
        return
    model, cfg, _ = model_from_checkpoint(path)
    model = ready(model)
    images, source = validation_images(cfg, size)
    measure(f"SSD{cfg.anchors.image_size}-{cfg.backbone.arch}, trained, {source}", model,
            [image.to(dev) for image in images], autocast, args.repeat,
            network=lambda x: model.head(model.features(x)))


if __name__ == "__main__":
    main()
