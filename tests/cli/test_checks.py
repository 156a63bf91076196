"""Settings are checked before anything runs: unknown keys (with or without `+`), wrong types and values out
of range are refused with the key named, and the entry point says so in one line before torch loads."""

import os
import re
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from conftest import REPO
from detection.cli.checks import check_train
from detection.engine.settings import SettingsError, TrainerSettings

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("override, named", [
    ("+trainer.max_epoch=3", "trainer.max_epoch is not a setting: did you mean trainer.max_epochs?"),
    ("+sed=1", "sed"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0"),
    ("trainer.log_every=0", "trainer.log_every=0"),
    ("trainer.grad_clip=-1", "trainer.grad_clip=-1"),
    ("trainer.grad_clip=0", "trainer.grad_clip=0"),
    ("trainer.limit_train_images=0", "trainer.limit_train_images=0"),
    ("trainer.batch_size=0", "trainer.batch_size=0"),
    ("trainer.num_workers=-1", "trainer.num_workers=-1"),
    ("trainer.checkpoint_every=0", "trainer.checkpoint_every=0"),
    ("trainer.keep_last=0", "trainer.keep_last=0"),
    ("trainer.amp=maybe", "trainer.amp='maybe'"),
    ("seed=-1", "seed=-1"),
    ("seed=4294967296", "seed=4294967296"),
    ("model.score_threshold=2", "model.score_threshold=2: must be numbers >= 0 and <= 1"),
    ("model.nms_threshold=-1", "model.nms_threshold=-1: must be numbers >= 0 and <= 1"),
    ("model.iou_threshold=0", "model.iou_threshold=0: must be numbers > 0.0 and <= 1"),
    ("model.detections_per_image=0", "model.detections_per_image=0: must be whole numbers >= 1"),
    ("scheduler=cosine scheduler.min_factor=-1", "scheduler.min_factor=-1: must be numbers >= 0 and <= 1"),
    ("scheduler.warmup_factor=0", "scheduler.warmup_factor=0"),
    ("scheduler.milestones=[0.5,1.5]", "scheduler.milestones=[0.5, 1.5]: must be numbers > 0.0 and <= 1"),
    ("anchors.image_size=0", "anchors.image_size=0: must be whole numbers >= 32"),
    ("anchors=ssd300 anchors.aspect_ratios=[[0],[2,3],[2,3],[2,3],[2],[2]]", "anchors.aspect_ratios=[[0], [2, 3]"),
    ("anchors=ssd300 anchors.box_sizes=[30,60,111,162,213,264,-315]", "anchors.box_sizes="),
    ("model=maskrcnn model.min_size=0", "model.min_size=0"),
    ("dataset.classes=[]", r"dataset.classes=[]: give a list of one or more class names"),
    ("dataset.classes=[a,b,a]", "dataset.classes lists ['a'] more than once"),
    ("dataset.classes=person", "dataset.classes='person' is one name, not a list: write dataset.classes=[person]"),
    ("dataset=voc_layout dataset.root=/data/mine", "dataset.classes is not set: list the classes in label order, "
                                                   "e.g. dataset.classes=[cat,dog]"),
    ("model=maskrcnn dataset=voc_layout dataset.root=/nowhere dataset.classes=[a]",
     "dataset.train gives boxes only (/nowhere/SegmentationObject does not exist): for box-only data use "
     "model=fasterrcnn"),
    ("model=maskrcnn dataset=voc", "VOC2012/SegmentationObject does not exist"),
])
def test_a_bad_setting_is_refused_naming_its_key(compose_train, override, named):
    cfg = compose_train(*override.split())
    with pytest.raises(SettingsError, match=re.escape(named)):
        check_train(cfg)


@pytest.mark.parametrize("override, named", [("seed=abc", "seed"), ("trainer.max_epochs=many", "max_epochs"),
                                             ("trainer.epochz=3", "trainer.epochz"),
                                             ("trainer.progress=perhaps", "progress")])
def test_a_wrong_type_or_unknown_key_is_refused_by_hydra_at_compose_time(compose_train, override, named):
    with pytest.raises(ConfigCompositionException, match=named):
        compose_train(override)


@pytest.mark.parametrize("override, line", [
    ("trainer.epochs=3", "error: trainer.epochs is not a setting: did you mean trainer.max_epochs? known: amp,"),
    ("traner.max_epochs=3", "error: traner is not a setting: did you mean trainer? known: anchors,"),
    ("dataset.clases=[a]", "error: dataset.clases is not a setting: did you mean dataset.classes? known: classes,"),
    ("model=sdd", "error: model=sdd is not an option: did you mean model=ssd? options: fasterrcnn, maskrcnn, ssd"),
])
def test_a_misspelt_key_or_option_is_one_line_that_suggests_the_closest(tmp_path, override, line):
    result = subprocess.run([sys.executable, str(REPO / "train.py"), override, f"hydra.run.dir={tmp_path}/run"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith(line), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout
    assert "HYDRA_FULL_ERROR" not in os.environ


def test_good_settings_pass_and_come_back_typed(compose_train):
    settings = check_train(compose_train("trainer.grad_clip=1", "trainer.amp=true", "seed=7"))
    assert settings == TrainerSettings(grad_clip=1.0, amp=True)


def test_the_entry_point_refuses_in_one_line_before_torch_is_imported(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "trainer.log_every=0", "tracking=none",
                             f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 2
    assert result.stdout.strip().endswith("[ERROR] - trainer.log_every=0: must be an integer >= 1")
    assert len(result.stdout.strip().splitlines()) == 1
    assert not [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "hydra" in imported
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("script, arguments, named", [
    ("evaluate.py", ["ckpt_path=x.pt", "+robust=true"], "robust is not a setting"),
    ("evaluate.py", ["ckpt_path=x.pt", "robustness=true", "corruptions=[fog,rain]"],
     "corruptions=['fog', 'rain']: no corruption ['rain']; choose from ['gaussian_noise', "),
    ("evaluate.py", ["ckpt_path=x.pt", "severities=[0,6]"], "severities=[0, 6]: must be some of [1, 2, 3, 4, 5]"),
    ("evaluate.py", ["ckpt_path=x.pt", "corruption_seed=-1"], "corruption_seed=-1: must be an integer in [0, 2**32)"),
    ("evaluate.py", [], "ckpt_path is required: give it on the command line (ckpt_path=...)"),
    ("predict.py", ["ckpt_path=x.pt", "source=a", "+flip=true"], "flip is not a setting"),
    ("predict.py", ["ckpt_path=x.pt", "source=a", "tta=[mirror]"], "tta=['mirror']: 'mirror' is neither flip nor"),
    ("evaluate.py", ["ckpt_path=x.pt", "slices=[320,1.5]"], "slices=[320.0, 1.5]: must be [tile size >= 32 pixels"),
    ("export.py", ["ckpt_path=x.pt", "+opset=11"], "opset is not a setting"),
])
def test_every_entry_point_refuses_keys_it_does_not_know_and_unset_ones_in_one_line(tmp_path, script, arguments,
                                                                                  named):
    result = subprocess.run([sys.executable, str(REPO / script), *arguments, f"hydra.run.dir={tmp_path}/run"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and named in result.stdout, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
