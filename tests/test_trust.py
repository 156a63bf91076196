"""What users trust the project with: a downloaded checkpoint runs no code through any entry point, and a
configuration from a file instantiates only what the project's config groups name."""

import contextlib
import io
import json
import re
import signal
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import run_script
from detection.data.coco import COCODetection
from detection.engine.loop import TrainingInterrupted
from detection.evaluation import DetectionEvaluator
from detection.visualize import save_error_plots, save_precision_recall_plot
from schema import UntrustedConfig, check_targets, project_targets

PAYLOAD = "import pathlib; pathlib.Path(__file__).with_name('ran.txt').write_text('code ran')\nx = 1\n"


def crafted_checkpoint(checkpoint_path, folder):
    """The smoke checkpoint with the issue's exploit planted in both stored configurations: its backbone
    writes `folder/m.py` (on PYTHONPATH) and its loss imports it."""
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    writer = {"_target_": "pathlib.Path.write_text",
              "_args_": [{"_target_": "pathlib.Path", "_args_": [str(folder / "m.py")]}, PAYLOAD]}
    for key in ("config", "config_unresolved"):
        checkpoint[key]["model"]["backbone"] = writer
        checkpoint[key]["model"]["loss"] = {"_target_": "m.x"}
    path = folder / "crafted.pt"
    torch.save(checkpoint, path)
    return path


def test_the_project_targets_are_those_its_config_groups_name():
    targets = project_targets()
    assert {"detection.models.ssd.build_ssd", "torch.optim.SGD", "detection.tracking.MlflowTracker",
            "albumentations.HorizontalFlip", "detection.engine.schedules.warmup_cosine"} <= targets
    assert not {target for target in targets if target.startswith(("os.", "pathlib.", "builtins.", "sweep."))}


@pytest.mark.parametrize("config, where", [
    ({"model": {"loss": {"_target_": "os.system", "_args_": ["true"]}}}, "model.loss._target_"),
    ({"augment": {"steps": [{"_target_": "albumentations.HorizontalFlip"}, {"_target_": "m.x"}]}},
     "augment.steps[1]._target_"),
    ({"model": {"_target_": "${evil}"}, "evil": "os.system"}, "model._target_"),
    ({"optimizer": {"_target_": ["torch.optim.SGD"]}}, "optimizer._target_"),
])
def test_a_target_the_project_does_not_name_is_refused_naming_its_key(config, where):
    with pytest.raises(UntrustedConfig, match=f"ckpt.pt: {re.escape(where)}="):
        check_targets(config, "ckpt.pt")


@pytest.mark.slow
def test_a_crafted_checkpoint_runs_nothing_through_any_entry_point(tmp_path, smoke_ssd, shapes_root):
    checkpoint, images = smoke_ssd
    crafted = crafted_checkpoint(checkpoint, tmp_path)
    runs = {"train.py": [f"ckpt_path={crafted}"],
            "evaluate.py": [f"ckpt_path={crafted}", "tracking=none", "num_workers=0"],
            "predict.py": [f"ckpt_path={crafted}", f"source={images[0]}"],
            "export.py": [f"ckpt_path={crafted}"]}
    for script, arguments in runs.items():
        result = run_script(script, *arguments, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
        output = result.stdout + result.stderr
        assert result.returncode == 2, (script, output)
        assert "model.backbone._target_='pathlib.Path.write_text' is not a target" in output, (script, output)
        assert "Traceback" not in output, (script, output)
        assert not (tmp_path / "m.py").exists() and not (tmp_path / "ran.txt").exists(), script


def write_coco(folder, images, annotations, categories):
    (folder / "images").mkdir(exist_ok=True)
    for image in images:
        Image.new("RGB", (image["width"], image["height"]), 90).save(folder / "images" / image["file_name"])
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_coco_results_keep_the_files_ids_and_pycocotools_scores_them_as_the_evaluator_does(tmp_path):
    images = [{"id": 5000 + 7 * i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in range(3)]
    boxes = [[4, 4, 20, 16], [30, 10, 24, 30], [10, 20, 12, 12]]
    annotations = [{"id": 900 + i, "image_id": images[i % 3]["id"], "category_id": (7, 3)[i % 2], "bbox": box,
                    "area": box[2] * box[3], "iscrowd": 0} for i, box in enumerate(boxes * 2)]
    path = write_coco(tmp_path, images, annotations, [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}])
    dataset = COCODetection(image_folder=str(tmp_path / "images"), annotation_file=str(path),
                            class_names=["cat", "dog"])
    evaluator = DetectionEvaluator(class_names=["cat", "dog"])
    for index in range(len(dataset)):
        _, target = dataset[index]
        shifted = target["boxes"] + torch.tensor([index, 0.0, index, 2.0])  # AP between 0 and 1
        false_positive = torch.tensor([[40.0, 30, 60, 46]])
        evaluator.update([{"boxes": torch.cat([shifted, false_positive]), "labels": torch.cat(
            [target["labels"], torch.tensor([1])]), "scores": torch.linspace(0.9, 0.3, len(shifted) + 1)}], [target])
    metrics = evaluator.compute()
    records = evaluator.detection_records(image_ids=dataset.image_ids, category_ids=dataset.category_ids)
    assert {r["image_id"] for r in records} == {5000, 5007, 5014} and {r["category_id"] for r in records} == {3, 7}
    assert all(r["category_name"] == {3: "cat", 7: "dog"}[r["category_id"]] for r in records)
    reference = COCO(str(path))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(reference, reference.loadRes(records), "bbox")
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert 0 < evaluation.stats[0] < 1 and evaluation.stats[0] == pytest.approx(metrics["coco_map"], abs=1e-9)


@pytest.mark.faults
@pytest.mark.parametrize("change, message", [
    (lambda data: data["images"].append(dict(data["images"][0], file_name="1.jpg")),
     "image ids listed more than once: ['5000']"),
    (lambda data: data["annotations"][0].update(bbox=[1, 2, 3]), "annotation 900 has bbox [1, 2, 3]"),
    (lambda data: data["images"][0].update(width="64"), "image 5000 has width='64'"),
    (lambda data: data["annotations"][0].update(bbox=[1, 2, float("nan"), 4]), "annotation 900 has bbox"),
])
def test_a_malformed_coco_file_is_refused_naming_the_file_and_the_id(tmp_path, change, message):
    images = [{"id": 5000 + 7 * i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in range(2)]
    annotations = [{"id": 900, "image_id": 5000, "category_id": 7, "bbox": [4, 4, 20, 16]}]
    path = write_coco(tmp_path, images, annotations, [{"id": 7, "name": "dog"}])
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        COCODetection(image_folder=str(tmp_path / "images"), annotation_file=str(path), class_names=["dog"])


@pytest.mark.faults
def test_coco_annotations_of_images_the_file_does_not_list_are_counted_and_left_out(tmp_path):
    images = [{"id": 1, "file_name": "0.jpg", "width": 64, "height": 48}]
    annotations = [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [4, 4, 20, 16]},
                   {"id": 6, "image_id": 99, "category_id": 7, "bbox": [4, 4, 20, 16]}]
    path = write_coco(tmp_path, images, annotations, [{"id": 7, "name": "dog"}])
    dataset = COCODetection(image_folder=str(tmp_path / "images"), annotation_file=str(path), class_names=["dog"])
    assert dataset.fixes["annotations of images the file does not list"] == 1 and len(dataset[0][1]["boxes"]) == 1


def test_a_printed_resume_command_pastes_safely_whatever_the_folder_is_called(tmp_path):
    checkpoint = tmp_path / "my runs" / "$(touch pwned)" / "last.pt"
    message = str(TrainingInterrupted(signal.SIGTERM, checkpoint))
    command = message.split("resume with ", 1)[1]
    echoed = subprocess.run(["bash", "-c", command.replace("python train.py", "printf %s", 1)], cwd=tmp_path,
                            capture_output=True, text=True)
    assert echoed.stdout == f"ckpt_path={checkpoint}" and not (tmp_path / "pwned").exists()


def test_plots_that_grow_with_the_class_count_draw_a_bounded_number_of_classes(tmp_path):
    classes = [f"class {index}" for index in range(1000)]
    rng = np.random.default_rng(0)
    errors = {"dap": {"localisation": 0.1, "false_positives": 0.2, "false_negatives": 0.1}, "counts": {},
              "ap": 0.3, "confusion": rng.integers(0, 5, (1001, 1001)).tolist(),
              "confusion_labels": {"rows": [*classes, "background"], "columns": [*classes, "missed"]}}
    save_error_plots(errors, tmp_path, title="best.pt")
    curves = {name: (np.linspace(0, 1, 5), np.linspace(1, 0, 5)) for name in classes}
    aps = {name: index / 1000 for index, name in enumerate(classes)}
    save_precision_recall_plot(curves, aps, tmp_path / "pr.png", title="epoch 1", class_names=classes)
    for name in ("confusion.png", "pr.png"):
        with Image.open(tmp_path / name) as image:
            assert max(image.size) < 2500, (name, image.size)
