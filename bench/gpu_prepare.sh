#!/usr/bin/env bash
# Run here (where pip reaches the registry) before the GPU check: fetches the packages the device machine
# lacks as Python 3.12 wheels, a trained model and the BCCD data, into .gpu/ (ignored by git; carried to the device).
#   bash bench/gpu_prepare.sh [outputs/.../best.pt]
set -euo pipefail
mkdir -p .gpu
PIP=".venv/bin/python -m pip"
# what the GPU checks import beyond the device's own image (its package list: the device tool's KINDS.md),
# at the versions verified here
pinned() { for name in "$@"; do echo "$name==$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")"; done; }
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu \
  $(pinned hydra-core omegaconf albumentations albucore pydantic pydantic-core annotated-types typing-inspection \
    simsimd stringzilla pycocotools faster-coco-eval imagecorruptions-imaug)
$PIP wheel -q --no-deps -w .gpu antlr4-python3-runtime==4.9.3  # published as a source archive only
best=${1:-$(ls -t outputs/*/*/checkpoints/best.pt 2>/dev/null | head -1)}
if [ -n "$best" ]; then  # the model, its configuration, classes and step only: no optimiser state, so that it travels
  .venv/bin/python -c "import sys, torch; c = torch.load(sys.argv[1], weights_only=True); \
torch.save({k: c[k] for k in ('model', 'config', 'class_names', 'step')}, '.gpu/trained.pt')" "$best"
fi
# ../shared does not travel: the BCCD JPEGs the data benchmarks and tests read go along (10 MB)
rm -rf .gpu/BCCD && cp -r ../shared/data/BCCD_Dataset/BCCD .gpu/BCCD
du -sh .gpu
