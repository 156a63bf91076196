"""Debug images and precision-recall plots, drawn for real and read back."""

import numpy as np
import torch
from PIL import Image

from detection.visualize import draw_detections, save_image, save_precision_recall_plot


def test_ground_truth_is_green_predictions_red_and_small_images_enlarged(tmp_path):
    image = torch.zeros(3, 100, 160)
    target = {"boxes": torch.tensor([[10.0, 10, 50, 60]]), "labels": torch.tensor([1])}
    masks = torch.zeros(2, 1, 100, 160)
    masks[0, 0, 70:90, 100:140] = 1
    prediction = {"boxes": torch.tensor([[100.0, 70, 140, 90], [0, 0, 5, 5]]), "labels": torch.tensor([2, 1]),
                  "scores": torch.tensor([0.9, 0.1]), "masks": masks}
    drawn = draw_detections(image, target, prediction, ["cat", "dog"])
    assert drawn.dtype == torch.uint8 and drawn.shape == (3, 300, 480)  # 100 px -> x3 for legibility
    pixels = drawn.permute(1, 2, 0).numpy()
    assert (pixels[30, 30:150] == [0, 255, 0]).all(axis=1).any()  # the green ground-truth edge (x3)
    assert (pixels[210, 300:420] == [255, 0, 0]).all(axis=1).any()  # the red prediction edge
    assert pixels[240, 360, 0] > 0 and pixels[240, 360, 1] == 0  # inside: the red mask overlay
    assert not pixels[0:15, 0:15].any()  # the 0.1 prediction is under the threshold: not drawn
    path = save_image(drawn, tmp_path / "debug" / "one.png")
    assert np.array_equal(np.asarray(Image.open(path)), pixels)


def test_precision_recall_plot_is_a_png(tmp_path):
    curves = {"cat": (np.array([0.5, 1.0]), np.array([1.0, 0.5])), "dog": (np.array([0.2]), np.array([0.3]))}
    path = save_precision_recall_plot(curves, {"cat": 0.75, "dog": 0.06}, tmp_path / "pr.png", title="step 1")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (600, 500)
