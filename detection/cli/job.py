"""Where a job runs: Hydra's run directory and group choices, the process's ranks, device and precision."""

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from hydra.core.hydra_config import HydraConfig

from detection.engine.checkpoint import seed_everything
from detection.engine.device import resolve_device
from detection.engine.distributed import DistributedContext, init_distributed
from detection.engine.precision import EVALUATION, Precision, choose_precision
from detection.engine.settings import TrainerSettings

log = logging.getLogger(__name__)


def run_dir() -> Path:
    """This job's output folder (Hydra's run directory)."""
    return Path(HydraConfig.get().runtime.output_dir)


def group_choices() -> dict[str, Optional[str]]:
    """The config group options this run was composed from (backbone: resnet50, debug: None, ...)."""
    return {group: choice for group, choice in HydraConfig.get().runtime.choices.items()
            if not group.startswith("hydra/")}


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
