"""Plots of a run and of its data: per-class precision-recall curves, anchor coverage, dataset statistics,
the error breakdown. Each is a PNG written to a given path; matplotlib loads on first use."""

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from detection.reporting.drawing import drawable_names

MAX_CLASSES_DRAWN = 30  # plots that grow with the class count draw this many classes at most


def save_precision_recall_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], aps: dict[str, float],
                               path: Path, *, title: str, class_names: Optional[Sequence[str]] = None) -> Path:
    """One precision-recall curve per class (recall, precision arrays as the evaluator ranks detections),
    labelled with its AP, written as a PNG. A class whose name the font cannot draw is labelled '#<label>'
    (its place in `class_names`), and `<path stem>.classes.txt` beside the plot says which class that is."""
    class_names = class_names or list(curves)
    if len(curves) > MAX_CLASSES_DRAWN:  # a legend of 1,000 classes is neither readable nor cheap to draw
        kept = sorted(curves, key=lambda name: -np.nan_to_num(aps.get(name, 0.0), nan=0.0))[:MAX_CLASSES_DRAWN]
        curves = {name: curves[name] for name in kept}
        title = f"{title} ({MAX_CLASSES_DRAWN} best of {len(class_names)} classes)"
    names, legend = drawable_names(class_names)
    drawn = dict(zip(class_names, names))
    if legend:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".classes.txt").write_text("".join(f"{key}\t{name}\n" for key, name in legend.items()),
                                                    encoding="utf-8")
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    for name, (recall, precision) in curves.items():
        axes.plot(recall, precision, label=f"{drawn.get(name, name)} (AP {aps.get(name, float('nan')):.3f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    if curves:  # beside the axes: a weak model's curves lie where a legend inside would go
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", borderaxespad=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return path


def pyplot():
    """matplotlib's pyplot drawing to files (imported on first use: a second of start-up)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def save_anchor_plots(best_iou: np.ndarray, box_sizes: np.ndarray, prior_sizes: Sequence[np.ndarray],
                      iou_threshold: float, folder: Path) -> list[Path]:
    """Two PNGs in `folder`: best_iou.png, the histogram of each box's best prior IoU with the threshold
    marked; box_sizes.png, box width against height (float [G, 2], model-input pixels, log axes) with each
    map's prior shapes (float [a, 2] per map) over them."""
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.hist(best_iou, bins=40, range=(0, 1), color="tab:blue")
    axes.axvline(iou_threshold, color="tab:red", linestyle="--", label=f"threshold {iou_threshold}")
    axes.set(xlabel="best prior IoU", ylabel="ground-truth boxes",
             title=f"{(best_iou >= iou_threshold).mean():.1%} of {len(best_iou)} boxes reach the threshold")
    axes.legend()
    figure.savefig(folder / "best_iou.png")
    plt.close(figure)
    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    axes.scatter(box_sizes[:, 0], box_sizes[:, 1], s=4, alpha=0.3, color="grey", label="boxes")
    for index, shapes in enumerate(prior_sizes):
        axes.scatter(shapes[:, 0], shapes[:, 1], s=40, marker="x", label=f"map {index} priors")
    axes.set(xscale="log", yscale="log", xlabel="width (input pixels)", ylabel="height (input pixels)",
             title="boxes and prior shapes")
    axes.legend(fontsize="small")
    figure.savefig(folder / "box_sizes.png")
    plt.close(figure)
    return [folder / "best_iou.png", folder / "box_sizes.png"]


def save_dataset_plots(boxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str], folder: Path) -> list[Path]:
    """Three PNGs in `folder` of a split's objects (boxes float [N, 4] xyxy pixels, labels int64 [N]):
    objects_per_class.png (wider with more classes, names slanted when they would collide), box_sizes.png
    (width against height, log axes, a colour per class) and aspect_ratios.png (the histogram of width /
    height, log axis); each saved with its labels inside the picture."""
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    names, _ = drawable_names(class_names)
    size = boxes[:, 2:] - boxes[:, :2]
    sane = (size > 0).all(axis=1)
    figure, axes = plt.subplots(figsize=(min(max(6.0, 0.35 * len(names)), 30.0), 4), dpi=100)
    axes.bar(names, [(labels == label).sum() for label in range(1, len(class_names) + 1)])
    axes.set(ylabel="objects", title="objects per class")
    if sum(len(name) for name in names) > 60:  # horizontal names would overlap
        axes.tick_params(axis="x", labelrotation=45)
        plt.setp(axes.get_xticklabels(), ha="right", rotation_mode="anchor")
    figure.savefig(folder / "objects_per_class.png", bbox_inches="tight")
    plt.close(figure)
    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    for label, name in enumerate(names, start=1):
        chosen = sane & (labels == label)
        axes.scatter(size[chosen, 0], size[chosen, 1], s=4, alpha=0.4, label=name)
    axes.set(xscale="log", yscale="log", xlabel="width (pixels)", ylabel="height (pixels)", title="box sizes")
    axes.legend(fontsize="small", ncol=max(1, len(names) // 15))
    figure.savefig(folder / "box_sizes.png", bbox_inches="tight")
    plt.close(figure)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.hist(size[sane, 0] / size[sane, 1], bins=np.geomspace(0.1, 10, 41))
    axes.set(xscale="log", xlabel="aspect ratio (width / height)", ylabel="objects", title="aspect ratios")
    figure.savefig(folder / "aspect_ratios.png", bbox_inches="tight")
    plt.close(figure)
    return [folder / name for name in ("objects_per_class.png", "box_sizes.png", "aspect_ratios.png")]


def save_error_plots(errors: dict, folder: Path, *, title: str) -> list[Path]:
    """Two PNGs in `folder` from an error breakdown (`DetectionEvaluator.error_breakdown()`):
    errors_dap.png, the AP each error type costs (TIDE's dAP, with its count) beside the false-positive and
    false-negative dAPs; confusion.png, the confusion matrix row-normalised as a heat map, counts written."""
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    names = list(errors["dap"])
    figure, axes = plt.subplots(figsize=(8, 4), dpi=100)
    colours = ["tab:red"] * (len(names) - 2) + ["tab:grey"] * 2
    bars = axes.bar(names, [errors["dap"][name] for name in names], color=colours)
    for bar, name in zip(bars, names):
        count = errors["counts"].get(name)
        if count is not None:
            axes.annotate(f"{count}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                          va="bottom", fontsize="small")
    axes.set(ylabel="dAP (AP50 gained by fixing them)", title=f"{title}: AP50 {errors['ap']:.3f}")
    axes.tick_params(axis="x", labelrotation=30)
    figure.tight_layout()
    figure.savefig(folder / "errors_dap.png")
    plt.close(figure)
    counts = np.asarray(errors["confusion"], dtype=np.float64)
    rows, columns = errors["confusion_labels"]["rows"], errors["confusion_labels"]["columns"]
    if len(rows) - 1 > MAX_CLASSES_DRAWN:  # its size grows with the square of the classes: the most frequent
        kept = np.sort(np.argsort(-counts[:-1].sum(axis=1), kind="stable")[:MAX_CLASSES_DRAWN])
        kept = np.append(kept, len(rows) - 1)  # and background / missed
        title = f"{title} ({MAX_CLASSES_DRAWN} of {len(rows) - 1} classes, most objects)"
        counts, rows, columns = counts[np.ix_(kept, kept)], [rows[i] for i in kept], [columns[i] for i in kept]
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = 3 + 0.5 * len(rows)
    figure, axes = plt.subplots(figsize=(side + 1, side), dpi=100)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(counts):
        if count:
            axes.text(column, row, f"{int(count)}", ha="center", va="center", fontsize="x-small",
                      color="white" if shares[row, column] > 0.5 else "black")
    axes.set_xticks(range(len(columns)), drawable_names(columns)[0], rotation=45, ha="right")
    axes.set_yticks(range(len(rows)), drawable_names(rows)[0])
    axes.set(xlabel="predicted", ylabel="ground truth", title=f"{title}: confusion (row shares, counts)")
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    figure.savefig(folder / "confusion.png")
    plt.close(figure)
    return [folder / "errors_dap.png", folder / "confusion.png"]


def save_robustness_plot(summary: dict, path: Path, *, title: str) -> Path:
    """The corruption benchmark in one PNG: per family, each corruption's AP50 against severity (0: clean)
    with the clean P and the mPC marked; and TIDE's dAP per error type, clean and averaged per family.
    `summary`: `detection.evaluation.robustness.robustness_summary`'s."""
    from detection.data.corruptions import FAMILIES

    plt = pyplot()
    figure, axes = plt.subplots(2, 3, figsize=(14, 8), dpi=100)
    families = [family for family, names in FAMILIES.items() if set(names) & set(summary["per_corruption"])]
    for panel, family in zip(axes.flat, families):
        for corruption in FAMILIES[family]:
            by_severity = summary["per_corruption"].get(corruption)
            if by_severity:
                severities = sorted(by_severity, key=int)
                panel.plot([0, *map(int, severities)], [summary["P"], *(by_severity[s] for s in severities)],
                           marker="o", label=corruption)
        panel.axhline(summary["mPC"], color="grey", linestyle="--", label=f"mPC {summary['mPC']:.3f}")
        panel.set(title=family, xlabel="severity (0: clean)", ylabel="AP50", ylim=(0, max(summary["P"], 0.05) * 1.1))
        panel.grid(alpha=0.3)
        panel.legend(fontsize="small")
    for panel in list(axes.flat)[len(families):-1]:
        panel.axis("off")
    daps, bars = summary["dap"], axes.flat[-1]
    kinds = list(daps["clean"])
    width = 0.8 / len(daps)
    for offset, (name, values) in enumerate(daps.items()):
        bars.bar(np.arange(len(kinds)) + offset * width, [values[kind] for kind in kinds], width, label=name)
    bars.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, kinds, rotation=45, ha="right", fontsize="small")
    bars.set(title="TIDE dAP (AP50 gained by fixing)", ylabel="dAP")
    bars.legend(fontsize="small")
    figure.suptitle(f"{title}: P {summary['P']:.3f}, mPC {summary['mPC']:.3f}, rPC {summary['rPC']:.1%}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
