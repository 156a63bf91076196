"""The 15 ImageNet-C corruptions at severities 1-5, as the robustness benchmark of Michaelis et al. (2019)
applies them to detection data, with the authors' own functions (the `imagecorruptions` package, in its
maintained fork `imagecorruptions-imaug`). Importing this module imports neither torch, NumPy nor that
package: the settings' schema and checks read its names before anything heavy loads."""

from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    import numpy as np

# the benchmark's order, grouped in its four families
FAMILIES = {"noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
            "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
            "weather": ("snow", "frost", "fog", "brightness"),
            "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression")}
CORRUPTIONS = tuple(name for names in FAMILIES.values() for name in names)
SEVERITIES = (1, 2, 3, 4, 5)
SEEDED_BY_ARGUMENT = ("impulse_noise", "glass_blur")  # these draw from their own generator, seeded by `seed=`
INSTALL = ("pip install --no-deps imagecorruptions-imaug==1.1.5 (make install does; its declared opencv-python "
           "would replace our headless OpenCV)")


def family_of(corruption: str) -> str:
    """The family ('noise', 'blur', 'weather', 'digital') a corruption belongs to."""
    return next(family for family, names in FAMILIES.items() if corruption in names)


def unknown_corruptions(names: Sequence[str]) -> list[str]:
    """The names in `names` that are not among the 15 CORRUPTIONS."""
    return [name for name in names if name not in CORRUPTIONS]


def corrupted_pixels(pixels: "np.ndarray", corruption: str, severity: int, seed: int) -> "np.ndarray":
    """`pixels` (uint8 [H, W, 3], at least 32x32) under one corruption at one severity, the same for the same
    `seed`: the functions draw from NumPy's global generator (reseeded here, and put back as it was after)
    or, for SEEDED_BY_ARGUMENT, from a generator seeded by their `seed` argument. uint8 [H, W, 3]."""
    import numpy as np
    from imagecorruptions import corrupt

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        extra = {"seed": seed} if corruption in SEEDED_BY_ARGUMENT else {}
        return corrupt(np.ascontiguousarray(pixels), severity=severity, corruption_name=corruption, **extra)
    finally:
        np.random.set_state(state)


class CorruptedImages:
    """A detection dataset (items (image uint8 [3, H, W] tensor, target) or None for a skipped sample) whose
    images come corrupted, each made when its item is loaded (on the loader's workers), seeded by (`seed`,
    index, corruption, severity); targets unchanged (no corruption moves the objects)."""

    def __init__(self, dataset, corruption: str, severity: int, seed: int = 0):
        if unknown_corruptions([corruption]) or severity not in SEVERITIES:
            raise ValueError(f"no corruption {corruption!r} at severity {severity}: choose from {list(CORRUPTIONS)} "
                             f"and {list(SEVERITIES)}")
        self.dataset, self.corruption, self.severity, self.seed = dataset, corruption, severity, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def image_seed(self, index: int) -> int:
        """The seed of item `index`'s corruption: the same in any worker, for any batch size."""
        import numpy as np

        return int(np.random.SeedSequence([self.seed, index, CORRUPTIONS.index(self.corruption),
                                           self.severity]).generate_state(1)[0])

    def __getitem__(self, index: int) -> Optional[tuple]:
        item = self.dataset[index]
        if item is None:
            return None
        image, target = item[0].clone(), item[1]  # the dataset's tensor may be kept elsewhere
        pixels = image.permute(1, 2, 0).numpy()  # a view of the copy, corrupted in place
        pixels[...] = corrupted_pixels(pixels, self.corruption, self.severity, self.image_seed(index))
        return image, target
