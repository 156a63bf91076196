"""What pruning saves: the same Optuna search (seeded random sampler, so both draw the same learning rates, a
log range whose low end cannot learn in a few epochs) run without a pruner and with the median pruner, each
in its own study and store; CPU minutes of the search's processes, trials pruned and the best val/map found.
The ratio is with / without.

    python bench/pruning.py [--trials 8] [--epochs 3] [--images 400] [--folder /tmp/pruning]
"""

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def search(folder: Path, args: argparse.Namespace, pruner: list[str]) -> dict:
    """One search in `folder`; its CPU minutes (children's user + system), wall minutes and study."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{folder / 'optuna.db'}"
    command = [sys.executable, str(REPO / "train.py"), "-m", "hydra/sweeper=optuna", "hydra.sweeper.study_name=lr",
               f"hydra.sweeper.storage={storage}", f"hydra.sweeper.n_trials={args.trials}",
               "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0", *pruner,
               "optimizer.lr=tag(log, interval(1e-7, 1e-2))", "experiment=ssd_shapes",
               f"trainer.max_epochs={args.epochs}", f"dataset.num_train={args.images}",
               f"dataset.num_val={args.images // 4}", "trainer.progress=false", "trainer.num_workers=0",
               f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", "tracking.log_model=false",
               "tracking.system_metrics=false", f"hydra.sweep.dir={folder / 'multirun'}"]
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, cwd=folder, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    study = optuna.load_study(study_name="lr", storage=storage)
    states = [trial.state.name for trial in study.trials]
    return {"cpu_min": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / 60,
            "wall_min": (time.perf_counter() - started) / 60, "best": study.best_value,
            "best_lr": study.best_params["optimizer.lr"], "pruned": states.count("PRUNED"),
            "epochs": sum(len(trial.intermediate_values) or args.epochs for trial in study.trials)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=400, help="training images (a quarter as many validate)")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/pruning"))
    args = parser.parse_args()
    print(f"device: {device_name(torch.device('cpu'))}; {args.trials} trials of up to {args.epochs} epochs on "
          f"{args.images} shapes images")
    runs = {"no pruner": search(args.folder / "none", args, []),
            "median pruner": search(args.folder / "median", args, ["hydra/sweeper/pruner=median"])}
    for name, run in runs.items():
        print(f"{name:14s} CPU {run['cpu_min']:6.1f} min, wall {run['wall_min']:5.1f} min, epochs trained "
              f"{run['epochs']:3d}, pruned {run['pruned']}, best val/map {run['best']:.4f} (lr {run['best_lr']:.2e})")
    base, pruned = runs["no pruner"], runs["median pruner"]
    print(f"with / without pruning: CPU {pruned['cpu_min'] / base['cpu_min']:.2f}x, "
          f"best val/map {pruned['best'] - base['best']:+.4f}")


if __name__ == "__main__":
    main()
