"""`python -m detection.data.inspect dataset=...`: runs inspect_data.py at the repository root, the Hydra
entry point (the package itself composes no configuration)."""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parents[2] / "inspect_data.py"), run_name="__main__")
