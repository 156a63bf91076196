"""`python -m detection.anchors analyse|fit [dataset=... anchors=...]`: runs anchors.py at the repository
root, the Hydra entry point (the package itself composes no configuration)."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[2] / "anchors.py"), run_name="__main__")
