"""The edge every entry point shares: the model from a config or a checkpoint, the configuration a resumed
run continues with, the job's place among its ranks, the tracked run (started with its tags, ended with
the status of how the work ended), and the training run's pieces assembled from the config. This module,
`schema.py`, `sweep.py` and the entry points are the only code that knows Hydra's layout.
"""

import copy
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import psutil
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from detection.data.loader import TrainingLoader, build_loader, stop_workers
from detection.engine import hooks
from detection.engine.artifacts import DebugArtifacts
from detection.engine.checkpoint import RunLock, load_checkpoint, seed_everything
from detection.engine.device import resolve_device
from detection.engine.distributed import DistributedContext, init_distributed, shutdown_distributed
from detection.engine.loop import TrainingInterrupted
from detection.engine.precision import EVALUATION, Precision, choose_precision
from detection.engine.settings import SettingsError, TrainerSettings
from detection.evaluation import METRIC_GUIDE, DetectionEvaluator
from detection.models.export import export_torchscript
from detection.models.images import as_float_image
from detection.tracking import NullTracker, Tracker, flatten, sweep_parent
from schema import check_targets
from sweep import label_of

log = logging.getLogger(__name__)

# What a resume may change: how long and where the run goes on, how it reports, where its data now lives.
# Anything else (model, data, optimiser, batch size, precision, seed) is the run's and stays as trained.
DATA_PATHS = ("dataset.root", "dataset.train_images", "dataset.val_images", "dataset.train_annotations",
              "dataset.val_annotations")
MAY_CHANGE_ON_RESUME = ("trainer.max_epochs", "trainer.device", "trainer.num_workers", "trainer.persistent_workers",
                        "trainer.prefetch_factor", "trainer.warn_data_wait", "trainer.log_every",
                        "trainer.checkpoint_every", "trainer.keep_last", "trainer.progress",
                        "trainer.debug_images_every", "trainer.channels_last", "trainer.compile",
                        "trainer.cudnn_benchmark", "trainer.confusion_score_threshold", *DATA_PATHS)
ALWAYS_FROM_COMMAND_LINE = ("ckpt_path", "hydra")
TRACKING_SPOOL = "tracking_spool.jsonl"  # in a run directory: the records its tracking store did not take


def build_model(cfg: DictConfig, *, pretrained: bool = True) -> torch.nn.Module:
    """The model of a composed config (its `name` is the label's, not the constructor's); `pretrained=False`
    skips loading weights (they will come from a checkpoint), so that rebuilding a run never needs the
    original weight files."""
    model = copy.deepcopy(cfg).model  # the whole config: the model's nodes interpolate its other groups
    with open_dict(model):
        model.pop("name", None)  # checkpoints written before models had names have none
        for node in (model, model.backbone):
            if not pretrained and "weights" in node:
                node.weights = None
    return instantiate(model)


def trusted_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint read without running code: `weights_only` loading, then every `_target_` of
    its stored configurations checked against the project's (`schema.check_targets`) before anything is
    instantiated from them. A file without a configuration (a bare state_dict) is refused naming it."""
    checkpoint = load_checkpoint(path)
    if not {"config", "model"} <= set(checkpoint):
        raise SettingsError(f"{path}: not a training checkpoint of this project (it holds {sorted(checkpoint)[:5]}, "
                         "not config and model; train.py writes them to checkpoints/)")
    for key in ("config", "config_unresolved"):
        check_targets(checkpoint.get(key), f"{path} ({key})")
    return checkpoint


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


def plain(value: Any) -> Any:
    """A config node as resolved Python containers; any other value as it is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def run_dir() -> Path:
    """This job's output folder (Hydra's run directory)."""
    return Path(HydraConfig.get().runtime.output_dir)


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
            OmegaConf.update(stored, key, plain(OmegaConf.select(cfg, key)), force_add=True)
            continue
        if key in choices:  # a group: backbone=vgg16, experiment=..., debug=smoke
            asked, trained = value, choices[key]
        else:
            asked, trained = (plain(OmegaConf.select(config, key, default=None)) for config in (cfg, stored))
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


def group_choices() -> dict[str, Optional[str]]:
    """The config group options this run was composed from (backbone: resnet50, debug: None, ...)."""
    return {group: choice for group, choice in HydraConfig.get().runtime.choices.items()
            if not group.startswith("hydra/")}


def uptime() -> float:
    """Seconds since this process started."""
    return time.time() - psutil.Process().create_time()


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


@dataclass(frozen=True)
class Job:
    """Where this process works: its place among the job's ranks, its device and the precision chosen there."""

    context: DistributedContext
    device: torch.device
    precision: Precision

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    def tags(self) -> dict[str, str]:
        return {"device": str(self.device), "world_size": str(self.context.world_size),
                "precision": self.precision.name, "precision_reason": self.precision.reason,
                "validation_precision": EVALUATION.name}


def start_job(settings: TrainerSettings, seed: int) -> Job:
    """This process joined to its job's ranks (torchrun, or submitit's tasks), on its device, with its
    precision chosen (and said in the log) and its random generators seeded with seed + rank."""
    export_submitit_ranks()
    context, device = init_distributed(resolve_device(settings.device))
    precision = choose_precision(device, settings.amp)
    log.info("precision: %s (%s)", precision.name, precision.reason)
    seed_everything(seed + context.rank)
    return Job(context, device, precision)


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


def device_augmentation(train_set) -> Optional[Callable]:
    """The training split's transforms when they run on the device (`augment=ssd_gpu`), else None."""
    return train_set.transforms if getattr(train_set.transforms, "decodes_on_device", False) else None


def training_hooks(cfg: DictConfig, settings: TrainerSettings, job: Job, tracker: Tracker, run_dir: Path,
                   val_loader) -> tuple[list[hooks.Hook], hooks.Checkpoints]:
    """What happens around the steps: metrics, debug images and validation (in that order), and the
    checkpoints (only the main rank writes them or draws)."""
    artifacts = debug_artifacts(cfg, run_dir, tracker, job.precision, job.device) if job.is_main else None
    evaluator = DetectionEvaluator(class_names=list(cfg.dataset.classes),
                                   confusion_score_threshold=settings.confusion_score_threshold)
    validation = hooks.Validation(val_loader, evaluator, tracker,
                                  device=job.device, progress=settings.progress,
                                  artifacts=artifacts)
    logger = hooks.MetricLogger(tracker, every=settings.log_every, warn_data_wait=settings.warn_data_wait)
    debug_images = [hooks.DebugImages(artifacts)] if artifacts else []
    return ([logger, *debug_images, validation],
            hooks.Checkpoints(run_dir / "checkpoints", every=settings.checkpoint_every, keep_last=settings.keep_last,
                              is_main=job.is_main))


def build_tracker(tracking: DictConfig, *, experiment_name: str, run_name: str) -> Tracker:
    """The configured tracker, with the experiment and run names it was not given filled in."""
    return instantiate(tracking, experiment_name=tracking.get("experiment_name") or experiment_name,
                       run_name=tracking.get("run_name") or run_name)


# keys that say how a run reports, not what it trains: neither params nor part of a run's name
QUIET_KEYS = ("tracking.", "tracking=", "trainer.progress", "trainer.log_every", "hydra.")
INSTANTIATION_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def run_params(cfg: DictConfig) -> dict[str, str]:
    """The params a run logs: the composed configuration flattened to dotted keys, resolved, without the
    copies interpolation makes (`model.anchors.*` is `anchors.*`, `dataset.train.root` is `dataset.root`:
    a key whose value is another key is left out), without Hydra's instantiation keys (the model's
    `_target_` becomes `model.class`) and QUIET_KEYS; lists as short text (`2, 3`), not JSON."""
    raw = flatten(OmegaConf.to_container(cfg, resolve=False))
    resolved = flatten(OmegaConf.to_container(cfg, resolve=True))
    copies = [key for key, value in raw.items() if isinstance(value, str) and re.fullmatch(r"\$\{[^:}]+\}", value)]
    params = {}
    for key, value in resolved.items():
        if key.startswith(QUIET_KEYS) or key.rsplit(".", 1)[-1] in INSTANTIATION_KEYS:
            continue
        if any(key == copy or key.startswith(f"{copy}.") for copy in copies):
            continue
        params[key] = short_text(value)
    params["model.class"] = str(cfg.model.get("_target_", "")).removeprefix("detection.models.")
    return params


def short_text(value: Any) -> str:
    """A param value as a line of text: lists joined by commas, an instantiated node as `Name(key=value)`."""
    if isinstance(value, list):
        return ", ".join(short_text(item) if isinstance(item, dict) else str(item) for item in value)
    if isinstance(value, dict) and "_target_" in value:
        arguments = ", ".join(f"{key}=[{short_text(item)}]" if isinstance(item, list) else f"{key}={short_text(item)}"
                              for key, item in value.items() if key not in INSTANTIATION_KEYS)
        return f"{str(value['_target_']).rsplit('.', 1)[-1]}({arguments})"
    return str(value)


HYDRA_ESCAPED = re.compile(r"\\([\\()\[\]{}:=, \t])")  # a multirun's jobs get their string values so escaped


def readable(override: str) -> str:
    """An override as the user typed it: without the backslash a multirun's launcher puts before each of
    `\\()[]{}:=,`, space and tab in a value (`tracking.uri=sqlite\\:////x.db`)."""
    return HYDRA_ESCAPED.sub(r"\1", override)


def start_tracking(cfg: DictConfig, *, is_main: bool, tags: dict[str, str], run_id: Optional[str]) -> Tracker:
    """This rank's tracker (rank 0's logs, the others' do nothing) with its run started: `run_id`'s when
    resuming, a child of the sweep's parent run in a multirun."""
    if not is_main:
        return NullTracker()
    hydra_config = HydraConfig.get()
    label = label_of(cfg, group_choices())
    overrides = [readable(o) for o in hydra_config.overrides.task if not o.startswith("ckpt_path=")]
    sweep = sweep_parent(Path(hydra_config.sweep.dir)) if hydra_config.mode == RunMode.MULTIRUN else None
    named = [o for o in overrides if o.split("=", 1)[0] in sweep["swept"]] if sweep else overrides
    named = [o for o in named if not o.split("=", 1)[0].lstrip("+~").startswith(QUIET_KEYS)]
    tracker = build_tracker(cfg.tracking, experiment_name=sweep["experiment_name"] if sweep else label,
                            run_name=" ".join([label, *named]))
    tracker.start(params=run_params(cfg),
                  tags={"overrides": " ".join(overrides), "host": socket.gethostname(), **tags, **git_tags(),
                        "mlflow.note.content": METRIC_GUIDE},  # the run's description in the UI
                  run_id=run_id, parent_run_id=sweep["run_id"] if sweep else None,
                  spool=tracking_spool(Path(hydra_config.runtime.output_dir), cfg.ckpt_path))
    tracker.log_artifact(Path(hydra_config.runtime.output_dir) / ".hydra")
    return tracker


def tracking_spool(run_dir: Path, ckpt_path: Optional[str] = None) -> Path:
    """Where this job keeps the tracking records its store did not take: `tracking_spool.jsonl` in its run
    directory, where a resumed run's earlier spool (beside its checkpoints/) is moved, to be sent first."""
    spool = run_dir / TRACKING_SPOOL
    earlier = Path(ckpt_path).resolve().parent.parent / TRACKING_SPOOL if ckpt_path else None
    if earlier is not None and earlier.is_file() and earlier != spool.resolve():
        with spool.open("a", encoding="utf-8") as file:
            file.write(earlier.read_text(encoding="utf-8"))
        earlier.unlink()
    return spool


@contextmanager
def ended_with_status(tracker: Tracker) -> Iterator[Tracker]:
    """Ends the tracker's run as the block ends: FINISHED, KILLED (a signal or Ctrl-C) or FAILED, never
    left RUNNING. A stop by signal exits with 128 + its number after saying how to resume; SIGUSR2 (SLURM's
    warning before pre-emption or the time limit) is first handed on to the handler that was there before
    the loop's, so that submitit requeues the job, which then continues from its last.pt."""
    try:
        yield tracker
    except TrainingInterrupted as interrupted:
        tracker.end("KILLED")
        log.error("%s", interrupted)
        if interrupted.signal_number == signal.SIGUSR2 and callable(signal.getsignal(signal.SIGUSR2)):
            signal.raise_signal(signal.SIGUSR2)
        sys.exit(128 + interrupted.signal_number)
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")


def checkpoint_extras(cfg: DictConfig, tracker: Tracker, data_fingerprint: str) -> dict[str, Any]:
    """What a training checkpoint holds besides the training state: the configuration (resolved, and as
    composed), the group choices, the class names, the tracked run and the training split's fingerprint."""
    return {"config": OmegaConf.to_container(cfg, resolve=True), "config_unresolved": OmegaConf.to_container(cfg),
            "choices": group_choices(), "class_names": list(cfg.dataset.classes), "tracking_run_id": tracker.run_id,
            "data_fingerprint": data_fingerprint}


def debug_artifacts(cfg: DictConfig, run_dir: Path, tracker: Tracker, precision: Precision,
                    device: torch.device) -> DebugArtifacts:
    """The run's debug images and precision-recall plots, drawn in the precision it trains in."""
    return DebugArtifacts(run_dir, tracker, cfg.dataset.classes, every=cfg.trainer.debug_images_every,
                          autocast=lambda: precision.autocast(device))


def log_best_model(tracker: Tracker, model: torch.nn.Module, checkpoint_dirs: list[Path], val_dataset,
                   class_names: list[str]) -> None:
    """The best checkpoint as an artifact (with `tracking.log_checkpoint`), and (with `tracking.log_model`)
    the model exported to TorchScript as export.py does, traced on the first validation image, logged as
    an MLflow pyfunc model on the exported files' contract, its input example that image scaled to at most
    64 pixels a side. `checkpoint_dirs`: this run's, then (resumed) the checkpoint's, whose best.pt stands
    while no later validation beats it."""
    best = next((folder / "best.pt" for folder in checkpoint_dirs if (folder / "best.pt").is_file()), None)
    if best is None:
        log.warning("no best.pt in %s: the model is not logged", ", ".join(map(str, checkpoint_dirs)))
        return
    tracker.log_checkpoint(best)
    if not tracker.log_model_enabled:
        return
    checkpoint = load_checkpoint(best)
    model.load_state_dict(checkpoint["model"])
    sample = val_dataset[0]
    image = as_float_image(sample[0]) if sample is not None else torch.rand(3, 64, 64)
    scale = min(1.0, 64 / max(image.shape[1:]))
    example = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear")
    metadata = {"class_names": json.dumps(class_names), "checkpoint": str(best), "step": str(checkpoint["step"])}
    with tempfile.TemporaryDirectory() as folder:  # the model goes to MLflow as its TorchScript file, once
        try:
            path = export_torchscript(model.cpu(), Path(folder) / "model.pt", metadata=metadata,
                                      example=image[None].mul(255).round().to(torch.uint8))
        except Exception as error:  # the run and its checkpoints stand; export.py can be run on best.pt later
            log.error("could not export the model for MLflow (%s: %s); the run logs no model", type(error).__name__,
                      error)
            return
        tracker.log_model(path, example.mul(255).round().to(torch.uint8).numpy())
