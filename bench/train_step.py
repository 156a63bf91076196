"""Training step: the step the loop runs (`TrainStep`: autocast forward, matching and encoding, the
MultiBox loss, the agreed check, backward, clipping, the update) against the network's forward + backward
alone, for four SSD layouts, and torchvision's ssd300_vgg16 in the same run; the host reads per step.

Targets: the full step at least 0.9x the network's throughput on CUDA (overhead within 10% on the CPU);
ours at least 2x torchvision's ssd300_vgg16 on CUDA; one host read per step.

    python bench/train_step.py [--device cpu|cuda] [--batch 32] [--amp] [--channels-last] [--models ...]
"""

import argparse

import torch
import torchvision

from common import (LAYOUTS, add_device_arguments, batch, best_interleaved, build_model, device, device_name,
                    image_size, on_device)
from detection.profiling.host_reads import HostReads
from detection.engine.precision import FP32, Precision
from detection.engine.step import TrainStep, prepare_network


def train_step_of(model, dev, precision) -> TrainStep:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return TrainStep(model, optimizer, scheduler, device=dev, precision=precision)


def network_only(model, images, precision, dev):
    """The network's forward and backward on the preprocessed batch, nothing else."""
    preprocessed = model.preprocess(images).detach()

    def run():
        with precision.autocast(dev):
            loc, cls = model.head(model.features(preprocessed))
            loss = loc.float().mean() + cls.float().mean()
        model.zero_grad(set_to_none=True)
        loss.backward()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    args = parser.parse_args()
    dev = device(args.device)
    size = args.batch or (32 if dev.type == "cuda" else 8)
    precision = Precision(torch.float16 if dev.type == "cuda" else torch.bfloat16, "--amp") if args.amp else FP32
    print(f"training step, batch {size}, {precision.name}{', channels_last' if args.channels_last else ''}, "
          f"on {device_name(dev)}")
    print(f"  {'layout':<22}{'network img/s':>14}{'step img/s':>12}{'step/network':>14}{'reads/step':>12}")
    for layout in args.models:
        model, _ = prepare_network(build_model("model=ssd", *LAYOUTS[layout]), device=dev,
                                   channels_last=args.channels_last)
        images, targets = on_device(*batch(size, image_size(layout), objects=6), dev)
        step = train_step_of(model, dev, precision)
        best = best_interleaved({"network": network_only(model, images, precision, dev),
                                 "step": lambda: step(images, targets)}, rounds=args.repeat)
        with HostReads() as reads:
            step(images, targets)
        print(f"  {layout:<22}{size / best['network']:>14.2f}{size / best['step']:>12.2f}"
              f"{best['network'] / best['step']:>13.3f}x{len(reads.reads):>12}")
        if layout == "SSD300-VGG16":
            theirs, _ = prepare_network(torchvision.models.detection.ssd300_vgg16(
                weights=None, weights_backbone=None, num_classes=21), device=dev, channels_last=args.channels_last)
            their_step = train_step_of(theirs, dev, precision)
            head_to_head = best_interleaved({"ours": lambda: step(images, targets),
                                             "theirs": lambda: their_step(images, targets)}, rounds=args.repeat)
            with HostReads() as reads:
                their_step(images, targets)
            print(f"  {'torchvision ssd300':<22}{'':>14}{size / head_to_head['theirs']:>12.2f}{'':>14}"
                  f"{len(reads.reads):>12}   ours {head_to_head['theirs'] / head_to_head['ours']:.2f}x its "
                  f"throughput")


if __name__ == "__main__":
    main()
