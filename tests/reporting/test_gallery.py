"""The worst images of a split in one picture, with their outcomes in colour."""

import math

import numpy as np
import torch
from PIL import Image

from detection.reporting.gallery import COLOURS, TILE, save_gallery, worst_images


def row(image, ap50, **errors):
    counts = {name: 0 for name in ("localisation", "classification", "both", "duplicate", "background", "missed")}
    return {"image": image, "ap50": ap50, **counts, **errors}


def test_the_worst_are_the_lowest_ap50_with_more_errors_first_and_images_without_a_score_left_out():
    rows = [row(0, 0.5), row(1, 0.0, background=1), row(2, 0.0, missed=3), row(3, math.nan), row(4, 1.0)]
    assert [r["image"] for r in worst_images(rows, 3)] == [2, 1, 0]


def test_the_gallery_draws_each_outcome_in_its_colour_in_a_grid(tmp_path):
    outcomes = {"detections": {"boxes": np.array([[10.0, 10, 60, 60], [100, 100, 150, 150], [5, 5, 8, 8]]),
                               "labels": np.array([1, 2, 1]), "scores": np.array([0.9, 0.8, 0.1]),
                               "kind": ["correct", "background", "localisation"]},
               "objects": {"boxes": np.array([[10.0, 10, 60, 60], [200, 20, 260, 90]]), "labels": np.array([1, 2]),
                           "kind": ["found", "missed"]}}
    image = torch.zeros(3, 320, 320, dtype=torch.uint8)
    path = save_gallery([row(k, 0.25, background=1, missed=1) for k in range(5)], lambda index: image,
                        lambda index: outcomes, ["cat", "dog"], tmp_path / "worst.png", columns=4)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    assert sheet.shape[1] == 4 * TILE and sheet.shape[0] > 2 * TILE  # 5 tiles: two lines of four
    colours = {tuple(c) for c in sheet.reshape(-1, 3)}
    for kind in ("correct", "background", "missed"):
        rgb = Image.new("RGB", (1, 1), COLOURS[kind]).getpixel((0, 0))
        assert rgb in colours, kind
    yellow = Image.new("RGB", (1, 1), COLOURS["localisation"]).getpixel((0, 0))
    assert sheet[16 + 5:16 + 9, 5:9].reshape(-1, 3).tolist().count(list(yellow)) == 0  # scored 0.1: not drawn
