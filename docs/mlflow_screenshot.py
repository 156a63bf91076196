"""Screenshot of the MLflow UI's compare view for the runs of the latest sweep, taken with headless
Chromium (Debian's `chromium` package: apt-get install chromium).

    python docs/mlflow_screenshot.py [--store sqlite:///mlflow.db] [--out docs/mlflow_compare.png]

Starts `mlflow ui` on a free loopback port over the store, finds the newest parent run of a sweep
(tag sweep=parent) and its child runs, opens the compare view of the children and writes the PNG.
"""

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
# without the background-networking flags Chromium keeps trying to reach Google, which this network refuses
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def latest_sweep(store: str) -> tuple[str, list[str]]:
    """(experiment id, child run ids) of the newest sweep's parent run in the store."""
    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, filter_string="tags.sweep = 'parent'", order_by=["start_time DESC"],
                                 max_results=1)
    if not parents:
        sys.exit(f"no sweep in {store}: run python train.py -m ... first")
    parent = parents[0]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent.info.experiment_id, [run.info.run_id for run in children]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=f"sqlite:///{REPO / 'mlflow.db'}")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "mlflow_compare.png")
    parser.add_argument("--size", default="1600,1300", help="browser window, width,height")
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time the page gets to render")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or sys.exit("chromium not found: apt-get install chromium")
    experiment, runs = latest_sweep(args.store)
    port = free_port()
    ui = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", args.store,
                           "--host", "127.0.0.1", "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        query = urllib.parse.urlencode({"runs": json.dumps(runs), "experiments": json.dumps([experiment])})
        url = f"{base}/#/compare-runs?{query}"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={args.size}",
                            f"--virtual-time-budget={args.wait_ms}", f"--screenshot={args.out.resolve()}", url],
                           check=True, capture_output=True, timeout=180)
    finally:
        ui.terminate()
        ui.wait()
    print(f"{args.out}: compare view of {len(runs)} runs ({url})")


if __name__ == "__main__":
    main()
