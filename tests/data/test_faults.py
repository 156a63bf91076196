"""The fault and bad-input suite: each case ends in an error naming the file or key, or a counted skip,
and no checkpoint is lost. (Checkpoint writes, a dying tracking server and bad overrides are in
test_loop.py, test_reliability.py and test_config.py, under the same marker.)"""

import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import run_script
from detection.data.audit import audit_split
from detection.data.loader import build_loader
from detection.data.shapes import generate_shapes
from detection.data.samples import collate_detection
from detection.data.voc import VOCDetection
from detection.engine.inference import evaluate
from detection.evaluation import DetectionEvaluator
from detection.cli.assembly import build_model

pytestmark = pytest.mark.faults

CLASSES = ["ellipse", "rectangle", "triangle", "star"]


@pytest.fixture(scope="module")
def clean_voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc") / "clean"
    generate_shapes(root, class_names=CLASSES, num_train=10, num_val=2, image_size=64, max_objects=3, seed=5)
    return root


@pytest.fixture
def voc(clean_voc, tmp_path) -> Path:
    """A private copy of a small VOC-layout folder that a test may break."""
    root = tmp_path / "voc"
    shutil.copytree(clean_voc, root)
    return root


def dataset(root, **options):
    return VOCDetection(root=str(root), split="train", class_names=CLASSES, with_masks=True, **options)


def first_id(root: Path) -> str:
    return (root / "ImageSets" / "Main" / "train.txt").read_text().split()[0]


def set_xml(root: Path, image_id: str, objects: str):
    """Replaces the image's annotation with `objects` on a 64x64 image (its pixels and mask resized to it,
    since the XML's <size> must be the image's)."""
    for path in (root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationObject" / f"{image_id}.png"):
        with Image.open(path) as image:
            resized = image.resize((64, 64), Image.Resampling.NEAREST)
        resized.save(path)
    size = "<size><width>64</width><height>64</height></size>"
    (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{size}{objects}</annotation>")


def box(name, xmin, ymin, xmax, ymax):
    return (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "empty"])
def test_unreadable_image_is_an_error_naming_it_or_a_counted_skip(voc, damage):
    image = voc / "JPEGImages" / f"{first_id(voc)}.jpg"
    data = image.read_bytes()
    image.write_bytes({"corrupt": b"\x00garbage" * 50, "truncated": data[: len(data) // 3], "empty": b""}[damage])
    with pytest.raises(ValueError, match=f"{image}: unreadable image"):
        dataset(voc)[0]
    skipping = dataset(voc, on_bad_sample="skip")
    assert skipping[0] is None
    images, targets, skipped = collate_detection([skipping[0], skipping[1]])
    assert skipped == 1 and len(images) == len(targets) == 1


def test_truncated_mask_png_is_an_error_naming_it_or_a_counted_skip(voc):
    mask = voc / "SegmentationObject" / f"{first_id(voc)}.png"
    mask.write_bytes(mask.read_bytes()[:40])
    with pytest.raises(ValueError, match=f"{mask}: unreadable image"):
        dataset(voc)[0]
    assert dataset(voc, on_bad_sample="skip")[0] is None


def test_malformed_xml_is_an_error_naming_it_or_a_counted_skip(voc):
    xml = voc / "Annotations" / f"{first_id(voc)}.xml"
    xml.write_text("<annotation><object><name>star</name>")
    with pytest.raises(ValueError, match=f"{xml}: malformed XML"):
        dataset(voc)
    skipping = dataset(voc, on_bad_sample="skip")
    assert len(skipping) == 9 and skipping.fixes["skipped samples"] == 1


def test_xml_without_its_image_is_an_error_naming_both_or_a_counted_skip(voc):
    image = voc / "JPEGImages" / f"{first_id(voc)}.jpg"
    image.unlink()
    with pytest.raises(FileNotFoundError, match=f"its image {image} does not exist"):
        dataset(voc)
    assert len(dataset(voc, on_bad_sample="skip")) == 9


def test_boxes_outside_the_image_are_clipped_and_empty_ones_dropped_and_counted(voc):
    image_id = first_id(voc)
    set_xml(voc, image_id, box("star", -9, 5, 20, 90) + box("ellipse", 70, 5, 80, 20) + box("triangle", 10, 10, 9, 30)
            + box("rectangle", 5, 5, 30, 30))
    loaded = dataset(voc)
    assert loaded.annotations[0].boxes.tolist() == [[0, 4, 20, 64], [4, 4, 30, 30]]
    assert loaded.annotations[0].labels.tolist() == [4, 2]
    assert loaded.annotations[0].instance_ids.tolist() == [1, 4]  # masks stay paired with their objects
    assert loaded.fixes["boxes clipped to the image"] == 2 and loaded.fixes["empty boxes dropped"] == 2
    image, target = loaded[0]
    assert target["boxes"].shape == (2, 4) and target["masks"].shape == (2, *image.shape[1:])


def test_unknown_class_is_an_error_naming_file_and_class_or_ignored_and_counted(voc):
    image_id = first_id(voc)
    set_xml(voc, image_id, box("unicorn", 5, 5, 30, 30) + box("star", 5, 5, 30, 30))
    with pytest.raises(ValueError, match=rf"{image_id}\.xml: unknown class 'unicorn'"):
        dataset(voc)
    loaded = dataset(voc, ignore_unknown_classes=True)
    assert loaded.annotations[0].labels.tolist() == [4]
    assert loaded.fixes["ignored unknown-class objects"] == 1


def test_image_without_objects_stays_as_a_negative(voc):
    set_xml(voc, first_id(voc), "")
    image, target = dataset(voc)[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, *image.shape[1:])


def test_empty_split_and_missing_root_are_errors_naming_the_path(voc, tmp_path):
    (voc / "ImageSets" / "Main" / "train.txt").write_text("\n")
    with pytest.raises(ValueError, match="train.txt: the split lists no images"):
        dataset(voc)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'}: dataset root not found"):
        VOCDetection(root=str(tmp_path / "nowhere"), split="train", class_names=CLASSES)


def test_skipped_samples_are_counted_through_the_loader_and_evaluation(voc, compose_train):
    for image_id in (voc / "ImageSets" / "Main" / "train.txt").read_text().split()[:3]:
        (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"")
    loader = build_loader(dataset(voc, on_bad_sample="skip"), batch_size=4, shuffle=False, num_workers=1, seed=0)
    model = build_model(compose_train("backbone=resnet18", "anchors=shapes128"))
    metrics = evaluate(model, loader, DetectionEvaluator(class_names=CLASSES), device=torch.device("cpu"),
                       progress=False)
    assert metrics["skipped_samples"] == 3


def test_a_sample_is_its_ids_image_whatever_its_xml_filename_names(voc):
    first, second = (voc / "ImageSets" / "Main" / "train.txt").read_text().split()[:2]
    xml = voc / "Annotations" / f"{first}.xml"
    text = xml.read_text()
    xml.write_text(text.replace("</annotation>", f"<filename>{second}.jpg</filename></annotation>")
                   if "<filename>" not in text else re.sub(r"<filename>[^<]*</filename>",
                                                            f"<filename>{second}.jpg</filename>", text))
    data = dataset(voc)
    assert data.annotations[0].image_path.name == f"{first}.jpg"
    assert data.fixes["XML <filename>s naming another image (the id's is read)"] == 1
    audit = audit_split(voc, "train", CLASSES)
    assert audit.problems["<filename> names another image"] == [
        f"{xml}: <filename> {second}.jpg, but the image of {first} is {first}.jpg (read)"]


@pytest.mark.parametrize("size, named", [("<width>inf</width><height>64</height>", "<size><width> is 'inf'"),
                                         ("<width>abc</width><height>64</height>", "<size><width> is 'abc'"),
                                         ("<width>64</width><height>-3</height>", "<size><height> is '-3'")])
def test_a_size_that_is_not_a_pixel_count_is_an_error_naming_the_file_or_a_counted_skip(voc, size, named):
    image_id = first_id(voc)
    set_xml(voc, image_id, box("star", 5, 5, 20, 20))
    xml = voc / "Annotations" / f"{image_id}.xml"
    xml.write_text(xml.read_text().replace("<width>64</width><height>64</height>", size))
    with pytest.raises(ValueError, match=re.escape(f"{xml}: {named}")):
        dataset(voc)
    assert dataset(voc, on_bad_sample="skip").fixes["skipped samples"] == 1


def test_a_coordinate_that_is_not_finite_is_an_error_naming_the_file_and_object(voc):
    image_id = first_id(voc)
    set_xml(voc, image_id, box("star", 5, 5, 20, 20) + box("ellipse", 1, "nan", 9, 9))
    with pytest.raises(ValueError, match=re.escape(f"{image_id}.xml: object 2 ('ellipse') has bndbox [1.0, nan")):
        dataset(voc)


def test_a_utf16_split_file_reads_as_utf8_and_other_bytes_are_named(voc):
    split = voc / "ImageSets" / "Main" / "train.txt"
    ids = split.read_text().split()
    split.write_text("\r\n".join(ids), encoding="utf-16")
    assert [a.image_path.stem for a in dataset(voc).annotations] == ids
    split.write_bytes(b"\xff\xfe\xff" + bytes(range(128, 256)))
    with pytest.raises(ValueError, match=re.escape(f"{split}: neither UTF-8 nor UTF-16 text")):
        dataset(voc)
    split.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ValueError, match=re.escape(f"{split}: neither UTF-8 nor UTF-16 text")):
        dataset(voc)


def test_class_names_twice_are_refused(voc):
    with pytest.raises(ValueError, match=re.escape("dataset.classes lists ['star'] more than once")):
        VOCDetection(root=str(voc), split="train", class_names=[*CLASSES, "star"])


@pytest.mark.slow
def test_a_run_whose_every_training_image_is_unreadable_stops_with_one_line(voc, tmp_path):
    for image_id in (voc / "ImageSets" / "Main" / "train.txt").read_text().split():
        (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"")
    result = run_script("train.py", "debug=smoke", "backbone=resnet18", "anchors=shapes128", "dataset=voc_layout",
                        f"dataset.root={voc}", f"dataset.classes=[{','.join(CLASSES)}]", "dataset.val_split=train",
                        "dataset.on_bad_sample=skip", "tracking=none", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "epoch 1 made no training step" in output and "Traceback" not in output, output


@pytest.mark.parametrize("workers", [0, 1])
def test_training_on_a_truncated_image_stops_in_one_line_that_names_it_and_the_remedies(voc, tmp_path, workers):
    val_id = (voc / "ImageSets" / "Main" / "val.txt").read_text().split()[0]
    image = voc / "JPEGImages" / f"{val_id}.jpg"
    image.write_bytes(image.read_bytes()[:300])
    result = run_script("train.py", "debug=smoke", "dataset=voc_layout", f"dataset.root={voc}",
                        f"dataset.classes=[{','.join(CLASSES)}]", "backbone=resnet18", "anchors=shapes128",
                        "tracking=none", f"trainer.num_workers={workers}", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = [line for line in (result.stdout + result.stderr).splitlines() if "[ERROR]" in line]
    assert f"[ERROR] - {image}: unreadable image (OSError: " in line
    assert line.endswith("dataset.on_bad_sample=skip leaves such samples out (counted and logged); python -m "
                         "detection.cli.inspect_data lists every bad file of a VOC-layout dataset")
    assert "Traceback" not in result.stdout + result.stderr
