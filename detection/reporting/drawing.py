"""Pictures of what a detector does: images with ground-truth and predicted boxes and masks drawn."""

import functools
from pathlib import Path
from typing import Sequence

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


def label_font(size: int = LABEL_FONT_SIZE) -> ImageFont.FreeTypeFont:
    """The font labels are written in, at `size` pixels."""
    return ImageFont.truetype(_font()[0], size)


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
    font = label_font()
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
