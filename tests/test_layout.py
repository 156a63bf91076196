"""Rules of the repository: Hydra lives in the command-line package and MLflow in the tracking module, the
core never imports the command-line layer, entry points are a few lines, functions fit on a screen, and pins
agree between pip and conda."""

import ast
import re
import subprocess
import sys
import tomllib

from conftest import REPO


CLI = REPO / "detection" / "cli"


def imported_modules(path):
    """Every module `path` imports, in full (`detection.cli.entry`, `hydra.utils`), at any depth of its code."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_only_the_command_line_package_imports_hydra_and_only_the_tracking_package_imports_mlflow():
    files = list((REPO / "detection").rglob("*.py"))
    assert files
    for path in files:
        tops = {module.split(".")[0] for module in imported_modules(path)}
        if CLI not in path.parents:
            assert not tops & {"hydra", "omegaconf"}, f"{path} imports hydra/omegaconf"
        if REPO / "detection" / "tracking" not in path.parents:
            assert "mlflow" not in tops, f"{path} imports mlflow"
        assert "runpy" not in tops, f"{path} runs other files"


def test_the_core_never_imports_the_command_line_layer():
    for path in (REPO / "detection").rglob("*.py"):
        if CLI not in path.parents:
            assert not [m for m in imported_modules(path) if m.startswith("detection.cli")], path


def test_entry_points_are_a_few_lines_and_functions_fit_on_a_screen():
    roots = sorted(REPO.glob("*.py"))
    assert [path.name for path in roots] == ["evaluate.py", "export.py", "predict.py", "train.py"]
    for path in roots:
        assert len(path.read_text().splitlines()) < 100 and "entry_point(" in path.read_text(), path
    for path in [*roots, *(REPO / "detection").rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py"),
                 *(REPO / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 60, f"{path}: {node.name} is {node.end_lineno - node.lineno + 1} lines"


def test_nothing_is_installed_under_a_generic_top_level_name():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py-modules" not in setuptools and setuptools["packages"]["find"]["include"] == [
        "detection*", "hydra_plugins.detection_*"]  # Hydra's plugin namespace, our plugin's name under it


def test_the_core_runs_without_loading_hydra_or_mlflow():
    code = ("import sys, detection.engine.loop, detection.reporting.debug_images, detection.models.ssd, "
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
