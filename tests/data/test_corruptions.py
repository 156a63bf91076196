"""The corruption benchmark's images: the published `imagecorruptions` functions (its maintained fork) on a
real BCCD photo, made once per item, the same for the same seed, with the objects untouched."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BCCD_SUBSET
from detection.data.corruptions import CORRUPTIONS, FAMILIES, CorruptedImages, corrupted_pixels, family_of

PHOTO = BCCD_SUBSET / "JPEGImages" / "BloodImage_00000.jpg"


class Photos:
    """A detection dataset of crops of one real photo (item 1 is a skipped sample)."""

    def __init__(self):
        self.pixels = torch.from_numpy(np.array(Image.open(PHOTO).convert("RGB"))[:96, :128]).permute(2, 0, 1)
        self.target = {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])}

    def __len__(self):
        return 3

    def __getitem__(self, index):
        return None if index == 1 else (self.pixels.roll(index, dims=2), self.target)


def test_the_fifteen_corruptions_are_the_benchmarks_in_its_four_families():
    from imagecorruptions import get_corruption_names

    assert list(CORRUPTIONS) == get_corruption_names("common")
    assert [family_of(name) for name in CORRUPTIONS] == ["noise"] * 3 + ["blur"] * 4 + ["weather"] * 4 + \
        ["digital"] * 4 and len(FAMILIES) == 4


@pytest.mark.parametrize("severity", [1, 5])
def test_every_corruption_changes_the_photo_repeatably_and_keeps_its_shape(severity):
    pixels = np.array(Image.open(PHOTO).convert("RGB"))[:96, :128]
    before = np.random.get_state()[1].copy()
    for name in CORRUPTIONS:
        corrupted = corrupted_pixels(pixels, name, severity, seed=7)
        assert corrupted.dtype == np.uint8 and corrupted.shape == pixels.shape, name
        assert np.abs(corrupted.astype(int) - pixels).mean() > 0.5, name
        assert np.array_equal(corrupted, corrupted_pixels(pixels, name, severity, seed=7)), name
    assert np.array_equal(np.random.get_state()[1], before)  # NumPy's global generator is put back


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "frost"])
def test_a_random_corruption_differs_between_seeds_and_images(name):
    dataset = CorruptedImages(Photos(), name, 3, seed=0)
    first, target = dataset[0]
    assert torch.equal(first, dataset[0][0]) and target is dataset.dataset.target
    assert not torch.equal(first, CorruptedImages(Photos(), name, 3, seed=1)[0][0])
    assert dataset.image_seed(0) != dataset.image_seed(2)
    assert not torch.equal(first, CorruptedImages(Photos(), name, 4, seed=0)[0][0])


def test_the_dataset_corrupts_a_copy_keeps_the_objects_and_passes_skipped_samples_on():
    source = Photos()
    kept = source.pixels.clone()
    dataset = CorruptedImages(source, "brightness", 5)
    image, target = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == kept.shape and image.float().mean() > kept.float().mean() + 20
    assert torch.equal(source.pixels, kept) and target is source.target
    assert dataset[1] is None and len(dataset) == 3


def test_an_unknown_corruption_or_severity_is_refused():
    with pytest.raises(ValueError, match="no corruption 'rain' at severity 1"):
        CorruptedImages(Photos(), "rain", 1)
    with pytest.raises(ValueError, match="at severity 6"):
        CorruptedImages(Photos(), "fog", 6)
