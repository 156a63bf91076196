"""The augmentation recipes on random inputs: boxes, labels, difficult flags and masks move together."""

import albumentations as A
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import REPO
from detection.data.transforms import DetectionAugmentation, MinIoURandomCrop, ZoomOut


def random_sample(seed: int, *, with_masks: bool, max_objects: int = 6):
    """A random image with 0..max_objects integer boxes, each mask filling exactly its box."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(40, 160, 2))
    count = int(rng.integers(0, max_objects + 1))
    corner = rng.integers(0, [width - 4, height - 4], size=(count, 2))
    far = np.minimum(corner + rng.integers(3, 60, size=(count, 2)), [width, height])
    boxes = np.concatenate([corner, far], axis=1).astype(np.float32)
    sample = {"image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "bboxes": boxes,
              "labels": rng.integers(1, 5, count), "difficult": rng.random(count) < 0.3}
    if with_masks:
        masks = np.zeros((count, height, width), dtype=np.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
            mask[y1:y2, x1:x2] = 1
        sample["masks"] = masks
    return sample


def check_consistent(out, *, tolerance: float):
    """Boxes inside the image and non-degenerate; labels, flags and masks one per box; each mask's extent
    is its box's (up to `tolerance` pixels of resampling)."""
    height, width = out["image"].shape[:2]
    boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    assert len(out["labels"]) == len(out["difficult"]) == len(boxes)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    if "masks" in out:
        assert out["masks"].shape == (len(boxes), height, width)
        for mask, box in zip(out["masks"], boxes):
            ys, xs = np.nonzero(mask)
            assert len(xs), f"empty mask for box {box}"
            extent = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert np.abs(extent - box).max() <= tolerance, (extent, box)


@pytest.fixture(scope="module")
def ssd_recipe():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["augment=ssd", "anchors=shapes128", "tracking=none"])
    return instantiate(cfg.augment)


@pytest.mark.parametrize("with_masks", [False, True])
def test_ssd_recipe_keeps_every_target_consistent_on_random_inputs(ssd_recipe, with_masks):
    for seed in range(60):
        sample = random_sample(seed, with_masks=with_masks)
        ssd_recipe.set_random_seed(seed)
        out = ssd_recipe(**sample)
        assert out["image"].shape == (128, 128, 3) and out["image"].dtype == np.uint8
        # 128 px from up to 4x zoom-out of a 160 px image: one source pixel of rounding is up to 5 px here
        check_consistent(out, tolerance=6)
        # a label, its flag and its mask travel with their box: original pairs only
        originals = set(zip(sample["labels"].tolist(), sample["difficult"].tolist()))
        assert set(zip(np.asarray(out["labels"]).tolist(), np.asarray(out["difficult"]).tolist())) <= originals


@pytest.mark.parametrize("transform", [ZoomOut(p=1.0), MinIoURandomCrop(), A.HorizontalFlip(p=1.0),
                                       A.Resize(64, 64), A.ColorJitter(p=1.0)], ids=lambda t: type(t).__name__)
def test_each_transform_survives_empty_targets_and_keeps_masks_paired(transform):
    augmentation = DetectionAugmentation([transform])
    for seed in range(20):
        for with_masks in (False, True):
            sample = random_sample(seed, with_masks=with_masks)
            augmentation.set_random_seed(seed)
            check_consistent(augmentation(**sample), tolerance=1)
    empty = {"image": np.zeros((50, 70, 3), np.uint8), "bboxes": np.zeros((0, 4), np.float32),
             "labels": np.zeros(0, np.int64), "difficult": np.zeros(0, bool), "masks": np.zeros((0, 50, 70), np.uint8)}
    out = augmentation(**empty)
    assert len(out["bboxes"]) == 0 and out["masks"].shape == (0, *out["image"].shape[:2])


def test_zoom_out_places_the_image_on_a_mean_filled_canvas():
    sample = random_sample(1, with_masks=True)
    sample["image"][:] = 7
    augmentation = DetectionAugmentation([ZoomOut(max_scale=4.0, fill=(1, 2, 3), p=1.0)])
    augmentation.set_random_seed(0)
    out = augmentation(**sample)
    height, width = sample["image"].shape[:2]
    canvas = out["image"]
    assert canvas.shape[0] >= height and canvas.shape[1] >= width and canvas.shape[0] <= 4 * height
    ys, xs = np.nonzero((canvas == 7).all(axis=2))
    top, left = ys.min(), xs.min()
    assert (ys.max() - top + 1, xs.max() - left + 1) == (height, width)
    assert (canvas[(canvas != 7).any(axis=2)] == [1, 2, 3]).all()
    np.testing.assert_allclose(out["bboxes"], sample["bboxes"] + [left, top, left, top], atol=1e-3)


def test_min_iou_crop_patches_meet_a_threshold_and_hold_an_object_centre():
    boxes = np.array([[0, 0, 30, 30], [60, 60, 100, 100], [20, 20, 80, 80]], np.float64)
    crop = MinIoURandomCrop()
    crops = []
    for seed in range(100):
        crop.set_random_seed(seed)
        x1, y1, x2, y2 = crop.get_params_dependent_on_data({"shape": (100, 100, 3)}, {"bboxes": boxes / 100})["crop_coords"]
        crops.append((x1, y1, x2, y2))
        if (x1, y1, x2, y2) == (0, 0, 100, 100):
            continue  # the "no crop" choice
        assert 0.5 <= (y2 - y1) / (x2 - x1) <= 2.0 and x2 - x1 >= 29 and y2 - y1 >= 29
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert ((centres[:, 0] > x1) & (centres[:, 0] < x2) & (centres[:, 1] > y1) & (centres[:, 1] < y2)).any()
        inter = np.clip(np.minimum(x2, boxes[:, 2]) - np.maximum(x1, boxes[:, 0]), 0, None) * \
            np.clip(np.minimum(y2, boxes[:, 3]) - np.maximum(y1, boxes[:, 1]), 0, None)
        ious = inter / ((x2 - x1) * (y2 - y1) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)
        assert ious.max() >= 0.1 - 1e-9
    assert len(set(crops)) > 50  # patches vary


def test_min_iou_crop_drops_objects_whose_centre_is_outside_and_clips_the_rest():
    image = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[5, 5, 25, 25], [60, 60, 100, 100], [20, 20, 80, 80]], np.float32)
    masks = np.zeros((3, 100, 100), np.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
        mask[y1:y2, x1:x2] = 1

    class FixedCrop(MinIoURandomCrop):
        def get_params_dependent_on_data(self, params, data):
            return {"crop_coords": (10, 10, 50, 50)}

    out = DetectionAugmentation([FixedCrop()])(image=image, bboxes=boxes, labels=np.array([1, 2, 3]),
                                               difficult=np.array([False, False, True]), masks=masks)
    # centres (15, 15) inside; (80, 80) outside; (50, 50) on the edge, not strictly inside
    assert np.asarray(out["labels"]).tolist() == [1]
    np.testing.assert_allclose(out["bboxes"], [[0, 0, 15, 15]])
    assert out["masks"].shape == (1, 40, 40) and out["masks"][0].sum() == 15 * 15
