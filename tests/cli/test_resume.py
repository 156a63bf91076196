"""What a resumed run continues with and what it refuses, without subprocesses."""


import pytest
import torch
from omegaconf import OmegaConf

from detection.cli import assembly, resume as resuming
from detection.engine.checkpoint import save_checkpoint
from detection.engine.settings import SettingsError


@pytest.fixture
def trained(compose_train, tmp_path):
    """A checkpoint's contents as train.py stores them, for a run of 20 epochs of batch 4 on BCCD-like data."""
    cfg = compose_train("backbone=resnet18", "trainer.max_epochs=20", "trainer.batch_size=4",
                        "trainer.limit_train_images=16")
    return {"config": OmegaConf.to_container(cfg, resolve=True), "config_unresolved": OmegaConf.to_container(cfg),
            "choices": {"backbone": "resnet18", "model": "ssd", "debug": None, "experiment": None},
            "epoch": 14, "batches_done": 0, "metrics": {"val/map": 0.5}, "model": {}}


def resume(compose_train, checkpoint, *overrides):
    cfg = compose_train("ckpt_path=/runs/a/checkpoints/last.pt", *overrides)
    return resuming.resume_config(cfg, checkpoint, ["ckpt_path=/runs/a/checkpoints/last.pt", *overrides])


def test_a_resume_without_overrides_keeps_every_setting_of_the_run(compose_train, trained):
    cfg = resume(compose_train, trained)
    assert OmegaConf.to_container(cfg.trainer) == trained["config"]["trainer"]
    assert cfg.trainer.max_epochs == 20 and cfg.trainer.batch_size == 4 and cfg.trainer.limit_train_images == 16
    assert cfg.backbone.arch == "resnet18" and cfg.ckpt_path == "/runs/a/checkpoints/last.pt"


def test_a_requeued_job_continues_from_the_last_checkpoint_in_its_own_folder(compose_train, trained, tmp_path):
    new_cfg, nothing = resuming.continued_run(compose_train(), tmp_path, overrides=[])
    assert nothing is None and new_cfg.ckpt_path is None
    save_checkpoint(trained, tmp_path / "checkpoints" / "last.pt")
    cfg, checkpoint = resuming.continued_run(compose_train("trainer.max_epochs=3"), tmp_path, overrides=[])
    assert cfg.ckpt_path == str(tmp_path / "checkpoints" / "last.pt") and checkpoint["epoch"] == 14
    assert cfg.trainer.max_epochs == 20  # the run's own, not this composition's


def test_a_model_comes_back_from_its_checkpoint_without_its_original_weight_files(compose_train, tmp_path):
    cfg = compose_train("backbone=resnet18", "anchors=shapes128", "backbone.weights=/gone/resnet18.pth")
    model = assembly.build_model(cfg, pretrained=False)
    save_checkpoint({"config": OmegaConf.to_container(cfg, resolve=True), "model": model.state_dict()},
                    tmp_path / "best.pt")
    rebuilt, trained, _ = assembly.model_from_checkpoint(tmp_path / "best.pt")
    assert trained.model.backbone.weights == "/gone/resnet18.pth"  # kept in the record, not loaded
    assert all(torch.equal(rebuilt.state_dict()[key], value) for key, value in model.state_dict().items())


def test_a_resume_applies_only_the_settings_that_may_change(compose_train, trained):
    cfg = resume(compose_train, trained, "trainer.max_epochs=30", "trainer.num_workers=0", "dataset.root=/moved")
    assert (cfg.trainer.max_epochs, cfg.trainer.num_workers, cfg.dataset.root) == (30, 0, "/moved")
    assert cfg.trainer.batch_size == 4 and cfg.dataset.train.root == "/moved"  # interpolations follow


@pytest.mark.parametrize("override, named", [
    ("trainer.batch_size=8", "trainer.batch_size=4, but the command asks for trainer.batch_size=8"),
    ("trainer.amp=false", "trainer.amp=auto"),
    ("backbone=vgg16", "backbone=resnet18, but the command asks for backbone=vgg16"),
    ("debug=smoke", "debug=None, but the command asks for debug=smoke"),
    ("optimizer.lr=0.5", "optimizer.lr"),
    ("seed=3", "seed=0"),
])
def test_a_resume_refuses_to_change_the_trained_configuration(compose_train, trained, override, named):
    with pytest.raises(SettingsError, match=named.replace("[", r"\[")):
        resume(compose_train, trained, override)


def test_repeating_a_stored_value_is_accepted(compose_train, trained):
    assert resume(compose_train, trained, "backbone=resnet18", "trainer.batch_size=4").trainer.batch_size == 4


def test_a_finished_run_is_recognised_until_max_epochs_is_raised(compose_train, trained):
    trained["epoch"] = 20
    assert resuming.already_finished(resume(compose_train, trained), trained)
    assert not resuming.already_finished(resume(compose_train, trained, "trainer.max_epochs=25"), trained)
    trained["batches_done"] = 3  # stopped inside the last epoch: not finished
    assert not resuming.already_finished(resume(compose_train, trained), trained)


def test_data_moved_by_an_environment_variable_is_followed(compose_train, trained, tmp_path, monkeypatch):
    trained["config"]["dataset"]["root"] = str(tmp_path / "gone")
    trained["config_unresolved"]["dataset"]["root"] = "${oc.env:MOVED_ROOT,/nowhere}"
    monkeypatch.setenv("MOVED_ROOT", str(tmp_path))
    assert resume(compose_train, trained).dataset.root == str(tmp_path)


def test_changed_data_is_refused(compose_train, trained):
    trained["data_fingerprint"] = "a" * 64
    with pytest.raises(SettingsError, match="is not the one /runs/a/checkpoints/last.pt was trained on"):
        resuming.check_same_data(resume(compose_train, trained), trained, "b" * 64)
    resuming.check_same_data(resume(compose_train, trained), trained, "a" * 64)


def test_the_run_goes_on_in_the_tracking_store_it_started_in(compose_train, trained, monkeypatch):
    trained["config"]["tracking"] = {"_target_": "detection.tracking.MlflowTracker", "uri": "sqlite:////runs/a.db"}
    trained["config_unresolved"]["tracking"] = {"_target_": "detection.tracking.MlflowTracker",
                                                "uri": "${oc.env:MLFLOW_TRACKING_URI,null}"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere.db")
    assert resume(compose_train, trained).tracking.uri == "sqlite:////runs/a.db"
