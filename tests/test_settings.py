"""Settings are checked before anything runs: unknown keys (with or without `+`), wrong types and values out
of range are refused with the key named, and the entry point says so in one line before torch loads."""

import os
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from conftest import REPO
from schema import check_train
from detection.engine.settings import SettingsError, TrainerSettings

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("override, named", [
    ("+trainer.max_epoch=3", "max_epoch"),
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
])
def test_a_bad_setting_is_refused_naming_its_key(compose_train, override, named):
    cfg = compose_train(override)
    with pytest.raises(SettingsError, match=named.replace("+", r"\+").replace("'", "'")):
        check_train(cfg)


@pytest.mark.parametrize("override, named", [("seed=abc", "seed"), ("trainer.max_epochs=many", "max_epochs"),
                                             ("trainer.epochz=3", "trainer.epochz"),
                                             ("trainer.progress=perhaps", "progress")])
def test_a_wrong_type_or_unknown_key_is_refused_by_hydra_at_compose_time(compose_train, override, named):
    with pytest.raises(ConfigCompositionException, match=named):
        compose_train(override)


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
