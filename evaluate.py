"""Evaluate a checkpoint on its validation split (or another dataset's).

    python evaluate.py ckpt_path=outputs/.../checkpoints/best.pt [dataset=...]
    torchrun --nproc_per_node 2 evaluate.py ckpt_path=...   # each rank evaluates its share; same metrics
"""

from omegaconf import DictConfig

from detection.cli.checks import check_evaluate
from detection.cli.entry import entry_point


@entry_point("evaluate", check=check_evaluate)
def main(cfg: DictConfig) -> float:
    """Returns val/map (VOC07 mAP50)."""
    from detection.cli.evaluation import run_evaluation

    return run_evaluation(cfg)["val/map"]


if __name__ == "__main__":
    main()
