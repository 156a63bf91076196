"""The anchor tools' commands end to end on BCCD: analyse (through MLflow too), analyse through the augmentation,
fit into the run directory with the command that trains on the fit."""

import json
import re
import shlex
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import BCCD_ROOT, REPO, needs_full_bccd
from detection.models.anchors import AnchorSpec


BCCD = BCCD_ROOT


SPEC = AnchorSpec(300, (30, 60, 111, 162, 213, 264, 315), ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
                  (38, 19, 10, 5, 3, 1), (8, 16, 32, 64, 100, 300))


def run_module(module: str, *args: str, run_dir):
    """`python -m module args` from the repository root, as the README runs it."""
    return subprocess.run([sys.executable, "-m", module, *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@needs_full_bccd
def test_the_commands_analyse_and_fit_bccd_and_the_fitted_yaml_builds_a_model(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    common = ["dataset=bccd", f"dataset.root={BCCD}", "anchors=ssd300", "backbone=resnet18"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_module("detection.cli.anchor_tools", "analyse", *common, "tracking=mlflow", f"tracking.uri={uri}",
                        "tracking.system_metrics=false", run_dir=tmp_path / "run")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    [run] = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("anchors").experiment_id])
    assert run.data.metrics["default/best_possible_recall"] == pytest.approx(0.963, abs=1e-3)
    assert "205 images, 2805 boxes at input 300" in output and "Platelets" in output
    default = json.loads((tmp_path / "run" / "anchors_report.json").read_text())["default"]
    assert default["overall"]["boxes"] == 2805 and len(default["per_map"]) == 6
    assert {"best_iou.png", "box_sizes.png"} <= {p.name for p in (tmp_path / "run" / "plots" / "default").iterdir()}

    # through the training augmentation instead (augment=ssd: its zoom-out shrinks boxes below the priors)
    result = run_module("detection.cli.anchor_tools", "analyse", *common, "augmented_passes=1", run_dir=tmp_path / "aug")
    assert result.returncode == 0, result.stdout + result.stderr
    augmented = json.loads((tmp_path / "aug" / "anchors_report.json").read_text())["default"]["overall"]
    assert 0 < augmented["boxes"] and augmented["best_possible_recall"] < default["overall"]["best_possible_recall"]

    result = run_module("detection.cli.anchor_tools", "fit", *common, "fit.generations=3", "fit.population=5",
                        "fit.name=mine", run_dir=tmp_path / "fit" / "run")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # written into the run directory, never into the repository's conf/, with the command that trains on it
    fitted_yaml = tmp_path / "fit" / "run" / "conf" / "anchors" / "mine.yaml"
    assert fitted_yaml.is_file() and not (REPO / "conf" / "anchors" / "mine.yaml").exists()
    printed = shlex.split(re.search(r"train with them by (\S+ \S+train.py .*) \.\.\.", output).group(1))
    assert printed[:2] == [sys.executable, str(REPO / "train.py")]
    report_json = json.loads((tmp_path / "fit" / "run" / "anchors_report.json").read_text())
    for key in ("best_possible_recall", "best_iou_mean"):
        assert report_json["fitted"]["overall"][key] >= report_json["default"]["overall"][key]
    spec = instantiate(OmegaConf.load(fitted_yaml))
    assert spec.anchors_per_location == SPEC.anchors_per_location
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["tracking=none", "backbone=resnet18", *printed[2:]])
    assert OmegaConf.to_container(cfg.anchors) == OmegaConf.to_container(OmegaConf.load(fitted_yaml))
    from detection.cli.assembly import build_model

    assert len(build_model(cfg, pretrained=False).box_coder.anchors) == 8732
