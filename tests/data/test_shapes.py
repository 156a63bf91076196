"""The embedded shapes data and the VOC-layout reader."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from conftest import BCCD_ROOT, BCCD_SUBSET, needs_full_bccd
from detection.data.loader import build_loader
from detection.data.shapes import build_shapes_dataset, generate_shapes
from detection.data.voc import parse_voc_xml
from detection.cli.assembly import build_model

CLASSES = ["ellipse", "rectangle", "triangle", "star"]


def digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        sha.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return sha.hexdigest()


def test_generation_is_deterministic_and_in_the_voc_layout(tmp_path):
    settings = dict(class_names=CLASSES, num_train=12, num_val=4, image_size=96, max_objects=5, seed=3)
    generate_shapes(tmp_path / "a", **settings)
    generate_shapes(tmp_path / "b", **settings)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    for folder in ("JPEGImages", "Annotations", "SegmentationObject"):
        assert len(list((tmp_path / "a" / folder).iterdir())) == 16
    assert (tmp_path / "a" / "ImageSets" / "Main" / "val.txt").read_text().split() == ["000012", "000013", "000014", "000015"]
    generate_shapes(tmp_path / "c", **{**settings, "seed": 4})
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_targets_follow_the_contract_and_masks_agree_with_boxes(tmp_path):
    dataset = build_shapes_dataset(root=str(tmp_path), split="train", class_names=CLASSES, num_train=60, num_val=4)
    empty, objects = 0, 0
    for image, target in dataset:
        height, width = image.shape[1:]
        boxes, masks = target["boxes"], target["masks"]
        assert masks.shape == (len(boxes), height, width) and masks.dtype == torch.uint8
        assert target["labels"].dtype == torch.int64 and (target["labels"] >= 1).all()
        assert target["difficult"].dtype == torch.bool
        empty += len(boxes) == 0
        objects += len(boxes)
        for box, mask in zip(boxes, masks):
            rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
            assert box.tolist() == [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]
    assert empty >= 1 and objects > 60  # some images are negatives, most have several objects


def test_object_sizes_span_every_feature_map_of_the_default_ssd(tmp_path):
    dataset = build_shapes_dataset(root=str(tmp_path), split="train", class_names=CLASSES, num_train=200, num_val=4)
    sides = torch.cat([torch.from_numpy((a.boxes[:, 2:] - a.boxes[:, :2]).max(axis=1)) for a in dataset.annotations])
    assert sides.min() < 16 and sides.max() > 100


def test_voc_boxes_become_continuous_xyxy_on_a_real_xml_file():
    xml = BCCD_SUBSET / "Annotations" / "BloodImage_00000.xml"
    if not xml.is_file():
        pytest.skip(f"{xml} not available")
    objects = parse_voc_xml(xml, ["RBC", "WBC", "Platelets"]).objects
    # the file's first object is the WBC at xmin 260, ymin 177, xmax 491, ymax 376
    assert objects.labels[0] == 2
    assert objects.boxes[0].tolist() == [259.0, 176.0, 491.0, 376.0]
    assert not objects.difficult.any() and objects.size == (640, 480)


def test_training_split_leaves_difficult_objects_out_with_their_masks(tmp_path):
    kept = build_shapes_dataset(root=str(tmp_path), split="train", class_names=CLASSES, num_train=120, num_val=4)
    trained = build_shapes_dataset(root=str(tmp_path), split="train", class_names=CLASSES, num_train=120, num_val=4,
                                   keep_difficult=False)
    index = next(i for i, a in enumerate(kept.annotations) if a.difficult.any() and not a.difficult.all())
    _, full = kept[index]
    _, easy = trained[index]
    assert torch.equal(easy["boxes"], full["boxes"][~full["difficult"]])
    assert torch.equal(easy["masks"], full["masks"][~full["difficult"]])
    assert not np.any(trained.annotations[index].difficult)


@needs_full_bccd
def test_bccd_preset_reads_the_real_data_and_trains_a_step(compose_train):
    root = BCCD_ROOT
    if not root.is_dir():
        pytest.skip(f"{root} not available")
    cfg = compose_train("dataset=bccd", f"dataset.root={root}", "backbone=resnet18", "anchors=shapes128")
    train, val = instantiate(cfg.dataset.train), instantiate(cfg.dataset.val)
    assert (len(train), len(val)) == (205, 87) and not train.fixes and not val.fixes
    image, target = val[0]
    assert image.shape == (3, 480, 640) and target["labels"].tolist()[:2] == [2, 1]  # WBC, RBC
    model = build_model(cfg).train()
    images, targets = zip(train[0], train[1])
    losses = model(list(images), list(targets))
    assert torch.isfinite(sum(losses.values()))


def test_persistent_workers_give_every_epoch_the_batches_of_the_main_process(compose_train):
    """Items are seeded by (seed, epoch, index), so workers kept from epoch to epoch change nothing."""
    cfg = compose_train("augment=ssd", "anchors=shapes128", "dataset.num_train=8", "dataset.num_val=4")
    train = instantiate(cfg.dataset.train)

    def epochs(**workers):
        loader = build_loader(train, batch_size=4, shuffle=True, seed=3, augmentation=train.transforms, **workers)
        return [[(image, target["boxes"]) for images, targets, _ in loader.epoch(epoch)
                 for image, target in zip(images, targets)] for epoch in (0, 1)]

    alone, persistent = epochs(num_workers=0), epochs(num_workers=2, persistent_workers=True, prefetch_factor=1)
    assert not torch.equal(alone[0][0][0], alone[1][0][0])  # the epochs differ
    for expected, got in zip(alone, persistent):
        assert all(torch.equal(a, b) and torch.equal(c, d) for (a, c), (b, d) in zip(expected, got))
        assert all(image.dtype == torch.uint8 for image, _ in got)  # bytes cross the process boundary
