"""Ours (`model=ssd backbone=vgg16 anchors=ssd300`) against torchvision's ssd300_vgg16, no weights,
same batch, same run: train-step and inference time ratios (target: ours at most 1.0x theirs).

    python bench/vs_torchvision.py [--batch 8] [--amp]
"""

import argparse

import torch
import torchvision

from common import batch, best_interleaved, build_model, device


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
    amp_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    optimizers = {name: torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
                  for name, model in (("ours", ours), ("torchvision", theirs))}

    def train(name, model):
        def step():
            model.train()
            train_step(model, optimizers[name], images, targets, args.amp)
        return step

    def infer(model):
        @torch.no_grad()
        def run():
            model.eval()
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=args.amp):
                model(images)
        return run

    best = best_interleaved({"ours train": train("ours", ours), "torchvision train": train("torchvision", theirs),
                             "ours infer": infer(ours), "torchvision infer": infer(theirs)}, rounds=args.repeat)
    for name in ("ours", "torchvision"):
        print(f"  {name:<12} train step {best[name + ' train'] * 1000:8.1f} ms   "
              f"inference {best[name + ' infer'] * 1000:8.1f} ms")
    print(f"  ratio ours/torchvision: train step {best['ours train'] / best['torchvision train']:.3f}x, "
          f"inference {best['ours infer'] / best['torchvision infer']:.3f}x")

if __name__ == "__main__":
    main()
