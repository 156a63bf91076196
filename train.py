"""Train a detector: compose the config, check it, instantiate its objects, run the loop.

    python train.py experiment=ssd_shapes            # the default experiment (make train)
    python train.py model=ssd backbone=resnet50      # SSD512-ResNet50
    python train.py ckpt_path=outputs/.../checkpoints/last.pt   # resume, exactly as the run was configured
    torchrun --nproc_per_node 2 train.py ...         # data-parallel on 2 processes (GPUs, or gloo on the CPU)
"""

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from schema import SettingsError, check_train

log = logging.getLogger(__name__)


def run_training(cfg: DictConfig) -> dict[str, float]:
    # imported here, once the settings passed their check, so that a bad setting is refused before torch
    # and the models load
    from contextlib import ExitStack
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    import edge
    from detection.data.loader import build_loader
    from detection.data.samples import split_fingerprint
    from detection.engine.artifacts import DebugArtifacts
    from detection.engine.checkpoint import RunLock, seed_everything
    from detection.engine.distributed import init_distributed, shutdown_distributed
    from detection.engine.loop import fit, resolve_device
    from detection.engine.precision import choose_precision
    from detection.evaluation import DetectionEvaluator
    from detection.tracking import experiment_label

    edge.export_submitit_ranks()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg, checkpoint = edge.continued_run(cfg, run_dir, list(HydraConfig.get().overrides.task))
    if checkpoint is not None and edge.already_finished(cfg, checkpoint):
        return checkpoint["metrics"]
    trainer = check_train(cfg)
    context, device = init_distributed(resolve_device(trainer.device))
    precision = choose_precision(device, trainer.amp)
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
        model = edge.build_model(cfg, pretrained=checkpoint is None)
        shard = {"rank": context.rank, "world_size": context.world_size, "seed": cfg.seed,
                 "batch_size": trainer.batch_size, "num_workers": trainer.num_workers}
        train_loader = build_loader(train_set, shuffle=True, limit=trainer.limit_train_images, **shard)
        val_loader = build_loader(val_set, shuffle=False, limit=trainer.limit_val_images, **shard)
        optimizer = instantiate(cfg.optimizer)([p for p in model.parameters() if p.requires_grad])
        scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=trainer.max_epochs * len(train_loader))
        extras = {"config": OmegaConf.to_container(cfg, resolve=True), "choices": edge.group_choices(),
                  "config_unresolved": OmegaConf.to_container(cfg),
                  "class_names": list(cfg.dataset.classes), "tracking_run_id": tracker.run_id,
                  "data_fingerprint": fingerprint}
        artifacts = (DebugArtifacts(run_dir, tracker, cfg.dataset.classes, every=trainer.debug_images_every,
                                    autocast=lambda: precision.autocast(device)) if context.is_main else None)
        log.info("run directory %s; training %s on %s (rank %d of %d); ready %.1f s after the command",
                 run_dir, experiment_label(cfg), device, context.rank, context.world_size, edge.uptime())
        metrics = fit(model=model, optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
                      val_loader=val_loader, evaluator=DetectionEvaluator(class_names=list(cfg.dataset.classes)),
                      tracker=tracker, checkpoint_dir=run_dir / "checkpoints", max_epochs=trainer.max_epochs,
                      device=device, precision=precision, grad_clip=trainer.grad_clip,
                      log_every=trainer.log_every, max_nonfinite_in_row=trainer.max_nonfinite_in_row,
                      checkpoint_every=trainer.checkpoint_every, keep_last=trainer.keep_last,
                      progress=trainer.progress, resume=checkpoint, checkpoint_extras=lambda: extras,
                      context=context, sync_batchnorm=trainer.sync_batchnorm, artifacts=artifacts)
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
