"""Detect objects with a trained checkpoint in a folder of images, one image, a glob or a video: each image
drawn with its detections, and every detection in predictions.json (COCO results format).

    python predict.py ckpt_path=outputs/.../checkpoints/best.pt source=path/to/images
    python predict.py ckpt_path=... source='photos/**/*.jpg' score_threshold=0.5
    python predict.py ckpt_path=... source=clip.mp4      # clip.mp4 drawn, in the run directory
    python predict.py model_path=model.onnx source=...   # an export.py file, through onnxruntime
"""

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from schema import SettingsError, check_predict

log = logging.getLogger(__name__)


def run_prediction(cfg: DictConfig) -> dict[str, float]:
    # imported once the settings passed their check: a bad setting is refused before torch loads
    import torch
    from torch.utils.data import DataLoader

    import edge
    from detection.data.sources import ImageFiles, VideoFrames, VideoWriter, collate_files, image_files, is_video
    from detection.engine.device import resolve_device
    from detection.engine.prediction import PredictionWriter, predict_batches
    from detection.models.export import ExportedDetector

    if cfg.model_path:  # an exported file, run as it would be deployed (on the CPU)
        model, device = ExportedDetector(Path(cfg.model_path)), torch.device("cpu")
        class_names = model.class_names
    else:
        model, _, checkpoint = edge.model_from_checkpoint(Path(cfg.ckpt_path))
        device, class_names = resolve_device(cfg.device), checkpoint["class_names"]
        model.to(device)
    run_dir, source = edge.run_dir(), Path(cfg.source)
    options = {"score_threshold": cfg.score_threshold, "draw": cfg.draw}
    if is_video(cfg.source):
        frames = VideoFrames(source)
        video = VideoWriter(run_dir / f"{source.stem}.mp4", frames.fps) if cfg.draw else None
        writer = PredictionWriter(run_dir, class_names, video=video, **options)
        predict_batches(model, frames.batches(cfg.batch_size), writer, device=device,
                        total=frames.batch_count(cfg.batch_size), progress=cfg.progress)
    else:
        paths, others = image_files(cfg.source)
        if others:
            log.info("%s: %d files that are not images passed over", cfg.source, others)
        loader = DataLoader(ImageFiles(paths), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                            collate_fn=collate_files)
        writer = PredictionWriter(run_dir, class_names, **options)
        predict_batches(model, loader, writer, device=device, total=len(loader), progress=cfg.progress)
    summary = writer.close()
    record_run(cfg, run_dir, summary)
    log.info("%d images, %d detections at score >= %.2f, %d unreadable (listed in images.json); %.1f images/s "
             "in the model; results in %s", summary["images"], summary["detections"], cfg.score_threshold,
             summary["unreadable"], summary["images"] / max(summary["inference_s"], 1e-9), run_dir)
    return summary


def record_run(cfg: DictConfig, run_dir: Path, summary: dict[str, float]) -> None:
    """With `tracking=mlflow`: a run in the experiment 'predict' holding the summary as metrics and the
    JSON files, drawn images or video as artifacts under predictions/."""
    import edge

    tracker = edge.build_tracker(cfg.tracking, experiment_name="predict", run_name=f"predict {Path(cfg.source).name}")
    tracker.start(params={"model": str(cfg.model_path or cfg.ckpt_path), "source": str(cfg.source),
                          "score_threshold": cfg.score_threshold}, tags={"job": "predict"},
                  spool=edge.tracking_spool(run_dir))
    with edge.ended_with_status(tracker):
        tracker.log_metrics(summary, step=0)
        for name in ("predictions.json", "images.json", "images", f"{Path(cfg.source).stem}.mp4"):
            if (run_dir / name).exists():
                tracker.log_artifact(run_dir / name, artifact_path="predictions")


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        check_predict(cfg)
        run_prediction(cfg)
    except (SettingsError, FileNotFoundError, ValueError) as error:  # one line naming the path and the problem
        log.error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
