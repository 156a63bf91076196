"""What evaluate.py's report adds to a plain evaluation. Plain: the validation split through the model, the
VOC/COCO metrics, TIDE's breakdown with its plots and the precision-recall plot (what evaluate.py did
before the report). Added: the stage timer around the inference, the model's cost (flop_counter), every
image's AP50 and error counts with the gallery of the 16 worst, each class's F1-best threshold and report.md.
The ratio is (plain + added) / plain, on the same checkpoint in the same run.

    python bench/report.py <checkpoint> [--folder /tmp/report_bench]
"""

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device_name  # noqa: E402
from detection.cli.assembly import model_from_checkpoint  # noqa: E402
from detection.data.loader import build_loader  # noqa: E402
from detection.engine.inference import evaluate  # noqa: E402
from detection.evaluation import DetectionEvaluator, class_aps, validation_metrics  # noqa: E402
from detection.profiling.complexity import measure_complexity  # noqa: E402
from detection.profiling.speed import StageTimes  # noqa: E402
from detection.reporting.gallery import save_gallery, worst_images  # noqa: E402
from detection.reporting.plots import save_error_plots, save_precision_recall_plot  # noqa: E402
from detection.reporting.report import write_report  # noqa: E402


def plain(model, loader, classes: list[str], folder: Path, *, timed: bool) -> tuple[float, DetectionEvaluator, dict]:
    """Seconds of the plain evaluation (with the stage timer around the inference when `timed`)."""
    started, evaluator = time.perf_counter(), DetectionEvaluator(class_names=classes)
    times = StageTimes(model, torch.device("cpu")) if timed else None
    with times or contextlib.nullcontext():
        metrics = validation_metrics(evaluate(model, loader, evaluator, device=torch.device("cpu"), progress=False))
    errors = evaluator.error_breakdown()
    save_error_plots(errors, folder / "errors", title="bench")
    save_precision_recall_plot(evaluator.precision_recall(), class_aps(metrics, classes), folder / "pr.png",
                               class_names=classes, title="bench")
    return time.perf_counter() - started, evaluator, {"metrics": metrics, "errors": errors,
                                                      "speed": times.per_image() if times else {}}


def report_parts(model, evaluator: DetectionEvaluator, val_set, classes: list[str], folder: Path, found: dict) -> dict:
    """Seconds of each part the report adds."""
    seconds, started = {}, time.perf_counter()
    complexity = measure_complexity(model)
    seconds["complexity"], started = time.perf_counter() - started, time.perf_counter()
    rows = evaluator.per_image()
    save_gallery(worst_images(rows, 16), lambda index: val_set[index][0], evaluator.outcomes_of, classes,
                 folder / "worst_images.png")
    seconds["per-image + gallery"], started = time.perf_counter() - started, time.perf_counter()
    thresholds = evaluator.class_thresholds()
    seconds["thresholds"], started = time.perf_counter() - started, time.perf_counter()
    write_report(folder, facts={"checkpoint": "bench"}, metrics=found["metrics"], classes=classes,
                 errors=found["errors"], complexity=complexity, speed=found["speed"], thresholds=thresholds,
                 pictures=[], worst="worst_images.png")
    seconds["report.md"] = time.perf_counter() - started
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/report_bench"))
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    model, trained, checkpoint = model_from_checkpoint(args.checkpoint)
    model.eval()
    classes, val_set = list(checkpoint["class_names"]), instantiate(trained.dataset.val)
    loader = build_loader(val_set, batch_size=8, shuffle=False, num_workers=1, seed=0)
    print(f"device: {device_name(torch.device('cpu'))}; {args.checkpoint}, {len(val_set)} validation images")
    plain(model, loader, classes, args.folder, timed=False)  # warm-up: the loader, the kernels, the plots
    base, _, _ = plain(model, loader, classes, args.folder, timed=False)
    timed, evaluator, found = plain(model, loader, classes, args.folder, timed=True)
    parts = {"stage timer": timed - base, **report_parts(model, evaluator, val_set, classes, args.folder, found)}
    print(f"plain evaluation {base:.2f} s")
    for name, seconds in parts.items():
        print(f"  + {name:20s} {seconds:6.2f} s")
    print(f"with the report: {(base + sum(parts.values())) / base:.2f}x the plain evaluation's time")


if __name__ == "__main__":
    main()
