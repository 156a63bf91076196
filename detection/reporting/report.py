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
                 pictures: Sequence[tuple[str, str]]) -> list[str]:
    """The report's markdown lines. `facts`: checkpoint, dataset, device, date, ...; `pictures`: (title,
    path relative to the report); `worst`: the worst-images picture's relative path, if drawn."""
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
                               or "not timed (an exported model)"), ""]
    lines += ["## Robustness", "", "Not run: this evaluation did not corrupt its images.", ""]
    return lines


def write_report(folder: Path, **sections) -> Path:
    """`folder`/report.md from `report_lines(**sections)`; returns its path."""
    path = folder / "report.md"
    path.write_text("\n".join(report_lines(**sections)))
    return path
