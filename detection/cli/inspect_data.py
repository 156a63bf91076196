"""A dataset report that finds bad annotations and images before training does: reads every annotation and
decodes every image of a VOC-layout dataset's train and val splits (in `num_workers` processes, with a progress
bar), lists each problem with its file, prints statistics
and writes dataset_report.json and plots/ into the run directory. Exit status 1 when it finds errors (so it
can gate a training job), 2 when the dataset cannot be read at all.

    python -m detection.cli.inspect_data dataset=bccd
    python -m detection.cli.inspect_data dataset=voc_layout dataset.root=/data/mine 'dataset.classes=[cat,dog]'
"""

import json
import logging
import sys

from omegaconf import DictConfig

from detection.cli.checks import check_inspect_data
from detection.cli.entry import entry_point
from detection.engine.settings import SettingsError

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> int:
    """The report; returns the number of errors."""
    from pathlib import Path

    import numpy as np

    from detection.cli.job import run_dir as job_dir
    from detection.data.audit import ERRORS, WARNINGS, audit_split, error_count, leaked_images, statistics
    from detection.reporting.plots import save_dataset_plots

    if "root" not in cfg.dataset or "train_split" not in cfg.dataset:
        raise SettingsError(f"dataset={cfg.dataset.name}: inspect reads VOC-layout datasets (dataset.root with "
                            "Annotations/, JPEGImages/, ImageSets/Main/)")
    root, class_names = Path(cfg.dataset.root).expanduser(), list(cfg.dataset.classes)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root not found")
    audits = [audit_split(root, split, class_names, workers=cfg.num_workers, progress=cfg.progress)
              for split in (cfg.dataset.train_split, cfg.dataset.val_split)]
    leaked_images(*audits)
    run_dir = job_dir()
    report = {}
    for audit in audits:
        report[audit.name] = {"statistics": statistics(audit, class_names), "problems": dict(audit.problems)}
        if audit.boxes:
            save_dataset_plots(np.concatenate(audit.boxes), np.concatenate(audit.labels), class_names,
                               run_dir / "plots" / audit.name)
        stats = report[audit.name]["statistics"]
        log.info("%s: %d images, %d objects; per class %s; objects per image median %s, max %s", audit.name,
                 stats["images"], stats["objects"], stats["objects_per_class"],
                 stats["objects_per_image"].get("0.5"), stats["objects_per_image"].get("1.0"))
        for kind in (*ERRORS, *WARNINGS):
            lines = audit.problems.get(kind, [])
            if lines:
                level = logging.ERROR if kind in ERRORS else logging.WARNING
                log.log(level, "%s: %d %s%s", audit.name, len(lines), kind,
                        "".join(f"\n  {line}" for line in lines[:cfg.show]) +
                        (f"\n  ... and {len(lines) - cfg.show} more" if len(lines) > cfg.show else ""))
    (run_dir / "dataset_report.json").write_text(json.dumps(report, indent=2))
    errors = error_count(audits)
    log.info("%s: %d errors, %d warnings; report in %s", root, errors,
             sum(len(a.problems.get(kind, ())) for a in audits for kind in WARNINGS), run_dir / "dataset_report.json")
    return errors


@entry_point("inspect_data", check=check_inspect_data)
def main(cfg: DictConfig) -> None:
    if run(cfg):
        sys.exit(1)


if __name__ == "__main__":
    main()
