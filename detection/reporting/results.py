"""A run's epochs at a glance, as ultralytics users know them: one table line per epoch in the log,
`results.csv` (one row per epoch, every scalar the epoch logged) and `results.png` (losses and metrics over
the epochs) in the run folder."""

import csv
import math
from pathlib import Path
from typing import Sequence

# the table's metric columns: (heading, the row's key); P and R are each class's at its best-F1 score
# threshold, averaged; mAP50 and mAP50-95 are COCO's; val/map the headline (VOC07 AP50)
METRIC_COLUMNS = (("P", "val/precision"), ("R", "val/recall"), ("mAP50", "val/map50_coco"),
                  ("mAP50-95", "val/map50_95"), ("val/map", "val/map"))
TRAILING_COLUMNS = (("lr", "train/lr"), ("img/s", "train/images_per_s"), ("time", "epoch_s"))


def key_metrics(row: dict) -> dict[str, float]:
    """The epoch's headline numbers under `key/`, a prefix that sorts before `system/`, `train/` and `val/`,
    so that MLflow's charts and metric lists show them first: val/map, mAP50, mAP50-95, P, R, the mean loss."""
    names = {"key/val_map": "val/map", "key/mAP50": "val/map50_coco", "key/mAP50-95": "val/map50_95",
             "key/precision": "val/precision", "key/recall": "val/recall", "key/train_loss": "train/loss"}
    return {name: row[key] for name, key in names.items() if key in row}


def loss_keys(row: dict) -> list[str]:
    """The row's mean training losses (`train/<the model's loss name>`), the total first."""
    others = {key for _, key in TRAILING_COLUMNS}
    return ["train/loss", *sorted(key for key in row if key.startswith("train/") and key not in others
                                  and key != "train/loss")]


def loss_heading(key: str) -> str:
    """'train/loss_box_reg' -> 'box_reg', 'train/classification' -> 'classification', 'train/loss' -> 'loss'."""
    name = key.removeprefix("train/")
    return name if name == "loss" else name.removeprefix("loss_")


def table_columns(row: dict) -> list[tuple[str, str]]:
    return [(loss_heading(key), key) for key in loss_keys(row)] + list(METRIC_COLUMNS) + list(TRAILING_COLUMNS)


def table_header(row: dict) -> str:
    """The heading line of the epoch table (the columns `row` has: its losses differ per model)."""
    return f"{'epoch':>7}" + "".join(f" {heading:>{width(heading)}}" for heading, _ in table_columns(row))


def table_line(row: dict, max_epochs: int) -> str:
    """One epoch as a line under `table_header`: mean losses, P, R, mAP50, mAP50-95, val/map, lr, images/s
    and the epoch's seconds."""
    cells = []
    for heading, key in table_columns(row):
        value = row.get(key, math.nan)
        text = f"{value:.1e}" if key == "train/lr" else f"{value:.0f}s" if key == "epoch_s" else \
            f"{value:.1f}" if key == "train/images_per_s" else f"{value:.4f}"
        cells.append(f" {text:>{width(heading)}}")
    return f"{row['epoch']:>3}/{max_epochs:<3}" + "".join(cells)


def width(heading: str) -> int:
    return max(len(heading), 8)


def write_results_csv(history: Sequence[dict], path: Path) -> Path:
    """One row per epoch, the columns every key any epoch logged (epoch and step first), blank where an
    epoch lacks one."""
    keys = ["epoch", "step", *sorted({key for row in history for key in row} - {"epoch", "step"})]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(history)
    return path


CLASS_MEASURES = (("AP50 (VOC07)", "ap50_voc07"), ("AP50 (VOC)", "ap50_voc"), ("AP50-95 (COCO)", "ap50_95"))


def write_class_table(metrics: dict, path: Path) -> Path:
    """The latest validation's per-class APs as a CSV table (a row per class, in label order; a column per
    measure `metrics` has: `val_class/<measure>/<class>`), which MLflow's artifact view shows as a table."""
    names = list(dict.fromkeys(key.split("/", 2)[2] for key in metrics if key.startswith("val_class/")))
    measures = [(heading, measure) for heading, measure in CLASS_MEASURES
                if any(key.startswith(f"val_class/{measure}/") for key in metrics)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["class", *(heading for heading, _ in measures)])
        for name in names:
            writer.writerow([name, *(f"{metrics.get(f'val_class/{measure}/{name}', math.nan):.4f}"
                                     for _, measure in measures)])
    return path


def save_results_plot(history: Sequence[dict], path: Path) -> Path:
    """Losses (left) and validation metrics (right) over the epochs, as a PNG."""
    from detection.reporting.plots import pyplot  # torch and matplotlib load here, not with the sweep's callbacks

    plt = pyplot()
    figure, (losses, metrics) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    epochs = [row["epoch"] for row in history]
    for key in loss_keys(history[-1]):
        losses.plot(epochs, [row.get(key, math.nan) for row in history], marker="o", label=loss_heading(key))
    for heading, key in METRIC_COLUMNS:
        metrics.plot(epochs, [row.get(key, math.nan) for row in history], marker="o", label=heading)
    losses.set(xlabel="epoch", ylabel="mean training loss", title="losses")
    metrics.set(xlabel="epoch", ylabel="validation", ylim=(0, 1), title="metrics (val/map: VOC07 AP50)")
    for axes in (losses, metrics):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def sweep_table(jobs: Sequence[dict]) -> list[str]:
    """A sweep's jobs as table lines (job, status, best val/map and its epoch, last, the overrides that
    differ between jobs; in job order) and a last line naming the best job and its best.pt. `jobs`: dicts
    with 'job', 'status', 'overrides' (a list), 'folder' and, for a job that validated, 'best', 'best_epoch'
    and 'last'. The best is the best job that was not pruned."""
    jobs = sorted(jobs, key=lambda job: job["job"])
    shared = set.intersection(*(set(job["overrides"]) for job in jobs)) if len(jobs) > 1 else set()
    swept = {job["job"]: " ".join(o for o in job["overrides"] if o not in shared) for job in jobs}
    lines = [f"sweep of {len(jobs)} jobs:", f"{'job':>4} {'status':<9} {'best val/map':>12} {'epoch':>5} "
                                             f"{'last':>7}  overrides"]
    for job in jobs:
        best, last = (f"{job[key]:.4f}" if key in job else "-" for key in ("best", "last"))
        lines.append(f"{job['job']:>4} {job['status']:<9} {best:>12} {job.get('best_epoch', '-'):>5} {last:>7}  "
                     f"{swept[job['job']]}")
    scored = [job for job in jobs if not math.isnan(job.get("best", math.nan)) and job["status"] != "PRUNED"]
    if scored:
        top = max(scored, key=lambda job: job["best"])
        lines.append(f"best: job {top['job']} ({swept[top['job']]}), val/map {top['best']:.4f} at epoch "
                     f"{top['best_epoch']}: {Path(top['folder']) / 'checkpoints' / 'best.pt'}")
    return lines
