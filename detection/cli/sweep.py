"""The Hydra side of a sweep: the callbacks that make a multirun one parent MLflow run and keep an Optuna
search's study, and the experiment label it and every run are named by. Light (no torch): Hydra builds its
callbacks before an entry point checks its settings, and a bad setting is refused before torch loads."""

import atexit
import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from detection.cli.schema import DEFAULT_STORE
from detection.reporting.results import sweep_table
from detection.tracking.sweeps import (end_parent_run, experiment_label, start_parent_run, summarise_sweep, sweep_parent,
                                       write_sweep_parent)

log = logging.getLogger(__name__)

PRUNED_AT = "pruned_at_epoch"  # an Optuna trial's user attribute: the epoch its job was pruned after


def model_label(cfg: DictConfig, choices: dict[str, Any]) -> str:
    """The model's first word in a label: the model group's choice, with the input size where the model has
    anchors (`ssd512`, `maskrcnn`; `image_size=` is that size)."""
    size = OmegaConf.select(cfg, "model.anchors.image_size", default=None)
    size = size and (cfg.get("image_size") or size)
    return f"{choices.get('model') or 'model'}{size or ''}"


def label_of(cfg: DictConfig, choices: dict[str, Any]) -> str:
    """The experiment label of a composed configuration (`ssd512_resnet50_shapes`): the model's label, its
    trunk's arch and the dataset's name; `choices` are the config group options (a sweep's may replace the
    last two)."""
    return experiment_label(model_label(cfg, choices), str(choices.get("sweep_backbone", cfg.model.backbone.arch)),
                            str(choices.get("sweep_dataset", cfg.dataset.name)))


class MlflowSweepCallback(Callback):
    """Makes a Hydra multirun one parent MLflow run with a child run per job (`conf/train.yaml`,
    hydra.callbacks). The parent is created when the sweep starts, in the experiment its jobs will use, and
    recorded in the sweep folder, where every job (in this process or in a launcher's) finds it. It holds
    the swept space as `sweep.<key>` params and, updated as each job ends, the best child's `best/val/map`
    and params (`summarise_sweep`). It ends FINISHED, with an Optuna search's best parameters as its
    artifact, or FAILED when the sweep ends on a failed job (Hydra runs every job of the batch first).
    Nothing happens with `tracking=none`."""

    def __init__(self):
        self._uri: Optional[str] = None
        self._parent: Optional[str] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = config.tracking
        if tracking.get("_target_") != "detection.tracking.MlflowTracker":
            return
        overrides = list(config.hydra.overrides.task)
        swept = {o.get_key_element(): o.input_line.split("=", 1)[1]
                 for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()}
        space = {**swept, **(config.hydra.sweeper.get("params") or {})}  # and an Optuna search space
        swept_keys = list(space)
        choices = {**config.hydra.runtime.choices, **{f"sweep_{key}": value.replace(",", "+")
                                                      for key, value in swept.items() if key in ("backbone", "dataset")}}
        experiment_name = tracking.get("experiment_name") or label_of(config, choices)
        swept_overrides = [o for o in overrides if o.split("=", 1)[0] in swept_keys] or swept_keys
        self._uri = tracking.get("uri") or DEFAULT_STORE
        self._parent = start_parent_run(
            self._uri, experiment_name=experiment_name,
            run_name=tracking.get("run_name") or " ".join(["sweep", *swept_overrides]),
            tags={"sweep": "parent", "overrides": " ".join(overrides), "swept": " ".join(swept_keys),
                  "sweeper": config.hydra.sweeper.get("_target_", ""),
                  "best_metric": config.hydra.sweeper.get("metric", "val/map"),
                  "direction": config.hydra.sweeper.get("direction", "maximize")},
            params={f"sweep.{key}": str(values) for key, values in space.items()})
        write_sweep_parent(Path(config.hydra.sweep.dir), self._parent, experiment_name, swept_keys)
        atexit.register(self._end, "FAILED")  # the sweep raised before on_multirun_end

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """After each job (in whichever process ran it): the parent's summary of the best child so far."""
        if config.hydra.mode != RunMode.MULTIRUN or config.tracking.get("_target_") != "detection.tracking.MlflowTracker":
            return
        parent = sweep_parent(Path(config.hydra.sweep.dir))
        if parent is not None:
            self._summarise(config.tracking.get("uri") or DEFAULT_STORE, parent["run_id"])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        results = Path(config.hydra.sweep.dir) / "optimization_results.yaml"
        if self._parent is not None:
            self._summarise(self._uri, self._parent)
        self._end("FINISHED", results if results.is_file() else None)

    @staticmethod
    def _summarise(uri: str, parent: str) -> None:
        try:
            summarise_sweep(uri, parent)
        except Exception as error:  # the sweep and its end go on without the summary
            log.warning("could not update the sweep's parent run %s: %s", parent, error)

    def _end(self, status: str, artifact: Optional[Path] = None) -> None:
        if self._parent is not None:
            end_parent_run(self._uri, self._parent, status, artifact)
            self._parent = None


SWEEP_JOBS = "sweep_jobs.jsonl"  # in a sweep folder: one line per ended job, whichever process ran it


class SweepSummaryCallback(Callback):
    """A sweep's table in the terminal at its end: each job's overrides, status, best val/map with its epoch
    (from the job's results.csv) and last, and the best job with its best.pt. Each job appends its line to
    `<sweep dir>/sweep_jobs.jsonl` as it ends, in the process that ran it; the sweep's process reads them,
    at the sweep's end or, when a failed job ends the sweep with its error, as the process exits."""

    def __init__(self):
        self._jobs: Optional[Path] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._jobs = Path(config.hydra.sweep.dir) / SWEEP_JOBS
        atexit.register(self._show)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        folder = Path(config.hydra.runtime.output_dir)
        row = {"job": config.hydra.job.num, "overrides": list(job_return.overrides or ()),
               "status": job_return.status.name, "folder": str(folder), **best_and_last(folder / "results.csv")}
        if row["status"] == "COMPLETED" and OmegaConf.select(config, "hydra.sweeper.trial") is not None \
                and row.get("epochs", 0) < OmegaConf.select(config, "trainer.max_epochs", default=0):
            row["status"] = "PRUNED"  # an Optuna trial stopped early: its pruner's only way to end a job
        with open(Path(config.hydra.sweep.dir) / SWEEP_JOBS, "a") as file:
            file.write(json.dumps(row) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._show()

    def _show(self) -> None:
        if self._jobs is not None and self._jobs.is_file():
            rows = [json.loads(line) for line in self._jobs.read_text().splitlines() if line.strip()]
            for line in sweep_table(rows):
                log.info("%s", line)
        self._jobs = None


def best_and_last(results_csv: Path) -> dict[str, float]:
    """The best val/map (NaN aside) with its epoch, the last, and the epochs done, from a run's results.csv
    ({} without one)."""
    if not results_csv.is_file():
        return {}
    with open(results_csv) as file:
        rows = [row for row in csv.DictReader(file) if row.get("val/map")]
    scored = [row for row in rows if not math.isnan(float(row["val/map"]))]
    if not rows:
        return {}
    best = max(scored, key=lambda row: float(row["val/map"])) if scored else rows[-1]
    return {"best": float(best["val/map"]), "best_epoch": int(best["epoch"]), "last": float(rows[-1]["val/map"]),
            "epochs": int(rows[-1]["epoch"])}
