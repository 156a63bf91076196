"""Train a detector: compose the config, check it, instantiate its objects, run the loop.

    python train.py experiment=ssd_shapes            # the default experiment (make train)
    python train.py model=ssd backbone=resnet50      # SSD512-ResNet50
    python train.py ckpt_path=outputs/.../checkpoints/last.pt   # resume, exactly as the run was configured
    torchrun --nproc_per_node 2 train.py ...         # data-parallel on 2 processes (GPUs, or gloo on the CPU)
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from schema import SettingsError, check_train

log = logging.getLogger(__name__)


def run_training(cfg: DictConfig) -> dict[str, float]:
    # imported here, once the settings passed their check, so that a bad setting is refused before torch
    # and the models load
    from contextlib import ExitStack
    from dataclasses import replace
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    import edge
    from sweep import label_of
    from detection.data.loader import build_loader
    from detection.data.samples import split_fingerprint
    from detection.engine import hooks
    from detection.engine.checkpoint import RunLock, seed_everything
    from detection.engine.device import resolve_device
    from detection.engine.distributed import init_distributed, shutdown_distributed
    from detection.engine.loop import fit
    from detection.engine.precision import choose_precision
    from detection.engine.state import TrainingState
    from detection.engine.step import TrainStep, prepare_network
    from detection.evaluation import DetectionEvaluator

    edge.export_submitit_ranks()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg, checkpoint = edge.continued_run(cfg, run_dir, list(HydraConfig.get().overrides.task))
    if checkpoint is not None and edge.already_finished(cfg, checkpoint):
        return checkpoint["metrics"]
    settings = check_train(cfg)
    context, device = init_distributed(resolve_device(settings.device))
    settings = replace(settings, progress=settings.progress and context.is_main)
    precision = choose_precision(device, settings.amp)
    log.info("precision: %s (%s)", precision.name, precision.reason)
    seed_everything(cfg.seed + context.rank)
    train_set, val_set = instantiate(cfg.dataset.train), instantiate(cfg.dataset.val)
    fingerprint = split_fingerprint(train_set.records())
    with ExitStack() as held:
        if context.is_main:  # one writer per run: this run's folder, and the one it continues
            for folder in edge.checkpoint_folders(run_dir, cfg.ckpt_path):
                held.enter_context(RunLock(folder))
        if checkpoint is not None:
            edge.check_same_data(cfg, checkpoint, fingerprint)
        tracker = held.enter_context(edge.ended_with_status(edge.start_tracking(
            cfg, is_main=context.is_main, run_id=checkpoint.get("tracking_run_id") if checkpoint else None,
            tags={"device": str(device), "world_size": str(context.world_size), "precision": precision.name,
                  "precision_reason": precision.reason})))
        held.callback(shutdown_distributed)
        model, network = prepare_network(
            edge.build_model(cfg, pretrained=checkpoint is None), device=device, context=context,
            channels_last=settings.uses_channels_last(device.type), compile=settings.compile,
            cudnn_benchmark=settings.cudnn_benchmark, sync_batchnorm=settings.sync_batchnorm)
        shard = {"rank": context.rank, "world_size": context.world_size, "seed": cfg.seed,
                 "batch_size": settings.batch_size, "num_workers": settings.num_workers}
        train_loader = build_loader(train_set, shuffle=True, limit=settings.limit_train_images,
                                    augmentation=train_set.transforms, **shard)
        val_loader = build_loader(val_set, shuffle=False, limit=settings.limit_val_images, **shard)
        optimizer = instantiate(cfg.optimizer)([p for p in model.parameters() if p.requires_grad])
        scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=settings.max_epochs * len(train_loader))
        state = TrainingState(TrainStep(model, optimizer, scheduler, network=network, device=device,
                                        precision=precision, grad_clip=settings.grad_clip),
                              extras=edge.checkpoint_extras(cfg, tracker, fingerprint))
        if checkpoint is not None:
            state.restore(checkpoint)
            log.info("resumed at epoch %d after %d batches, step %d", state.epoch + 1, state.batches_done, state.step)
        artifacts = edge.debug_artifacts(cfg, run_dir, tracker, precision, device) if context.is_main else None
        run_hooks = [hooks.MetricLogger(tracker, every=settings.log_every),
                     *([hooks.DebugImages(artifacts)] if artifacts else []),
                     hooks.Validation(val_loader, DetectionEvaluator(class_names=list(cfg.dataset.classes)), tracker,
                                      device=device, precision=precision, progress=settings.progress,
                                      artifacts=artifacts)]
        log.info("run directory %s; training %s on %s (rank %d of %d); ready %.1f s after the command", run_dir,
                 label_of(cfg, edge.group_choices()), device, context.rank, context.world_size, edge.uptime())
        metrics = fit(state, train_loader, settings, hooks=run_hooks, checkpoints=hooks.Checkpoints(
            run_dir / "checkpoints", every=settings.checkpoint_every, keep_last=settings.keep_last,
            is_main=context.is_main))
        if context.is_main:
            resumed_from = [Path(cfg.ckpt_path).parent] if cfg.ckpt_path else []
            edge.log_best_model(tracker, model, [run_dir / "checkpoints", *resumed_from], val_loader.dataset)
    log.info("final val/map %.4f; checkpoints in %s", metrics.get("val/map", float("nan")), run_dir / "checkpoints")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns val/map, the metric a Hydra sweeper optimises."""
    try:
        check_train(cfg)
        return run_training(cfg)["val/map"]
    except SettingsError as error:  # one line naming the key, not a traceback
        log.error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
