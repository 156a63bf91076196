"""predict.py as a user runs it: a folder, a glob and a video through a trained checkpoint, drawn results and
COCO results JSON that match the model's own output; bad input named in one line; masks as RLE."""

import json
import shutil

import cv2
from hydra.utils import instantiate
import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import run_script
from detection.prediction import coco_records
from detection.data.samples import read_pixels
from detection.cli.assembly import model_from_checkpoint
from detection.engine.checkpoint import load_checkpoint


def test_coco_records_keep_what_scores_enough_as_xywh_with_names_and_rle_masks():
    masks = torch.zeros(3, 1, 6, 8)
    masks[0, 0, 1:3, 2:5] = 0.9
    prediction = {"boxes": torch.tensor([[2.0, 1, 5, 3], [0, 0, 8, 6], [1, 1, 2, 2]]),
                  "labels": torch.tensor([2, 1, 1]), "scores": torch.tensor([0.9, 0.5, 0.1]), "masks": masks}
    records = coco_records(prediction, file_name="a.jpg", image_id=7, class_names=["cat", "dog"], score_threshold=0.3)
    assert [(r["category_id"], r["category_name"], r["bbox"], r["score"]) for r in records] == [
        (2, "dog", [2.0, 1.0, 3.0, 2.0], 0.9), (1, "cat", [0.0, 0.0, 8.0, 6.0], 0.5)]
    assert all(r["image_id"] == 7 and r["file_name"] == "a.jpg" for r in records)
    decoded = mask_utils.decode({**records[0]["segmentation"], "counts": records[0]["segmentation"]["counts"].encode()})
    np.testing.assert_array_equal(decoded, (masks[0, 0] > 0.5).numpy())


def predict(tmp_path, *overrides):
    return run_script("predict.py", *overrides, "progress=false", "num_workers=0", cwd=tmp_path)


@pytest.mark.slow
def test_a_folder_is_predicted_drawn_and_written_as_the_model_sees_it(tmp_path, smoke_ssd):
    checkpoint, images = smoke_ssd
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in images[:5]:
        shutil.copy(image, folder)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    turned = Image.open(images[5])
    exif = Image.Exif()
    exif[0x0112] = 6
    turned.crop((0, 0, 128, 96)).save(folder / "turned.jpg", exif=exif)
    result = predict(tmp_path, f"ckpt_path={checkpoint}", f"source={folder}", "score_threshold=0.05", "batch_size=3")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    listed = json.loads((run / "images.json").read_text())
    assert len(listed["images"]) == 6 and [u["file_name"] for u in listed["unreadable"]] == [str(folder / "broken.jpg")]
    sizes = {entry["file_name"].rsplit("/", 1)[-1]: (entry["width"], entry["height"]) for entry in listed["images"]}
    assert sizes["turned.jpg"] == (96, 128)  # upright, as EXIF says
    assert sorted(p.name for p in (run / "images").iterdir()) == sorted(sizes)
    records = json.loads((run / "predictions.json").read_text())
    assert {r["category_name"] for r in records} <= {"ellipse", "rectangle", "triangle", "star"}

    model, _, _ = model_from_checkpoint(checkpoint)
    first = str(folder / images[0].name)
    with torch.no_grad():
        expected = model.eval()([torch.from_numpy(read_pixels(folder / images[0].name)).permute(2, 0, 1)])[0]
    ours = [r for r in records if r["file_name"] == first]
    kept = expected["scores"] >= 0.05
    assert len(ours) == int(kept.sum())
    boxes = expected["boxes"][kept]
    np.testing.assert_allclose([r["bbox"] for r in ours], torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1),
                               atol=0.01)


def test_source_val_predicts_the_checkpoints_validation_split_and_an_export_is_told_it_has_none(tmp_path, smoke_ssd):
    checkpoint, _ = smoke_ssd
    result = predict(tmp_path, f"ckpt_path={checkpoint}", "source=val", "draw=false")
    assert result.returncode == 0, result.stderr
    _, trained, _ = model_from_checkpoint(checkpoint)
    expected = [str(path) for path in instantiate(trained.dataset.val).image_paths()]
    listed = json.loads((tmp_path / "run" / "images.json").read_text())["images"]
    assert [entry["file_name"] for entry in listed] == expected and len(expected) == 4
    result = predict(tmp_path, "model_path=model.onnx", "source=val")
    assert result.returncode == 2 and "source=val: a dataset split is the checkpoint's" in result.stdout


def test_test_time_views_run_in_evaluate_and_predict_and_say_so(tmp_path, smoke_ssd):
    checkpoint, _ = smoke_ssd
    views = ["tta=[flip,160]", "slices=[64,0.25]"]
    result = predict(tmp_path, f"ckpt_path={checkpoint}", "source=val", "draw=false", *views)
    assert result.returncode == 0, result.stderr
    said = "test-time views: the image and its mirror, at input sizes [160], and 64-pixel tiles overlapping by 25%"
    assert said in result.stdout and json.loads((tmp_path / "run" / "predictions.json").read_text())
    evaluated = run_script("evaluate.py", f"ckpt_path={checkpoint}", "tracking=none", *views, cwd=tmp_path)
    assert evaluated.returncode == 0 and said in evaluated.stdout, evaluated.stderr
    assert 0 <= json.loads((tmp_path / "run" / "metrics.json").read_text())["val/map"] <= 1
    refused = predict(tmp_path, "model_path=model.onnx", "source=a", "tta=[flip]")
    assert refused.returncode == 2 and "tta and slices run a checkpoint's model" in refused.stdout


@pytest.mark.slow
def test_a_glob_and_a_video(tmp_path, smoke_ssd):
    checkpoint, images = smoke_ssd
    result = predict(tmp_path, f"ckpt_path={checkpoint}", f"source={images[0].parent}/*.jpg", "draw=false")
    assert result.returncode == 0, result.stderr
    assert len(json.loads((tmp_path / "run" / "images.json").read_text())["images"]) == len(
        list(images[0].parent.glob("*.jpg")))
    assert not (tmp_path / "run" / "images").exists()

    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (128, 128))
    for image in images[:5]:
        writer.write(cv2.resize(cv2.imread(str(image)), (128, 128)))  # the shapes differ in size
    writer.release()
    video_run = tmp_path / "video"
    video_run.mkdir()
    result = predict(video_run, f"ckpt_path={checkpoint}", f"source={clip}", "batch_size=2")
    assert result.returncode == 0, result.stderr
    listed = json.loads((video_run / "run" / "images.json").read_text())["images"]
    assert [entry["file_name"] for entry in listed] == [f"clip.mp4#{k}" for k in range(5)]
    drawn = cv2.VideoCapture(str(video_run / "run" / "clip.mp4"))
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == 5


@pytest.mark.slow
def test_bad_input_is_one_line_naming_the_path(tmp_path, smoke_ssd):
    checkpoint, _ = smoke_ssd
    (tmp_path / "empty").mkdir()
    (tmp_path / "fake.mp4").write_text("not a video")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    cases = {f"source={tmp_path / 'missing'}": "missing: no such file or folder",
             f"source={tmp_path / 'empty'}": "empty: no images",
             f"source={tmp_path / 'fake.mp4'}": "fake.mp4: cannot be decoded as a video"}
    for source, message in cases.items():
        result = predict(tmp_path, f"ckpt_path={checkpoint}", source)
        output = result.stdout + result.stderr
        assert result.returncode == 2 and message in output and "Traceback" not in output, output
    result = predict(tmp_path, f"ckpt_path={tmp_path / 'other.pt'}", f"source={tmp_path / 'empty'}")
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "other.pt" in output and "not a training checkpoint" in output, output


@pytest.mark.slow
def test_tracking_mlflow_records_the_results_as_artifacts(tmp_path, smoke_ssd):
    checkpoint, images = smoke_ssd
    store = f"sqlite:///{tmp_path}/mlflow.db"
    result = predict(tmp_path, f"ckpt_path={checkpoint}", f"source={images[0]}", "tracking=mlflow",
                     f"tracking.uri={store}", "tracking.system_metrics=false")
    assert result.returncode == 0, result.stderr
    client = mlflow.MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("predict").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["images"] == 1
    logged = {entry.path for entry in client.list_artifacts(run.info.run_id, "predictions")}
    assert logged == {"predictions/predictions.json", "predictions/images.json", "predictions/images"}


def test_evaluate_saves_each_classes_threshold_and_predict_auto_keeps_detections_above_them(tmp_path, smoke_ssd):
    checkpoint, _ = smoke_ssd
    result = run_script("evaluate.py", f"ckpt_path={checkpoint}", "save_thresholds=true", "tracking=none",
                        "num_workers=0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    thresholds = json.loads((tmp_path / "run" / "thresholds.json").read_text())
    copy = tmp_path / "run" / checkpoint.name
    saved = load_checkpoint(copy)["score_thresholds"]
    assert saved == {name: row["threshold"] for name, row in thresholds.items()} and saved
    assert all(0 <= row["f1"] <= 1 and 0 <= row["threshold"] <= 1 for row in thresholds.values())
    assert "per-class score thresholds (F1-best at IoU 0.5)" in result.stdout

    predicted = tmp_path / "predicted"
    predicted.mkdir()
    result = predict(predicted, f"ckpt_path={copy}", "source=val", "score_threshold=auto", "draw=false")
    assert result.returncode == 0, result.stderr
    assert "score_threshold=auto: each class's F1-best threshold" in result.stdout
    records = json.loads((predicted / "run" / "predictions.json").read_text())
    assert records and all(record["score"] >= round(saved[record["category_name"]], 5) - 1e-5 for record in records)
    assert len(records) < len(json.loads((tmp_path / "run" / "detections.json").read_text()))

    refused = predict(predicted, f"ckpt_path={checkpoint}", "source=val", "score_threshold=auto")
    assert refused.returncode == 2 and "holds no per-class thresholds; evaluate.py" in refused.stdout
