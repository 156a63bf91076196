#!/usr/bin/env bash
# The GPU check in one command, on a machine with CUDA, from the repository root:
#   bash bench/gpu_check.sh
# (with the device tool: run command "bash bench/gpu_check.sh", carry [".gpu"], after bench/gpu_prepare.sh).
# Installs .gpu/*.whl where Hydra is missing, runs the gpu-marked tests, then the training-step and eval-call
# benchmarks on CUDA in fp16, without and with channels_last.
set -euo pipefail
export PYTHONUNBUFFERED=1
if ! python3 -c "import hydra" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
python3 bench/train_step.py --device cuda --amp
python3 bench/train_step.py --device cuda --amp --channels-last
checkpoint=()
[ -f .gpu/trained.pt ] && checkpoint=(--checkpoint .gpu/trained.pt)
python3 bench/inference.py --device cuda --amp --channels-last "${checkpoint[@]}"
