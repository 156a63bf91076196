"""train.py and evaluate.py run as a user runs them (subprocesses, real files, a real MLflow store)."""

import csv
import json
import os
import re
import subprocess

import mlflow
import pytest
import torch

from conftest import SMALL_SHAPES, run_script, scores
from detection.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def train(tmp_path, shapes_root, *overrides):
    result = run_script("train.py", "debug=smoke", f"dataset.root={shapes_root}", *SMALL_SHAPES,
                        "tracking.log_model=false", *overrides,  # the model's logging: tests/test_tracking.py
                        cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# Faster R-CNN's smoke run: tests/models/test_deployment.py trains, evaluates and exports it through the scripts
@pytest.mark.parametrize("model", ["model=ssd backbone=resnet50", "model=ssd backbone=vgg16", "experiment=maskrcnn_shapes"])
def test_smoke_training_writes_a_checkpoint_and_logs_to_mlflow(tmp_path, shapes_root, model):
    result = train(tmp_path, shapes_root, *model.split())
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["epoch"] == 1 and checkpoint["step"] == 2
    assert checkpoint["class_names"] == ["ellipse", "rectangle", "triangle", "star"]
    runs = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "val/map" in runs[0].data.metrics and runs[0].data.params["optimizer.lr"] == "0.001"
    assert int(runs[0].data.params["model/params"]) > 0 and float(runs[0].data.params["model/gmacs"]) > 0
    artifacts = {item.path for item in mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").list_artifacts(
        runs[0].info.run_id)}
    assert {"results.csv", "results.png", "per_class_ap.csv"} <= artifacts
    # the epoch table: a heading with the model's own losses, then one line per epoch
    heading, line = [text.split(" - ", 1)[1] for text in result.stdout.splitlines() if "engine.hooks" in text][:2]
    assert heading.split()[:2] == ["epoch", "loss"] and heading.split()[-8:] == \
        ["P", "R", "mAP50", "mAP50-95", "val/map", "lr", "img/s", "time"]
    assert line.split()[0] == "1/1" and len(line.split()) == len(heading.split())


def test_the_run_folder_has_one_results_row_per_epoch_and_ends_with_the_best_and_pasteable_commands(tmp_path,
                                                                                                  shapes_root):
    # the length in steps, as a paper gives it: 5 steps of 2 an epoch are 3 epochs, the schedule spans 5
    result = train(tmp_path, shapes_root, "backbone=resnet18", "anchors=shapes128", "trainer.max_steps=5",
                   "trainer.best_model_only=true")
    assert "trainer.max_steps=5 at 2 steps an epoch: 3 epochs (6 steps)" in result.stdout
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["config"]["trainer"]["max_epochs"] == 3 and last["scheduler"]["lr_lambdas"][0]["total_steps"] == 5
    with open(tmp_path / "run" / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"] and [row["step"] for row in rows] == ["2", "4", "6"]
    validated = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["metrics"]
    assert set(validated) | {"train/loss", "train/lr", "train/images_per_s", "epoch_s"} <= set(rows[0])
    assert float(rows[-1]["val/map"]) == pytest.approx(validated["val/map"])
    maps = [float(row["val/map"]) for row in rows]
    best = maps.index(max(maps)) + 1
    assert f"best val/map {max(maps):.4f} at epoch {best} (step {2 * best}); last {maps[-1]:.4f} at epoch 3" in \
        result.stdout
    assert (tmp_path / "run" / "results.png").stat().st_size > 10_000
    # the printed evaluate command, pasted from another folder in a shell without the environment's python
    command = re.search(r"evaluate: (.+)$", result.stdout, re.M).group(1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pasted = subprocess.run(["bash", "-c", f"{command} hydra.run.dir={elsewhere}/run"], cwd=elsewhere,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert pasted.returncode == 0, pasted.stderr
    assert json.loads((elsewhere / "run" / "metrics.json").read_text())["val/map"] == pytest.approx(max(maps))

    # disk on purpose: one step file (last.pt links to it) and a model-only best.pt, which does not resume
    folder = tmp_path / "run" / "checkpoints"
    assert [path.name for path in folder.glob("step_*.pt")] == ["step_00000006.pt"]
    best = load_checkpoint(folder / "best.pt")
    assert best["model_only"] and "optimizer" not in best and "rng" not in best
    assert (folder / "best.pt").stat().st_size < 0.6 * (folder / "last.pt").stat().st_size
    refused = run_script("train.py", f"ckpt_path={folder / 'best.pt'}", cwd=elsewhere)
    assert refused.returncode == 2 and "holds the model only (trainer.best_model_only)" in refused.stdout


def test_resume_continues_at_the_next_epoch_and_step(tmp_path, shapes_root):
    train(tmp_path, shapes_root, "backbone=resnet18", "anchors=shapes128")
    first = tmp_path / "run" / "checkpoints" / "last.pt"
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    train(resumed_dir, shapes_root, f"ckpt_path={first}", "trainer.max_epochs=2")
    checkpoint = load_checkpoint(resumed_dir / "run" / "checkpoints" / "last.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 4
    assert checkpoint["tracking_run_id"] == load_checkpoint(first)["tracking_run_id"]
    assert not torch.equal(checkpoint["model"]["head.cls.0.weight"], load_checkpoint(first)["model"]["head.cls.0.weight"])
    with open(resumed_dir / "run" / "results.csv") as file:  # the resumed run's table goes on from the first's
        assert [row["epoch"] for row in csv.DictReader(file)] == ["1", "2"]


def test_evaluate_prints_map_and_writes_metrics(tmp_path, shapes_root):
    # trained in bf16 (emulated where the CPU has no native bf16): validation still gives evaluate.py's numbers
    train(tmp_path, shapes_root, "backbone=resnet18", "anchors=shapes128", "trainer.amp=bf16")
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    result = run_script("evaluate.py", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.pt'}", "robustness=true",
                        "corruptions=[gaussian_noise,brightness]", "severities=[1,5]", cwd=eval_dir,
                        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "VOC07 AP50" in output and "COCO AP" in output and "ellipse" in output and "localisation" in output
    assert "FLOPs = 2 x MACs" in output and "features.trunk" in output  # what the model costs
    metrics = json.loads((eval_dir / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["val/map"] <= 1.0 and "missed" in metrics["error_breakdown"]["counts"]
    validated = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["metrics"]
    assert metrics["val/errors/background_count"] > 0  # the same detections, not only the same empty mAP
    assert {key: metrics[key] for key in scores(validated)} == pytest.approx(scores(validated), nan_ok=True)
    assert metrics["val/speed/network_ms"] > 0 and "speed per image on cpu, batch" in output
    assert "VOC07 AP50" in (eval_dir / "run" / "evaluate.log").read_text()  # the log holds what it printed
    # the results go into the training run that wrote the checkpoint, at its step
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_id == torch.load(tmp_path / "run" / "checkpoints" / "last.pt",
                                         weights_only=False)["tracking_run_id"]
    assert run.data.metrics["eval/map"] == metrics["val/map"] and "eval/errors/missed_count" in run.data.metrics
    assert {item.path for item in client.list_artifacts(run.info.run_id, "evaluation/last.pt")} == \
        {f"evaluation/last.pt/{name}" for name in ("metrics.json", "detections.json", "errors", "thresholds.json",
                                                   "per_image.json", "worst_images.png", "precision_recall.png",
                                                   "robustness.json", "robustness.png", "report.md")}
    # one report: every section, every picture it shows beside it, its path printed
    report = (eval_dir / "run" / "report.md").read_text()
    for heading in ("## Headline", "## Per class", "## Errors (TIDE at IoU 0.5)", "## The worst images", "## Cost",
                    "## Robustness"):
        assert heading in report, heading
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert len(pictures) == 5 and all((eval_dir / "run" / picture).is_file() for picture in pictures)
    assert f"the report: {eval_dir / 'run' / 'report.md'}" in output
    # per image: each file's AP50 and error counts, which add up to the split's breakdown
    rows = json.loads((eval_dir / "run" / "per_image.json").read_text())
    assert all(row["file_name"].endswith(".jpg") for row in rows)
    for name, count in metrics["error_breakdown"]["counts"].items():
        assert sum(row[name] for row in rows) == count, name
    # the corruption benchmark over the same split: P is the clean evaluation's AP50, mPC the runs' mean
    robustness = json.loads((eval_dir / "run" / "robustness.json").read_text())
    assert robustness["P"] == metrics["val/map"] and set(robustness["per_corruption"]) == {"gaussian_noise",
                                                                                          "brightness"}
    corrupted = [ap for row in robustness["per_corruption"].values() for ap in row.values()]
    assert len(corrupted) == 4 and robustness["mPC"] == pytest.approx(sum(corrupted) / 4)
    assert robustness["coco"]["P"] == metrics["val/map50_95"] and set(robustness["grown_most"]) == {"noise", "weather"}
    assert run.data.metrics["robustness/mPC"] == pytest.approx(robustness["mPC"]) and \
        "robustness/ap50/brightness/s5" in run.data.metrics
    assert "P (clean AP50)" in output and "| gaussian_noise |" in report and "gaussian_noise 5/5" in result.stderr
    detections = json.loads((eval_dir / "run" / "detections.json").read_text())
    assert detections and {"image_id", "category_id", "category_name", "bbox", "score"} <= set(detections[0])
    assert {record["category_name"] for record in detections} <= {"ellipse", "rectangle", "triangle", "star"}


def test_same_seed_repeats_the_run_exactly_on_the_cpu(tmp_path, shapes_root):
    weights = []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        # a worker process, so that the seeding of augmentation in workers is exercised too
        train(folder, shapes_root, "backbone=resnet18", "anchors=shapes128", "seed=7", "trainer.num_workers=1")
        weights.append(load_checkpoint(folder / "run" / "checkpoints" / "last.pt")["model"])
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


@pytest.mark.faults
def test_resume_refuses_an_override_that_changes_the_trained_configuration(tmp_path, shapes_root):
    train(tmp_path, shapes_root, "backbone=resnet18", "anchors=shapes128")
    other = tmp_path / "other"
    other.mkdir()
    result = run_script("train.py", "debug=smoke", f"dataset.root={shapes_root}", *SMALL_SHAPES, "backbone=vgg16",
                        f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.pt'}", "tracking=none", cwd=other)
    assert result.returncode != 0
    assert "was trained with backbone=resnet18, but the command asks for backbone=vgg16" in result.stdout


def test_a_resume_whose_run_is_not_in_the_store_goes_on_in_a_new_linked_run(tmp_path, shapes_root):
    train(tmp_path, shapes_root, "backbone=resnet18", "anchors=shapes128")
    first = tmp_path / "run" / "checkpoints" / "last.pt"
    original = load_checkpoint(first)["tracking_run_id"]
    (tmp_path / "mlflow.db").unlink()  # the store re-created (or the checkpoint taken to another machine)
    for name, tracking in (("same_uri", ["tracking.log_model=false"]),
                           ("new_uri", ["tracking.log_model=false", f"tracking.uri=sqlite:///{tmp_path}/other.db"]),
                           ("untracked", ["tracking=none"])):
        folder = tmp_path / name
        folder.mkdir()
        result = run_script("train.py", f"ckpt_path={first}", "trainer.max_epochs=2", *tracking, cwd=folder)
        assert result.returncode == 0, result.stdout + result.stderr
        resumed = load_checkpoint(folder / "run" / "checkpoints" / "last.pt")
        assert resumed["epoch"] == 2 and resumed["step"] == 4
        if name == "untracked":
            assert resumed["tracking_run_id"] is None
            continue
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/{'mlflow' if name == 'same_uri' else 'other'}.db")
        [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert run.info.run_id == resumed["tracking_run_id"] != original and run.info.status == "FINISHED"
        assert run.data.tags["resumed_from_run_id"] == original and "val/map" in run.data.metrics
