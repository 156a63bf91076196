"""SSD512-ResNet50, batch 8: a full training step against the network's forward + backward alone.

The full step adds resizing/normalising, matching and encoding, the MultiBox loss and the optimizer;
the overhead is what that adds, as a share of the full step (target: at most 10%).

    python bench/train_step.py [--batch 8] [--repeat 5] [--amp]
"""

import argparse

import torch

from common import batch, best_interleaved, build_model, device


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on the CPU, fp16 on CUDA")
    args = parser.parse_args()
    dev = device()
    model = build_model("model=ssd", "backbone=resnet50", "anchors=voc512").to(dev).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    images, targets = batch(args.batch, 512)
    images = [image.to(dev) for image in images]
    targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
    amp_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and dev.type == "cuda")

    def full_step():
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=args.amp):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    preprocessed = model.preprocess(images)

    def network_only():
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=args.amp):
            loc, cls = model.head(model.features(preprocessed))
            loss = loc.float().mean() + cls.float().mean()
        model.zero_grad(set_to_none=True)
        loss.backward()

    with torch.no_grad(), torch.autocast(dev.type, dtype=amp_dtype, enabled=args.amp):
        loc, cls = model.head(model.features(preprocessed))
    loc, cls = loc.detach().requires_grad_(), cls.detach().requires_grad_()
    image_sizes = [tuple(image.shape[-2:]) for image in images]

    def beyond_network():
        """What the step adds to the network, timed directly: resize/normalise, matching and encoding,
        the loss forward and backward, and the optimizer update."""
        model.preprocess(images)
        losses = model.compute_loss(loc, cls, targets, image_sizes)
        sum(losses.values()).backward()
        optimizer.step()

    best = best_interleaved({"network": network_only, "full": full_step, "extra": beyond_network}, rounds=args.repeat)
    network, full, extra = best["network"], best["full"], best["extra"]
    print(f"SSD512-ResNet50 train step, batch {args.batch}, {dev}{' amp' if args.amp else ''}")
    print(f"  network forward+backward  {network * 1000:9.1f} ms")
    print(f"  full training step        {full * 1000:9.1f} ms   ({full / network:.3f}x the network)")
    print(f"  beyond the network        {extra * 1000:9.1f} ms   ({extra / full * 100:.1f}% of the step; target <= 10%)")

if __name__ == "__main__":
    main()
