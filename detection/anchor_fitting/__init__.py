"""How well an SSD's priors cover a dataset's boxes (`coverage`), and priors fitted to them (`fit`); the
command line is `python -m detection.cli.anchor_tools analyse|fit`."""
