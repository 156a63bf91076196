"""The worst images of a split in one picture: each drawn with its objects and detections coloured by what
TIDE made of them, under a line with its AP50 and error counts."""

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from detection.reporting.drawing import drawable_names, label_font

# detections by their outcome, objects by theirs (missed: no detection could have found them)
COLOURS = {"correct": "lime", "localisation": "yellow", "classification": "orange", "both": "saddlebrown",
           "duplicate": "violet", "background": "red", "found": "palegreen", "missed": "deepskyblue", "near": "white"}
SHORT = {"localisation": "loc", "classification": "cls", "both": "both", "duplicate": "dup", "background": "bkg",
         "missed": "missed"}
TILE = 320  # pixels of a tile's longer side
DRAWN_SCORE, MAX_DRAWN = 0.3, 30  # detections drawn: the best 30 scoring at least 0.3 (all count in the numbers)


def worst_images(rows: Sequence[dict], count: int) -> list[dict]:
    """The `count` rows (of `DetectionEvaluator.per_image`) with the lowest AP50, more errors first among
    equals."""
    errors = ("localisation", "classification", "both", "duplicate", "background", "missed")
    scored = [row for row in rows if not math.isnan(row["ap50"])]
    return sorted(scored, key=lambda row: (row["ap50"], -sum(row[name] for name in errors)))[:count]


def draw_outcomes(image: torch.Tensor, outcomes: dict, class_names: Sequence[str], caption: str) -> Image.Image:
    """uint8 [3, H, W] scaled to TILE, its objects (thin) and the MAX_DRAWN best detections scoring at
    least DRAWN_SCORE boxed in their outcome's colour with their class, the caption on top."""
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    scale = TILE / max(picture.size)
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
    names, _ = drawable_names(class_names)
    pen, font = ImageDraw.Draw(picture), label_font(11)
    objects, detections = outcomes["objects"], outcomes["detections"]
    boxes = [(box, label, kind) for box, label, kind in zip(objects["boxes"], objects["labels"], objects["kind"])
             if kind in COLOURS]
    best = np.argsort(-np.asarray(detections["scores"]), kind="stable")[:MAX_DRAWN]
    boxes += [(detections["boxes"][k], detections["labels"][k], detections["kind"][k]) for k in best
              if detections["scores"][k] >= DRAWN_SCORE and detections["kind"][k] in COLOURS]
    for box, label, kind in boxes:
        corners = (np.asarray(box, dtype=np.float64) * scale).tolist()
        pen.rectangle(corners, outline=COLOURS[kind], width=1 if kind in ("found", "near", "missed") else 2)
        pen.text((corners[0] + 2, corners[1] + 1), names[int(label) - 1], fill=COLOURS[kind], font=font)
    tile = Image.new("RGB", (TILE, TILE + 16), "black")
    tile.paste(picture, (0, 16))
    ImageDraw.Draw(tile).text((3, 2), caption, fill="white", font=font)
    return tile


def save_gallery(rows: Sequence[dict], image_of: Callable[[int], torch.Tensor], outcomes_of: Callable[[int], dict],
                 class_names: Sequence[str], path: Path, *, columns: int = 4) -> Path:
    """The images of `rows` (e.g. `worst_images`) as tiles in a grid with a colour legend below, a PNG.
    `image_of(index)` gives an image uint8 [3, H, W], `outcomes_of(index)` its `DetectionEvaluator.outcomes_of`."""
    tiles = []
    for row in rows:
        counts = ", ".join(f"{row[name]} {short}" for name, short in SHORT.items() if row[name])
        tiles.append(draw_outcomes(image_of(row["image"]), outcomes_of(row["image"]), class_names,
                                   f"#{row['image']} AP50 {row['ap50']:.2f}: {counts or 'no errors'}"[:56]))
    lines = max(1, math.ceil(len(tiles) / columns))
    sheet = Image.new("RGB", (columns * TILE, lines * (TILE + 16) + 22), "black")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * TILE, (k // columns) * (TILE + 16)))
    pen, font, x = ImageDraw.Draw(sheet), label_font(12), 4
    for kind, colour in COLOURS.items():
        text = {"found": "object found", "near": "object a cls/loc error was on", "missed": "missed object"}.get(kind, kind)
        pen.text((x, sheet.height - 18), text, fill=colour, font=font)
        x += int(pen.textlength(text, font=font)) + 14
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
