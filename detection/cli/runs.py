"""The tracked run of a job: the tracker built from the config, started with its params and tags (a child of
its sweep's parent run), ended with the status of how the work ended; the best model logged at the end."""

import json
import logging
import re
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from detection.cli.job import group_choices
from detection.cli.sweep import label_of
from detection.engine.checkpoint import load_checkpoint
from detection.engine.loop import TrainingInterrupted
from detection.evaluation import METRIC_GUIDE
from detection.models.deployment import export_torchscript
from detection.models.images import as_float_image
from detection.cli.schema import DEFAULT_STORE
from detection.tracking import NullTracker, Tracker
from detection.tracking.sweeps import sweep_parent

log = logging.getLogger(__name__)

TRACKING_SPOOL = "tracking_spool.jsonl"  # in a run directory: the records its tracking store did not take


def build_tracker(tracking: DictConfig, *, experiment_name: str, run_name: str) -> Tracker:
    """The configured tracker, with the experiment and run names it was not given filled in."""
    store = {"uri": tracking.get("uri") or DEFAULT_STORE} if "uri" in tracking else {}
    return instantiate(tracking, experiment_name=tracking.get("experiment_name") or experiment_name,
                       run_name=tracking.get("run_name") or run_name, **store)


# keys that say how a run reports, not what it trains: neither params nor part of a run's name
QUIET_KEYS = ("tracking.", "tracking=", "trainer.progress", "trainer.log_every", "hydra.")


INSTANTIATION_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 0.1}} -> {'optimizer.lr': 0.1}; lists stay whole values."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


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


def git_tags() -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()

    return {"git_commit": git("rev-parse", "HEAD") or "unknown", "git_dirty": str(bool(git("status", "--porcelain")))}


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
    # a sweep's child is named by what it changes (its experiment names the model): short names that differ
    tracker = build_tracker(cfg.tracking, experiment_name=sweep["experiment_name"] if sweep else label,
                            run_name=" ".join(named if sweep and named else [label, *named]))
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
