"""Train a detector: compose the config, check it, instantiate its objects, run the loop.

    python train.py experiment=ssd_shapes            # the default experiment (make train)
    python train.py model=ssd backbone=resnet50      # SSD512-ResNet50
    python train.py ckpt_path=outputs/.../checkpoints/last.pt   # resume, exactly as the run was configured
    torchrun --nproc_per_node 2 train.py ...         # data-parallel on 2 processes (GPUs, or gloo on the CPU)
"""

from omegaconf import DictConfig

from detection.cli.checks import check_train
from detection.cli.entry import entry_point
from detection.data.errors import BadSample
from detection.engine.settings import SettingsError


# errors of input are one line; any other error is a bug, whose traceback is kept
@entry_point("train", check=check_train, errors=(SettingsError, BadSample, FileNotFoundError))
def main(cfg: DictConfig) -> float:
    """Returns val/map, the metric a Hydra sweeper optimises."""
    from detection.cli.training import run_training

    return run_training(cfg)["val/map"]


if __name__ == "__main__":
    main()
