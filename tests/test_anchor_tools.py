"""The anchor tools: the coverage analysis agrees with direct computation and with the box coder's
matching; the fit covers what the default does not; the dataset report finds each planted problem by file;
the commands run end to end on BCCD."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torchvision.ops import box_iou

from conftest import REPO, SHARED_DATA
from detection.anchors.coverage import match_image, match_split, report
from detection.anchors.fit import best_ious, coverage, fit_priors
from detection.data.audit import audit_split, error_count
from detection.models.anchors import AnchorSpec, generate_anchors
from detection.models.box_coder import SSDBoxCoder

BCCD = SHARED_DATA / "BCCD_Dataset" / "BCCD"
SPEC = AnchorSpec(300, (30, 60, 111, 162, 213, 264, 315), ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
                  (38, 19, 10, 5, 3, 1), (8, 16, 32, 64, 100, 300))


def map_of_prior(spec: AnchorSpec) -> torch.Tensor:
    counts = [cells * cells * a for cells, a in zip(spec.feature_map_sizes, spec.anchors_per_location)]
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def random_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    corner = torch.rand(count, 2, generator=generator) * 260
    size = 4 + torch.rand(count, 2, generator=generator) * 200
    return torch.cat([corner, corner + size], dim=1)


def test_a_box_equal_to_a_prior_is_covered_and_a_tiny_box_is_not():
    priors = generate_anchors(SPEC)
    boxes = torch.stack([priors[-1], torch.tensor([150.0, 150.0, 152.0, 152.0])])
    matches = match_split([(boxes, torch.tensor([1, 2]))], priors, map_of_prior(SPEC), 0.5)
    assert matches.best_iou[0] == pytest.approx(1.0) and matches.best_iou[1] < 0.01
    assert matches.positives[1] == 1  # only the forced match
    result = report(matches, map_of_prior(SPEC).numpy(), ["a", "b"], 0.5)
    assert result["overall"]["best_possible_recall"] == 0.5
    assert result["per_class"]["a"]["best_possible_recall"] == 1.0 and result["per_class"]["b"]["best_possible_recall"] == 0.0
    assert result["per_size"]["small"]["boxes"] == 1 and result["per_map"][0]["priors"] == 38 * 38 * 4


def test_matching_is_the_box_coders():
    generator = torch.Generator().manual_seed(0)
    priors = generate_anchors(SPEC)
    boxes = random_boxes(12, generator)
    best_iou, owner = match_image(boxes, priors, 0.5)
    _, cls_targets = SSDBoxCoder(priors).encode(boxes, torch.ones(12, dtype=torch.int64))
    torch.testing.assert_close(best_iou, box_iou(boxes, priors).max(dim=1).values)
    assert torch.equal(owner >= 0, cls_targets > 0)


def test_the_fits_nearest_centre_best_iou_is_exact():
    boxes = random_boxes(300, torch.Generator().manual_seed(1))
    direct = box_iou(boxes, generate_anchors(SPEC)).max(dim=1).values
    np.testing.assert_allclose(best_ious(boxes.numpy().astype(np.float64), SPEC), direct.numpy(), atol=1e-5)


def test_fit_covers_boxes_of_one_shape_that_the_default_misses():
    # 20x80 boxes (ratio 1:4) all over the image: SSD300's priors (ratios up to 3) cover few of them
    generator = np.random.default_rng(0)
    corner = generator.uniform(0, 220, size=(400, 2))
    boxes = np.concatenate([corner, corner + [20.0, 80.0]], axis=1)
    before = coverage(boxes, SPEC, 0.5)
    fitted = fit_priors(boxes, SPEC, generations=30, seed=0)
    after = coverage(boxes, fitted, 0.5)
    assert before[0] < 0.5 and after[0] == 1.0 and after[1] > before[1]
    assert fitted.anchors_per_location == SPEC.anchors_per_location  # heads keep their shapes


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
    result = run_module("detection.data.inspect", "dataset=voc_layout", f"dataset.root={root}",
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


@pytest.mark.slow
def test_the_commands_analyse_and_fit_bccd_and_the_fitted_yaml_builds_a_model(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    common = ["dataset=bccd", f"dataset.root={BCCD}", "anchors=ssd300", "backbone=resnet18"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_module("detection.anchors", "analyse", *common, "tracking=mlflow", f"tracking.uri={uri}",
                        "tracking.system_metrics=false", run_dir=tmp_path / "run")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    [run] = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("anchors").experiment_id])
    assert run.data.metrics["default/best_possible_recall"] == pytest.approx(0.963, abs=1e-3)
    assert "205 images, 2805 boxes at input 300" in output and "Platelets" in output
    default = json.loads((tmp_path / "run" / "anchors_report.json").read_text())["default"]
    assert default["overall"]["boxes"] == 2805 and len(default["per_map"]) == 6
    assert {"best_iou.png", "box_sizes.png"} <= {p.name for p in (tmp_path / "run" / "plots" / "default").iterdir()}

    # through the training augmentation instead (augment=ssd: its zoom-out shrinks boxes below the priors)
    result = run_module("detection.anchors", "analyse", *common, "augmented_passes=1", run_dir=tmp_path / "aug")
    assert result.returncode == 0, result.stdout + result.stderr
    augmented = json.loads((tmp_path / "aug" / "anchors_report.json").read_text())["default"]["overall"]
    assert 0 < augmented["boxes"] and augmented["best_possible_recall"] < default["overall"]["best_possible_recall"]

    fitted_yaml = tmp_path / "fitted.yaml"
    result = run_module("detection.anchors", "fit", *common, "fit.generations=3", "fit.population=5",
                        f"fit.output={fitted_yaml}", run_dir=tmp_path / "fit" / "run")
    assert result.returncode == 0, result.stdout + result.stderr
    report_json = json.loads((tmp_path / "fit" / "run" / "anchors_report.json").read_text())
    for key in ("best_possible_recall", "best_iou_mean"):
        assert report_json["fitted"]["overall"][key] >= report_json["default"]["overall"][key]
    spec = instantiate(OmegaConf.load(fitted_yaml))
    assert spec.anchors_per_location == SPEC.anchors_per_location
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["tracking=none", "backbone=resnet18", "anchors=ssd300"])
    cfg.anchors = OmegaConf.load(fitted_yaml)
    from edge import build_model

    assert len(build_model(cfg, pretrained=False).box_coder.anchors) == 8732
