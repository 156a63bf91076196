"""Screenshot of the MLflow UI's compare view of the latest sweep: parallel coordinates of the swept
parameters against `val/map`, the run details and the parameters that differ. Playwright drives Debian's
headless Chromium (apt-get install chromium; pip install -e ".[docs]" for Playwright, whose own browser
download this network refuses).

    python docs/mlflow_screenshot.py [--store sqlite:///mlflow.db] [--out outputs/mlflow_compare.png]

Starts `mlflow ui` on a free loopback port over the store, finds the newest parent run of a sweep
(tag sweep=parent) and its child runs, opens their compare view, closes the assistant panel, sets the
plot's metric to `--metric` (MLflow picks the first metric otherwise, a loss or a system reading), turns
on "Show diff only" for the parameters and writes the PNG.
"""

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
# without the background-networking flags Chromium keeps trying to reach Google, which this network refuses
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
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


def serve(store: str, port: int) -> subprocess.Popen:
    """`mlflow ui` over the store on the loopback port, once it answers."""
    ui = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", store,
                           "--host", "127.0.0.1", "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return ui
        except OSError:
            time.sleep(0.5)
    ui.terminate()
    sys.exit(f"mlflow ui over {store} did not answer in 2 minutes")


def screenshot(url: str, out: Path, *, chromium: str, metric: str, size: tuple[int, int]) -> None:
    """The compare view at `url`, set up as the module says, written to `out`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        page.goto(url)
        page.get_by_text("Parallel Coordinates Plot").first.wait_for(timeout=120_000)
        if page.get_by_label("Close").count():  # the assistant panel takes a third of the width
            page.get_by_label("Close").first.click()
        metrics = page.locator("div:text-is('Metrics:') + div")
        for remove in metrics.locator(".du-bois-light-select-selection-item-remove").all():
            remove.click()
        metrics.click()
        page.keyboard.type(metric)
        page.locator(f".du-bois-light-select-item-option[title='{metric}']").click()
        page.keyboard.press("Escape")
        page.get_by_label("Parameters - Show diff only").click()
        page.wait_for_timeout(1500)  # the plot redraws
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=f"sqlite:///{REPO / 'mlflow.db'}")
    # outputs/ (git-ignored) unless asked: the docs' picture is replaced on purpose (--out docs/mlflow_compare.png)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "mlflow_compare.png")
    parser.add_argument("--metric", default="val/map", help="the metric the plot shows against the parameters")
    parser.add_argument("--size", default="1500,1150", help="browser window, width,height")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or sys.exit("chromium not found: apt-get install chromium")
    experiment, runs = latest_sweep(args.store)
    port = free_port()
    ui = serve(args.store, port)
    query = urllib.parse.urlencode({"runs": json.dumps(runs), "experiments": json.dumps([experiment])})
    url = f"http://127.0.0.1:{port}/#/compare-runs?{query}"
    try:
        screenshot(url, args.out, chromium=chromium, metric=args.metric,
                   size=tuple(int(side) for side in args.size.split(",")))
    finally:
        ui.terminate()
        ui.wait()
    print(f"{args.out}: compare view of {len(runs)} runs, {args.metric} against the swept parameters")


if __name__ == "__main__":
    main()
