"""augment=ssd_gpu: the SSD recipe with decoding and pixels on the device, tested on CPU tensors here and on
CUDA where present. The same properties as the CPU recipe (boxes inside and non-degenerate, targets paired,
empty targets survive), pixels that match the CPU warp, colour changes that match torchvision's, plans
repeatable per item, no read back to the host, and the real BCCD JPEGs through the dataset and the step."""

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from hydra.utils import instantiate
from PIL import Image

from conftest import BCCD_SUBSET, run_script
from detection.data.device_augment import DeviceSSDAugmentation, colour_jitter, decoded, padded_batch, warp_batch
from detection.data.geometry import SSDGeometry, warp_pixels
from detection.data.loader import build_loader
from detection.engine.checkpoint import load_checkpoint
from detection.profiling.host_reads import HostReads
from detection.engine.step import TrainStep

BCCD = BCCD_SUBSET
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]


def jpeg_sample(seed: int, max_objects: int = 6):
    """JPEG bytes uint8 [L] of a random image, its (width, height), and 0..max_objects integer boxes."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(40, 160, 2))
    count = int(rng.integers(0, max_objects + 1))
    corner = rng.integers(0, [width - 4, height - 4], size=(count, 2))
    far = np.minimum(corner + rng.integers(3, 60, size=(count, 2)), [width, height])
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    encoded = cv2.imencode(".jpg", pixels)[1].reshape(-1)
    annotation = {"boxes": np.concatenate([corner, far], axis=1).astype(np.float32),
                  "labels": rng.integers(1, 5, count), "difficult": rng.random(count) < 0.3}
    return torch.from_numpy(encoded), (width, height), annotation


@pytest.mark.parametrize("device", DEVICES)
def test_the_batch_keeps_every_target_consistent_and_survives_empty_targets(device):
    augmentation = DeviceSSDAugmentation(SSDGeometry(96, zoom_p=0.7))
    images, targets, originals = [], [], []
    for seed in range(40):
        encoded, (width, height), annotation = jpeg_sample(seed)
        augmentation.set_random_seed(seed)
        image, target = augmentation.plan(encoded, width, height, index=seed, **annotation)
        images.append(image)
        targets.append(target)
        originals.append(set(zip(annotation["labels"].tolist(), annotation["difficult"].tolist())))
    assert any(len(t["boxes"]) == 0 for t in targets)  # empty targets are in the batch
    out_images, out_targets = augmentation(images, targets, torch.device(device))
    assert len(out_images) == 40
    for image, target, pairs in zip(out_images, out_targets, originals):
        assert image.shape == (3, 96, 96) and image.dtype == torch.uint8 and image.device.type == device
        assert set(target) == {"boxes", "labels", "difficult", "image_id"}
        boxes = target["boxes"].cpu()
        assert len(target["labels"]) == len(target["difficult"]) == len(boxes)
        assert (boxes >= 0).all() and (boxes <= 96).all()
        assert (boxes[:, 2] - boxes[:, 0] >= 1).all() and (boxes[:, 3] - boxes[:, 1] >= 1).all()
        assert set(zip(target["labels"].tolist(), target["difficult"].tolist())) <= pairs
    assert augmentation([], [], torch.device(device)) == ([], [])


@pytest.mark.parametrize("device", DEVICES)
def test_the_warp_matches_the_cpu_recipes_warp(device):
    """grid_sample on the device and cv2.warpAffine in a worker sample the same places: the CPU and the GPU
    paths differ in where the pixels are made, not in what they show."""
    image = cv2.cvtColor(cv2.imread(str(sorted((BCCD / "JPEGImages").glob("*.jpg"))[0])), cv2.COLOR_BGR2RGB)
    geometry = SSDGeometry(300, zoom_p=0.5)
    matrices = [geometry.sample(np.random.default_rng(seed), np.array([[200, 150, 400, 300]]), 640, 480)
                for seed in range(6)]
    pixels = torch.from_numpy(image).permute(2, 0, 1).float().to(device).expand(6, 3, 480, 640)
    warped = warp_batch(pixels, torch.tensor(np.stack(matrices), dtype=torch.float32, device=device), 300)
    for matrix, ours in zip(matrices, warped.round().clamp(0, 255).byte().cpu()):
        theirs = torch.from_numpy(warp_pixels(image, matrix, 300, fill=(0, 0, 0))).permute(2, 0, 1)
        difference = (ours.int() - theirs.int()).abs()
        assert difference.float().mean() < 0.5 and torch.quantile(difference.float(), 0.99) <= 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_batch_after_decoding_never_waits_for_the_gpu():
    """CUDA's own check: padding, colour and warp make no synchronising call (the constants were copied once)."""
    augmentation = DeviceSSDAugmentation(SSDGeometry(96, zoom_p=0.7))
    plans = []
    for seed in range(8):
        encoded, (width, height), annotation = jpeg_sample(seed)
        augmentation.set_random_seed(seed)
        plans.append(augmentation.plan(encoded, width, height, index=seed, **annotation))
    images, targets = [image for image, _ in plans], [target for _, target in plans]
    augmentation(images, targets, torch.device("cuda"))  # the first call copies the constants
    pixels = decoded(images, torch.device("cuda"))
    warps = torch.stack([t["warp"] for t in targets]).cuda()
    colours = torch.stack([t["colour"] for t in targets]).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch, valid = padded_batch(pixels)
        warp_batch(colour_jitter(batch, valid, colours) * valid, warps, 96)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_colour_changes_match_torchvisions_and_the_hue_turns_round():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 3, 20, 30), generator=generator).float()
    valid = torch.ones(4, 1, 20, 30)
    factors = torch.tensor([[1.1, 1.0, 1.0], [1.0, 0.6, 1.0], [1.0, 1.0, 1.4], [0.9, 1.3, 0.7]])
    colour = torch.cat([factors, torch.zeros(4, 1), torch.arange(3.0).expand(4, 3)], dim=1)
    ours = colour_jitter(pixels, valid, colour)
    for image, (brightness, contrast, saturation), out in zip(pixels, factors, ours):
        expected = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(
            image / 255, float(brightness)), float(contrast)), float(saturation)) * 255
        torch.testing.assert_close(out, expected, atol=0.1, rtol=0)
    identity = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0, 1, 2]])
    torch.testing.assert_close(colour_jitter(pixels[:1], valid[:1], identity), pixels[:1], atol=1e-3, rtol=0)
    full_turn = identity.clone()
    full_turn[0, 3] = 1.0
    torch.testing.assert_close(colour_jitter(pixels[:1], valid[:1], full_turn), pixels[:1], atol=1e-2, rtol=0)
    gray = torch.full((1, 3, 4, 4), 100.0)
    half_turn = identity.clone()
    half_turn[0, 3] = 0.5
    torch.testing.assert_close(colour_jitter(gray, valid[:1, :, :4, :4], half_turn), gray, atol=1e-3, rtol=0)
    swapped = identity.clone()
    swapped[0, 4:] = torch.tensor([2.0, 1.0, 0.0])
    torch.testing.assert_close(colour_jitter(pixels[:1], valid[:1], swapped), pixels[:1].flip(1), atol=1e-3, rtol=0)


def test_the_contrast_mean_ignores_the_padding_of_smaller_images():
    image = torch.full((1, 3, 10, 10), 200.0)
    image[..., 5:, :] = 0  # the lower half is padding
    valid = torch.zeros(1, 1, 10, 10)
    valid[..., :5, :] = 1
    low_contrast = torch.tensor([[1.0, 0.5, 1.0, 0.0, 0, 1, 2]])
    out = colour_jitter(image, valid, low_contrast)
    torch.testing.assert_close(out[..., :5, :], image[..., :5, :], atol=1e-3, rtol=0)  # uniform: unchanged


def bccd_training_set(compose_train, *overrides):
    cfg = compose_train("dataset=bccd", "augment=ssd_gpu", "anchors=shapes128", f"dataset.root={BCCD}", *overrides)
    return instantiate(cfg.dataset.train)


def test_the_bccd_jpegs_go_through_the_loader_and_the_step_without_a_read_back(compose_train):
    train_set = bccd_training_set(compose_train)
    image, target = train_set[0]
    assert image.dim() == 1 and image[:2].tolist() == [0xFF, 0xD8]  # the file's bytes, for the device
    assert target["warp"].shape == (2, 3) and target["colour"].shape == (7,)
    loader = build_loader(train_set, batch_size=6, shuffle=True, num_workers=0, seed=3, augmentation=train_set.transforms)
    images, targets, _ = next(iter(loader.epoch(0)))
    train_step = TrainStep(torch.nn.Linear(1, 1), None, None, device=torch.device("cpu"), augment=train_set.transforms)
    with HostReads() as counter:
        augmented, moved = train_step.on_device(images, targets)
    assert counter.reads == []
    assert [tuple(image.shape) for image in augmented] == [(3, 128, 128)] * 6
    again = train_step.on_device(*next(iter(loader.epoch(0)))[:2])[0]
    assert all(torch.equal(a, b) for a, b in zip(augmented, again))  # seeded per (seed, epoch, index)
    other_epoch = train_step.on_device(*next(iter(loader.epoch(1)))[:2])[0]
    assert not all(torch.equal(a, b) for a, b in zip(augmented, other_epoch))


def test_other_formats_and_turned_jpegs_are_decoded_in_the_worker(compose_train, tmp_path):
    """nvJPEG reads neither PNGs nor EXIF orientation: those images reach the device as upright pixels."""
    train_set = bccd_training_set(compose_train)
    annotation = train_set.annotations[0]
    stored = Image.open(annotation.image_path)
    stored.save(tmp_path / "image.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown rotated by 90 degrees
    stored.save(tmp_path / "turned.jpg", exif=exif)
    for name, shape in [("image.png", (3, 480, 640)), ("turned.jpg", (3, 640, 480))]:
        train_set.annotations[0] = replace(annotation, image_path=tmp_path / name, size=None)
        image, target = train_set[0]
        assert image.shape == shape and image.dtype == torch.uint8
        out, _ = train_set.transforms([image], [target], torch.device("cpu"))
        assert out[0].shape == (3, 128, 128)


def test_mask_r_cnn_with_augment_ssd_gpu_is_refused_before_torch_loads(tmp_path):
    result = run_script("train.py", "experiment=maskrcnn_shapes", "augment=ssd_gpu", "tracking=none", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "moves boxes but no instance masks" in output and "Traceback" not in output


@pytest.mark.slow
def test_train_py_runs_augment_ssd_gpu_on_the_bccd_jpegs(tmp_path):
    """The whole run on this machine's device (the CPU here): workers hand over bytes, the step decodes and
    augments, the debug image shows the network's input."""
    result = run_script("train.py", "dataset=bccd", f"dataset.root={BCCD}", "augment=ssd_gpu", "debug=smoke",
                        "backbone=resnet18", "anchors=shapes128", "trainer.limit_train_images=8",
                        "trainer.limit_val_images=4", "trainer.num_workers=1", "tracking=none", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4  # 8 images, batch 2
    drawn = Image.open(sorted((tmp_path / "run" / "debug_images").glob("train_step_*.png"))[0])
    assert drawn.size == (256, 256)  # the 128-pixel input, drawn twice as large
