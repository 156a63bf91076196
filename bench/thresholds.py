"""Per-class score thresholds on held-out images: each class's F1-best threshold chosen on the even-numbered
validation images, then F1 on the odd-numbered ones at those thresholds against F1 at predict.py's fixed
default (0.3), per class and averaged; the ratio is tuned / fixed.

    python bench/thresholds.py <checkpoint> [--fixed 0.3]
"""

import argparse
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device_name  # noqa: E402
from detection.cli.assembly import model_from_checkpoint  # noqa: E402
from detection.data.loader import build_loader  # noqa: E402
from detection.engine.inference import infer  # noqa: E402
from detection.evaluation import DetectionEvaluator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--fixed", type=float, default=0.3, help="the fixed threshold compared with")
    args = parser.parse_args()
    model, trained, checkpoint = model_from_checkpoint(args.checkpoint)
    names = list(checkpoint["class_names"])
    halves = [DetectionEvaluator(class_names=names, metrics=("voc07",)) for _ in range(2)]

    def on_batch(predictions, targets, _):
        for prediction, target in zip(predictions, targets):
            halves[int(target["image_id"]) % 2].update([prediction], [target])

    loader = build_loader(instantiate(trained.dataset.val), batch_size=8, shuffle=False, num_workers=1, seed=0)
    infer(model, ((images, targets) for images, targets, _ in loader), on_batch, device=torch.device("cpu"),
          desc="predict")
    tuned = {name: row["threshold"] for name, row in halves[0].class_thresholds().items()}
    fixed = halves[1].f1_at({name: args.fixed for name in tuned})
    held_out = halves[1].f1_at(tuned)
    print(f"device: {device_name(torch.device('cpu'))}; {args.checkpoint}; thresholds from the even images, "
          f"F1 on the odd ones (IoU 0.5)")
    print(f"{'class':<14} {'threshold':>9} {'F1 at ' + str(args.fixed):>10} {'F1 tuned':>9} {'ratio':>6}")
    for name in tuned:
        ratio = held_out[name]["f1"] / max(fixed[name]["f1"], 1e-12)
        print(f"{name:<14} {tuned[name]:>9.3f} {fixed[name]['f1']:>10.3f} {held_out[name]['f1']:>9.3f} {ratio:>6.2f}")
    mean_fixed = sum(row["f1"] for row in fixed.values()) / len(fixed)
    mean_tuned = sum(row["f1"] for row in held_out.values()) / len(held_out)
    print(f"{'mean':<14} {'':>9} {mean_fixed:>10.3f} {mean_tuned:>9.3f} {mean_tuned / max(mean_fixed, 1e-12):>6.2f}")


if __name__ == "__main__":
    main()
