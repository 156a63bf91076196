"""A tracked run ends with the status of how its work ended; it is named by its label and its overrides as
typed."""

import contextlib
import signal

import pytest

from detection.cli.runs import ended_with_status, readable
from detection.cli.sweep import label_of
from detection.engine.loop import TrainingInterrupted


class RecordingTracker:
    run_id = "run"

    def __init__(self):
        self.ended = []

    def end(self, status="FINISHED"):
        self.ended.append(status)


@pytest.mark.parametrize("raised, status", [(None, "FINISHED"), (ValueError("bad data"), "FAILED"),
                                            (KeyboardInterrupt(), "KILLED")])
def test_a_run_ends_with_the_status_of_how_its_work_ended(raised, status):
    tracker = RecordingTracker()
    with pytest.raises(type(raised)) if raised else contextlib.nullcontext():
        with ended_with_status(tracker):
            if raised:
                raise raised
    assert tracker.ended == [status]


def test_a_stop_by_signal_ends_the_run_killed_and_exits_128_plus_the_signal(tmp_path):
    tracker = RecordingTracker()
    with pytest.raises(SystemExit) as exit_info, ended_with_status(tracker):
        raise TrainingInterrupted(signal.SIGTERM, tmp_path / "last.pt")
    assert exit_info.value.code == 128 + signal.SIGTERM and tracker.ended == ["KILLED"]


def test_the_experiment_label_comes_from_the_group_choices_and_plain_values_of_the_config(compose_train):
    cfg = compose_train("backbone=resnet18", "anchors=shapes128")
    assert label_of(cfg, {"model": "ssd"}) == "ssd128_resnet18_shapes"
    assert label_of(cfg, {"model": "ssd", "sweep_backbone": "vgg16+resnet50"}) == "ssd128_vgg16+resnet50_shapes"
    assert label_of(compose_train("model=maskrcnn", "fpn=resnet18"), {"model": "maskrcnn"}) == "maskrcnn_resnet18_shapes"


@pytest.mark.parametrize("escaped, typed", [("tracking.uri=sqlite\\:////tmp/x.db", "tracking.uri=sqlite:////tmp/x.db"),
                                            ("run.name=a\\ b\\,c\\=d", "run.name=a b,c=d"),
                                            ("path=C\\:\\\\data", "path=C:\\data"),
                                            ("optimizer.lr=0.002", "optimizer.lr=0.002")])
def test_overrides_are_tagged_and_named_as_typed_without_hydras_escapes(escaped, typed):
    assert readable(escaped) == typed
