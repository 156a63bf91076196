"""Data as it arrives from users, read right or refused by name: EXIF orientation, XML sizes that disagree
with the pixels, 16-bit and other pixel formats, huge images, Windows split files, PNG file names, textual
difficult flags, class names in any script, and a split with nothing to measure."""

import math
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import BCCD_SUBSET
from detection.data.coco import COCODetection
from detection.data.samples import read_pixels
from detection.data.voc import VOCDetection
from detection.evaluation import DetectionEvaluator
from detection.tracking.mlflow_tracker import MlflowKeys
from detection.reporting.drawing import draw_detections, drawable_names
from detection.reporting.plots import save_precision_recall_plot

pytestmark = pytest.mark.faults

BCCD = BCCD_SUBSET
BCCD_CLASSES = ["RBC", "WBC", "Platelets"]


@pytest.fixture
def bccd(tmp_path) -> Path:
    """A writable copy of 4 real BCCD samples (640x480 JPEGs and their XML) as a VOC-layout folder."""
    root = tmp_path / "bccd"
    ids = [f"BloodImage_0000{k}" for k in range(4)]
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for image_id in ids:
        shutil.copy(BCCD / "Annotations" / f"{image_id}.xml", root / "Annotations")
        shutil.copy(BCCD / "JPEGImages" / f"{image_id}.jpg", root / "JPEGImages")
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids) + "\n")
    return root


def read(root, **options):
    return VOCDetection(root=str(root), split="train", class_names=BCCD_CLASSES, **options)


def xml_of(root, image_id="BloodImage_00000") -> Path:
    return root / "Annotations" / f"{image_id}.xml"


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_an_exif_rotated_photo_is_read_upright_with_its_boxes_in_place_and_counted(bccd):
    """A camera stores the photo sideways with Orientation=6; annotation tools show and annotate it upright."""
    expected_image, expected_target = read(bccd)[0]
    path = bccd / "JPEGImages" / "BloodImage_00000.jpg"
    upright = Image.open(path)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what Orientation=6 turns clockwise back upright
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif, quality=100)
    dataset = read(bccd)
    image, target = dataset[0]
    assert image.shape == expected_image.shape == (3, 480, 640)
    assert torch.equal(target["boxes"], expected_target["boxes"])
    assert (image.float() - expected_image.float()).abs().mean() < 0.03 * 255  # the same picture, after one more JPEG round trip
    assert dataset.fixes["images rotated by their EXIF orientation"] == 1


def test_an_invalid_exif_orientation_turns_nothing_and_is_not_counted(bccd):
    expected_image, _ = read(bccd)[0]
    path = bccd / "JPEGImages" / "BloodImage_00000.jpg"
    exif = Image.Exif()
    exif[0x0112] = 9  # no orientation EXIF defines (1 to 8)
    Image.open(path).save(path, exif=exif, quality=100)
    dataset = read(bccd)
    assert dataset[0][0].shape == expected_image.shape and not dataset.fixes["images rotated by their EXIF orientation"]


def test_a_mirrored_photo_is_counted_as_mirrored_not_rotated(bccd):
    path = bccd / "JPEGImages" / "BloodImage_00000.jpg"
    exif = Image.Exif()
    exif[0x0112] = 2  # mirrored left to right, not turned
    Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path, exif=exif, quality=100)
    dataset = read(bccd)
    assert dataset.fixes["images mirrored by their EXIF orientation"] == 1
    assert not dataset.fixes["images rotated by their EXIF orientation"]


@pytest.mark.parametrize("size", ["320x240", "1280x960"])
def test_an_xml_size_that_disagrees_with_the_pixels_is_an_error_naming_both_or_a_counted_skip(bccd, size):
    width, height = size.split("x")
    replace_in(xml_of(bccd), "<width>640</width>", f"<width>{width}</width>")
    replace_in(xml_of(bccd), "<height>480</height>", f"<height>{height}</height>")
    with pytest.raises(ValueError, match=rf"{xml_of(bccd)}: <size> says {width}x{height} but the image "
                                         rf".*BloodImage_00000.jpg is 640x480"):
        read(bccd)
    skipping = read(bccd, on_bad_sample="skip")
    assert len(skipping) == 3 and skipping.fixes["skipped samples"] == 1


def test_a_coco_size_that_disagrees_with_the_pixels_is_an_error_or_a_skip(bccd, tmp_path):
    annotation = tmp_path / "instances.json"
    annotation.write_text('{"images": [{"id": 1, "file_name": "BloodImage_00000.jpg", "width": 320, "height": 240}],'
                          ' "annotations": [], "categories": [{"id": 1, "name": "RBC"}]}')
    options = dict(image_folder=str(bccd / "JPEGImages"), annotation_file=str(annotation), class_names=["RBC"])
    with pytest.raises(ValueError, match=r"BloodImage_00000.jpg is 640x480 but .*instances.json says 320x240"):
        COCODetection(**options)[0]
    assert COCODetection(**options, on_bad_sample="skip")[0] is None


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (grayscale [H, W] or RGB [H, W, 3] uint16), written by hand: Pillow writes 16-bit
    grayscale but not 48-bit RGB."""
    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    rows = pixels.astype(">u2").reshape(height, -1).tobytes()
    stride = len(rows) // height
    raw = b"".join(b"\x00" + rows[i * stride:(i + 1) * stride] for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) +
                     chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path, channels):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, (12, 10, 3)[: 2 if channels == 1 else 3], dtype=np.uint16)
    path = tmp_path / "deep.png"
    write_png16(path, pixels)
    decoded = read_pixels(path)
    reference = np.round(pixels.astype(np.float64) * 255 / 65535)
    reference = np.repeat(reference[..., None], 3, axis=2) if channels == 1 else reference
    assert decoded.dtype == np.uint8 and decoded.shape == (12, 10, 3)
    assert np.abs(decoded.astype(np.int16) - reference).max() <= 1
    assert decoded.min() < 20 and decoded.max() > 235  # not a white or black sheet


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "I;16"])
def test_every_pixel_format_becomes_8_bit_rgb_as_its_reference_conversion(tmp_path, mode):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))
    source = {"L": rgb.convert("L"), "P": rgb.convert("P"), "RGBA": rgb.convert("RGBA"), "LA": rgb.convert("LA"),
              "CMYK": rgb.convert("CMYK"), "1": rgb.convert("1"),
              "I;16": Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)}[mode]
    path = tmp_path / ("image.tif" if mode == "CMYK" else "image.png")
    source.save(path)
    # the reference: alpha dropped (each pixel keeps its stored colour), 16 bits divided by 257
    reference = (np.asarray(rgb.convert("L")) if mode == "I;16" else np.asarray(source.convert("RGB")))
    reference = np.repeat(reference[..., None], 3, axis=2) if reference.ndim == 2 else reference
    assert np.array_equal(read_pixels(path), reference)


def test_a_huge_image_is_refused_by_the_configured_pixel_limit_naming_it(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("RGB", (140, 130)).save(path)
    with pytest.raises(ValueError, match=rf"{path}: 140x130 = 18,200 pixels, over max_image_pixels=10,000"):
        read_pixels(path, max_image_pixels=10_000)
    assert read_pixels(path, max_image_pixels=None).shape == (130, 140, 3)


def test_an_image_over_the_pixel_limit_is_skipped_and_counted_with_skip(bccd):
    with pytest.raises(ValueError, match="over max_image_pixels=300,000"):
        read(bccd, max_image_pixels=300_000)[0]
    assert read(bccd, max_image_pixels=300_000, on_bad_sample="skip")[0] is None


def test_a_split_file_from_windows_notepad_reads_the_same(bccd):
    split = bccd / "ImageSets" / "Main" / "train.txt"
    ids = split.read_text().split()
    split.write_bytes("\r\n".join(ids).encode("utf-8-sig") + b"\r\n")
    dataset = read(bccd)
    assert [a.image_path.stem for a in dataset.annotations] == ids


def test_an_id_with_a_space_is_kept_whole(bccd):
    for folder, suffix in (("Annotations", ".xml"), ("JPEGImages", ".jpg")):
        (bccd / folder / f"BloodImage_00000{suffix}").rename(bccd / folder / f"Blood Image 0{suffix}")
    split = bccd / "ImageSets" / "Main" / "train.txt"
    split.write_text(split.read_text().replace("BloodImage_00000", "Blood Image 0"))
    replace_in(xml_of(bccd, "Blood Image 0"), "<filename>BloodImage_00000.jpg</filename>", "")
    assert read(bccd).annotations[0].image_path.name == "Blood Image 0.jpg"


def test_duplicate_ids_in_a_split_are_an_error_naming_the_file_and_the_ids(bccd):
    split = bccd / "ImageSets" / "Main" / "train.txt"
    split.write_text(split.read_text() + "BloodImage_00002\nBloodImage_00000\n")
    with pytest.raises(ValueError, match=rf"{split}: ids listed more than once: \['BloodImage_00000', "
                                         r"'BloodImage_00002'\]"):
        read(bccd)


def test_the_xml_filename_is_honoured_for_png_images(bccd):
    jpeg = bccd / "JPEGImages" / "BloodImage_00000.jpg"
    expected = read(bccd)[0][0]
    Image.open(jpeg).save(jpeg.with_suffix(".png"))
    jpeg.unlink()
    replace_in(xml_of(bccd), "<filename>BloodImage_00000.jpg</filename>", "<filename>BloodImage_00000.png</filename>")
    image, _ = read(bccd)[0]
    assert torch.equal(image, expected)


def test_without_a_filename_other_image_extensions_are_found_and_a_missing_one_is_named(bccd):
    jpeg = bccd / "JPEGImages" / "BloodImage_00000.jpg"
    replace_in(xml_of(bccd), "<filename>BloodImage_00000.jpg</filename>", "")
    Image.open(jpeg).save(jpeg.with_suffix(".png"))
    jpeg.unlink()
    assert read(bccd).annotations[0].image_path.suffix == ".png"
    jpeg.with_suffix(".png").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{xml_of(bccd)}: its image .*BloodImage_00000.jpg does not exist"):
        read(bccd)


@pytest.mark.parametrize("text, difficult", [("1", True), ("0", False), ("true", True), ("False", False),
                                             (" TRUE ", True)])
def test_difficult_accepts_0_1_true_false(bccd, text, difficult):
    replace_in(xml_of(bccd), "<difficult>0</difficult>", f"<difficult>{text}</difficult>")
    dataset = VOCDetection(root=str(bccd), split="train", class_names=BCCD_CLASSES, keep_difficult=True)
    assert bool(dataset.annotations[0].difficult[0]) is difficult


def test_a_difficult_flag_that_is_not_a_boolean_is_an_error_naming_the_file(bccd):
    replace_in(xml_of(bccd), "<difficult>0</difficult>", "<difficult>maybe</difficult>")
    with pytest.raises(ValueError, match=rf"{xml_of(bccd)}: object 1 \('WBC'\) has difficult='maybe'"):
        read(bccd)


def test_a_failure_inside_augmentation_names_the_file_and_can_be_skipped(bccd):
    class Broken:
        def __call__(self, **sample):
            raise ValueError("x_max is less than or equal to x_min for bbox [1. 0.09 1. 0.5]")

    with pytest.raises(ValueError, match=r"BloodImage_00000.jpg: augmentation failed \(ValueError: x_max"):
        read(bccd, transforms=Broken())[0]
    assert read(bccd, transforms=Broken(), on_bad_sample="skip")[0] is None


def test_the_ssd_augmentation_runs_on_a_rotated_photo(bccd, compose_train):
    """The issue's crash: albumentations refused boxes of the upright frame on the sideways pixels."""
    path = bccd / "JPEGImages" / "BloodImage_00000.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(path).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    augmentation = instantiate(compose_train("augment=ssd", "anchors=ssd300").augment)
    for seed in range(5):
        augmentation.set_random_seed(seed)
        image, target = read(bccd, transforms=augmentation)[0]
        assert image.shape[1:] == (300, 300)
        assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()


def test_class_names_in_any_script_get_unique_readable_metric_keys():
    names = MlflowKeys()(["val/ap/猫", "val/ap/犬", "val/ap/café", "val/ap/traffic light", "val/ap/a+b",
                          "val/ap/a#b", "val/map"])
    assert names["val/ap/猫"] == "val/ap/猫" and names["val/ap/犬"] == "val/ap/犬"
    assert names["val/ap/café"] == "val/ap/café" and names["val/ap/traffic light"] == "val/ap/traffic light"
    assert len(set(names.values())) == len(names)  # a+b and a#b do not collapse into one key
    assert names["val/map"] == "val/map"


def test_a_split_without_objects_gives_nan_for_the_mean_too(caplog):
    evaluator = DetectionEvaluator(class_names=["a", "b"], metrics=("voc07", "voc"))
    evaluator.update([{"boxes": torch.tensor([[1.0, 1, 5, 5]]), "labels": torch.tensor([1]),
                       "scores": torch.tensor([0.9])}],
                     [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    results = evaluator.compute()
    assert math.isnan(results["voc07_map"]) and math.isnan(results["voc_map"])
    assert "no ground-truth objects" in caplog.text


def test_names_the_font_lacks_are_drawn_as_their_label_with_a_legend(tmp_path):
    classes = ["cat", "猫", "café"]
    names, legend = drawable_names(classes)
    assert names == ["cat", "#2", "café"] and legend == {"#2": "猫"}
    curves = {name: (np.array([0.5, 1.0]), np.array([1.0, 0.5])) for name in classes}
    path = save_precision_recall_plot(curves, {"猫": 0.5}, tmp_path / "pr.png", title="epoch 1", class_names=classes)
    assert path.is_file() and (tmp_path / "pr.classes.txt").read_text(encoding="utf-8") == "#2\t猫\n"
    target = {"boxes": torch.tensor([[10.0, 10, 50, 60]]), "labels": torch.tensor([2])}
    prediction = {"boxes": torch.tensor([[12.0, 12, 50, 60]]), "labels": torch.tensor([2]), "scores": torch.tensor([0.9])}
    assert draw_detections(torch.zeros(3, 100, 100), target, prediction, classes).shape == (3, 300, 300)


def test_float_coordinates_are_kept_and_500_objects_load(bccd):
    objects = "".join(f"<object><name>RBC</name><difficult>0</difficult><bndbox><xmin>{10 + k % 50}.5</xmin>"
                      f"<ymin>{10 + k // 50}.25</ymin><xmax>{40 + k % 50}</xmax><ymax>{40 + k // 50}</ymax>"
                      f"</bndbox></object>" for k in range(500))
    text = xml_of(bccd).read_text()
    xml_of(bccd).write_text(text[:text.index("<object>")] + objects + "</annotation>")
    annotation = read(bccd).annotations[0]
    assert len(annotation.boxes) == 500 and annotation.boxes[0].tolist() == [9.5, 9.25, 40.0, 40.0]


def test_a_one_pixel_image_a_grayscale_jpeg_and_a_path_with_spaces_and_accents(bccd, tmp_path):
    moved = tmp_path / "données à voir" / "BCCD set"
    shutil.copytree(bccd, moved)
    Image.open(moved / "JPEGImages" / "BloodImage_00001.jpg").convert("L").save(moved / "JPEGImages" / "BloodImage_00001.jpg")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(moved / "JPEGImages" / "BloodImage_00002.jpg")
    text = xml_of(moved, "BloodImage_00002").read_text()
    xml_of(moved, "BloodImage_00002").write_text(
        text[:text.index("<size>")] + "<size><width>1</width><height>1</height><depth>3</depth></size></annotation>")
    dataset = read(moved)
    gray, _ = dataset[1]
    assert gray.shape == (3, 480, 640) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    tiny, target = dataset[2]
    assert tiny.shape == (3, 1, 1) and target["boxes"].shape == (0, 4)


def test_an_xml_size_of_the_sideways_pixels_of_a_rotated_photo_is_named_with_its_orientation(bccd):
    """The annotation tool ignored the EXIF orientation: its boxes are in a frame the image is not shown in."""
    path = bccd / "JPEGImages" / "BloodImage_00000.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(path).save(path, exif=exif)  # 640x480 stored, shown upright as 480x640
    with pytest.raises(ValueError, match=r"<size> says 640x480 but the image .* is 480x640 upright \(EXIF orientation 6\)"):
        read(bccd)


def test_an_object_without_a_valid_box_is_an_error_naming_the_file_and_the_object(bccd):
    replace_in(xml_of(bccd), "<xmin>260</xmin>", "<xmin>left</xmin>")
    with pytest.raises(ValueError, match=rf"{xml_of(bccd)}: object 1 \('WBC'\) has no valid bndbox"):
        read(bccd)
    assert read(bccd, on_bad_sample="skip").fixes["skipped samples"] == 1


def test_an_instance_mask_of_another_size_than_its_image_is_named(bccd):
    (bccd / "SegmentationObject").mkdir()
    Image.new("P", (320, 240)).save(bccd / "SegmentationObject" / "BloodImage_00000.png")
    with pytest.raises(ValueError, match=r"BloodImage_00000.png: mask size \(240, 320\) differs from image \(480, 640\)"):
        VOCDetection(root=str(bccd), split="train", class_names=BCCD_CLASSES, with_masks=True)[0]
