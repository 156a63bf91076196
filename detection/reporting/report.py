"""One report per evaluation, `report.md` beside its pictures: it reads on GitHub and in MLflow's artifact
view. Every section comes from a file the evaluation wrote; a section whose result is absent says so."""

import math
from pathlib import Path
from typing import Optional, Sequence

from detection.reporting.results import CLASS_MEASURES

HEADLINE = (("val/map (VOC07 AP50)", "val/map"), ("VOC AP50", "val/map50_voc"), ("COCO AP50-95", "val/map50_95"),
            ("COCO AP50", "val/map50_coco"), ("precision", "val/precision"), ("recall", "val/recall"))


def table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """A markdown table; floats with 4 decimals, nan as '-'."""
    def cell(value):
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.4f}"
        return str(value)

    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}",
            *(f"| {' | '.join(cell(value) for value in row)} |" for row in rows), ""]


def report_lines(*, facts: dict[str, str], metrics: dict, classes: Sequence[str], errors: dict, complexity,
                 speed: dict[str, float], thresholds: dict[str, dict], worst: Optional[str],
                 pictures: Sequence[tuple[str, str]], robustness: Optional[dict] = None) -> list[str]:
    """The report's markdown lines. `facts`: checkpoint, dataset, device, date, ...; `pictures`: (title,
    path relative to the report); `worst`: the worst-images picture's relative path, if drawn; `robustness`:
    the corruption benchmark's summary (robustness.json, its plot robustness.png), if run."""
    lines = ["# Evaluation report", "", *(f"- **{key}**: {value}" for key, value in facts.items()), "",
             "## Headline", "", *table(["measure", "value"], [(name, metrics.get(key, math.nan))
                                                                for name, key in HEADLINE])]
    lines += ["## Per class", "", *table(["class", *(name for name, _ in CLASS_MEASURES), "F1-best threshold", "F1"],
                                         [(name, *(metrics.get(f"val_class/{key}/{name}", math.nan)
                                                   for _, key in CLASS_MEASURES),
                                           thresholds.get(name, {}).get("threshold", math.nan),
                                           thresholds.get(name, {}).get("f1", math.nan)) for name in classes])]
    lines += ["## Errors (TIDE at IoU 0.5)", "", f"TIDE's AP50 {errors['ap']:.4f}; dAP: the AP50 fixing a type gains.",
              "", *table(["type", "count", "dAP"], [(name, errors["counts"].get(name, "-"), gain)
                                                    for name, gain in errors["dap"].items()])]
    lines += [f"![{title}]({path})" for title, path in pictures] + [""]
    lines += ["## The worst images", "", f"![the images with the lowest AP50]({worst})" if worst else
              "Not drawn (worst_images=0).", "", "Every image's AP50 and error counts: `per_image.json`.", ""]
    lines += ["## Cost", "", "```", complexity.table(), "```", "",
              "Per image: " + (", ".join(f"{key.removesuffix('_ms')} {ms:.1f} ms" for key, ms in speed.items())
                               or "not timed (an exported model, or test-time views)"), ""]
    lines += robustness_lines(robustness)
    return lines


def robustness_lines(summary: Optional[dict]) -> list[str]:
    """The report's robustness section: P, mPC, rPC (VOC07 AP50, and COCO AP where computed), the AP50 per
    corruption and severity, the TIDE error each family of corruptions grows most, and the plot."""
    if summary is None:
        return ["## Robustness", "", "Not run (`robustness=true` runs the corruption benchmark).", ""]
    measures = [("VOC07 AP50", summary), *([("COCO AP50-95", summary["coco"])] if "coco" in summary else [])]
    severities = sorted({int(s) for row in summary["per_corruption"].values() for s in row})
    lines = ["## Robustness", "", "The validation split under ImageNet-C corruptions (Michaelis et al. 2019): "
             "P is the clean AP, mPC its mean over every corruption and severity run, rPC = mPC / P.", "",
             *table(["measure", "P", "mPC", "rPC"], [(name, values["P"], values["mPC"], f"{values['rPC']:.1%}")
                                                     for name, values in measures])]
    lines += table(["corruption (AP50)", *(f"severity {s}" for s in severities)],
                   [(corruption, *(row.get(str(s), math.nan) for s in severities))
                    for corruption, row in summary["per_corruption"].items()])
    lines += table(["family", "TIDE error grown most", "dAP clean", "dAP corrupted"],
                   [(family, grown["type"], grown["clean_dAP"], grown["dAP"])
                    for family, grown in summary["grown_most"].items()])
    return lines + ["![AP50 under corruption, and dAP per family](robustness.png)", ""]


def write_report(folder: Path, **sections) -> Path:
    """`folder`/report.md from `report_lines(**sections)`; returns its path."""
    path = folder / "report.md"
    path.write_text("\n".join(report_lines(**sections)))
    return path
