"""How well an SSD's priors cover a dataset's boxes (`coverage`), priors fitted to them (`fit`); the command
line is `python -m detection.anchors analyse|fit` (the Hydra entry point anchors.py at the repository root)."""
