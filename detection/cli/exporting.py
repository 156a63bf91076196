"""The export job: a checkpoint's whole eval path in one ONNX or TorchScript file, compared with the PyTorch
model before it is given its name."""

import logging
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def check_images(trained: DictConfig, count: int) -> list:
    """uint8 [3, H, W] images to compare on: the first `count` of the checkpoint's validation split (where
    it can still be read) and 2 random images of other sizes."""
    import torch
    from hydra.utils import instantiate

    images = []
    try:
        val_set = instantiate(trained.dataset.val)
        images = [val_set[index][0] for index in range(min(count, len(val_set)))]
    except (OSError, ValueError) as error:
        log.warning("the checkpoint's validation split cannot be read (%s): checking on random images only", error)
    generator = torch.Generator().manual_seed(0)
    return images + [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
                     for height, width in ((197, 311), (420, 260))]


def run_export(cfg: DictConfig) -> Path:
    import json
    import os

    import torch

    from detection.cli.assembly import model_from_checkpoint
    from detection.cli.job import run_dir
    from detection.cli.sweep import model_label
    from detection.models.deployment import ExportedDetector, check_parity, export_onnx, export_torchscript, exportable

    model, trained, checkpoint = model_from_checkpoint(Path(cfg.ckpt_path))
    module = exportable(model)  # refuses what cannot be exported, before anything is written
    path = Path(cfg.output) if cfg.output else run_dir() / ("model.onnx" if cfg.format == "onnx" else "model.pt")
    resize = getattr(model, "image_size", None) or f"short side {model.transform.min_size[-1]}, long side at most " \
                                                    f"{model.transform.max_size}"
    metadata = {"class_names": json.dumps(checkpoint["class_names"]),
                "model": model_label(trained, checkpoint.get("choices", {})),
                "image_size": str(resize), "checkpoint": str(cfg.ckpt_path), "step": str(checkpoint["step"]),
                **({"score_thresholds": json.dumps(checkpoint["score_thresholds"])}
                   if checkpoint.get("score_thresholds") else {})}
    images = check_images(trained, cfg.check_images)
    # an SSD's graph is the same whatever the image; an R-CNN's is traced on a real one, whose detections
    # take every branch that inference takes
    example = (images[0][None] if module.batch == "1" else
               torch.randint(0, 256, (2, 3, model.image_size + 32, model.image_size + 64), dtype=torch.uint8))
    # written under a name that says it is unchecked, and given its own name once the check has passed: a
    # file at `path` is always a checked one, whatever stops the check
    unchecked = path.with_name(f"{path.stem}.unchecked{path.suffix}")
    log.info("exporting %s to %s%s ...", metadata["model"], cfg.format,
             " (about a minute on a CPU: the dense NMS is traced rank by rank)" if module.batch != "1" else "")
    (export_onnx if cfg.format == "onnx" else export_torchscript)(model, unchecked, metadata=metadata, example=example)
    log.info("exported %s (%.1f MB)", unchecked, unchecked.stat().st_size / 1e6)
    if cfg.check:
        log.info("checking %s against the PyTorch model on %d images ...", unchecked.name, len(images))
        with torch.no_grad():
            reference = [model([image])[0] for image in images]
        exported = ExportedDetector(unchecked)
        try:
            log.info("%s", check_parity(reference, [exported([image])[0] for image in images], limit=module.limit,
                                        name=path.name))
        except ValueError:
            unchecked.unlink()
            raise
    else:
        log.warning("check=false: %s was not compared with the PyTorch model", path)
    os.replace(unchecked, path)
    log.info("saved %s", path)
    return path
