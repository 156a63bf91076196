"""The embedded dataset: seeded images of coloured shapes written once in the VOC layout, so that the
same reader, evaluator and loop serve it and real VOC data, offline."""

import json
import math
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from detection.data.voc import VOID_INDEX, VOCDetection

MIN_VISIBLE_PIXELS = 24  # an object occluded below this is not annotated; its pixels become void
DIFFICULT_VISIBLE_FRACTION = 0.3  # an object with less of itself visible is marked difficult, as VOC does


def _outline(name: str, centre: np.ndarray, width: float, height: float, angle: float) -> list[tuple]:
    """The polygon of a shape of class `name` (ellipse, rectangle, triangle, star), rotated by `angle`."""
    if name == "ellipse":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        points = np.stack([np.cos(t) * width / 2, np.sin(t) * height / 2], axis=1)
    elif name == "rectangle":
        points = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [width / 2, height / 2]
    elif name == "triangle":
        t = np.array([-math.pi / 2, math.pi / 6, 5 * math.pi / 6])
        points = np.stack([np.cos(t) * width / 2, np.sin(t) * height / 2], axis=1)
    elif name == "star":
        t = np.linspace(-math.pi / 2, 3 * math.pi / 2, 10, endpoint=False)
        radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        points = np.stack([np.cos(t) * radius * width / 2, np.sin(t) * radius * height / 2], axis=1)
    else:
        raise ValueError(f"shapes: unknown shape class {name!r} (known: ellipse, rectangle, triangle, star)")
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return [tuple(p) for p in points @ rotation.T + centre]


def _textured(rng: np.random.Generator, height: int, width: int, colour: np.ndarray) -> np.ndarray:
    """float [H, W, 3]: `colour` with a random linear gradient and pixel noise."""
    ramp = np.linspace(-1, 1, width)[None, :] * rng.uniform(-30, 30) + np.linspace(-1, 1, height)[:, None] * rng.uniform(-30, 30)
    noise = rng.normal(0, rng.uniform(2, 14), (height, width, 1))
    return colour[None, None, :] + ramp[:, :, None] + noise


def render_image(rng: np.random.Generator, class_names: Sequence[str], image_size: int,
                 max_objects: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One image: uint8 [H, W, 3] pixels, uint8 [H, W] instance map (k = k-th object, 255 void), objects."""
    height, width = (int(rng.integers(round(0.75 * image_size), round(1.25 * image_size) + 1)) for _ in range(2))
    background = rng.uniform(0, 255, 3)
    pixels = _textured(rng, height, width, background)
    owner = np.zeros((height, width), dtype=np.int32)  # 0 = background, i = i-th drawn shape
    drawn = []
    num_objects = 0 if rng.random() < 0.06 else int(rng.integers(1, max_objects + 1))
    for index in range(1, num_objects + 1):
        name = class_names[int(rng.integers(len(class_names)))]
        size = image_size * math.exp(rng.uniform(math.log(0.08), math.log(0.75)))
        aspect = math.exp(rng.uniform(-0.6, 0.6)) if name in ("ellipse", "rectangle") else 1.0
        shape_w, shape_h = size * math.sqrt(aspect), size / math.sqrt(aspect)
        angle = 0.0 if name == "rectangle" else rng.uniform(0, 2 * math.pi)
        centre = rng.uniform([0.1 * width, 0.1 * height], [0.9 * width, 0.9 * height])
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).polygon(_outline(name, centre, shape_w, shape_h, angle), fill=1)
        mask = np.asarray(canvas, dtype=bool)
        if not mask.any():
            continue
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - background).sum() < 120:  # keep shapes visible against the background
            colour = 255 - background
        pixels[mask] = _textured(rng, height, width, colour)[mask]
        owner[mask] = index
        drawn.append((index, name, int(mask.sum())))
    instance_map = np.full((height, width), 0, dtype=np.uint8)
    objects = []
    for index, name, full_area in drawn:
        visible = owner == index
        area = int(visible.sum())
        if area < MIN_VISIBLE_PIXELS:
            instance_map[visible] = VOID_INDEX
            continue
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        instance_map[visible] = len(objects) + 1
        objects.append({"name": name, "box": (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1),
                        "difficult": area < DIFFICULT_VISIBLE_FRACTION * full_area})
    return np.clip(pixels, 0, 255).astype(np.uint8), instance_map, objects


def _voc_xml(image_name: str, width: int, height: int, objects: list[dict]) -> ET.ElementTree:
    """VOC annotation; boxes written 1-based and pixel-inclusive: xmin = x1 + 1, xmax = x2."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = image_name
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj["name"]
        ET.SubElement(node, "difficult").text = str(int(obj["difficult"]))
        box = ET.SubElement(node, "bndbox")
        x1, y1, x2, y2 = obj["box"]
        for key, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, key).text = str(value)
    return ET.ElementTree(root)


def _palette() -> list[int]:
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (256, 3))
    colours[0], colours[VOID_INDEX] = (0, 0, 0), (224, 224, 192)  # VOC's background and void colours
    return colours.astype(np.uint8).flatten().tolist()


def generate_shapes(root: Path, *, class_names: Sequence[str], num_train: int, num_val: int,
                    image_size: int, max_objects: int, seed: int) -> None:
    """Writes the dataset in the VOC layout under `root`, unless the same parameters are there already.

    Written into a temporary sibling folder and renamed, so concurrent processes never see half of it.
    """
    params = {"version": 1, "class_names": list(class_names), "num_train": num_train, "num_val": num_val,
              "image_size": image_size, "max_objects": max_objects, "seed": seed}
    marker = root / "shapes.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    for folder in ("JPEGImages", "Annotations", "SegmentationObject", "ImageSets/Main"):
        (staging / folder).mkdir(parents=True)
    palette = _palette()
    splits = {"train": range(num_train), "val": range(num_train, num_train + num_val)}
    for split, indices in splits.items():
        ids = []
        for index in indices:
            image_id = f"{index:06d}"
            rng = np.random.default_rng([seed, index])
            pixels, instance_map, objects = render_image(rng, class_names, image_size, max_objects)
            Image.fromarray(pixels).save(staging / "JPEGImages" / f"{image_id}.jpg", quality=92)
            png = Image.fromarray(instance_map, mode="P")
            png.putpalette(palette)
            png.save(staging / "SegmentationObject" / f"{image_id}.png")
            height, width = instance_map.shape
            _voc_xml(f"{image_id}.jpg", width, height, objects).write(staging / "Annotations" / f"{image_id}.xml")
            ids.append(image_id)
        (staging / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (staging / "shapes.json").write_text(json.dumps(params))
    if root.exists():
        shutil.rmtree(root)
    try:
        staging.rename(root)
    except OSError:  # another process finished first; keep its copy if it is the same dataset
        shutil.rmtree(staging)
        if not (marker.is_file() and json.loads(marker.read_text()) == params):
            raise


def build_shapes_dataset(*, root: str, split: str, class_names: Sequence[str], num_train: int = 2000,
                         num_val: int = 200, image_size: int = 128, max_objects: int = 5, seed: int = 0,
                         transforms: Optional[Callable] = None, keep_difficult: bool = True) -> VOCDetection:
    """The `split` ('train' or 'val') of the shapes dataset, generated on first use under a folder of
    `root` named by its parameters, so that differently sized variants live side by side."""
    folder = Path(root).expanduser() / f"n{num_train}-{num_val}_s{image_size}_o{max_objects}_seed{seed}"
    generate_shapes(folder, class_names=class_names, num_train=num_train, num_val=num_val,
                    image_size=image_size, max_objects=max_objects, seed=seed)
    return VOCDetection(root=str(folder), split=split, class_names=class_names, transforms=transforms,
                        keep_difficult=keep_difficult, with_masks=True)
