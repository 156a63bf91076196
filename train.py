"""Train a detector: compose the config, instantiate its objects, run the loop.

    python train.py experiment=ssd_shapes            # the default experiment (make train)
    python train.py model=ssd backbone=resnet50      # SSD512-ResNet50
    python train.py ckpt_path=outputs/.../checkpoints/last.pt   # resume
    torchrun --nproc_per_node 2 train.py ...         # data-parallel on 2 processes (GPUs, or gloo on the CPU)
"""

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detection.data.loader import build_loader
from detection.engine.artifacts import DebugArtifacts
from detection.engine.checkpoint import load_checkpoint, seed_everything
from detection.engine.distributed import init_distributed, shutdown_distributed
from detection.engine.loop import TrainingInterrupted, autocast, fit, resolve_device
from detection.evaluation import DetectionEvaluator
from detection.models.export import BatchedDetector
from detection.tracking import NullTracker, experiment_label, flatten, sweep_parent

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig, *, pretrained: bool = True) -> torch.nn.Module:
    """The model of a composed config; `pretrained=False` skips loading weights (they will come from a
    checkpoint), so that rebuilding a run never needs the original weight files."""
    if not pretrained:
        cfg = cfg.copy()
        cfg.backbone.weights = None
        if "weights" in cfg.model:
            cfg.model.weights = None
    return instantiate(cfg.model)


def build_tracker(tracking: DictConfig, *, experiment_name: str, run_name: str):
    """The configured tracker, with the experiment and run names it was not given filled in."""
    tracker = instantiate(tracking)
    if getattr(tracker, "experiment_name", "") is None:
        tracker.experiment_name = experiment_name
    if getattr(tracker, "run_name", "") is None:
        tracker.run_name = run_name
    return tracker


def git_tags() -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()

    return {"git_commit": git("rev-parse", "HEAD") or "unknown", "git_dirty": str(bool(git("status", "--porcelain")))}


def export_submitit_ranks() -> None:
    """A submitit job of several tasks (hydra/launcher=slurm, or submitit_local with tasks_per_node > 1)
    describes its ranks in SLURM terms; torch.distributed reads RANK, WORLD_SIZE, MASTER_ADDR/PORT."""
    if os.environ.get("SUBMITIT_EXECUTOR") and "RANK" not in os.environ:
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def plain(value: Any) -> Any:
    """A config node as resolved Python containers; any other value as it is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def refuse_conflicting_overrides(cfg: DictConfig, stored: DictConfig, overrides: list[str]) -> None:
    """A resumed run keeps its stored configuration; an override (other than trainer.*) that asks for a
    different model, backbone, anchors, classes or any other value is refused rather than ignored."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~").replace("/", ".")
        if key.split(".")[0] in ("ckpt_path", "trainer", "hydra"):
            continue
        asked, trained = (plain(OmegaConf.select(config, key)) for config in (cfg, stored))
        if asked != trained:
            raise ValueError(f"{cfg.ckpt_path} was trained with {key}={trained}, but the command asks for "
                             f"{key}={asked}; a resumed run keeps its configuration (only trainer.* may change)")


def log_best_model(tracker, model: torch.nn.Module, checkpoint_dirs: list[Path], val_dataset) -> None:
    """The best checkpoint as an artifact, and the model with its weights as an MLflow model taking a
    batch tensor, its input example the first validation image scaled to at most 64 pixels a side.
    `checkpoint_dirs`: this run's, then (resumed) the checkpoint's, whose best.pt stands while no later
    validation beats it."""
    best = next((folder / "best.pt" for folder in checkpoint_dirs if (folder / "best.pt").is_file()), None)
    if best is None:
        log.warning("no best.pt in %s: the model is not logged", ", ".join(map(str, checkpoint_dirs)))
        return
    tracker.log_artifact(best, artifact_path="checkpoints")
    model.load_state_dict(load_checkpoint(best)["model"])
    sample = val_dataset[0]
    image = sample[0] if sample is not None else torch.zeros(3, 64, 64)
    scale = min(1.0, 64 / max(image.shape[1:]))
    example = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear")
    tracker.log_model(BatchedDetector(model.cpu()), example.numpy())


def start_tracking(cfg: DictConfig, *, context, device: torch.device, resume: Optional[dict]):
    """The tracker of this rank (rank 0's logs, the others' do nothing) with its run started: the run of
    the checkpoint when resuming, a child of the sweep's parent run in a multirun. Returns (tracker, run id)."""
    hydra_config = HydraConfig.get()
    label = experiment_label(cfg)
    overrides = [o for o in hydra_config.overrides.task if not o.startswith("ckpt_path=")]
    sweep = sweep_parent(Path(hydra_config.sweep.dir)) if hydra_config.mode == RunMode.MULTIRUN else None
    if not context.is_main:
        return NullTracker(), None
    named = [o for o in overrides if o.split("=", 1)[0] in sweep["swept"]] if sweep else overrides
    tracker = build_tracker(cfg.tracking, experiment_name=label, run_name=" ".join([label, *named]))
    if sweep:
        tracker.experiment_name = sweep["experiment_name"]
    run_id = tracker.start(params=flatten(OmegaConf.to_container(cfg, resolve=True)),
                           tags={"overrides": " ".join(overrides), "host": socket.gethostname(),
                                 "device": str(device), "world_size": str(context.world_size), **git_tags()},
                           run_id=resume.get("tracking_run_id") if resume else None,
                           parent_run_id=sweep["run_id"] if sweep else None)
    tracker.log_artifact(Path(hydra_config.runtime.output_dir) / ".hydra")
    return tracker, run_id


def run_training(cfg: DictConfig) -> dict[str, float]:
    export_submitit_ranks()
    resume = None
    if cfg.ckpt_path:
        resume = load_checkpoint(Path(cfg.ckpt_path))
        stored = OmegaConf.create(resume["config"])
        refuse_conflicting_overrides(cfg, stored, list(HydraConfig.get().overrides.task))
        stored.trainer = cfg.trainer  # the schedule and device of this invocation; all else as stored
        stored.ckpt_path = cfg.ckpt_path
        cfg = stored
    trainer = cfg.trainer
    context, device = init_distributed(resolve_device(trainer.device))
    seed_everything(cfg.seed + context.rank)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    tracker, run_id = start_tracking(cfg, context=context, device=device, resume=resume)
    try:  # from here on, whatever fails ends the run FAILED (or KILLED), never left RUNNING
        model = build_model(cfg, pretrained=resume is None)
        shard = {"rank": context.rank, "world_size": context.world_size}
        train_loader = build_loader(instantiate(cfg.dataset.train), batch_size=trainer.batch_size, shuffle=True,
                                    num_workers=trainer.num_workers, seed=cfg.seed, limit=trainer.limit_train_images,
                                    **shard)
        val_loader = build_loader(instantiate(cfg.dataset.val), batch_size=trainer.batch_size, shuffle=False,
                                  num_workers=trainer.num_workers, seed=cfg.seed, limit=trainer.limit_val_images, **shard)
        optimizer = instantiate(cfg.optimizer)([p for p in model.parameters() if p.requires_grad])
        scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=trainer.max_epochs * len(train_loader))
        extras: dict[str, Any] = {"config": OmegaConf.to_container(cfg, resolve=True),
                                  "class_names": list(cfg.dataset.classes), "tracking_run_id": run_id}
        artifacts = (DebugArtifacts(run_dir, tracker, cfg.dataset.classes, every=trainer.debug_images_every,
                                    autocast=lambda: autocast(device, trainer.amp)) if context.is_main else None)
        log.info("run directory %s; training %s on %s (rank %d of %d)", run_dir, experiment_label(cfg), device,
                 context.rank, context.world_size)
        metrics = fit(model=model, optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
                      val_loader=val_loader, evaluator=DetectionEvaluator(class_names=list(cfg.dataset.classes)),
                      tracker=tracker, checkpoint_dir=run_dir / "checkpoints", max_epochs=trainer.max_epochs,
                      device=device, amp=trainer.amp, grad_clip=trainer.grad_clip, log_every=trainer.log_every,
                      max_nonfinite_in_row=trainer.max_nonfinite_in_row,
                      checkpoint_every=trainer.checkpoint_every, keep_last=trainer.keep_last,
                      progress=trainer.progress, resume=resume, checkpoint_extras=lambda: extras, context=context,
                      sync_batchnorm=trainer.sync_batchnorm, artifacts=artifacts)
        if context.is_main:
            resumed_from = [Path(cfg.ckpt_path).parent] if cfg.ckpt_path else []
            log_best_model(tracker, model, [run_dir / "checkpoints", *resumed_from], val_loader.dataset)
    except TrainingInterrupted as interrupted:
        tracker.end("KILLED")
        log.error("%s", interrupted)
        sys.exit(128 + interrupted.signal_number)
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    finally:
        shutdown_distributed()
    tracker.end("FINISHED")
    log.info("final val/map %.4f; checkpoints in %s", metrics.get("val/map", float("nan")), run_dir / "checkpoints")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns val/map, the metric a Hydra sweeper optimises."""
    return run_training(cfg)["val/map"]


if __name__ == "__main__":
    main()
