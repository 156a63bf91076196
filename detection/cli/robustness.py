"""`evaluate.py robustness=true`: the checkpoint's model over its validation split under each corruption
and severity asked for (all 15 x 5 by default), summarised as the benchmark's P, mPC and rPC with TIDE's
dAPs per corruption family (docs/evaluation.md#robustness-to-corruptions)."""

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def scores_of(metrics: dict[str, float], errors: dict) -> dict:
    """What the benchmark keeps of one evaluation: VOC07 AP50, COCO AP and TIDE's dAPs."""
    return {"ap50": metrics["val/map"], "coco_ap": metrics.get("val/map50_95", float("nan")), "dap": errors["dap"]}


def run_robustness(cfg: DictConfig, *, model, val_set, class_names: list[str], device, context, clean: dict) -> dict:
    """Evaluates `model` on `val_set` under every (corruption, severity) of the settings, each image
    corrupted once by the loader's workers, seeded by `cfg.corruption_seed`; returns the robustness summary.
    `clean`: `scores_of` the clean evaluation."""
    from detection.data.corruptions import CORRUPTIONS, CorruptedImages
    from detection.data.loader import build_loader
    from detection.engine.inference import evaluate
    from detection.evaluation import DetectionEvaluator, validation_metrics
    from detection.evaluation.robustness import robustness_summary

    corruptions = list(cfg.corruptions) if cfg.corruptions else list(CORRUPTIONS)
    runs = {}
    for number, (corruption, severity) in enumerate((c, s) for c in corruptions for s in cfg.severities):
        corrupted = CorruptedImages(val_set, corruption, severity, seed=cfg.corruption_seed)
        loader = build_loader(corrupted, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                              seed=cfg.corruption_seed, rank=context.rank, world_size=context.world_size)
        evaluator = DetectionEvaluator(class_names=class_names, confusion_score_threshold=cfg.confusion_score_threshold)
        metrics = validation_metrics(evaluate(model, loader, evaluator, device=device, progress=context.is_main,
                                              desc=f"{corruption} {severity}/5"))
        runs[corruption, severity] = scores_of(metrics, evaluator.error_breakdown())
        log.info("robustness %d/%d: %s at severity %d: AP50 %.4f (clean %.4f)", number + 1,
                 len(corruptions) * len(cfg.severities), corruption, severity, metrics["val/map"], clean["ap50"])
    return robustness_summary(clean, runs)


def robustness_table(summary: dict) -> str:
    """The summary as text: AP50 per corruption and severity with each row's mean, then P, mPC, rPC (and
    COCO's), then which TIDE error grew most per family."""
    severities = sorted({int(s) for row in summary["per_corruption"].values() for s in row})
    lines = [f"{'corruption':<20}" + "".join(f"{f's{s}':>8}" for s in severities) + f"{'mean':>8}"]
    for corruption, row in summary["per_corruption"].items():
        values = [row.get(str(s), float("nan")) for s in severities]
        lines.append(f"{corruption:<20}" + "".join(f"{v:>8.4f}" for v in values) + f"{sum(values) / len(values):>8.4f}")
    lines.append(f"P (clean AP50) {summary['P']:.4f}, mPC {summary['mPC']:.4f}, rPC {summary['rPC']:.1%}")
    if "coco" in summary:
        coco = summary["coco"]
        lines.append(f"COCO AP: P {coco['P']:.4f}, mPC {coco['mPC']:.4f}, rPC {coco['rPC']:.1%}")
    lines += [f"{family}: {grown['type']} grew most (dAP {grown['clean_dAP']:.4f} clean -> {grown['dAP']:.4f})"
              for family, grown in summary["grown_most"].items()]
    return "\n".join(lines)


def save_robustness(summary: dict, folder: Path, title: str) -> None:
    """robustness.json and robustness.png in `folder`, and the table in the log."""
    from detection.reporting.plots import save_robustness_plot

    (folder / "robustness.json").write_text(json.dumps(summary, indent=2))
    save_robustness_plot(summary, folder / "robustness.png", title=title)
    log.info("robustness to corruptions (VOC07 AP50):\n%s\nin %s", robustness_table(summary),
             folder / "robustness.json")
