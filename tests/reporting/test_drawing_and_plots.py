"""Debug images and precision-recall plots, drawn for real and read back."""

import numpy as np
import torch
from PIL import Image

from detection.reporting.debug_images import VALIDATION_IMAGES, DebugArtifacts
from detection.reporting.drawing import draw_detections, save_image
from detection.reporting.plots import save_error_plots, save_precision_recall_plot


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


def test_labels_of_one_box_take_different_places_and_ground_truth_masks_show(tmp_path):
    image = torch.full((3, 120, 160), 0.5)
    masks = torch.zeros(1, 120, 160, dtype=torch.uint8)
    masks[0, 40:80, 40:100] = 1
    target = {"boxes": torch.tensor([[40.0, 40, 100, 80]]), "labels": torch.tensor([1]), "masks": masks}
    prediction = {"boxes": torch.tensor([[40.0, 40, 100, 80]]), "labels": torch.tensor([1]),
                  "scores": torch.tensor([0.9])}
    pixels = draw_detections(image, target, prediction, ["cat"], min_side=120).permute(1, 2, 0).numpy()
    green, red = (pixels == [0, 255, 0]).all(axis=2), (pixels == [255, 0, 0]).all(axis=2)
    assert green[25:39, 42:60].mean() > 0.5  # the ground truth's tag above the box
    assert red[43:55, 43:60].mean() > 0.5  # the prediction's tag inside it, not on top of the first
    assert pixels[70, 70, 1] > pixels[70, 70, 0] + 50  # the ground-truth mask, green over grey


def test_validation_images_take_turns_in_a_fixed_set():
    shown = [DebugArtifacts.validation_image(epoch, 100) for epoch in range(1, 2 * VALIDATION_IMAGES + 1)]
    assert len(set(shown[:VALIDATION_IMAGES])) == VALIDATION_IMAGES and shown[VALIDATION_IMAGES:] == shown[:VALIDATION_IMAGES]
    assert shown == [DebugArtifacts.validation_image(epoch, 100) for epoch in range(1, 2 * VALIDATION_IMAGES + 1)]
    assert {DebugArtifacts.validation_image(epoch, 3) for epoch in range(1, 7)} == {0, 1, 2}
    assert DebugArtifacts.validation_image(1, 0) is None


def test_precision_recall_plot_keeps_its_legend_beside_the_axes(tmp_path):
    curves = {"cat": (np.array([0.5, 1.0]), np.array([1.0, 0.5])), "dog": (np.array([0.2]), np.array([0.3]))}
    path = save_precision_recall_plot(curves, {"cat": 0.75, "dog": 0.06}, tmp_path / "pr.png", title="epoch 1")
    bare = save_precision_recall_plot({}, {}, tmp_path / "bare.png", title="epoch 1")
    with Image.open(path) as png, Image.open(bare) as without_legend:
        assert png.format == "PNG" and png.size[0] > without_legend.size[0] + 50  # the legend widens it
        assert png.size[1] == without_legend.size[1]


def test_plots_that_grow_with_the_class_count_draw_a_bounded_number_of_classes(tmp_path):
    classes = [f"class {index}" for index in range(1000)]
    rng = np.random.default_rng(0)
    errors = {"dap": {"localisation": 0.1, "false_positives": 0.2, "false_negatives": 0.1}, "counts": {},
              "ap": 0.3, "confusion": rng.integers(0, 5, (1001, 1001)).tolist(),
              "confusion_labels": {"rows": [*classes, "background"], "columns": [*classes, "missed"]}}
    save_error_plots(errors, tmp_path, title="best.pt")
    curves = {name: (np.linspace(0, 1, 5), np.linspace(1, 0, 5)) for name in classes}
    aps = {name: index / 1000 for index, name in enumerate(classes)}
    save_precision_recall_plot(curves, aps, tmp_path / "pr.png", title="epoch 1", class_names=classes)
    for name in ("confusion.png", "pr.png"):
        with Image.open(tmp_path / name) as image:
            assert max(image.size) < 2500, (name, image.size)


def test_dataset_plots_keep_their_labels_inside_the_picture_with_many_long_class_names(tmp_path):
    from PIL import Image

    from detection.reporting.plots import save_dataset_plots

    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 300, (400, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 100, (400, 2))], axis=1)
    names = [f"long class name {k}" for k in range(20)]
    per_class, _, ratios = save_dataset_plots(boxes, rng.integers(1, 21, 400), names, tmp_path)
    # the slanted names and the x label are part of the saved picture, not cut at the figure's 4-inch edge
    assert Image.open(per_class).height > 400 and Image.open(ratios).height >= 380
