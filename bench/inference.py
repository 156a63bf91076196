"""The eval-mode call (resize, normalise, network, decode, NMS) against the network forward alone.

Untrained models are the worst case for NMS (every class keeps its full candidate budget); a trained
model is taken from a checkpoint (default: the newest outputs/**/best.pt that `make train` wrote).
Target: at most 1.10x.

    python bench/inference.py [--batch 8] [--checkpoint path/to/best.pt]
"""

import argparse

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from common import REPO, batch, build_model, device, seconds
from detection.engine.checkpoint import load_checkpoint


def measure(name: str, model: torch.nn.Module, batch_size: int, repeat: int, image_size: int) -> None:
    dev = device()
    model = model.to(dev).eval()
    images = [image.to(dev) for image in batch(batch_size, image_size)[0]]
    with torch.no_grad():
        preprocessed = model.preprocess(images)
        network = seconds(lambda: model.head(model.features(preprocessed)), repeat=repeat)
        full = seconds(lambda: model(images), repeat=repeat)
        kept = sum(len(d["boxes"]) for d in model(images)) / batch_size
    print(f"  {name:<34} network {network * 1000:8.1f} ms  eval call {full * 1000:8.1f} ms  "
          f"{full / network:6.3f}x  ({kept:.0f} detections/image)")


def trained_model(path):
    """The model of a checkpoint, rebuilt from the configuration stored in it."""
    checkpoint = load_checkpoint(path)
    cfg = OmegaConf.create(checkpoint["config"])
    cfg.backbone.weights = None
    model = instantiate(cfg.model)
    model.load_state_dict(checkpoint["model"])
    return model, cfg


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    print(f"eval-mode call vs network forward, batch {args.batch}, {device()} (target <= 1.10x)")
    measure("SSD512-ResNet50, untrained, 20 cls", build_model("backbone=resnet50", "anchors=voc512"),
            args.batch, args.repeat, 512)
    measure("SSD128-ResNet18, untrained, 4 cls", build_model("experiment=ssd_shapes", class_names=["a", "b", "c", "d"]),
            args.batch, args.repeat, 128)
    candidates = sorted(REPO.glob("outputs/**/checkpoints/best.pt"), key=lambda p: p.stat().st_mtime)
    path = args.checkpoint or (candidates[-1] if candidates else None)
    if path is None:
        print("  (no trained checkpoint: run `make train` or pass --checkpoint)")
        return
    model, cfg = trained_model(path)
    measure(f"SSD{cfg.anchors.image_size}-{cfg.backbone.arch}, trained", model, args.batch, args.repeat,
            cfg.anchors.image_size)


if __name__ == "__main__":
    main()
