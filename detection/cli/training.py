"""The training job: a composed configuration (or the one a resumed checkpoint holds) instantiated into a
model, loaders, an optimiser and a scheduler, trained by the loop with its hooks, tracked."""

import logging

from omegaconf import DictConfig

from detection.cli.checks import check_train

log = logging.getLogger(__name__)


def run_training(cfg: DictConfig) -> dict[str, float]:
    # imported once the settings passed their check: a bad setting is refused before torch loads
    from contextlib import ExitStack
    from dataclasses import replace
    from pathlib import Path

    from hydra.utils import instantiate

    from detection.cli import assembly, resume, runs
    from detection.cli.entry import uptime
    from detection.cli.input_size import apply_image_size
    from detection.cli.optuna_trial import trial_report
    from detection.cli.job import group_choices, run_dir, start_job
    from detection.cli.sweep import label_of
    from detection.data.samples import split_fingerprint
    from detection.engine.loop import fit
    from detection.engine.state import TrainingState
    from detection.engine.step import TrainStep, prepare_network

    run_dir = run_dir()
    cfg, checkpoint = resume.continued_run(cfg, run_dir)
    apply_image_size(cfg)
    if checkpoint is not None and resume.already_finished(cfg, checkpoint):
        return checkpoint["metrics"]
    settings = check_train(cfg)  # the resumed run's configuration, checked as a new one is
    job = start_job(settings, cfg.seed)
    settings = replace(settings, progress=settings.progress and job.is_main)
    train_set, val_set = instantiate(cfg.dataset.train), instantiate(cfg.dataset.val)
    fingerprint = split_fingerprint(train_set.records())
    with ExitStack() as held:
        train_loader, val_loader = assembly.training_loaders(held, train_set, val_set, settings, job, cfg.seed)
        settings = assembly.length_in_epochs(cfg, settings, len(train_loader))
        tracker = assembly.open_training_run(held, cfg, job, run_dir, checkpoint, fingerprint)
        model, network = prepare_network(
            assembly.build_model(cfg, pretrained=checkpoint is None), device=job.device, context=job.context,
            channels_last=settings.uses_channels_last(job.device.type), compile=settings.compile,
            cudnn_benchmark=settings.cudnn_benchmark, sync_batchnorm=settings.sync_batchnorm)
        if job.is_main:
            assembly.log_complexity(model, tracker)
        optimizer, scheduler = assembly.optimisation(cfg, model, settings, len(train_loader))
        state = TrainingState(TrainStep(model, optimizer, scheduler, network=network, device=job.device,
                                        precision=job.precision, grad_clip=settings.grad_clip,
                                        augment=assembly.device_augmentation(train_set)),
                              extras=assembly.checkpoint_extras(cfg, tracker, fingerprint))
        if checkpoint is not None:
            state.restore(checkpoint)
            log.info("resumed at epoch %d after %d batches, step %d", state.epoch + 1, state.batches_done, state.step)
        run_hooks, checkpoints = assembly.training_hooks(cfg, settings, job, tracker, run_dir, val_loader)
        run_hooks += trial_report(tracker, is_main=job.is_main)  # an Optuna trial's, with a pruner
        log.info("run directory %s; training %s on %s (rank %d of %d); ready %.1f s after the job began", run_dir,
                 label_of(cfg, group_choices()), job.device, job.context.rank, job.context.world_size, uptime())
        metrics = fit(state, train_loader, settings, hooks=run_hooks, checkpoints=checkpoints)
        if job.is_main:
            resumed_from = [Path(cfg.ckpt_path).parent] if cfg.ckpt_path else []
            runs.log_best_model(tracker, model, [run_dir / "checkpoints", *resumed_from], val_loader.dataset,
                                list(cfg.dataset.classes))
    for line in final_summary(state.history, run_dir / "checkpoints"):
        log.info("%s", line)
    return metrics


def final_summary(history: list[dict], folder) -> list[str]:
    """The lines a run ends with: the best val/map and its epoch, the last, the checkpoints, and the commands
    that evaluate and predict with the best (as printed, they run from any shell and folder)."""
    import math

    from detection.command_lines import script_command

    if not history:
        return [f"no epoch ended; checkpoints in {folder}"]
    best = max(history, key=lambda row: -math.inf if math.isnan(row.get("val/map", math.nan)) else row["val/map"])
    last = history[-1]
    chosen = folder / "best.pt" if (folder / "best.pt").is_file() else folder / "last.pt"
    return [f"best val/map {best.get('val/map', math.nan):.4f} at epoch {best['epoch']} (step {best['step']}); "
            f"last {last.get('val/map', math.nan):.4f} at epoch {last['epoch']}",
            f"checkpoints: {chosen} (best), {folder / 'last.pt'} (last); results: {folder.parent / 'results.csv'}, "
            f"{folder.parent / 'results.png'}",
            f"evaluate: {script_command('evaluate.py', f'ckpt_path={chosen}')}",
            f"predict: {script_command('predict.py', f'ckpt_path={chosen}', 'source=val')}"]
