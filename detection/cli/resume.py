"""The rules of a resume: which configuration and checkpoint an invocation continues, what the command line
may change, and whether the data is the data the run trained on."""

import logging
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from detection.cli.checks import plain_value
from detection.cli.trusted import trusted_checkpoint
from detection.engine.settings import SettingsError

log = logging.getLogger(__name__)

# What a resume may change: how long and where the run goes on, how it reports, where its data now lives.
# Anything else (model, data, optimiser, batch size, precision, seed) is the run's and stays as trained.
DATA_PATHS = ("dataset.root", "dataset.train_images", "dataset.val_images", "dataset.train_annotations",
              "dataset.val_annotations")


MAY_CHANGE_ON_RESUME = ("trainer.max_epochs", "trainer.device", "trainer.num_workers", "trainer.persistent_workers",
                        "trainer.prefetch_factor", "trainer.warn_data_wait", "trainer.log_every",
                        "trainer.checkpoint_every", "trainer.keep_last", "trainer.best_model_only", "trainer.progress",
                        "trainer.debug_images_every", "trainer.channels_last", "trainer.compile",
                        "trainer.cudnn_benchmark", "trainer.confusion_score_threshold", *DATA_PATHS)


ALWAYS_FROM_COMMAND_LINE = ("ckpt_path", "hydra")


def continued_run(cfg: DictConfig, run_dir: Path, overrides: Optional[list[str]] = None
                  ) -> tuple[DictConfig, Optional[dict]]:
    """The configuration and checkpoint this invocation continues: `ckpt_path`'s, or this run folder's own
    last.pt when it has one (a requeued SLURM job starts again in its folder); (cfg, None) for a new run.
    `overrides`: the command line's (Hydra's task overrides when not given)."""
    if overrides is None:
        overrides = list(HydraConfig.get().overrides.task)
    own = run_dir / "checkpoints" / "last.pt"
    if not cfg.ckpt_path and not own.is_file():
        return cfg, None
    if not cfg.ckpt_path:
        log.info("%s exists: this run continues from it (a requeued job)", own)
        cfg = cfg.copy()
        cfg.ckpt_path = str(own)
    checkpoint = trusted_checkpoint(Path(cfg.ckpt_path))
    if checkpoint.get("model_only"):
        raise SettingsError(f"{cfg.ckpt_path} holds the model only (trainer.best_model_only): it evaluates, "
                            f"predicts and exports, but cannot resume; resume from last.pt beside it")
    return resume_config(cfg, checkpoint, overrides), checkpoint


def checkpoint_folders(run_dir: Path, ckpt_path: Optional[str]) -> list[Path]:
    """The folders a run writes into or continues from: its own checkpoints/, and the resumed checkpoint's."""
    folders = [(run_dir / "checkpoints").resolve()]
    if ckpt_path and Path(ckpt_path).parent.resolve() not in folders:
        folders.append(Path(ckpt_path).parent.resolve())
    return folders


def check_same_data(cfg: DictConfig, checkpoint: dict[str, Any], fingerprint: str) -> None:
    """Refuses to continue on a training split other than the one the checkpoint was trained on (data that
    moved is welcome; data that changed is not)."""
    if checkpoint.get("data_fingerprint", fingerprint) != fingerprint:
        where = ", ".join(f"{key}={OmegaConf.select(cfg, key)}" for key in DATA_PATHS
                          if OmegaConf.select(cfg, key, default=None) is not None)
        raise SettingsError(f"the training split at {where} is not the one {cfg.ckpt_path} was trained on (its "
                            f"image names, boxes or labels differ); resume on the data the run trained on")


def resume_config(cfg: DictConfig, checkpoint: dict[str, Any], overrides: list[str]) -> DictConfig:
    """The configuration a resumed run continues with: the one stored in `checkpoint`, all of it, with
    only the command line's `overrides` of MAY_CHANGE_ON_RESUME and of the tracking group applied. An
    override that would change anything else (a value or a config group choice) is refused with both values
    named; one that repeats the stored value is accepted.

    The stored configuration is taken as composed, before interpolation, so that a moved data root (an
    override, or an environment variable such as BCCD_ROOT) reaches every node that names it; the data's
    fingerprint (`check_same_data`) makes sure it is the same data. The tracking store is the resolved
    one: the run's MLflow run lives there, whatever MLFLOW_TRACKING_URI says now."""
    stored = OmegaConf.create(checkpoint.get("config_unresolved") or checkpoint["config"])
    stored.tracking = checkpoint["config"]["tracking"]  # the run goes on in the store it started in, unless told
    choices = checkpoint.get("choices", {})  # the config group options it was composed from
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key.split(".")[0] in ALWAYS_FROM_COMMAND_LINE:
            continue
        if key == "tracking":  # tracking=none, or another tracker: the command's, whole
            stored.tracking = cfg.tracking
            continue
        if key in MAY_CHANGE_ON_RESUME or key.startswith("tracking."):
            OmegaConf.update(stored, key, plain_value(OmegaConf.select(cfg, key)), force_add=True)
            continue
        if key in choices:  # a group: backbone=vgg16, experiment=..., debug=smoke
            asked, trained = value, choices[key]
        else:
            asked, trained = (plain_value(OmegaConf.select(config, key, default=None)) for config in (cfg, stored))
        if asked != trained:
            hint = " (the position in the epoch is counted in batches)" if key == "trainer.batch_size" else ""
            raise SettingsError(f"{cfg.ckpt_path} was trained with {key}={trained}, but the command asks for "
                                f"{key}={asked}; a resumed run keeps its configuration{hint}. Only "
                                f"{', '.join(MAY_CHANGE_ON_RESUME)} may change")
    stored.ckpt_path = cfg.ckpt_path
    return stored


def already_finished(cfg: DictConfig, checkpoint: dict[str, Any]) -> bool:
    """Whether `checkpoint` ends a run that has done its `trainer.max_epochs` (said in the log)."""
    if checkpoint["epoch"] < cfg.trainer.max_epochs or checkpoint["batches_done"]:
        return False
    log.info("%s ends a finished run: epoch %d of trainer.max_epochs=%d, val/map %.4f. Nothing to train; "
             "raise trainer.max_epochs to train on", cfg.ckpt_path, checkpoint["epoch"], cfg.trainer.max_epochs,
             checkpoint["metrics"].get("val/map", float("nan")))
    return True
