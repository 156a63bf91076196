"""dataset=voc, voc_seg, voc_layout and coco on small folders written here in the real formats."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from hydra import compose, initialize_config_dir
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import REPO, run_script

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def write_voc_image(folder: Path, image_id: str, objects: list[tuple], *, size=(64, 48), gray=False,
                    segmentation=False) -> None:
    """One image of a VOC-layout folder: JPEG, XML (objects: (name, xmin, ymin, xmax, ymax, difficult), 1-based
    inclusive as VOC writes them) and, with `segmentation`, a palette SegmentationObject PNG whose index k
    fills object k with a void (255) border."""
    width, height = size
    for sub in ("JPEGImages", "Annotations", "SegmentationObject"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    Image.new("L" if gray else "RGB", size, 90).save(folder / "JPEGImages" / f"{image_id}.jpg")
    xml_objects = "".join(
        f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, x1, y1, x2, y2, difficult in objects)
    (folder / "Annotations" / f"{image_id}.xml").write_text(
        f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>{xml_objects}</annotation>")
    if segmentation:
        index_map = np.zeros((height, width), np.uint8)
        for k, (_, x1, y1, x2, y2, _) in enumerate(objects, start=1):
            index_map[y1 - 1:y2, x1 - 1:x2] = 255
            index_map[y1:y2 - 1, x1:x2 - 1] = k
        png = Image.fromarray(index_map, mode="P")
        png.putpalette([value for k in range(256) for value in (k, 255 - k, (7 * k) % 256)])
        png.save(folder / "SegmentationObject" / f"{image_id}.png")


def write_split(folder: Path, image_set: str, split: str, ids: list[str]) -> None:
    (folder / "ImageSets" / image_set).mkdir(parents=True, exist_ok=True)
    (folder / "ImageSets" / image_set / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    """A VOCdevkit with VOC2007 trainval (2) and test (2), VOC2012 trainval (2) and Segmentation train/val."""
    root = tmp_path_factory.mktemp("VOCdevkit")
    voc07, voc12 = root / "VOC2007", root / "VOC2012"
    write_voc_image(voc07, "000001", [("dog", 11, 6, 40, 30, False), ("person", 2, 2, 20, 40, True)])
    write_voc_image(voc07, "000002", [("tvmonitor", 1, 1, 64, 48, False)], gray=True)
    write_voc_image(voc07, "000003", [("cat", 5, 5, 30, 30, False), ("cat", 31, 10, 60, 40, True)])
    write_voc_image(voc07, "000004", [])
    write_split(voc07, "Main", "trainval", ["000001", "000002"])
    write_split(voc07, "Main", "test", ["000003", "000004"])
    write_voc_image(voc12, "2008_000001", [("aeroplane", 3, 4, 50, 30, False), ("bird", 52, 32, 62, 45, False)],
                    segmentation=True)
    write_voc_image(voc12, "2008_000002", [("sheep", 10, 10, 30, 40, False)], segmentation=True)
    write_split(voc12, "Main", "trainval", ["2008_000001", "2008_000002"])
    write_split(voc12, "Segmentation", "train", ["2008_000001"])
    write_split(voc12, "Segmentation", "val", ["2008_000002"])
    return root


def test_voc_trains_on_07_and_12_trainval_and_validates_on_07_test(compose_train, devkit):
    cfg = compose_train("dataset=voc", f"dataset.root={devkit}", "augment=none")
    assert list(cfg.dataset.classes) == VOC_CLASSES
    train, val = instantiate(cfg.dataset.train), instantiate(cfg.dataset.val)
    assert len(train) == 4 and len(val) == 2
    items = [train[i] for i in range(4)]
    assert [int(target["image_id"]) for _, target in items] == [0, 1, 2, 3]  # unique across the two years
    image, target = items[0]
    # difficult person left out of training; the dog's 1-based inclusive box becomes continuous xyxy
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1]
    assert target["boxes"].tolist() == [[10.0, 5.0, 40.0, 30.0]]
    assert items[1][0].shape == (3, 48, 64)  # the grayscale JPEG comes as RGB
    assert [target["labels"].tolist() for _, target in items[2:]] == [[1, 3], [17]]
    _, test_target = val[0]
    assert test_target["difficult"].tolist() == [False, True]  # kept for evaluation
    assert val[1][1]["boxes"].shape == (0, 4)  # an image without objects stays as a negative


def test_voc_trains_with_difficult_objects_when_asked(compose_train, devkit):
    cfg = compose_train("dataset=voc", f"dataset.root={devkit}", "augment=none", "dataset.train_difficult=true")
    assert instantiate(cfg.dataset.train)[0][1]["labels"].tolist() == [12, 15]


def test_voc_root_from_the_environment_and_clear_errors(compose_train, devkit, monkeypatch, tmp_path):
    monkeypatch.setenv("VOC_ROOT", str(devkit))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        assert compose("train", overrides=["dataset=voc"]).dataset.root == str(devkit)
    with pytest.raises(InstantiationException, match="VOCdevkit root not found.*VOC_ROOT"):
        instantiate(compose_train("dataset=voc", f"dataset.root={tmp_path / 'absent'}").dataset.val)
    with pytest.raises(InstantiationException, match=r"VOC2012/ImageSets/Main/test.txt: split file not found"):
        instantiate(compose_train("dataset=voc", f"dataset.root={devkit}", "dataset.val_sets=[[VOC2012,test]]").dataset.val)


def test_voc_seg_gives_instance_masks_matched_to_the_xml_objects(compose_train, devkit):
    cfg = compose_train("dataset=voc_seg", f"dataset.root={devkit}", "augment=none", "model=maskrcnn")
    train = instantiate(cfg.dataset.train)
    assert len(train) == 1 and len(instantiate(cfg.dataset.val)) == 1
    image, target = train[0]
    assert target["labels"].tolist() == [1, 3]
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (2, 48, 64)
    # the void border (255) is in no mask; the interior of object k is mask k
    assert masks[0].sum() == (28 - 4 + 1) * (48 - 3 + 1) and masks[1].sum() == (43 - 32 + 1) * (60 - 52 + 1)
    ys, xs = torch.nonzero(masks[0], as_tuple=True)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (3, 4, 48, 28)
    assert (masks.sum(0) <= 1).all()


def test_bccd_is_a_preset_of_the_voc_layout_dataset(compose_train, devkit):
    own = compose_train("dataset=voc_layout", f"dataset.root={devkit / 'VOC2007'}", "dataset.classes=[dog,person,tvmonitor,cat]",
                        "dataset.train_split=trainval", "dataset.val_split=test", "augment=none",
                        "dataset.ignore_unknown_classes=true")
    train = instantiate(own.dataset.train)
    assert [train[i][1]["labels"].tolist() for i in range(2)] == [[1], [3]]
    bccd = compose_train("dataset=bccd")
    assert list(bccd.dataset.classes) == ["RBC", "WBC", "Platelets"] and bccd.dataset.train_split == "train"
    assert bccd.dataset.train._target_ == own.dataset.train._target_


def polygon_of(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory) -> Path:
    """A COCO-json split: 3 images (one grayscale, one without annotations), categories with sparse ids,
    polygon, compressed and uncompressed RLE masks, a crowd region and a box running off the image."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    for name, mode in (("a.jpg", "RGB"), ("b.jpg", "L"), ("c.jpg", "RGB")):
        Image.new(mode, (80, 60), 120).save(root / "images" / name)
    crowd = np.zeros((60, 80), np.uint8, order="F")
    crowd[30:50, 40:70] = 1
    compressed = mask_utils.encode(crowd)
    compressed["counts"] = compressed["counts"].decode("ascii")
    block = np.zeros((60, 80), np.uint8)
    block[5:25, 50:75] = 1
    flat = block.flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])) != 0)  # run starts, then the end
    uncompressed = {"size": [60, 80], "counts": np.diff(np.concatenate([[0], changes])).tolist()[: len(changes)]}
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 18, "bbox": [10, 10, 20, 15], "iscrowd": 0,
         "segmentation": polygon_of(10, 10, 30, 25)},
        {"id": 2, "image_id": 10, "category_id": 1, "bbox": [40, 30, 30, 20], "iscrowd": 1, "segmentation": compressed},
        {"id": 3, "image_id": 20, "category_id": 1, "bbox": [50, 5, 25, 20], "iscrowd": 0, "segmentation": uncompressed},
        {"id": 4, "image_id": 20, "category_id": 18, "bbox": [60, 40, 40, 40], "iscrowd": 0,
         "segmentation": polygon_of(60, 40, 80, 60)},
    ]
    data = {"images": [{"id": 10, "file_name": "a.jpg", "width": 80, "height": 60},
                       {"id": 20, "file_name": "b.jpg", "width": 80, "height": 60},
                       {"id": 30, "file_name": "c.jpg", "width": 80, "height": 60}],
            "annotations": annotations,
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}
    (root / "instances.json").write_text(json.dumps(data))
    return root


def coco_overrides(folder: Path) -> list[str]:
    return ["dataset=coco", "dataset.classes=[dog,person]", f"dataset.train_images={folder / 'images'}",
            f"dataset.val_images={folder / 'images'}", f"dataset.train_annotations={folder / 'instances.json'}",
            f"dataset.val_annotations={folder / 'instances.json'}", "augment=none"]


def test_coco_remaps_categories_decodes_masks_and_handles_crowds(compose_train, coco_folder):
    cfg = compose_train(*coco_overrides(coco_folder))
    val, train = instantiate(cfg.dataset.val), instantiate(cfg.dataset.train)
    assert val.category_ids == {1: 18, 2: 1}  # labels follow dataset.classes; the file's ids come back
    image, target = val[0]
    assert image.shape == (3, 60, 80) and target["labels"].tolist() == [1, 2]
    assert target["boxes"].tolist() == [[10, 10, 30, 25], [40, 30, 70, 50]]
    assert target["iscrowd"].tolist() == [False, True] and target["difficult"].tolist() == [False, True]
    assert target["masks"].shape == (2, 60, 80) and target["masks"][1].sum() == 20 * 30  # compressed RLE
    assert abs(int(target["masks"][0].sum()) - 20 * 15) <= 40  # polygon, rasterised
    _, second = val[1]  # grayscale file; an uncompressed RLE; a box clipped to the image
    assert second["masks"][0].sum() == 20 * 25 and second["boxes"][1].tolist() == [60, 40, 80, 60]
    assert val.fixes["boxes clipped to the image"] == 1
    assert val[2][1]["boxes"].shape == (0, 4)  # no annotations: a negative
    assert train[0][1]["labels"].tolist() == [1]  # the crowd region is not trained on


def test_coco_errors_name_the_file_and_the_problem(compose_train, coco_folder, tmp_path):
    with pytest.raises(InstantiationException, match=r"instances.json: unknown category 'person'"):
        instantiate(compose_train(*coco_overrides(coco_folder), "dataset.classes=[dog]").dataset.val)
    ignored = instantiate(compose_train(*coco_overrides(coco_folder), "dataset.classes=[dog]",
                                        "dataset.ignore_unknown_classes=true").dataset.val)
    assert ignored.fixes["ignored unknown-class objects"] == 2
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(InstantiationException, match="broken.json: not a COCO annotation file"):
        instantiate(compose_train(*coco_overrides(coco_folder), f"dataset.val_annotations={broken}").dataset.val)
    with pytest.raises(InstantiationException, match="missing.json: COCO annotation file not found"):
        instantiate(compose_train(*coco_overrides(coco_folder), f"dataset.val_annotations={tmp_path / 'missing.json'}").dataset.val)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (80, 60)).save(tmp_path / "images" / "a.jpg")
    partial = compose_train(*coco_overrides(coco_folder), f"dataset.val_images={tmp_path / 'images'}")
    with pytest.raises(ValueError, match=r"b.jpg: unreadable image"):
        instantiate(partial.dataset.val)[1]
    skipping = instantiate(compose_train(*coco_overrides(coco_folder), f"dataset.val_images={tmp_path / 'images'}",
                                         "dataset.on_bad_sample=skip").dataset.val)
    assert skipping[1] is None and skipping[0] is not None


@pytest.mark.slow
def test_train_and_evaluate_on_coco_json_data(tmp_path, coco_folder):
    tracking = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    result = run_script("train.py", "debug=smoke", "backbone=resnet18", "anchors=shapes128", "augment=ssd",
                        "tracking.log_model=false", *coco_overrides(coco_folder)[:-1], cwd=tmp_path, env=tracking)
    assert result.returncode == 0, result.stdout + result.stderr
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    result = run_script("evaluate.py", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.pt'}", cwd=evaluation,
                        env=tracking)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((evaluation / "run" / "metrics.json").read_text())
    assert {"val/map", "val/map50_voc", "val/map50_95", "val/map50_coco", "val/map75", "val/map50_95_small",
            "val_class/ap50_95/dog", "val_class/ap50_voc07/dog"} <= set(metrics)
    assert "COCO AP" in result.stdout and "person" in result.stdout
    detections = json.loads((evaluation / "run" / "detections.json").read_text())
    # the file's own ids, so that pycocotools takes the results as they are
    assert {d["image_id"] for d in detections} <= {10, 20, 30} and {d["category_id"] for d in detections} <= {1, 18}


@pytest.mark.slow
def test_maskrcnn_trains_on_voc_seg(tmp_path, devkit):
    result = run_script("train.py", "debug=smoke", "model=maskrcnn", "dataset=voc_seg", f"dataset.root={devkit}",
                        "model.min_size=64", "model.max_size=96", "tracking=none", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
