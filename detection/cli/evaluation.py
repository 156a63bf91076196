"""The evaluation job: a checkpoint's model over a validation split, its metrics, error breakdown and
detections written, printed and recorded in the training run that wrote it (or a run of its own)."""

import json
import logging
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def per_class_table(metrics: dict[str, float], classes: list[str]) -> str:
    """AP per class and their means: VOC07 11-point and VOC area at IoU 0.5, COCO at IoU 0.5:0.95."""
    from detection.evaluation import class_aps

    columns = (("VOC07 AP50", "ap50_voc07", "val/map"), ("VOC AP50", "ap50_voc", "val/map50_voc"),
               ("COCO AP", "ap50_95", "val/map50_95"))
    aps = [class_aps(metrics, classes, measure) for _, measure, _ in columns]
    lines = [f"{'class':<20}" + "".join(f"{title:>12}" for title, _, _ in columns)]
    lines += [f"{name:<20}" + "".join(f"{column[name]:>12.4f}" for column in aps) for name in classes]
    lines.append(f"{'mean':<20}" + "".join(f"{metrics.get(mean, float('nan')):>12.4f}" for _, _, mean in columns))
    return "\n".join(lines)


def error_table(errors: dict, classes: list[str]) -> str:
    """TIDE's breakdown at IoU 0.5: per error type its count and the AP50 fixing it gains (dAP), overall and
    per class, then the false-positive and false-negative dAPs."""
    lines = [f"errors (TIDE at IoU 0.5; dAP: the AP50 gained by fixing them; TIDE's AP50 {errors['ap']:.4f})",
             f"{'type':<20}{'count':>8}{'dAP':>10}" + "".join(f"{name[:11]:>12}" for name in classes)]
    for name, gain in errors["dap"].items():
        count = f"{errors['counts'][name]:>8}" if name in errors["counts"] else f"{'':>8}"
        lines.append(f"{name:<20}{count}{gain:>10.4f}" +
                     "".join(f"{errors['per_class'][c]['dap'][name]:>12.4f}" for c in classes))
    return "\n".join(lines)


def run_evaluation(cfg: DictConfig) -> dict[str, float]:
    # imported once the settings passed their check: a bad setting is refused before torch loads
    from hydra.utils import instantiate

    from detection.cli.assembly import model_from_checkpoint, with_test_time_views
    from detection.cli.robustness import run_robustness, scores_of
    from detection.data.loader import build_loader
    from detection.engine.device import resolve_device
    from detection.engine.distributed import init_distributed, shutdown_distributed
    from detection.engine.inference import evaluate
    from detection.evaluation import DetectionEvaluator, validation_metrics
    from detection.profiling.speed import StageTimes

    model, trained, checkpoint = model_from_checkpoint(Path(cfg.ckpt_path))
    dataset = cfg.dataset if cfg.get("dataset") else trained.dataset
    if list(dataset.classes) != checkpoint["class_names"]:
        raise ValueError(f"{cfg.ckpt_path} was trained on classes {checkpoint['class_names']}, "
                         f"the dataset has {list(dataset.classes)}")
    context, device = init_distributed(resolve_device(cfg.device))
    val_set = instantiate(dataset.val)
    loader = build_loader(val_set, batch_size=cfg.batch_size, shuffle=False,
                          num_workers=cfg.num_workers, seed=0, rank=context.rank, world_size=context.world_size)
    evaluator = DetectionEvaluator(class_names=list(dataset.classes),
                                   confusion_score_threshold=cfg.confusion_score_threshold)
    viewed = with_test_time_views(model.to(device), cfg.tta, cfg.slices)  # with views: stages not timed
    try:
        with StageTimes(viewed, device) as times:
            results = evaluate(viewed, loader, evaluator, device=device, progress=context.is_main)
        speed = times.per_image()
        metrics = {**validation_metrics(results), **{f"val/speed/{key}": ms for key, ms in speed.items()}}
        robustness = None
        if cfg.robustness:
            robustness = run_robustness(cfg, model=viewed, val_set=val_set, class_names=list(dataset.classes),
                                        device=device, context=context,
                                        clean=scores_of(metrics, evaluator.error_breakdown()))
    finally:
        shutdown_distributed()
    if context.is_main:
        write_results(cfg, model=model, trained=trained, checkpoint=checkpoint, dataset=dataset, val_set=val_set,
                      evaluator=evaluator, metrics=metrics, speed=speed, device=device, robustness=robustness)
    return metrics


def write_results(cfg: DictConfig, *, model, trained: DictConfig, checkpoint: dict, dataset: DictConfig, val_set,
                  evaluator, metrics: dict[str, float], speed: dict[str, float], device,
                  robustness: Optional[dict]) -> None:
    """What an evaluation leaves in its run folder (metrics.json, detections.json, errors/, thresholds,
    per_image.json and the worst images, precision_recall.png, robustness.json and .png, report.md), printed
    and recorded."""
    from datetime import datetime, timezone

    from detection.cli.job import run_dir
    from detection.cli.robustness import save_robustness
    from detection.engine.precision import EVALUATION
    from detection.evaluation import class_aps
    from detection.profiling.complexity import measure_complexity
    from detection.profiling.speed import speed_line
    from detection.reporting.plots import save_error_plots, save_precision_recall_plot
    from detection.reporting.report import write_report

    classes, folder = list(dataset.classes), run_dir()
    errors, complexity = evaluator.error_breakdown(), measure_complexity(model)
    log.info("%s on %s's validation split, in %s:\n%s\n%s\n%s\n%s", cfg.ckpt_path, dataset.name, EVALUATION.name,
             per_class_table(metrics, classes), error_table(errors, classes), complexity.table(),
             speed_line(speed, device=device, batch_size=cfg.batch_size))
    (folder / "metrics.json").write_text(json.dumps({**metrics, "error_breakdown": errors,
                                                     "complexity": complexity.as_params()}, indent=2))
    # COCO in, COCO out: a COCO file's own image and category ids (VOC splits keep their indices and labels)
    records = evaluator.detection_records(image_ids=getattr(val_set, "image_ids", None),
                                          category_ids=getattr(val_set, "category_ids", None))
    (folder / "detections.json").write_text(json.dumps(records))
    save_error_plots(errors, folder / "errors", title=Path(cfg.ckpt_path).name)
    save_precision_recall_plot(evaluator.precision_recall(), class_aps(metrics, classes),
                               folder / "precision_recall.png", class_names=classes,
                               title=f"precision-recall at IoU 0.5, {Path(cfg.ckpt_path).name}")
    thresholds = evaluator.class_thresholds()
    save_class_thresholds(cfg, checkpoint, thresholds)
    save_per_image(evaluator, val_set, classes, cfg.worst_images)
    if robustness is not None:
        save_robustness(robustness, folder, title=Path(cfg.ckpt_path).name)
    facts = {"checkpoint": f"{cfg.ckpt_path} (step {checkpoint['step']})", "dataset": f"{dataset.name}, its "
             f"validation split ({len(val_set)} images)", "device": f"{device}, batch {cfg.batch_size}",
             "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    pictures = [("precision-recall", "precision_recall.png"), ("dAP per error type", "errors/errors_dap.png"),
                ("confusion matrix", "errors/confusion.png")]
    report = write_report(folder, facts=facts, metrics=metrics, classes=classes, errors=errors, complexity=complexity,
                          speed=speed, thresholds=thresholds, pictures=pictures, robustness=robustness,
                          worst="worst_images.png" if (folder / "worst_images.png").is_file() else None)
    record_evaluation(cfg, trained, checkpoint, dataset.name, metrics, robustness)
    log.info("results in %s; the report: %s", folder, report)


def save_per_image(evaluator, val_set, class_names: list[str], count: int) -> None:
    """per_image.json (each image's file, AP50, objects, detections and TIDE error counts) and, with `count`,
    worst_images.png: the `count` images with the lowest AP50, their outcomes drawn in colour."""
    from detection.cli.job import run_dir
    from detection.reporting.gallery import save_gallery, worst_images

    rows = evaluator.per_image()
    paths = val_set.image_paths() if hasattr(val_set, "image_paths") else None
    for row in rows:
        row["file_name"] = str(paths[row["image"]]) if paths is not None else str(row["image"])
    (run_dir() / "per_image.json").write_text(json.dumps(rows, indent=1))
    if count:
        worst = worst_images(rows, count)
        path = save_gallery(worst, lambda index: val_set[index][0], evaluator.outcomes_of, class_names,
                            run_dir() / "worst_images.png")
        log.info("%s: the %d images with the lowest AP50 (%s), their detections coloured by TIDE's error type",
                 path, len(worst), ", ".join(Path(row["file_name"]).name for row in worst[:4]) + ", ...")


def save_class_thresholds(cfg: DictConfig, checkpoint: dict, thresholds: dict[str, dict[str, float]]) -> None:
    """Each class's F1-best score threshold (with its F1, precision, recall) into thresholds.json and the
    log; with `save_thresholds`, a copy of the checkpoint holding them as `score_thresholds` (class name ->
    score), which `predict.py score_threshold=auto` and `export.py` read."""
    from detection.cli.job import run_dir
    from detection.engine.checkpoint import save_checkpoint

    (run_dir() / "thresholds.json").write_text(json.dumps(thresholds, indent=2))
    log.info("per-class score thresholds (F1-best at IoU 0.5):\n%s", "\n".join(
        f"  {name:<16} score >= {row['threshold']:.3f}: F1 {row['f1']:.3f} (precision {row['precision']:.3f}, "
        f"recall {row['recall']:.3f})" for name, row in thresholds.items()))
    if cfg.save_thresholds:
        path = run_dir() / Path(cfg.ckpt_path).name
        save_checkpoint({**checkpoint, "score_thresholds": {name: row["threshold"] for name, row in thresholds.items()}},
                        path)
        log.info("%s: the checkpoint with these thresholds (predict.py score_threshold=auto uses them)", path)


def record_evaluation(cfg: DictConfig, trained: DictConfig, checkpoint: dict, dataset_name: str,
                      metrics: dict[str, float], robustness: Optional[dict]) -> None:
    """The results as `eval/<name>` metrics (at the checkpoint's step; the corruption benchmark's as
    `robustness/...`) and `evaluation/<checkpoint>/` artifacts (metrics.json, detections.json, errors/, ...)
    in the training run that wrote the checkpoint, when the store holds it and it has ended (it keeps the
    status it ended with); else in a run of their own named after the checkpoint."""
    from detection.cli.job import run_dir
    from detection.cli.runs import build_tracker, ended_with_status, tracking_spool
    from detection.cli.sweep import label_of
    from detection.evaluation.robustness import robustness_metrics

    name = Path(cfg.ckpt_path).name
    tracker = build_tracker(cfg.tracking, experiment_name=label_of(trained, checkpoint.get("choices", {})),
                                 run_name=f"evaluate {name}")
    training_run = checkpoint.get("tracking_run_id")
    status = tracker.run_status(training_run) if training_run else None
    if status in ("FINISHED", "FAILED", "KILLED"):
        tracker.start(params={}, tags={}, run_id=training_run, spool=tracking_spool(run_dir()))
        log.info("results logged into the training run %s as eval/...", training_run)
    else:
        tracker.start(params={"ckpt_path": str(cfg.ckpt_path), "dataset.name": dataset_name}, tags={"job": "evaluate"},
                      spool=tracking_spool(run_dir()))
        status = None
    with ended_with_status(tracker):
        tracker.log_metrics({f"eval/{key.removeprefix('val/')}": value for key, value in metrics.items()},
                            step=int(checkpoint["step"]))
        if robustness is not None:
            tracker.log_metrics(robustness_metrics(robustness), step=int(checkpoint["step"]))
        for file_name in ("metrics.json", "detections.json", "errors", "thresholds.json", "per_image.json",
                          "worst_images.png", "precision_recall.png", "robustness.json", "robustness.png",
                          "report.md"):
            if (run_dir() / file_name).exists():
                tracker.log_artifact(run_dir() / file_name, artifact_path=f"evaluation/{name}")
        if status is not None:  # the training run ends as it had ended
            tracker.end(status)
