"""Export a trained SSD or Mask R-CNN to ONNX or TorchScript: the whole eval path in one file (uint8 images
of any size in; boxes, scores, labels, a count per image (and masks) out), its detections checked against
the PyTorch model's.

    python export.py ckpt_path=outputs/.../checkpoints/best.pt            # model.onnx in the run directory
    python export.py ckpt_path=... format=torchscript                     # model.pt
    python predict.py model_path=outputs/.../model.onnx source=images/    # the export, run by onnxruntime
"""

from omegaconf import DictConfig

from detection.cli.checks import check_export
from detection.cli.entry import entry_point


@entry_point("export", check=check_export)
def main(cfg: DictConfig) -> str:
    from detection.cli.exporting import run_export

    return str(run_export(cfg))


if __name__ == "__main__":
    main()
