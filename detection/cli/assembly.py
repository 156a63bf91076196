"""A run's pieces built from its configuration: the model (from a config or a checkpoint), the loaders, the
hooks and what a checkpoint holds besides the training state."""

import logging
import math
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detection.cli.job import Job, group_choices
from detection.cli.resume import check_same_data, checkpoint_folders
from detection.cli.runs import ended_with_status, start_tracking
from detection.cli.trusted import trusted_checkpoint
from detection.data.loader import TrainingLoader, build_loader, stop_workers
from detection.engine import hooks
from detection.engine.checkpoint import RunLock
from detection.engine.distributed import shutdown_distributed
from detection.engine.precision import Precision
from detection.engine.settings import TrainerSettings
from detection.evaluation import DetectionEvaluator
from detection.profiling.complexity import Complexity, measure_complexity
from detection.reporting.debug_images import DebugArtifacts
from detection.tracking import Tracker

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig, *, pretrained: bool = True) -> torch.nn.Module:
    """`instantiate(cfg.model)`: the model group builds itself as it is. `pretrained=False` builds it without
    the weight files its config names (a checkpoint's weights replace them), given to `instantiate` as
    overrides, so that rebuilding a run never needs the original weight files."""
    if pretrained:
        return instantiate(cfg.model)
    without_weights = {"weights": None} if "weights" in cfg.model else {}
    if "weights" in cfg.model.backbone:
        without_weights["backbone"] = {"weights": None}
    return instantiate(cfg.model, **without_weights)


def model_from_checkpoint(path: Path) -> tuple[torch.nn.Module, DictConfig, dict[str, Any]]:
    """The model a training checkpoint holds, rebuilt from its stored configuration (checked by
    `trusted_checkpoint`) with its weights (on the CPU, in train mode as built); returns (model, the run's
    resolved configuration, the checkpoint, its class_names filled in from the configuration where it has
    none)."""
    checkpoint = trusted_checkpoint(path)
    trained = OmegaConf.create(checkpoint["config"])
    checkpoint.setdefault("class_names", list(trained.dataset.classes))  # a copy holding only config and model
    model = build_model(trained, pretrained=False)
    model.load_state_dict(checkpoint["model"])
    return model, trained, checkpoint


def with_test_time_views(model: torch.nn.Module, tta: Sequence, slices: Optional[Sequence[float]]) -> torch.nn.Module:
    """`model`, or, with `tta` (flip and input sizes) or `slices` ([tile size, overlap]), a TestTimeModel
    that looks at each image in those views too and merges their detections."""
    if not tta and not slices:
        return model
    from detection.engine.test_time import TestTimeModel

    views = TestTimeModel(model, flip="flip" in tta, sizes=[int(item) for item in tta if item != "flip"],
                          tile=int(slices[0]) if slices else None, overlap=float(slices[1]) if slices else 0.0)
    log.info("test-time views: the image%s%s%s, merged by NMS", " and its mirror" if views.flip else "",
             f", at input sizes {list(views.sizes)}" if views.sizes else "",
             f", and {views.tile}-pixel tiles overlapping by {views.overlap:.0%}" if views.tile else "")
    return views.eval()


def open_training_run(held: ExitStack, cfg: DictConfig, job: Job, run_dir: Path, checkpoint: Optional[dict],
                      data_fingerprint: str) -> Tracker:
    """Opens the run within `held`: its folders locked (one writer: this run's checkpoints/ and the one it
    continues), the data of a resumed run checked, the tracker started (ended with the run's status) and
    the process group left as the block ends. Returns the tracker."""
    if job.is_main:
        for folder in checkpoint_folders(run_dir, cfg.ckpt_path):
            held.enter_context(RunLock(folder))
    if checkpoint is not None:
        check_same_data(cfg, checkpoint, data_fingerprint)
    tracker = held.enter_context(ended_with_status(start_tracking(
        cfg, is_main=job.is_main, tags=job.tags(), run_id=checkpoint.get("tracking_run_id") if checkpoint else None)))
    held.callback(shutdown_distributed)
    return tracker


def training_loaders(held: ExitStack, train_set, val_set, settings: TrainerSettings, job: Job, seed: int
                     ) -> tuple[TrainingLoader, torch.utils.data.DataLoader]:
    """This rank's shares of the training split (shuffled, augmented with the split's own transforms,
    reseeded per item) and of the validation split; their workers are stopped as `held` closes."""
    shard = {"rank": job.context.rank, "world_size": job.context.world_size, "seed": seed,
             "batch_size": settings.batch_size, "num_workers": settings.num_workers,
             "persistent_workers": settings.persistent_workers, "prefetch_factor": settings.prefetch_factor}
    loaders = (build_loader(train_set, shuffle=True, limit=settings.limit_train_images,
                            augmentation=train_set.transforms, **shard),
               build_loader(val_set, shuffle=False, limit=settings.limit_val_images, **shard))
    held.callback(stop_workers, *loaders)
    return loaders


def length_in_epochs(cfg: DictConfig, settings: TrainerSettings, steps_per_epoch: int) -> TrainerSettings:
    """With `trainer.max_steps` (a length in optimiser steps, as papers give it): `trainer.max_epochs` becomes
    the fewest whole epochs of `steps_per_epoch` that hold it, in the configuration too, so that the run
    records, resumes and is judged finished by it. The schedule spans exactly max_steps; the rest of the
    last epoch keeps its final learning rate."""
    if settings.max_steps is None:
        return settings
    cfg.trainer.max_epochs = math.ceil(settings.max_steps / steps_per_epoch)
    log.info("trainer.max_steps=%d at %d steps an epoch: %d epochs (%d steps)", settings.max_steps, steps_per_epoch,
             cfg.trainer.max_epochs, cfg.trainer.max_epochs * steps_per_epoch)
    return replace(settings, max_epochs=cfg.trainer.max_epochs)


def optimisation(cfg: DictConfig, model: torch.nn.Module, settings: TrainerSettings, steps_per_epoch: int):
    """The optimiser over the model's trainable parameters, and its schedule over the run's steps
    (`trainer.max_steps`, else max_epochs x steps_per_epoch)."""
    optimizer = instantiate(cfg.optimizer)([p for p in model.parameters() if p.requires_grad])
    total_steps = settings.max_steps or settings.max_epochs * steps_per_epoch
    return optimizer, instantiate(cfg.scheduler)(optimizer, total_steps=total_steps)


def device_augmentation(train_set) -> Optional[Callable]:
    """The training split's transforms when they run on the device (`augment=ssd_gpu`), else None."""
    return train_set.transforms if getattr(train_set.transforms, "decodes_on_device", False) else None


def training_hooks(cfg: DictConfig, settings: TrainerSettings, job: Job, tracker: Tracker, run_dir: Path,
                   val_loader) -> tuple[list[hooks.Hook], hooks.Checkpoints]:
    """What happens around the steps: metrics, debug images, validation and the epoch's results (in that
    order), and the checkpoints (only the main rank writes them or draws)."""
    artifacts = debug_artifacts(cfg, run_dir, tracker, job.precision, job.device) if job.is_main else None
    evaluator = DetectionEvaluator(class_names=list(cfg.dataset.classes),
                                   confusion_score_threshold=settings.confusion_score_threshold)
    validation = hooks.Validation(val_loader, evaluator, tracker,
                                  device=job.device, progress=settings.progress,
                                  artifacts=artifacts)
    logger = hooks.MetricLogger(tracker, every=settings.log_every, warn_data_wait=settings.warn_data_wait)
    debug_images = [hooks.DebugImages(artifacts)] if artifacts else []
    results = hooks.EpochResults(run_dir, tracker, max_epochs=settings.max_epochs, is_main=job.is_main)
    return ([logger, *debug_images, validation, results],
            hooks.Checkpoints(run_dir / "checkpoints", every=settings.checkpoint_every, keep_last=settings.keep_last,
                              is_main=job.is_main, best_model_only=settings.best_model_only))


def log_complexity(model: torch.nn.Module, tracker: Tracker) -> Complexity:
    """The model's parameters and GMACs, in the log as a table and in the run as `model/...` params."""
    complexity = measure_complexity(model)
    log.info("model: %s parameters (%s trainable), %.3f GMACs on one %dx%d image\n%s", f"{complexity.params:,}",
             f"{complexity.trainable:,}", complexity.gmacs, *complexity.input, complexity.table())
    tracker.log_params(complexity.as_params())
    return complexity


def debug_artifacts(cfg: DictConfig, run_dir: Path, tracker: Tracker, precision: Precision,
                    device: torch.device) -> DebugArtifacts:
    """The run's debug images and precision-recall plots, drawn in the precision it trains in."""
    return DebugArtifacts(run_dir, tracker, cfg.dataset.classes, every=cfg.trainer.debug_images_every,
                          autocast=lambda: precision.autocast(device))


def checkpoint_extras(cfg: DictConfig, tracker: Tracker, data_fingerprint: str) -> dict[str, Any]:
    """What a training checkpoint holds besides the training state: the configuration (resolved, and as
    composed), the group choices, the class names, the tracked run and the training split's fingerprint."""
    return {"config": OmegaConf.to_container(cfg, resolve=True), "config_unresolved": OmegaConf.to_container(cfg),
            "choices": group_choices(), "class_names": list(cfg.dataset.classes), "tracking_run_id": tracker.run_id,
            "data_fingerprint": data_fingerprint}
