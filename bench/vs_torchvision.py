"""Ours (`model=ssd backbone=vgg16 anchors=ssd300`) against torchvision's ssd300_vgg16, no weights,
same batch, same run: train-step and inference time ratios (target: ours at most 1.0x theirs).

    python bench/vs_torchvision.py [--batch 8] [--amp]
"""

import argparse

import torch
import torchvision

from common import batch, build_model, device, seconds


def train_step(model, optimizer, images, targets, amp):
    dev = images[0].device
    with torch.autocast(dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16, enabled=amp):
        loss = sum(model(images, targets).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args()
    dev = device()
    ours = build_model("model=ssd", "backbone=vgg16", "anchors=ssd300").to(dev)
    theirs = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).to(dev)
    images, targets = batch(args.batch, 300)
    images = [image.to(dev) for image in images]
    targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
    print(f"SSD300-VGG16, batch {args.batch}, {dev}{' amp' if args.amp else ''}: ours vs torchvision (target <= 1.0x)")
    results = {}
    for name, model in (("ours", ours), ("torchvision", theirs)):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
        model.train()
        step = seconds(lambda: train_step(model, optimizer, images, targets, args.amp), repeat=args.repeat)
        model.eval()
        with torch.no_grad(), torch.autocast(dev.type, enabled=args.amp,
                                             dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16):
            infer = seconds(lambda: model(images), repeat=args.repeat)
        results[name] = (step, infer)
        print(f"  {name:<12} train step {step * 1000:8.1f} ms   inference {infer * 1000:8.1f} ms")
    (our_step, our_infer), (their_step, their_infer) = results["ours"], results["torchvision"]
    print(f"  ratio ours/torchvision: train step {our_step / their_step:.3f}x, inference {our_infer / their_infer:.3f}x")


if __name__ == "__main__":
    main()
