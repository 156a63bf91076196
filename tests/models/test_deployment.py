"""Exports proven: an SSD (ResNet and VGG trunks) and a Mask R-CNN exported to ONNX (run by onnxruntime)
and TorchScript detect (and segment) what the PyTorch model does on real BCCD images and random images of
several sizes, SSDs in batches too; a trained model's export scores the same mAP; the files carry their
class names and contract, which MLflow's pyfunc model (ContractModel) shares; export.py checks what it
writes and refuses what it cannot do; predict.py runs an export."""

import json
import re

import numpy as np
import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import BCCD_SUBSET, REPO, SMALL_SHAPES, run_script
from detection.data.loader import build_loader
from detection.data.samples import read_pixels
from detection.engine.checkpoint import load_checkpoint, save_checkpoint
from detection.engine.inference import evaluate
from detection.evaluation import DetectionEvaluator
from detection.models.deployment import (ContractModel, ExportedDetector, ExportParityError, check_parity,
                                     export_onnx, export_torchscript)
from detection.cli.assembly import build_model, model_from_checkpoint

pytestmark = pytest.mark.slow
BCCD_IMAGES = sorted((BCCD_SUBSET / "JPEGImages").glob("*.jpg"))
EXPORTS = {"onnx": (export_onnx, ".onnx"), "torchscript": (export_torchscript, ".pt")}


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=["tracking=none", *overrides])


def sample_images() -> list[torch.Tensor]:
    """3 BCCD photos (640x480) and random images of 3 other sizes."""
    generator = torch.Generator().manual_seed(0)
    photos = [torch.from_numpy(read_pixels(path)).permute(2, 0, 1) for path in BCCD_IMAGES[:3]]
    return photos + [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
                     for height, width in ((97, 143), (300, 300), (517, 389))]


@pytest.mark.parametrize("export_format", EXPORTS)
@pytest.mark.parametrize("trunk", ["resnet18", "vgg16"])
def test_an_export_detects_what_the_model_detects(tmp_path, trunk, export_format):
    torch.manual_seed(0)
    cfg = compose_train("dataset=bccd", f"backbone={trunk}", "anchors=ssd300", "model.candidates_per_class=50")
    model = build_model(cfg, pretrained=False).eval()
    export, suffix = EXPORTS[export_format]
    path = export(model, tmp_path / f"model{suffix}", metadata={"class_names": json.dumps(["RBC", "WBC", "Platelets"])},
                  example=torch.randint(0, 256, (2, 3, 332, 364), dtype=torch.uint8))
    exported = ExportedDetector(path)
    assert exported.class_names == ["RBC", "WBC", "Platelets"] and "uint8 [N, 3, H, W]" in exported.metadata["contract"]
    images = sample_images()
    with torch.no_grad():
        reference = [model([image])[0] for image in images]
    check_parity(reference, exported(images), limit=model.detections_per_image, name=path.name)  # one at a time
    check_parity(reference[:3], exported(images[:3]), limit=model.detections_per_image, name=path.name)  # a batch
    shifted = [{**detections, "boxes": detections["boxes"] + 1.0} for detections in reference]
    with pytest.raises(ExportParityError, match="the export is not the model"):
        check_parity(shifted, exported(images), limit=model.detections_per_image, name=path.name)
    assert_same_contract(ContractModel.of_model(model), exported, torch.stack(images[:3]))


def assert_same_contract(pyfunc_model: ContractModel, exported: ExportedDetector, batch: torch.Tensor):
    """MLflow's model and the file take the same array and return the same outputs, by name."""
    ours = pyfunc_model(batch.numpy())
    theirs = exported.run(batch)
    assert list(ours) == exported.metadata["outputs"].split(",")
    for (name, array), output in zip(ours.items(), theirs):
        assert array.dtype == output.numpy().dtype and array.shape == output.shape, name
    np.testing.assert_array_equal(ours["counts"], theirs[3].numpy())


@pytest.mark.parametrize("export_format", EXPORTS)
@pytest.mark.parametrize("experiment", ["maskrcnn_shapes"])  # Faster R-CNN's: export.py's own check, below
def test_an_rcnn_export_detects_and_segments_what_the_model_does(tmp_path, export_format, shapes_root, experiment):
    torch.manual_seed(0)
    model = build_model(compose_train(f"experiment={experiment}", f"dataset.root={shapes_root}"),
                        pretrained=False).eval()
    export, suffix = EXPORTS[export_format]
    photos = sample_images()[:3]
    path = export(model, tmp_path / f"model{suffix}", metadata={"class_names": json.dumps(["a", "b", "c"])},
                  example=photos[0][None])
    exported = ExportedDetector(path)
    assert "uint8 [1, 3, H, W]" in exported.metadata["contract"] and exported.one_image_a_call
    generator = torch.Generator().manual_seed(1)
    # at 227x301 and 197x311 the resize to 256 / 400 lands on a whole pixel (227 * 256 / 227), where
    # torchvision's traced size would be a pixel short of eager mode's
    images = photos + [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
                       for height, width in ((227, 301), (197, 311), (128, 128))]
    with torch.no_grad():
        reference = [model([image])[0] for image in images]
    assert all(len(detections["scores"]) > 0 for detections in reference)
    summary = check_parity(reference, exported(images), limit=model.roi_heads.detections_per_img, name=path.name)
    assert ("masks within" in summary) == (experiment == "maskrcnn_shapes")
    assert ("masks" in exported.metadata["outputs"]) == (experiment == "maskrcnn_shapes")
    assert_same_contract(ContractModel.of_model(model), exported, images[3][None])
    with pytest.raises(ValueError, match="one image a call"):
        ContractModel.of_model(model)(torch.stack(photos).numpy())


def test_export_py_checks_its_file_and_the_export_scores_the_models_map(tmp_path, smoke_ssd, shapes_root):
    checkpoint, _ = smoke_ssd
    with_thresholds = tmp_path / "with_thresholds.pt"  # as evaluate.py save_thresholds=true writes it
    save_checkpoint({**load_checkpoint(checkpoint), "score_thresholds": {"ellipse": 0.5, "rectangle": 0.25,
                                                                          "triangle": 0.5, "star": 0.75}},
                    with_thresholds)
    for export_format, name in (("onnx", "model.onnx"), ("torchscript", "model.pt")):
        result = run_script("export.py", f"ckpt_path={with_thresholds}", f"format={export_format}", cwd=tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert f"{name}: " in output and " detections match the PyTorch model's" in output
        assert export_format == "torchscript" or "Warning" not in output  # torch.jit warns it is deprecated
        assert "onnxscript" not in output and "exporting ssd128 to " in output  # quiet, with a line for the slow part
    assert not list((tmp_path / "run").glob("*.unchecked.*"))  # written aside, renamed once checked
    for name in ("model.onnx", "model.pt"):  # the thresholds travel with the file, for score_threshold=auto
        assert json.loads(ExportedDetector(tmp_path / "run" / name).metadata["score_thresholds"])["star"] == 0.75
    broken = onnx.load(tmp_path / "run" / "model.onnx")
    next(p for p in broken.metadata_props if p.key == "class_names").value = '"person"'
    onnx.save(broken, tmp_path / "broken.onnx")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'broken.onnx'}: its metadata's class_names "
                                                   "'\"person\"' is not a JSON list")):
        ExportedDetector(tmp_path / "broken.onnx")

    model, trained, _ = model_from_checkpoint(checkpoint)
    val_set = instantiate(trained.dataset.val)
    loader = build_loader(val_set, batch_size=2, shuffle=False, num_workers=0, seed=0)
    maps = {}
    for label, detector in (("pytorch", model), ("onnx", ExportedDetector(tmp_path / "run" / "model.onnx")),
                            ("torchscript", ExportedDetector(tmp_path / "run" / "model.pt"))):
        evaluator = DetectionEvaluator(class_names=list(trained.dataset.classes))
        maps[label] = evaluate(detector, loader, evaluator, device=torch.device("cpu"), progress=False)["voc07_map"]
    np.testing.assert_allclose([maps["onnx"], maps["torchscript"]], maps["pytorch"], atol=0.002)

    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(shapes_root.glob("*/JPEGImages/*.jpg"))[:4]:
        (folder / path.name).write_bytes(path.read_bytes())
    records = {}
    for key, value in (("ckpt_path", checkpoint), ("model_path", tmp_path / "run" / "model.onnx")):
        run_dir = tmp_path / key
        run_dir.mkdir()
        result = run_script("predict.py", f"{key}={value}", f"source={folder}", "num_workers=0", "progress=false",
                            cwd=run_dir)
        assert result.returncode == 0, result.stderr
        records[key] = json.loads((run_dir / "run" / "predictions.json").read_text())
    assert len(records["ckpt_path"]) == len(records["model_path"]) > 0
    for ours, theirs in zip(sorted(records["ckpt_path"], key=lambda r: (r["file_name"], -r["score"])),
                            sorted(records["model_path"], key=lambda r: (r["file_name"], -r["score"]))):
        assert ours["category_id"] == theirs["category_id"] and abs(ours["score"] - theirs["score"]) <= 1e-3


@pytest.mark.parametrize("experiment", ["maskrcnn_shapes", "fasterrcnn_shapes"])
def test_export_py_exports_an_rcnn_and_its_export_scores_the_models_map(tmp_path, shapes_root, experiment):
    run = tmp_path / "train"
    run.mkdir()
    result = run_script("train.py", "debug=smoke", f"experiment={experiment}", *SMALL_SHAPES,
                        f"dataset.root={shapes_root}", "tracking=none", cwd=run)
    assert result.returncode == 0, result.stderr
    checkpoint = run / "run" / "checkpoints" / "last.pt"
    result = run_script("export.py", f"ckpt_path={checkpoint}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "model.onnx: " in output and "Warning" not in output
    assert ("masks within 0.01)" in output) == (experiment == "maskrcnn_shapes")
    outputs = ExportedDetector(tmp_path / "run" / "model.onnx").metadata["outputs"]
    assert ("masks" in outputs) == (experiment == "maskrcnn_shapes")

    model, trained, _ = model_from_checkpoint(checkpoint)
    val_set = instantiate(trained.dataset.val)
    loader = build_loader(val_set, batch_size=2, shuffle=False, num_workers=0, seed=0)
    results = {}
    for label, detector in (("pytorch", model), ("onnx", ExportedDetector(tmp_path / "run" / "model.onnx"))):
        evaluator = DetectionEvaluator(class_names=list(trained.dataset.classes))
        results[label] = evaluate(detector, loader, evaluator, device=torch.device("cpu"), progress=False)
    assert ("coco_mask_map" in results["pytorch"]) == (experiment == "maskrcnn_shapes")
    for metric in ("voc07_map", "coco_map", "coco_mask_map")[:3 if experiment == "maskrcnn_shapes" else 2]:
        assert abs(results["onnx"][metric] - results["pytorch"][metric]) <= 0.002, metric

    result = run_script("export.py", f"ckpt_path={checkpoint}", "format=tflite", cwd=tmp_path)
    assert result.returncode == 2 and "format must be onnx or torchscript" in result.stdout + result.stderr
