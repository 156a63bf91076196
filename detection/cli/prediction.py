"""The prediction job: a checkpoint's model (or an exported file) over a folder, an image, a glob, a video or
a split of the checkpoint's dataset (`source=train` or `source=val`, when no such path exists); each image
drawn, every detection in predictions.json (COCO results)."""

import logging
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def run_prediction(cfg: DictConfig) -> dict[str, float]:
    # imported once the settings passed their check: a bad setting is refused before torch loads
    import torch
    from torch.utils.data import DataLoader

    from detection.cli.assembly import model_from_checkpoint, with_test_time_views
    from detection.cli.job import run_dir as job_dir
    from detection.data.sources import ImageFiles, VideoFrames, VideoWriter, collate_files, image_files, is_video
    from detection.engine.device import resolve_device
    from detection.prediction import PredictionWriter, predict_batches
    from detection.models.deployment import ExportedDetector

    trained = None
    if cfg.model_path:  # an exported file, run as it would be deployed (on the CPU)
        model, device = ExportedDetector(Path(cfg.model_path)), torch.device("cpu")
        class_names = model.class_names
    else:
        model, trained, checkpoint = model_from_checkpoint(Path(cfg.ckpt_path))
        device, class_names = resolve_device(cfg.device), checkpoint["class_names"]
        model = with_test_time_views(model.to(device), cfg.tta, cfg.slices)
    run_dir, source = job_dir(), Path(cfg.source)
    saved = model.metadata.get("score_thresholds") if cfg.model_path else checkpoint.get("score_thresholds")
    options = {"score_threshold": score_thresholds(cfg, saved, class_names), "draw": cfg.draw}
    if is_video(cfg.source):
        frames = VideoFrames(source)
        video = VideoWriter(run_dir / f"{source.stem}.mp4", frames.fps) if cfg.draw else None
        writer = PredictionWriter(run_dir, class_names, video=video, **options)
        predict_batches(model, frames.batches(cfg.batch_size), writer, device=device,
                        total=frames.batch_count(cfg.batch_size), progress=cfg.progress)
    else:
        paths = split_images(cfg.source, trained)
        if paths is None:
            paths, others = image_files(cfg.source)
            if others:
                log.info("%s: %d files that are not images passed over", cfg.source, others)
        loader = DataLoader(ImageFiles(paths), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                            collate_fn=collate_files)
        writer = PredictionWriter(run_dir, class_names, **options)
        predict_batches(model, loader, writer, device=device, total=len(loader), progress=cfg.progress)
    summary = writer.close()
    record_run(cfg, run_dir, summary)
    log.info("%d images, %d detections at score >= %s, %d unreadable (listed in images.json); %.1f images/s "
             "in the model; results in %s", summary["images"], summary["detections"],
             "each class's threshold" if cfg.score_threshold == "auto" else f"{cfg.score_threshold:.2f}",
             summary["unreadable"], summary["images"] / max(summary["inference_s"], 1e-9), run_dir)
    return summary


def score_thresholds(cfg: DictConfig, saved, class_names: list[str]) -> "float | list[float]":
    """`score_threshold`, or with `auto` the per-class thresholds `saved` in the checkpoint or the export
    (a dict class name -> score, or its JSON), in label order; said in the log."""
    import json

    from detection.engine.settings import SettingsError

    if cfg.score_threshold != "auto":
        return float(cfg.score_threshold)
    if not saved:
        raise SettingsError(f"score_threshold=auto: {cfg.model_path or cfg.ckpt_path} holds no per-class thresholds; "
                            f"evaluate.py ckpt_path=<checkpoint> save_thresholds=true writes a copy that does")
    saved = json.loads(saved) if isinstance(saved, str) else saved
    log.info("score_threshold=auto: each class's F1-best threshold on its validation split: %s",
             ", ".join(f"{name} {saved[name]:.3f}" for name in class_names))
    return [float(saved[name]) for name in class_names]


def split_images(source: str, trained) -> "list[Path] | None":
    """With `source` train or val and no such path: the images of that split of the checkpoint's dataset,
    in its order (`trained`: the checkpoint's configuration; check_predict refused an export); None for any
    other source."""
    from hydra.utils import instantiate

    from detection.cli.checks import SPLIT_SOURCES

    if source not in SPLIT_SOURCES or Path(source).exists():
        return None
    paths = instantiate(trained.dataset[source], transforms=None).image_paths()  # the augmentation is not needed
    log.info("source=%s: the %d images of the checkpoint's %s split", source, len(paths), source)
    return paths


def record_run(cfg: DictConfig, run_dir: Path, summary: dict[str, float]) -> None:
    """With `tracking=mlflow`: a run in the experiment 'predict' holding the summary as metrics and the
    JSON files, drawn images or video as artifacts under predictions/."""
    from detection.cli.runs import build_tracker, ended_with_status, tracking_spool

    tracker = build_tracker(cfg.tracking, experiment_name="predict", run_name=f"predict {Path(cfg.source).name}")
    tracker.start(params={"model": str(cfg.model_path or cfg.ckpt_path), "source": str(cfg.source),
                          "score_threshold": cfg.score_threshold}, tags={"job": "predict"},
                  spool=tracking_spool(run_dir))
    with ended_with_status(tracker):
        tracker.log_metrics(summary, step=0)
        for name in ("predictions.json", "images.json", "images", f"{Path(cfg.source).stem}.mp4"):
            if (run_dir / name).exists():
                tracker.log_artifact(run_dir / name, artifact_path="predictions")
