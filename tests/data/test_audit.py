"""The dataset report finds each planted problem and names its file, and `python -m detection.cli.inspect_data`
says so with exit status 1."""

import json
import subprocess
import sys


from conftest import REPO
from detection.data.audit import audit_split, error_count


def write_image(path, width, height):
    from PIL import Image

    Image.new("RGB", (width, height), (120, 80, 60)).save(path)


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
    audit = audit_split(root, "train", ["cat", "dog"])
    expected = {"box outside the image": "outside.xml", "zero-area box": "zero.xml", "duplicate box": "twice.xml",
                "unknown class": "unknown.xml", "image without objects": "empty.xml", "tiny box": "tiny.xml",
                "size disagrees with the image": "resized.xml", "missing or unreadable image": "noimage.xml",
                "unreadable annotation": "broken.xml"}
    for kind, file_name in expected.items():
        assert file_name in audit.problems[kind][0], kind
        assert len(audit.problems[kind]) == (2 if kind == "unreadable annotation" else 1), kind
    assert "noxml.xml: annotation file not found" in audit.problems["unreadable annotation"][1]
    assert "unknown class 'horse'" in audit.problems["unknown class"][0]
    assert error_count([audit]) == 7  # the clipped box, the 1-pixel box and the empty image are warnings
    (root / "ImageSets/Main/val.txt").write_text("good\n")
    result = run_module("detection.cli.inspect_data", "dataset=voc_layout", f"dataset.root={root}",
                        "dataset.classes=[cat,dog]", run_dir=tmp_path / "run")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "twice.xml: dog [4.0, 4.0, 30.0, 30.0] listed 2 times" in output
    report_json = json.loads((tmp_path / "run" / "dataset_report.json").read_text())
    assert report_json["val"]["statistics"]["objects_per_class"] == {"cat": 1, "dog": 0}
    assert (tmp_path / "run" / "plots" / "train" / "box_sizes.png").is_file()


def run_module(module: str, *args: str, run_dir):
    """`python -m module args` from the repository root, as the README runs it."""
    return subprocess.run([sys.executable, "-m", module, *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
