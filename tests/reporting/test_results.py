"""The epoch table, results.csv and the sweep's table: what a run and a sweep show at a glance."""

import csv
import math

from detection.reporting.results import sweep_table, table_header, table_line, write_class_table, write_results_csv


def row(epoch, val_map, **extra):
    return {"epoch": epoch, "step": 10 * epoch, "train/loss": 3.0 / epoch, "train/loss_box_reg": 1.0 / epoch,
            "train/loss_classifier": 2.0 / epoch, "train/lr": 0.01, "train/images_per_s": 12.5, "epoch_s": 61.0,
            "val/precision": 0.5, "val/recall": 0.25, "val/map50_coco": 0.4, "val/map50_95": 0.2,
            "val/map": val_map, **extra}


def test_the_epoch_table_lines_up_under_its_heading_with_the_models_own_losses():
    heading, line = table_header(row(1, 0.3)), table_line(row(1, 0.3), max_epochs=12)
    assert heading.split() == ["epoch", "loss", "box_reg", "classifier", "P", "R", "mAP50", "mAP50-95", "val/map",
                               "lr", "img/s", "time"]
    assert line.split() == ["1/12", "3.0000", "1.0000", "2.0000", "0.5000", "0.2500", "0.4000", "0.2000", "0.3000",
                            "1.0e-02", "12.5", "61s"]
    assert len(heading) == len(line)


def test_results_csv_has_a_row_per_epoch_and_a_column_for_every_key_any_epoch_logged(tmp_path):
    history = [row(1, 0.1), row(2, 0.2, **{"val/errors/missed": 0.05})]
    with open(write_results_csv(history, tmp_path / "results.csv")) as file:
        rows = list(csv.DictReader(file))
    assert [r["epoch"] for r in rows] == ["1", "2"] and list(rows[0])[:2] == ["epoch", "step"]
    assert rows[0]["val/errors/missed"] == "" and rows[1]["val/errors/missed"] == "0.05"


def test_the_sweep_table_shows_what_differs_and_the_best_job_ignoring_nan():
    jobs = [{"job": 1, "status": "COMPLETED", "overrides": ["debug=smoke", "optimizer.lr=0.1"], "folder": "/s/1",
             "best": math.nan, "best_epoch": 1, "last": math.nan},
            {"job": 0, "status": "COMPLETED", "overrides": ["debug=smoke", "optimizer.lr=0.01"], "folder": "/s/0",
             "best": 0.5, "best_epoch": 3, "last": 0.4},
            {"job": 2, "status": "FAILED", "overrides": ["debug=smoke", "optimizer.lr=1"], "folder": "/s/2"}]
    lines = sweep_table(jobs)
    assert lines[0] == "sweep of 3 jobs:"
    assert [line.split()[:2] for line in lines[2:5]] == [["0", "COMPLETED"], ["1", "COMPLETED"], ["2", "FAILED"]]
    assert lines[2].split()[2:] == ["0.5000", "3", "0.4000", "optimizer.lr=0.01"]
    assert lines[4].split()[2:] == ["-", "-", "-", "optimizer.lr=1"]
    assert lines[-1] == "best: job 0 (optimizer.lr=0.01), val/map 0.5000 at epoch 3: /s/0/checkpoints/best.pt"


def test_the_per_class_table_has_a_row_per_class_in_label_order_and_a_column_per_measure(tmp_path):
    metrics = {"val/map": 0.5, "val_class/ap50_voc07/cat": 0.25, "val_class/ap50_voc07/dog": 0.75,
               "val_class/ap50_95/cat": 0.125, "val_class/ap50_95/dog": float("nan")}
    with open(write_class_table(metrics, tmp_path / "per_class_ap.csv")) as file:
        rows = list(csv.reader(file))
    assert rows == [["class", "AP50 (VOC07)", "AP50-95 (COCO)"], ["cat", "0.2500", "0.1250"], ["dog", "0.7500", "nan"]]
