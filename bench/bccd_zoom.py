"""A second VOC-layout set with other object sizes, built from BCCD: each photo's centre 320x240 crop, so
at the model's input every cell is twice the size it is in BCCD (objects more than half outside the crop
are left out, the rest clipped to it). For the anchor-fitting proof in the README.

    python bench/bccd_zoom.py /tmp/bccd_zoom [--source ../shared/data/BCCD_Dataset/BCCD]
    python -m detection.cli.anchor_tools fit dataset=bccd dataset.root=/tmp/bccd_zoom anchors=ssd300 backbone=resnet18
"""

import argparse
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from common import REPO

CROP = (160, 120, 480, 360)  # x1, y1, x2, y2 of the 640x480 photos


def crop_annotation(tree: ET.ElementTree) -> None:
    """The XML of the crop: size 320x240, boxes shifted and clipped, objects mostly outside removed."""
    root = tree.getroot()
    root.find("size/width").text, root.find("size/height").text = str(CROP[2] - CROP[0]), str(CROP[3] - CROP[1])
    for item in root.findall("object"):
        box = item.find("bndbox")
        x1, y1, x2, y2 = (float(box.find(key).text) for key in ("xmin", "ymin", "xmax", "ymax"))
        cx1, cy1, cx2, cy2 = max(x1, CROP[0]), max(y1, CROP[1]), min(x2, CROP[2]), min(y2, CROP[3])
        area = max(x2 - x1, 1) * max(y2 - y1, 1)
        if cx2 <= cx1 or cy2 <= cy1 or (cx2 - cx1) * (cy2 - cy1) < 0.5 * area:
            root.remove(item)
            continue
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (cx1 - CROP[0], cy1 - CROP[1], cx2 - CROP[0],
                                                                  cy2 - CROP[1])):
            box.find(key).text = str(int(round(value)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "BCCD_Dataset" / "BCCD")
    args = parser.parse_args()
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (args.output / folder).mkdir(parents=True, exist_ok=True)
    for split_file in (args.source / "ImageSets" / "Main").glob("*.txt"):
        shutil.copy(split_file, args.output / "ImageSets" / "Main" / split_file.name)
    for xml_path in sorted((args.source / "Annotations").glob("*.xml")):
        tree = ET.parse(xml_path)
        name = tree.getroot().find("filename").text
        with Image.open(args.source / "JPEGImages" / name) as photo:
            photo.crop(CROP).save(args.output / "JPEGImages" / name, quality=95)
        crop_annotation(tree)
        tree.write(args.output / "Annotations" / xml_path.name)
    print(f"{args.output}: {len(list((args.output / 'Annotations').glob('*.xml')))} crops of {args.source}")


if __name__ == "__main__":
    main()
