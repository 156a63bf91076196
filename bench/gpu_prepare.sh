#!/usr/bin/env bash
# Run here (where pip reaches the registry) before the GPU check: fetches the packages the device machine
# lacks as Python 3.12 wheels, and a trained model, into .gpu/ (ignored by git; carried to the device).
#   bash bench/gpu_prepare.sh [outputs/.../best.pt]
set -euo pipefail
mkdir -p .gpu
PIP=".venv/bin/python -m pip"
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu \
  hydra-core==$(.venv/bin/python -c "import hydra; print(hydra.__version__)") \
  omegaconf==$(.venv/bin/python -c "import omegaconf; print(omegaconf.__version__)")
$PIP wheel -q --no-deps -w .gpu antlr4-python3-runtime==4.9.3  # published as a source archive only
best=${1:-$(ls -t outputs/*/*/checkpoints/best.pt 2>/dev/null | head -1)}
if [ -n "$best" ]; then  # the model and its configuration only: no optimiser state, so that it travels
  .venv/bin/python -c "import sys, torch; c = torch.load(sys.argv[1], weights_only=True); \
torch.save({k: c[k] for k in ('model', 'config')}, '.gpu/trained.pt')" "$best"
fi
du -sh .gpu
