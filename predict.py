"""Detect objects with a trained checkpoint in a folder of images, one image, a glob or a video: each image
drawn with its detections, and every detection in predictions.json (COCO results format).

    python predict.py ckpt_path=outputs/.../checkpoints/best.pt source=path/to/images
    python predict.py ckpt_path=... source='photos/**/*.jpg' score_threshold=0.5
    python predict.py ckpt_path=... source=clip.mp4      # clip.mp4 drawn, in the run directory
    python predict.py model_path=model.onnx source=...   # an export.py file, through onnxruntime
"""

from omegaconf import DictConfig

from detection.cli.checks import check_predict
from detection.cli.entry import entry_point


@entry_point("predict", check=check_predict)
def main(cfg: DictConfig) -> dict[str, float]:
    from detection.cli.prediction import run_prediction

    return run_prediction(cfg)


if __name__ == "__main__":
    main()
