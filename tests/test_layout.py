"""Rules of the repository: Hydra and MLflow stay at the edges; pins agree between pip and conda."""

import ast
import re
import subprocess
import sys
import tomllib

from conftest import REPO


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module.split(".")[0]


def test_nothing_under_detection_imports_hydra_or_omegaconf_and_only_tracking_imports_mlflow():
    files = list((REPO / "detection").rglob("*.py"))
    assert files
    for path in files:
        modules = set(imported_modules(path))
        assert not modules & {"hydra", "omegaconf"}, f"{path} imports hydra/omegaconf"
        if path.name != "tracking.py":
            assert "mlflow" not in modules, f"{path} imports mlflow"


def test_the_core_runs_without_loading_hydra_or_mlflow():
    code = ("import sys, detection.engine.loop, detection.engine.artifacts, detection.models.ssd, "
            "detection.models.maskrcnn, detection.data.voc, detection.data.coco, detection.evaluation; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf', 'mlflow'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_environment_yml_carries_the_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
        name, version = requirement.split("==")
        pins[name.lower()] = version
    conda = dict(re.findall(r"^\s+- ([A-Za-z0-9_.-]+)==([^\s#]+)", (REPO / "environment.yml").read_text(), re.M))
    assert {k.lower(): v for k, v in conda.items()} == pins
    python = re.search(r"^\s+- python=([\d.]+)", (REPO / "environment.yml").read_text(), re.M).group(1)
    assert python == "3.11"
