import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# under pytest-xdist (make test: -n 2), each worker and the processes its tests start take their share of
# the cores, not all of them each; set before torch is imported
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from PIL import Image  # noqa: E402

from detection.cli.schema import register  # noqa: E402

register()  # the configs' typed schemas, as the entry points register them

REPO = Path(__file__).resolve().parents[1]
# the whole BCCD dataset (its VOC-layout BCCD/ folder): BCCD_ROOT, as conf/dataset/bccd.yaml reads it, by
# default where this workplace keeps it; `make data` puts it there
BCCD_ROOT = (REPO / os.environ.get("BCCD_ROOT", "../shared/data/BCCD_Dataset/BCCD")).resolve()  # relative: to the repo
# a dozen of its photos, committed: the tests that read real photos use these, on any clone
BCCD_SUBSET = REPO / "tests" / "data" / "bccd_subset"
needs_full_bccd = pytest.mark.skipif(
    not (BCCD_ROOT / "JPEGImages").is_dir(),
    reason=f"the whole BCCD dataset is not at {BCCD_ROOT}: `make data` fetches it (or copies BCCD_SOURCE=<folder>), "
           f"or set BCCD_ROOT to its BCCD/ folder")

def scores(metrics: dict) -> dict:
    """A run's or an evaluation's metrics without its timings (`val/speed/...`), which no two runs share."""
    return {key: value for key, value in metrics.items() if not key.startswith("val/speed/")}


# small shapes variant the tests share (generated once per session under a temporary root)
SMALL_SHAPES = ["dataset.num_train=8", "dataset.num_val=4"]


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes")


@pytest.fixture(scope="session")
def smoke_ssd(tmp_path_factory, shapes_root) -> tuple[Path, list[Path]]:
    """A smoke-trained SSD128-ResNet18 checkpoint, and the shapes JPEGs."""
    folder = tmp_path_factory.mktemp("smoke_ssd")
    result = run_script("train.py", "debug=smoke", "backbone=resnet18", "anchors=shapes128", *SMALL_SHAPES,
                        f"dataset.root={shapes_root}", "tracking=none", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "run" / "checkpoints" / "last.pt", sorted(shapes_root.glob("*/JPEGImages/*.jpg"))


@pytest.fixture
def compose_train(shapes_root):
    """compose_train(*overrides) -> the composed train config, as `python train.py overrides` would see it."""
    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose("train", overrides=[f"dataset.root={shapes_root}", "tracking=none", *overrides])
    return _compose


def run_script(script: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 600,
               launcher: list[str] | None = None):
    """Runs an entry point as a user would (`launcher`: e.g. torchrun's command), with Hydra's outputs
    under `cwd`; returns the completed process."""
    result = subprocess.run([*(launcher or [sys.executable]), str(REPO / script), *args, f"hydra.run.dir={cwd}/run",
                             f"hydra.sweep.dir={cwd}/multirun"],
                            cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_mlflow(folder: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:`port` over the SQLite store `folder/server.db` (artifacts in
    `folder/artifacts`), answering when this returns; the caller stops it (`stop_server`)."""
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{folder}/server.db",
                               "--default-artifact-root", str(folder / "artifacts")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                stop_server(server)
                raise AssertionError("mlflow server did not start")
            time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    """Kills a server started by `serve_mlflow` with its process group, as a crash would."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free loopback port with a temporary SQLite store; always stopped."""
    port = free_port()
    server = serve_mlflow(tmp_path, port)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        stop_server(server)


def write_coco(folder: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    """A COCO-json file `folder/instances.json` with its images (grey JPEGs of the sizes given) in `folder/images`."""
    (folder / "images").mkdir(exist_ok=True)
    for image in images:
        Image.new("RGB", (image["width"], image["height"]), 90).save(folder / "images" / image["file_name"])
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
