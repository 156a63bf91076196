"""Anchors fitted to your data: how well an SSD's priors cover a dataset's boxes, and priors fitted to them.

    python -m detection.cli.anchor_tools analyse dataset=bccd anchors=ssd300 backbone=resnet18
    python -m detection.cli.anchor_tools fit dataset=bccd anchors=ssd300 backbone=resnet18 fit.name=bccd300

Both write anchors_report.json and plots/ into the run directory; fit also writes the fitted anchors as
conf/anchors/<fit.name>.yaml in the run directory (or `fit.output`), never into the repository's conf/, and
prints the command that trains with them (`hydra.searchpath` adds the folder, `anchors=<fit.name>` picks it).
"""

import json
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from detection.cli.checks import check_anchor_tools
from detection.command_lines import script_command
from detection.cli.entry import entry_point
from detection.cli.job import group_choices, run_dir as job_dir

log = logging.getLogger(__name__)


COMMANDS = ("analyse", "fit")


def split_of(cfg: DictConfig):
    from hydra.utils import instantiate

    return instantiate(cfg.dataset.train if cfg.split == "train" else cfg.dataset.val)


def analysis(cfg: DictConfig, spec, boxes: list, class_names: list[str], folder: Path) -> dict:
    """The coverage report of `spec`'s priors over `boxes` (per image), with its plots in `folder`."""
    import numpy as np
    import torch

    from detection.anchor_fitting.coverage import match_split, report
    from detection.models.anchors import generate_anchors, prior_shapes
    from detection.reporting.plots import save_anchor_plots

    counts = [cells * cells * per_location for cells, per_location in zip(spec.feature_map_sizes,
                                                                          spec.anchors_per_location)]
    map_of_prior = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    matches = match_split(boxes, generate_anchors(spec), map_of_prior, cfg.iou_threshold)
    result = report(matches, map_of_prior.numpy(), class_names, cfg.iou_threshold)
    sizes = np.concatenate([(image_boxes[:, 2:] - image_boxes[:, :2]).numpy() for image_boxes, _ in boxes])
    save_anchor_plots(matches.best_iou, sizes, [np.asarray(prior_shapes(spec, k)) for k in range(spec.num_maps)],
                      cfg.iou_threshold, folder)
    return result


def table(result: dict) -> str:
    """The report as a printed table."""
    lines = [f"{'':<16}{'boxes':>7}{'recall@' + str(result['iou_threshold']):>12}{'mean IoU':>10}"
             f"{'median IoU':>12}{'positives':>11}"]
    rows = {"overall": result["overall"], **result["per_class"], **result["per_size"]}
    for name, row in rows.items():
        if row["boxes"]:
            lines.append(f"{name:<16}{row['boxes']:>7}{row['best_possible_recall']:>12.3f}{row['best_iou_mean']:>10.3f}"
                         f"{row['best_iou_quantiles']['0.5']:>12.3f}{row['positives_mean']:>11.1f}")
        else:
            lines.append(f"{name:<16}{0:>7}")
    lines.append(f"{'map':<16}{'priors':>7}{'boxes served':>14}{'never matched':>15}")
    lines += [f"{row['map']:<16}{row['priors']:>7}{row['boxes_served']:>14}{row['never_matched']:>15.1%}"
              for row in result["per_map"]]
    return "\n".join(lines)


def anchors_yaml(spec, name: str, before: dict, after: dict, cfg: DictConfig) -> str:
    """anchors/<name>.yaml for a fitted spec (an option of the anchors group), its figures in the header."""
    def figures(row: dict) -> str:
        return f"best possible recall {row['best_possible_recall']:.3f}, mean best IoU {row['best_iou_mean']:.3f}"

    return "\n".join([
        f"# fitted by `python -m detection.cli.anchor_tools fit` to dataset={cfg.dataset.name} at {cfg.dataset.root}",
        f"# ({cfg.split} split, {before['boxes']} boxes, IoU {cfg.iou_threshold}, seed {cfg.seed}),",
        f"# from anchors with box_sizes {list(cfg.anchors.box_sizes)} and aspect_ratios "
        f"{[list(r) for r in cfg.anchors.aspect_ratios]}",
        f"# before: {figures(before)}", f"# after:  {figures(after)}",
        "_target_: detection.models.anchors.AnchorSpec", f"image_size: {spec.image_size}",
        f"feature_map_sizes: {list(spec.feature_map_sizes)}", f"steps: {[float(s) for s in spec.steps]}",
        f"box_sizes: {[float(s) for s in spec.box_sizes]}",
        f"aspect_ratios: {[[float(r) for r in rs] for rs in spec.aspect_ratios]}", ""])


def run(cfg: DictConfig) -> dict:
    import time

    from detection.anchor_fitting.coverage import split_boxes
    from detection.anchor_fitting.fit import fit_priors
    from detection.cli.assembly import build_model

    start = time.perf_counter()
    spec = build_model(cfg, pretrained=False).anchor_spec  # completed by the network's dry run
    dataset = split_of(cfg)
    boxes = split_boxes(dataset, spec.image_size, augmented_passes=cfg.augmented_passes, seed=cfg.seed)
    run_dir = job_dir()
    class_names = list(cfg.dataset.classes)
    result = {"default": analysis(cfg, spec, boxes, class_names, run_dir / "plots" / "default")}
    log.info("%s split, %d images, %d boxes at input %d; priors of anchors=%s:\n%s", cfg.split, len(boxes),
             result["default"]["overall"]["boxes"], spec.image_size, group_choices().get("anchors"),
             table(result["default"]))
    if cfg.command == "fit":
        import torch

        fitted = fit_priors(torch.cat([b for b, _ in boxes]).numpy(), spec, iou_threshold=cfg.iou_threshold,
                            paper_scales=cfg.fit.paper_scales, ratios_per_map=cfg.fit.ratios_per_map, seed=cfg.seed,
                            generations=cfg.fit.generations, population=cfg.fit.population)
        result["fitted"] = analysis(cfg, fitted, boxes, class_names, run_dir / "plots" / "fitted")
        path = Path(cfg.fit.output) if cfg.fit.output else run_dir / "conf" / "anchors" / f"{cfg.fit.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(anchors_yaml(fitted, cfg.fit.name, result["default"]["overall"],
                                     result["fitted"]["overall"], cfg))
        log.info("fitted priors (box_sizes %s, aspect_ratios %s):\n%s\nwritten to %s: train with them by %s",
                 list(fitted.box_sizes), [list(r) for r in fitted.aspect_ratios], table(result["fitted"]), path,
                 training_command(path))
    (run_dir / "anchors_report.json").write_text(json.dumps(result, indent=2))
    log.info("report in %s (%.1f s)", run_dir / "anchors_report.json", time.perf_counter() - start)
    record_run(cfg, run_dir, result)
    return result


def record_run(cfg: DictConfig, run_dir: Path, result: dict) -> None:
    """With `tracking=mlflow`: a run in the experiment 'anchors' with the overall figures as metrics and
    the report and plots as artifacts."""
    from detection.cli.runs import build_tracker, ended_with_status, tracking_spool

    tracker = build_tracker(cfg.tracking, experiment_name="anchors",
                                 run_name=f"{cfg.command} {cfg.dataset.name} anchors={group_choices().get('anchors')}")
    tracker.start(params={"command": cfg.command, "dataset": cfg.dataset.name, "split": cfg.split,
                          "iou_threshold": cfg.iou_threshold, "augmented_passes": cfg.augmented_passes},
                  tags={"job": "anchors"}, spool=tracking_spool(run_dir))
    with ended_with_status(tracker):
        for name, part in result.items():
            tracker.log_metrics({f"{name}/best_possible_recall": part["overall"]["best_possible_recall"],
                                 f"{name}/best_iou_mean": part["overall"]["best_iou_mean"]}, step=0)
        tracker.log_artifact(run_dir / "anchors_report.json")
        tracker.log_artifact(run_dir / "plots")


def training_command(path: Path) -> str:
    """The command that trains with the anchors file at `path` (`<folder>/anchors/<name>.yaml`)."""
    search = f"hydra.searchpath=[file://{path.resolve().parents[1]}]"
    return f"{script_command('train.py', search, f'anchors={path.stem}')} ..."


@entry_point("anchor_tools", check=check_anchor_tools)
def main(cfg: DictConfig) -> dict:
    return run(cfg)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        sys.argv[1] = f"command={sys.argv[1]}"
    main()
