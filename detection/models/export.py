"""Detectors in fixed shapes, for serving: one tensor in, one out, for MLflow's pyfunc flavour; an SSD's
whole eval path as one graph, for ONNX and TorchScript files."""

import json
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from detection.models.postprocess import per_image


class BatchedDetector(nn.Module):
    """Wraps an eval-mode detector with torchvision's contract (a list of images in, a list of dicts out).

    forward: images float [N, 3, H, W] in [0, 1] -> float [N, max_detections, 6], each row
    (x1, y1, x2, y2, score, label) in pixels of the input, by descending score; rows past an image's
    detections are zero (score 0, label 0 = background).
    """

    def __init__(self, detector: nn.Module, max_detections: int = 100):
        super().__init__()
        self.detector = detector.eval()
        self.max_detections = max_detections

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = images.new_zeros(len(images), self.max_detections, 6)
        for row, detections in zip(out, self.detector(list(images))):
            count = min(len(detections["scores"]), self.max_detections)
            row[:count, :4] = detections["boxes"][:count]
            row[:count, 4] = detections["scores"][:count]
            row[:count, 5] = detections["labels"][:count].to(row.dtype)
        return out


class ExportableSSD(nn.Module):
    """An SSD's whole eval path in fixed shapes, the graph that ONNX and TorchScript files hold: resize and
    normalisation in, NMS (`dense_nms`) and each image's best detections out.

    forward: images uint8 [N, 3, H, W] RGB (one size per batch, any size) -> boxes float [N, D, 4] xyxy in
    the input's pixels, scores float [N, D], labels int64 [N, D] (1..K) and counts int64 [N]: the first
    counts[n] rows of image n are its detections, best first; the rows after them are zero.
    """

    def __init__(self, ssd: nn.Module):
        super().__init__()
        self.ssd = ssd
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        size = self.ssd.image_size
        pixels = F.interpolate(images.float() / 255, size=(size, size), mode="bilinear", align_corners=False)
        loc, cls = self.ssd.head(self.ssd.features(self.ssd.normalise(pixels)))
        # the input's height and width as tensors computed in the graph (a Python number would be fixed at
        # the example's size when traced)
        height = torch.ones_like(images[:, 0, :, 0], dtype=torch.float32).sum(dim=1)
        width = torch.ones_like(images[:, 0, 0, :], dtype=torch.float32).sum(dim=1)
        scale = torch.stack([width, height, width, height], dim=1) / size
        boxes, labels, scores, counts = self.ssd.padded_detections(loc, cls, scale, dense=True)
        return boxes, scores, labels, counts


OPSET = 18  # ONNX opset of the exported files: onnxruntime 1.17 and later run it
OUTPUTS = ("boxes", "scores", "labels", "counts")
CONTRACT = ("images: uint8 [N, 3, H, W] RGB, one size per batch; out: boxes float [N, D, 4] xyxy in the "
            "input's pixels, scores float [N, D], labels int64 [N, D] (1..K, class_names[label - 1]), "
            "counts int64 [N] (the first counts[n] rows of image n are its detections, best first)")


def export_onnx(ssd: nn.Module, path: Path, *, metadata: dict[str, str], example: torch.Tensor) -> Path:
    """Writes `ssd`'s whole eval path (ExportableSSD) to one ONNX file at opset OPSET, with dynamic batch,
    height and width, and `metadata` (with the contract added) in its metadata_props."""
    import onnx

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # its optimisation passes log every step at INFO
    dynamic = {0: torch.export.Dim("batch", min=1, max=4096), 2: torch.export.Dim("height", min=16, max=16384),
               3: torch.export.Dim("width", min=16, max=16384)}
    program = torch.onnx.export(ExportableSSD(ssd), (example,), dynamo=True, opset_version=OPSET,
                                input_names=["images"], output_names=list(OUTPUTS),
                                dynamic_shapes={"images": dynamic}, external_data=False, verbose=False)
    graph = program.model_proto
    for key, value in {**metadata, "contract": CONTRACT, "opset": str(OPSET)}.items():
        graph.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(path))
    return path


def export_torchscript(ssd: nn.Module, path: Path, *, metadata: dict[str, str], example: torch.Tensor) -> Path:
    """Writes `ssd`'s whole eval path (ExportableSSD), traced, to a TorchScript file, `metadata` (with the
    contract added) stored beside the code as `metadata.json`."""
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns of sizes read as Python numbers: the anchor and class counts, fixed for a model
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(ExportableSSD(ssd), (example,), check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps({**metadata, "contract": CONTRACT})})
    return path


class ExportedDetector:
    """An exported file (.onnx through onnxruntime, .pt/.ts TorchScript) called with torchvision's contract:
    a list of uint8 [3, H, W] images in, per image {'boxes', 'labels', 'scores'} out (on the CPU).
    `metadata` is what the export stored (class_names as JSON, the contract, ...)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such exported model")
        if self.path.suffix == ".onnx":
            import onnxruntime

            self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        else:
            files = {"metadata.json": ""}
            self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=files)
            self.metadata = json.loads(files["metadata.json"] or "{}")
        if "class_names" not in self.metadata:
            raise ValueError(f"{self.path}: not exported by export.py (no class_names in its metadata)")
        self.class_names = json.loads(self.metadata["class_names"])

    def run(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The file's four outputs for uint8 [N, 3, H, W]."""
        if hasattr(self, "session"):
            return tuple(torch.from_numpy(out) for out in self.session.run(None, {"images": images.numpy()}))
        with torch.no_grad():
            return self.module(images)

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Images of one size run as one batch; of several sizes, one at a time."""
        if len({tuple(image.shape) for image in images}) == 1:
            batches = [torch.stack(images)]
        else:
            batches = [image[None] for image in images]
        detections = []
        for batch in batches:
            boxes, scores, labels, counts = self.run(batch.cpu())
            detections += per_image(boxes, labels, scores, counts)
        return detections

    def eval(self) -> "ExportedDetector":
        return self  # for callers written for a torch module


class ExportParityError(ValueError):
    """An exported model whose detections differ from the PyTorch model's beyond the tolerances."""


def unmatched_detections(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor], *, limit: int,
                         box_tolerance: float = 0.5, score_tolerance: float = 1e-3) -> tuple[int, int]:
    """(how many of `reference`'s detections have no detection in `other` with the same label, every box
    coordinate within `box_tolerance` pixels and the score within `score_tolerance`; how many were checked).
    Boundary cases are not checked: where either list holds its `limit` detections, those scoring within
    the tolerance of its weakest may rightly give way to an equal score."""
    floor = -1.0
    for detections in (reference, other):
        if len(detections["scores"]) >= limit:
            floor = max(floor, float(detections["scores"].min()) + score_tolerance)
    checked = reference["scores"] > floor
    boxes, labels, scores = (reference[key][checked] for key in ("boxes", "labels", "scores"))
    close = ((labels[:, None] == other["labels"][None])
             & ((boxes[:, None] - other["boxes"][None]).abs().amax(dim=-1) <= box_tolerance)
             & ((scores[:, None] - other["scores"][None]).abs() <= score_tolerance))
    return int((~close.any(dim=1)).sum()), int(checked.sum())


def check_parity(reference: list[dict[str, torch.Tensor]], exported: list[dict[str, torch.Tensor]], *, limit: int,
                 name: str, allowed: float = 0.01) -> str:
    """Raises ExportParityError unless, both ways, at most `allowed` of the detections lack a match (see
    unmatched_detections); returns the summary line."""
    counts = [unmatched_detections(a, b, limit=limit) for a, b in zip(reference, exported)]
    counts += [unmatched_detections(b, a, limit=limit) for a, b in zip(reference, exported)]
    missing, checked = sum(m for m, _ in counts), sum(c for _, c in counts)
    summary = (f"{name}: {checked - missing} of {checked} detections match the PyTorch model's on "
               f"{len(reference)} images (same label, boxes within 0.5 px, scores within 1e-3)")
    if missing > allowed * checked:
        raise ExportParityError(f"{summary}: {missing} do not, over the {allowed:.0%} allowed; the export is "
                                "not the model")
    return summary
