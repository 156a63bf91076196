#!/usr/bin/env bash
# The GPU check in one command, on a machine with CUDA, from the repository root:
#   bash bench/gpu_check.sh
# (with the device tool: run command "bash bench/gpu_check.sh", carry [".gpu"], after bench/gpu_prepare.sh).
# Installs .gpu/*.whl where Hydra or albumentations is missing, runs the gpu-marked tests, then the training-step and eval-call
# benchmarks on CUDA in fp16, without and with channels_last, the data pipeline (CPU workers and the GPU
# path), the loop against its bare step for SSD512-ResNet50 at batch 32 (14 workers, and the GPU path), and the
# deployment speeds (bench/deploy.py: its CPU rows, then eager on CUDA in fp32 and fp16), and, with a trained
# model in .gpu/trained.pt, evaluate.py's corruption benchmark on BCCD (two corruptions at every severity).
set -euo pipefail
export PYTHONUNBUFFERED=1
if ! python3 -c "import hydra, albumentations, pycocotools" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
export BCCD_ROOT=$PWD/.gpu/BCCD
python3 -m pytest -q -p no:cacheprovider -m gpu tests/engine/test_gpu.py tests/data/test_device_augment.py
python3 bench/train_step.py --device cuda --amp
python3 bench/train_step.py --device cuda --amp --channels-last
checkpoint=()
[ -f .gpu/trained.pt ] && checkpoint=(--checkpoint .gpu/trained.pt)
python3 bench/inference.py --device cuda --amp --channels-last "${checkpoint[@]}"
python3 bench/data.py --workers 14
target=(dataset=bccd model=ssd backbone=resnet50 anchors=voc512 trainer.batch_size=32 trainer.amp=true)
python3 bench/loop.py --steps 30 "${target[@]}" augment=ssd trainer.num_workers=14
python3 bench/loop.py --steps 30 "${target[@]}" augment=ssd_gpu trainer.num_workers=4
python3 bench/deploy.py --repeat 20 --images 100
if [ -f .gpu/trained.pt ]; then
  python3 evaluate.py ckpt_path=.gpu/trained.pt dataset=bccd device=cuda tracking=none num_workers=14 robustness=true \
    corruptions=[gaussian_noise,zoom_blur] hydra.run.dir=/tmp/gpu_check_robustness
else
  echo "no .gpu/trained.pt: the robustness evaluation is not checked (bench/gpu_prepare.sh <best.pt> fetches one)"
fi
