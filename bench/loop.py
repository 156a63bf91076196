"""The training loop against its bare step: images/s of a real train.py configuration's loader and step
(waiting for data, the copy to the device, the device's augmentation with augment=ssd_gpu, the step) over
`--steps` steps after `--warmup`, against the same TrainStep on the same batches already on the device, in
the same run; the ratio is the share of the step's speed the loop keeps.

    python bench/loop.py [--steps 20] [--warmup 5] [train.py overrides ...]

Without overrides, the embedded default (experiment=ssd_shapes, as `make train`). The GPU target's
configuration:

    python bench/loop.py dataset=bccd model=ssd backbone=resnet50 anchors=voc512 augment=ssd \\
        trainer.batch_size=32 trainer.num_workers=14 trainer.amp=true
"""

import argparse
import time
from contextlib import ExitStack
from itertools import count

import torch
from hydra.utils import instantiate

from common import compose_config, device_name
from detection.cli import assembly
from detection.cli.checks import check_train
from detection.cli.job import start_job
from detection.engine.step import TrainStep, prepare_network


def synchronised_clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def loop_batches(loader):
    """The loader's batches, epoch after epoch, as the loop takes them."""
    for epoch in count():
        yield from loader.epoch(epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (workers start, autotuning)")
    parser.add_argument("overrides", nargs="*", help="train.py's key=value overrides")
    args = parser.parse_args()
    overrides = args.overrides or ["experiment=ssd_shapes"]
    cfg = compose_config(*overrides)
    settings = check_train(cfg)
    job = start_job(settings, cfg.seed)
    train_set, val_set = instantiate(cfg.dataset.train), instantiate(cfg.dataset.val)
    model, network = prepare_network(assembly.build_model(cfg, pretrained=False), device=job.device,
                                     channels_last=settings.uses_channels_last(job.device.type), compile=settings.compile,
                                     cudnn_benchmark=settings.cudnn_benchmark)
    optimizer = instantiate(cfg.optimizer)([p for p in model.parameters() if p.requires_grad])
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=args.warmup + 2 * args.steps)
    step = TrainStep(model, optimizer, scheduler, network=network, device=job.device, precision=job.precision,
                     grad_clip=settings.grad_clip, augment=assembly.device_augmentation(train_set))
    print(f"{' '.join(overrides)}: batch {settings.batch_size}, {settings.num_workers} worker(s), "
          f"{job.precision.name}, on {device_name(job.device)}")
    with ExitStack() as held:
        loader, _ = assembly.training_loaders(held, train_set, val_set, settings, job, cfg.seed)
        batches = loop_batches(loader)
        kept, images = [], 0
        for index, (cpu_images, cpu_targets, _) in enumerate(batches):
            if index == args.warmup:
                start = synchronised_clock(job.device)
            if index == args.warmup + args.steps:
                break
            on_device = step.on_device(cpu_images, cpu_targets)
            step(*on_device)
            if index >= args.warmup:
                kept.append(on_device)
                images += len(on_device[0])
        loop_seconds = synchronised_clock(job.device) - start
    start = synchronised_clock(job.device)
    for on_device in kept:
        step(*on_device)
    bare_seconds = synchronised_clock(job.device) - start
    print(f"loop {images / loop_seconds:8.1f} images/s   bare step {images / bare_seconds:8.1f} images/s   "
          f"the loop keeps {bare_seconds / loop_seconds:.2f}x of the step's throughput ({args.steps} steps)")


if __name__ == "__main__":
    main()
