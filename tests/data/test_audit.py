"""The dataset report finds each planted problem and names its file, and `python -m detection.cli.inspect_data`
says so with exit status 1."""

import json
import subprocess
import sys


from conftest import REPO
from detection.data.audit import audit_split, error_count


def write_image(path, width, height):
    from PIL import Image

    shade = sum(map(ord, path.stem)) % 256  # each image its own file
    Image.new("RGB", (width, height), (120, 80, shade)).save(path)


def annotation(filename: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    items = "".join(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                    f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for name, b in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"</size>{items}</annotation>")


def test_inspect_finds_each_planted_problem_and_names_its_file(tmp_path):
    root = tmp_path / "set"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    plants = {"good": [("cat", (10, 10, 50, 50))], "outside": [("cat", (10, 10, 90, 50))],
              "zero": [("cat", (20, 20, 19, 40))], "tiny": [("cat", (20, 20, 20, 20))], "twice": [("dog", (5, 5, 30, 30)), ("dog", (5, 5, 30, 30))],
              "unknown": [("cat", (5, 5, 30, 30)), ("horse", (5, 5, 30, 30))], "empty": [], "resized": [("cat", (10, 10, 50, 50))],
              "noimage": [("cat", (10, 10, 50, 50))]}
    for name, objects in plants.items():
        (root / "Annotations" / f"{name}.xml").write_text(annotation(f"{name}.jpg", 80, 60, objects))
        if name != "noimage":
            write_image(root / "JPEGImages" / f"{name}.jpg", 100 if name == "resized" else 80, 60)
    (root / "Annotations" / "broken.xml").write_text("<annotation><object>")
    (root / "ImageSets/Main/train.txt").write_text("\n".join([*plants, "broken", "noxml"]))
    good = (root / "JPEGImages" / "good.jpg").read_bytes()
    (root / "JPEGImages" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "Annotations" / "truncated.xml").write_text(annotation("truncated.jpg", 80, 60, [("cat", (1, 1, 9, 9))]))
    (root / "JPEGImages" / "copy.jpg").write_bytes(good)
    (root / "Annotations" / "copy.xml").write_text(annotation("good.jpg", 80, 60, [("cat", (1, 1, 9, 9))]))
    (root / "ImageSets/Main/train.txt").write_text("\n".join([*plants, "broken", "noxml", "truncated", "copy"]))
    audit = audit_split(root, "train", ["cat", "dog"], workers=2)
    assert audit.problems["missing or unreadable image"][1].startswith(
        f"{root / 'JPEGImages' / 'truncated.jpg'}: unreadable image (OSError: ")
    assert audit.problems["<filename> names another image"] == [
        f"{root / 'Annotations' / 'copy.xml'}: <filename> good.jpg, but the image of copy is copy.jpg (read)"]
    assert audit.problems["image under two ids"] == [f"{root / 'ImageSets/Main/train.txt'}: good, copy are one image file"]
    assert audit_split(root, "train", ["cat", "dog"]).problems == audit.problems  # in order, with or without workers
    expected = {"box outside the image": "outside.xml", "zero-area box": "zero.xml", "duplicate box": "twice.xml",
                "unknown class": "unknown.xml", "image without objects": "empty.xml", "tiny box": "tiny.xml",
                "size disagrees with the image": "resized.xml", "missing or unreadable image": "noimage.xml",
                "unreadable annotation": "broken.xml"}
    for kind, file_name in expected.items():
        assert file_name in audit.problems[kind][0], kind
        assert len(audit.problems[kind]) == (2 if kind in ("unreadable annotation", "missing or unreadable image")
                                             else 1), kind
    assert "noxml.xml: annotation file not found" in audit.problems["unreadable annotation"][1]
    assert "unknown class 'horse'" in audit.problems["unknown class"][0]
    assert error_count([audit]) == 8  # the clipped box, the 1-pixel box, the empty image, the copy: warnings
    (root / "ImageSets/Main/val.txt").write_text("good\n")
    result = run_module("detection.cli.inspect_data", "dataset=voc_layout", f"dataset.root={root}",
                        "dataset.classes=[cat,dog]", run_dir=tmp_path / "run")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "twice.xml: dog [4.0, 4.0, 30.0, 30.0] listed 2 times" in output
    assert "truncated.jpg: unreadable image" in output
    assert "val: 1 image in both splits\n  val good is the image of train good, copy" in output
    report_json = json.loads((tmp_path / "run" / "dataset_report.json").read_text())
    assert report_json["val"]["statistics"]["objects_per_class"] == {"cat": 1, "dog": 0}
    assert (tmp_path / "run" / "plots" / "train" / "box_sizes.png").is_file()


def run_module(module: str, *args: str, run_dir):
    """`python -m module args` from the repository root, as the README runs it."""
    return subprocess.run([sys.executable, "-m", module, *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
