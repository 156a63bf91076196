"""What test-time augmentation and sliced inference give and cost: a checkpoint's validation split plain,
flipped, at more input sizes and in tiles (as evaluate.py's tta= and slices= run them), each with its VOC07
AP50 (val/map), per-class AP50 and the seconds of the evaluation, as a ratio to the plain one in the same run.

    python bench/test_time.py <checkpoint> [--sizes 352 416] [--tile 320 --overlap 0.2] [--device auto]
"""

import argparse
import sys
import time
from pathlib import Path

from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device, device_name  # noqa: E402
from detection.cli.assembly import model_from_checkpoint, with_test_time_views  # noqa: E402
from detection.data.loader import build_loader  # noqa: E402
from detection.engine.inference import evaluate  # noqa: E402
from detection.evaluation import DetectionEvaluator, class_aps, validation_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[352, 416])
    parser.add_argument("--tile", type=int, default=320)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args()
    dev = device(args.device)
    model, trained, checkpoint = model_from_checkpoint(args.checkpoint)
    model.to(dev).eval()
    classes, val_set = list(checkpoint["class_names"]), instantiate(trained.dataset.val)
    loader = build_loader(val_set, batch_size=8, shuffle=False, num_workers=1, seed=0)
    modes = {"plain": ([], None), "flip": (["flip"], None), f"sizes {args.sizes}": (args.sizes, None),
             f"flip + sizes {args.sizes}": (["flip", *args.sizes], None),
             f"slices {args.tile}/{args.overlap:g}": ([], [args.tile, args.overlap]),
             f"flip + slices {args.tile}/{args.overlap:g}": (["flip"], [args.tile, args.overlap])}
    print(f"device: {device_name(dev)}; {args.checkpoint}, {len(val_set)} validation images, batch 8")
    print(f"{'views':<28}{'val/map':>9}" + "".join(f"{name[:10]:>11}" for name in classes) + f"{'seconds':>9}{'x plain':>9}")
    evaluate(model, loader, DetectionEvaluator(class_names=classes), device=dev, progress=False)  # warm-up
    baseline = None
    for name, (tta, slices) in modes.items():
        viewed = with_test_time_views(model, tta, slices)
        started = time.perf_counter()
        metrics = validation_metrics(evaluate(viewed, loader, DetectionEvaluator(class_names=classes), device=dev,
                                              progress=False))
        elapsed = time.perf_counter() - started
        baseline = baseline or elapsed
        aps = class_aps(metrics, classes)
        print(f"{name:<28}{metrics['val/map']:>9.4f}" + "".join(f"{aps[c]:>11.4f}" for c in classes) +
              f"{elapsed:>9.1f}{elapsed / baseline:>9.2f}")


if __name__ == "__main__":
    main()
