"""The augmentation recipes on random inputs: boxes, labels, difficult flags and masks move together."""

import albumentations as A
import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import REPO
from detection.data.geometry import SSDGeometry, centres_inside, map_boxes, warp_pixels
from detection.data.transforms import DetectionAugmentation, SSDWarp


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


@pytest.mark.parametrize("transform", [SSDWarp(SSDGeometry(64, zoom_p=1.0, flip_p=1.0)), SSDWarp(SSDGeometry(200)),
                                       A.HorizontalFlip(p=1.0), A.Resize(64, 64), A.ColorJitter(p=1.0)],
                         ids=["SSDWarp zoomed and flipped", "SSDWarp", "HorizontalFlip", "Resize", "ColorJitter"])
def test_each_transform_survives_empty_targets_and_keeps_masks_paired(transform):
    augmentation = DetectionAugmentation([transform])
    for seed in range(20):
        for with_masks in (False, True):
            sample = random_sample(seed, with_masks=with_masks)
            augmentation.set_random_seed(seed)
            # a 4x zoom-out of up to 160 px to 64: one source pixel of rounding is up to 2 output pixels
            check_consistent(augmentation(**sample), tolerance=2)
    empty = {"image": np.zeros((50, 70, 3), np.uint8), "bboxes": np.zeros((0, 4), np.float32),
             "labels": np.zeros(0, np.int64), "difficult": np.zeros(0, bool), "masks": np.zeros((0, 50, 70), np.uint8)}
    out = augmentation(**empty)
    assert len(out["bboxes"]) == 0 and out["masks"].shape == (0, *out["image"].shape[:2])


def gradient_image(height: int = 90, width: int = 120) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    return np.stack([xs * 2, ys * 2, (xs + ys) % 256], axis=2).astype(np.uint8)


@pytest.mark.parametrize("flip", [False, True])
def test_the_warp_without_zoom_or_crop_is_the_resize_and_flip_it_replaces(flip):
    """The half-pixel convention: the one warp samples where cv2.resize (and a flip) would."""
    image = gradient_image()
    geometry = SSDGeometry(64, zoom_p=0.0, min_ious=(None,), flip_p=float(flip))
    matrix = geometry.sample(np.random.default_rng(0), np.zeros((0, 4)), 120, 90)
    expected = cv2.resize(image[:, ::-1] if flip else image, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert np.abs(warp_pixels(image, matrix, 64, fill=0).astype(int) - expected).max() <= 1
    boxes, keep = map_boxes(np.array([[0, 0, 30, 45]]), matrix, 64)
    np.testing.assert_allclose(boxes, [[64 - 16, 0, 64, 32]] if flip else [[0, 0, 16, 32]])
    assert keep.all()


def test_zoom_out_places_the_image_on_a_fill_coloured_canvas():
    geometry = SSDGeometry(400, zoom_p=1.0, min_ious=(None,), flip_p=0.0)
    image = np.full((90, 120, 3), 7, np.uint8)
    for seed in range(10):
        matrix = geometry.sample(np.random.default_rng(seed), np.zeros((0, 4)), 120, 90)
        scale_x, left, scale_y, top = matrix[0, 0], matrix[0, 2], matrix[1, 1], matrix[1, 2]
        assert 400 / 120 / 4 - 1e-3 <= scale_x <= 400 / 120 and 400 / 90 / 4 - 1e-3 <= scale_y <= 400 / 90
        right, bottom = left + 120 * scale_x, top + 90 * scale_y
        assert 0 <= left and right <= 400 + 1e-6 and 0 <= top and bottom <= 400 + 1e-6
        out = warp_pixels(image, matrix, 400, fill=(1, 2, 3))
        centre_x, centre_y = np.arange(400) + 0.5, np.arange(400)[:, None] + 0.5
        inside = (centre_x > left + 1) & (centre_x < right - 1) & (centre_y > top + 1) & (centre_y < bottom - 1)
        outside = (centre_x < left - 1) | (centre_x > right + 1) | (centre_y < top - 1) | (centre_y > bottom + 1)
        assert (out[inside] == 7).all() and (out[outside] == [1, 2, 3]).all()


def test_min_iou_crop_patches_meet_a_threshold_and_hold_an_object_centre():
    boxes = np.array([[0, 0, 30, 30], [60, 60, 100, 100], [20, 20, 80, 80]], np.float64)
    geometry = SSDGeometry(100)
    crops = []
    for seed in range(100):
        x1, y1, x2, y2 = geometry.sample_crop(np.random.default_rng(seed), boxes, 100, 100)
        crops.append((x1, y1, x2, y2))
        if (x1, y1, x2, y2) == (0, 0, 100, 100):
            continue  # the "no crop" choice
        assert 0.5 <= (y2 - y1) / (x2 - x1) <= 2.0 and x2 - x1 >= 29 and y2 - y1 >= 29
        assert centres_inside(boxes, np.array([x1, y1, x2, y2])).any()
        inter = np.clip(np.minimum(x2, boxes[:, 2]) - np.maximum(x1, boxes[:, 0]), 0, None) * \
            np.clip(np.minimum(y2, boxes[:, 3]) - np.maximum(y1, boxes[:, 1]), 0, None)
        ious = inter / ((x2 - x1) * (y2 - y1) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)
        assert ious.max() >= 0.1 - 1e-9
    assert len(set(crops)) > 50  # patches vary


def test_the_crop_drops_objects_whose_centre_is_outside_and_clips_the_rest():
    image = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[5, 5, 25, 25], [60, 60, 100, 100], [20, 20, 80, 80]], np.float32)
    masks = np.zeros((3, 100, 100), np.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
        mask[y1:y2, x1:x2] = 1

    class FixedCrop(SSDWarp):  # the patch (10, 10, 50, 50), at its own size
        def get_params_dependent_on_data(self, params, data):
            return {"matrix": np.array([[1.0, 0, -10], [0, 1.0, -10]])}

    out = DetectionAugmentation([FixedCrop(SSDGeometry(40))])(
        image=image, bboxes=boxes, labels=np.array([1, 2, 3]), difficult=np.array([False, False, True]), masks=masks)
    # centres (15, 15) inside; (80, 80) outside; (50, 50) on the edge, not strictly inside
    assert np.asarray(out["labels"]).tolist() == [1]
    np.testing.assert_allclose(out["bboxes"], [[0, 0, 15, 15]])
    assert out["masks"].shape == (1, 40, 40) and out["masks"][0].sum() == 15 * 15
