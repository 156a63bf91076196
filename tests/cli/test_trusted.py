"""A downloaded checkpoint runs no code through any entry point: a configuration from a file instantiates only
what the project's config groups name."""

import re

import pytest
import torch

from conftest import run_script
from detection.cli.trusted import UntrustedConfig, check_targets, project_targets


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
