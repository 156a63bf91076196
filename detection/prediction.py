"""A model's detections on unlabelled images, through the inference loop evaluation uses: batched and timed,
written as COCO result records with per-image timing, and drawn (into images, or into a video's frames)."""

import json
import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from torch import nn
from torchvision.ops import box_convert

from detection.data.sources import VideoWriter
from detection.engine.inference import infer
from detection.engine.precision import EVALUATION, Precision
from detection.evaluation.coco import encode_masks
from detection.reporting.drawing import MASK_THRESHOLD, draw_detections, save_image

log = logging.getLogger(__name__)
NO_TARGET = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}


def coco_records(prediction: dict[str, torch.Tensor], *, file_name: str, image_id: int, class_names: Sequence[str],
                 score_threshold: float) -> list[dict]:
    """The detections scoring at least `score_threshold` as COCO results: image_id, file_name, category_id
    (1..K) and category_name, bbox [x, y, width, height] in pixels, score, and an RLE 'segmentation' where
    the model predicts masks."""
    keep = prediction["scores"] >= score_threshold
    xywh = box_convert(prediction["boxes"][keep].double(), "xyxy", "xywh")
    records = [{"image_id": image_id, "file_name": file_name, "category_id": label,
                "category_name": class_names[label - 1], "bbox": [round(v, 2) for v in box], "score": round(score, 5)}
               for label, box, score in zip(prediction["labels"][keep].tolist(), xywh.tolist(),
                                            prediction["scores"][keep].tolist())]
    if "masks" in prediction:
        masks = (prediction["masks"][keep][:, 0] > MASK_THRESHOLD).to(torch.uint8).numpy()
        for record, rle in zip(records, encode_masks(masks)):
            record["segmentation"] = rle
    return records


class PredictionWriter:
    """Collects what predict.py writes into `folder`: `predictions.json` (the COCO results of every image),
    `images.json` (per image: file name, size, detections kept, inference milliseconds; and the unreadable
    files with their errors), and with `draw` each image drawn into `images/`, or, given `video`, each
    frame drawn into it."""

    def __init__(self, folder: Path, class_names: Sequence[str], *, score_threshold: "float | Sequence[float]",
                 draw: bool = True, video: Optional[VideoWriter] = None):
        """score_threshold: one score for every class, or one per class (label k's is the k-th)."""
        self.folder, self.class_names = Path(folder), list(class_names)
        single = isinstance(score_threshold, (int, float))
        per_class = [score_threshold] * len(class_names) if single else list(score_threshold)
        self.thresholds = torch.tensor([1.0, *per_class])  # by label; background never kept
        self.draw, self.video = draw, video
        self.records: list[dict] = []
        self.images: list[dict] = []
        self.unreadable: list[dict] = []
        self.names: set[str] = set()

    def add(self, name: str, image: torch.Tensor, prediction: dict[str, torch.Tensor], seconds: float) -> None:
        keep = prediction["scores"] >= self.thresholds[prediction["labels"]]
        prediction = {key: value[keep] for key, value in prediction.items()}
        records = coco_records(prediction, file_name=name, image_id=len(self.images), class_names=self.class_names,
                               score_threshold=0.0)
        self.records += records
        self.images.append({"file_name": name, "width": image.shape[2], "height": image.shape[1],
                            "detections": len(records), "inference_ms": round(1000 * seconds, 3)})
        if not self.draw:
            return
        drawn = draw_detections(image, NO_TARGET, prediction, self.class_names, score_threshold=0.0,
                                max_predictions=100, min_side=0)
        if self.video is not None:
            self.video.write(drawn)
        else:
            save_image(drawn, self.folder / "images" / self.unique(name))

    def add_batch(self, predictions: list[dict[str, torch.Tensor]], readable: list[tuple[str, torch.Tensor]],
                  seconds: float) -> None:
        """A batch's detections (on any device) for its (name, image) pairs, each image with its share of
        the batch's `seconds`."""
        for (name, image), prediction in zip(readable, predictions, strict=True):
            self.add(name, image, {key: value.cpu() for key, value in prediction.items()}, seconds / len(readable))

    def unique(self, name: str) -> str:
        """`name`, or `name` with a number added when two sources share it (a glob over several folders)."""
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, number = f"{stem}{suffix}", 1
        while candidate in self.names:
            candidate, number = f"{stem}_{number}{suffix}", number + 1
        self.names.add(candidate)
        return candidate

    def skip(self, path: Path, error: str) -> None:
        log.warning("skipped: %s", error)
        self.unreadable.append({"file_name": str(path), "error": error})

    def close(self) -> dict[str, float]:
        """Writes the JSON files (and ends the video); returns the summary that is logged."""
        if self.video is not None:
            self.video.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "predictions.json").write_text(json.dumps(self.records))
        (self.folder / "images.json").write_text(json.dumps({"images": self.images, "unreadable": self.unreadable},
                                                            indent=1))
        seconds = sum(image["inference_ms"] for image in self.images) / 1000
        return {"images": len(self.images), "unreadable": len(self.unreadable), "detections": len(self.records),
                "inference_s": seconds}


def predict_batches(model: nn.Module, batches: Iterable[list[tuple[str, Optional[torch.Tensor], Optional[str]]]],
                    writer: PredictionWriter, *, device: torch.device, precision: Precision = EVALUATION,
                    total: Optional[int] = None, progress: bool = True) -> None:
    """Runs `model` over batches of (name, uint8 [3, H, W] image or None, error or None) through the one
    inference loop (`engine.inference.infer`, timed): each readable image's detections to `writer` with
    its share of the batch's time, each unreadable one skipped and listed."""
    def readable_batches():
        for batch in batches:
            for name, image, error in batch:
                if image is None:
                    writer.skip(name, error)
            readable = [(name, image) for name, image, _ in batch if image is not None]
            yield [image for _, image in readable], readable

    infer(model, readable_batches(), writer.add_batch, device=device, precision=precision, timed=True,
          progress=progress, desc="predict", total=total)
