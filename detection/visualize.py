"""Pictures of what a detector does: debug images with boxes and masks drawn, precision-recall plots."""

import functools
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

GROUND_TRUTH_COLOUR = "lime"
PREDICTION_COLOUR = "red"
MASK_THRESHOLD = 0.5
LABEL_FONT_SIZE = 12


@functools.lru_cache(maxsize=1)
def _font() -> tuple[str, frozenset[int]]:
    """The font every picture is drawn in (DejaVu Sans, which matplotlib ships) and the characters it has."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont("DejaVu Sans")
    return path, frozenset(FT2Font(path).get_charmap())


def drawable_names(class_names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The label each class is drawn with: its name where the font has every character of it, else
    '#<label>' (a name in a script the font lacks would show as empty boxes); and the legend of those
    replaced, {'#3': '猫'}."""
    _, characters = _font()
    names, legend = [], {}
    for label, name in enumerate(class_names, start=1):
        drawable = all(ord(character) in characters for character in name)
        names.append(name if drawable else f"#{label}")
        if not drawable:
            legend[f"#{label}"] = name
    return names, legend


def draw_detections(image: torch.Tensor, target: dict[str, torch.Tensor], prediction: dict[str, torch.Tensor],
                    class_names: Sequence[str], *, score_threshold: float = 0.3, max_predictions: int = 30,
                    min_side: int = 320) -> torch.Tensor:
    """The image with ground truth (green, class name) and the `max_predictions` best predictions scoring
    at least `score_threshold` (red, class name and score) drawn, masks of either overlaid (Mask R-CNN).
    Labels sit on filled tags, each at the first place beside its box where it covers no earlier tag.
    Images with a side under `min_side` are enlarged by a whole factor, so that the labels stay legible.

    Args:
        image: uint8 [3, H, W], or float in [0, 1]; target 'boxes' [N, 4] xyxy pixels, 'labels' [N] and
            optionally 'masks' uint8 [N, H, W];
        prediction: 'boxes', 'labels', 'scores' (descending) and optionally 'masks' float [K, 1, H, W].
    Returns:
        uint8 [3, H * f, W * f], f = max(1, min_side // min(H, W)).
    """
    factor = max(1, min_side // min(image.shape[1:]))
    image = image.detach().cpu()
    canvas = image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).to(torch.uint8)
    canvas = canvas.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    prediction = {key: value.detach().cpu() for key, value in prediction.items()}
    keep = (prediction["scores"] >= score_threshold).nonzero().flatten()[:max_predictions]
    names, _ = drawable_names(class_names)
    layers = [(target["boxes"], target["labels"], target.get("masks"), None, GROUND_TRUTH_COLOUR),
              (prediction["boxes"][keep], prediction["labels"][keep],
               prediction["masks"][keep][:, 0] > MASK_THRESHOLD if "masks" in prediction else None,
               prediction["scores"][keep], PREDICTION_COLOUR)]
    tags = []
    for boxes, labels, masks, scores, colour in layers:
        if masks is not None and len(masks):
            masks = masks.detach().cpu().bool().repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
            canvas = draw_segmentation_masks(canvas, masks, alpha=0.4, colors=colour)
        if len(boxes):
            boxes = boxes.detach().cpu().float() * factor
            canvas = draw_bounding_boxes(canvas, boxes, colors=colour, width=2)
            suffixes = [""] * len(boxes) if scores is None else [f" {score:.2f}" for score in scores.tolist()]
            texts = [names[int(label) - 1] + suffix for label, suffix in zip(labels.tolist(), suffixes)]
            tags += [(box, text, colour) for box, text in zip(boxes.tolist(), texts)]
    return draw_tags(canvas, tags)


def draw_tags(canvas: torch.Tensor, tags: list[tuple[list[float], str, str]]) -> torch.Tensor:
    """Writes each (box xyxy, text, colour) as a filled tag at the first of: above the box's top-left
    corner, inside it, below its bottom-left corner, that covers no tag already placed (the last one
    when all do), clipped into the picture. uint8 [3, H, W] in and out."""
    picture = Image.fromarray(canvas.permute(1, 2, 0).numpy())
    pen = ImageDraw.Draw(picture)
    font = ImageFont.truetype(_font()[0], LABEL_FONT_SIZE)
    placed: list[tuple[float, float, float, float]] = []
    for (left, top, _, bottom), text, colour in tags:
        x0, y0, x1, y1 = pen.textbbox((0, 0), text, font=font)
        width, height = x1 - x0 + 4, y1 - y0 + 4
        for y in (top - height, top, bottom):
            x = min(max(left, 0), max(picture.width - width, 0))
            y = min(max(y, 0), max(picture.height - height, 0))
            tag = (x, y, x + width, y + height)
            if not any(tag[0] < p[2] and p[0] < tag[2] and tag[1] < p[3] and p[1] < tag[3] for p in placed):
                break
        placed.append(tag)
        pen.rectangle(tag, fill=colour)
        pen.text((tag[0] + 2 - x0, tag[1] + 2 - y0), text, fill="black" if colour == GROUND_TRUTH_COLOUR else "white",
                 font=font)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def save_image(image: torch.Tensor, path: Path) -> Path:
    """Writes uint8 [3, H, W] as a PNG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return path


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
    objects_per_class.png, box_sizes.png (width against height, log axes, a colour per class) and
    aspect_ratios.png (the histogram of width / height, log axis)."""
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    names, _ = drawable_names(class_names)
    size = boxes[:, 2:] - boxes[:, :2]
    sane = (size > 0).all(axis=1)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.bar(names, [(labels == label).sum() for label in range(1, len(class_names) + 1)])
    axes.set(ylabel="objects", title="objects per class")
    figure.savefig(folder / "objects_per_class.png")
    plt.close(figure)
    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    for label, name in enumerate(names, start=1):
        chosen = sane & (labels == label)
        axes.scatter(size[chosen, 0], size[chosen, 1], s=4, alpha=0.4, label=name)
    axes.set(xscale="log", yscale="log", xlabel="width (pixels)", ylabel="height (pixels)", title="box sizes")
    axes.legend(fontsize="small")
    figure.savefig(folder / "box_sizes.png")
    plt.close(figure)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.hist(size[sane, 0] / size[sane, 1], bins=np.geomspace(0.1, 10, 41))
    axes.set(xscale="log", xlabel="aspect ratio (width / height)", ylabel="objects", title="aspect ratios")
    figure.savefig(folder / "aspect_ratios.png")
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
