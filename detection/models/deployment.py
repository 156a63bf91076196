"""Detectors as files to serve: the whole eval path of an SSD or an R-CNN as one graph (uint8 images in,
detections out), written to ONNX and TorchScript, run back with torchvision's contract, checked against the
PyTorch model; the same contract on NumPy arrays for MLflow's pyfunc."""

import json
import logging
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detection.models.postprocess import per_image


OUTPUTS = ("boxes", "scores", "labels", "counts")


# torch (2.15 here) warns on every TorchScript save and load; the format stays ours while it runs what
# torch.export cannot (an R-CNN's data-dependent NMS), and the README says so
TORCHSCRIPT_DEPRECATED = r"`torch\.jit\.(save|load)` is deprecated"


class ExportableSSD(nn.Module):
    """An SSD's whole eval path in fixed shapes, the graph that ONNX and TorchScript files hold: resize and
    normalisation in, NMS (`dense_nms`) and each image's best detections out.

    forward: images uint8 [N, 3, H, W] RGB (one size per batch, any size) -> boxes float [N, D, 4] xyxy in
    the input's pixels, scores float [N, D], labels int64 [N, D] (1..K) and counts int64 [N]: the first
    counts[n] rows of image n are its detections, best first; the rows after them are zero.
    """

    outputs = OUTPUTS
    opset = 18  # through torch.onnx.export(dynamo=True); onnxruntime 1.17 and later run it
    batch = "any"
    contract = ("images: uint8 [N, 3, H, W] RGB, one size per batch; out: boxes float [N, D, 4] xyxy in the "
                "input's pixels, scores float [N, D], labels int64 [N, D] (1..K, class_names[label - 1]), "
                "counts int64 [N] (the first counts[n] rows of image n are its detections, best first)")

    def __init__(self, ssd: nn.Module):
        super().__init__()
        self.ssd = ssd
        self.limit = ssd.detections_per_image  # D
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


class ExportableRCNN(nn.Module):
    """A torchvision Faster or Mask R-CNN's eval path (resize, normalisation, network, NMS, masks pasted into
    the image), one image a call, for torchvision's supported ONNX route (the TorchScript-based exporter).

    forward: images uint8 [1, 3, H, W] RGB (any size) -> boxes float [1, D, 4] xyxy in the input's pixels,
    scores float [1, D], labels int64 [1, D] (1..K), counts int64 [1] (= D: nothing is padded, D varies
    with the image up to `roi_heads.detections_per_img`) and, for a Mask R-CNN, masks float [1, D, H, W]
    (each pixel's probability of belonging to the detection, as the model gives them).
    """

    opset = 11  # torchvision's exporter tests of its R-CNNs run at opset 11
    batch = "1"

    def __init__(self, rcnn: nn.Module):
        super().__init__()
        self.rcnn = rcnn
        self.limit = rcnn.roi_heads.detections_per_img  # D at most
        self.with_masks = rcnn.roi_heads.has_mask()
        self.outputs = (*OUTPUTS, "masks") if self.with_masks else OUTPUTS
        self.contract = ("images: uint8 [1, 3, H, W] RGB, one image a call; out: boxes float [1, D, 4] xyxy in "
                         "the input's pixels, scores float [1, D], labels int64 [1, D] (1..K, "
                         "class_names[label - 1]), counts int64 [1] (= D, best first)"
                         + (", masks float [1, D, H, W] (probabilities)" if self.with_masks else ""))
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        detections = self.rcnn([images[0]])[0]
        counts = torch._shape_as_tensor(detections["scores"])  # a tensor in the graph, not the example's D
        outputs = (detections["boxes"][None], detections["scores"][None], detections["labels"][None], counts)
        return (*outputs, detections["masks"][None, :, 0]) if self.with_masks else outputs


def exportable(model: nn.Module) -> nn.Module:
    """The eval-path wrapper a detector is exported through: ExportableSSD or ExportableRCNN."""
    if hasattr(model, "padded_detections"):
        return ExportableSSD(model)
    if hasattr(model, "roi_heads"):
        return ExportableRCNN(model)
    raise ValueError(f"a {type(model).__name__} cannot be exported: SSD, Faster R-CNN and Mask R-CNN models can")


def export_onnx(model: nn.Module, path: Path, *, metadata: dict[str, str], example: torch.Tensor) -> Path:
    """Writes `model`'s whole eval path (`exportable(model)`) to one ONNX file at the wrapper's opset, with
    dynamic height and width (and batch, for an SSD), and `metadata` (with the contract added) in its
    metadata_props. `example`: uint8 [N, 3, H, W] to trace with (N = 1 for an R-CNN)."""
    import onnx

    module = exportable(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(module, ExportableRCNN):
        detections = {"boxes": {1: "detections"}, "scores": {1: "detections"}, "labels": {1: "detections"},
                      **({"masks": {1: "detections", 2: "height", 3: "width"}} if module.with_masks else {})}
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's warnings on torchvision's code, whose graph its ONNX tests check
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=module.opset,
                              input_names=["images"], output_names=list(module.outputs),
                              dynamic_axes={"images": {2: "height", 3: "width"}, **detections})
        graph = onnx.load(str(path))
    else:
        for name in ("onnx_ir", "onnxscript"):  # their optimisation passes log every rewrite at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        dynamic = {0: torch.export.Dim("batch", min=1, max=4096), 2: torch.export.Dim("height", min=16, max=16384),
                   3: torch.export.Dim("width", min=16, max=16384)}
        graph = torch.onnx.export(module, (example,), dynamo=True, opset_version=module.opset,
                                  input_names=["images"], output_names=list(module.outputs),
                                  dynamic_shapes={"images": dynamic}, external_data=False,
                                  verbose=False).model_proto
    for key, value in {**metadata, **file_metadata(module), "opset": str(module.opset)}.items():
        graph.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(graph, str(path))
    return path


def file_metadata(module: nn.Module) -> dict[str, str]:
    """What every exported file says of its wrapper: the contract, the output names, the batch it takes."""
    return {"contract": module.contract, "outputs": ",".join(module.outputs), "batch": module.batch}


def export_torchscript(model: nn.Module, path: Path, *, metadata: dict[str, str], example: torch.Tensor) -> Path:
    """Writes `model`'s whole eval path (`exportable(model)`), traced, to a TorchScript file, `metadata`
    (with the contract added) stored beside the code as `metadata.json`."""
    module = exportable(model)
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns of sizes read as Python numbers: the anchor and class counts, fixed for a model,
        # and (R-CNN) torchvision's own, whose graph its ONNX tests check
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (example,), check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", TORCHSCRIPT_DEPRECATED, FutureWarning)
        torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps({**metadata, **file_metadata(module)})})
    return path


class ContractModel:
    """The exported files' contract on NumPy arrays, MLflow's pyfunc model: called with uint8 [N, 3, H, W]
    and returning {output name: array} (ExportableSSD's or ExportableRCNN's outputs), as onnxruntime
    returns them for the ONNX file. `of_model` runs the wrapper the files are traced from in PyTorch;
    `of_file` runs an exported file (what the run's logged MLflow model does)."""

    def __init__(self, run: Callable[[torch.Tensor], tuple], outputs: Sequence[str], batch: str, contract: str):
        self.run, self.outputs, self.batch, self.contract = run, list(outputs), batch, contract

    @classmethod
    def of_model(cls, model: nn.Module) -> "ContractModel":
        module = exportable(model.cpu())
        return cls(module, module.outputs, module.batch, module.contract)

    @classmethod
    def of_file(cls, path: Path) -> "ContractModel":
        detector = ExportedDetector(path)
        metadata = detector.metadata
        return cls(detector.run, metadata["outputs"].split(","), metadata["batch"], metadata["contract"])

    def __call__(self, model_input: np.ndarray) -> dict[str, np.ndarray]:
        """model_input: uint8 [N, 3, H, W] images (the name is the one MLflow's pyfunc passes them by)."""
        if self.batch == "1" and len(model_input) != 1:
            raise ValueError(f"this model takes one image a call ({self.contract}); got {len(model_input)}")
        with torch.no_grad():
            outputs = self.run(torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.uint8)))
        return {name: output.numpy() for name, output in zip(self.outputs, outputs)}


def metadata_class_names(metadata: dict[str, str], path: Path) -> list[str]:
    """The class names an exported file's metadata holds (a JSON list of strings, as export.py writes it);
    anything else is a ValueError naming the file."""
    if "class_names" not in metadata:
        raise ValueError(f"{path}: not exported by export.py (no class_names in its metadata)")
    try:
        names = json.loads(metadata["class_names"])
    except json.JSONDecodeError:
        names = None
    if not (isinstance(names, list) and names and all(isinstance(name, str) and name for name in names)):
        raise ValueError(f"{path}: its metadata's class_names {metadata['class_names'][:200]!r} is not a JSON "
                         f"list of class names (export.py writes one)")
    return names


class ExportedDetector:
    """An exported file (.onnx through onnxruntime, .pt/.ts TorchScript) called with torchvision's contract:
    a list of uint8 [3, H, W] images in, per image {'boxes', 'labels', 'scores'(, 'masks' [D, 1, H, W])}
    out (on the CPU). `metadata` is what the export stored (class_names as JSON, the contract, ...)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such exported model")
        if self.path.suffix == ".onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # R-CNN graphs warn of every shape that differs from the traced one
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        else:
            files = {"metadata.json": ""}
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", TORCHSCRIPT_DEPRECATED, FutureWarning)
                self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=files)
            self.metadata = json.loads(files["metadata.json"] or "{}")
        self.class_names = metadata_class_names(self.metadata, self.path)
        self.one_image_a_call = self.metadata.get("batch") == "1"

    def run(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The file's outputs (boxes, scores, labels, counts(, masks)) for uint8 [N, 3, H, W]."""
        if hasattr(self, "session"):
            return tuple(torch.from_numpy(out) for out in self.session.run(None, {"images": images.numpy()}))
        with torch.no_grad():
            return self.module(images)

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Images of one size run as one batch; of several sizes (or for a one-image file), one at a time."""
        if len({tuple(image.shape) for image in images}) == 1 and not self.one_image_a_call:
            batches = [torch.stack(images)]
        else:
            batches = [image[None] for image in images]
        detections = []
        for batch in batches:
            boxes, scores, labels, counts, *masks = self.run(batch.cpu())
            found = per_image(boxes, labels, scores, counts)
            for image, image_masks in zip(found, masks[0] if masks else []):
                image["masks"] = image_masks[:len(image["scores"]), None]
            detections += found
        return detections

    def eval(self) -> "ExportedDetector":
        return self  # for callers written for a torch module


MASK_TOLERANCE = 0.01  # a mask pixel's probability (the ONNX route pastes masks with its own code)


class ExportParityError(ValueError):
    """An exported model whose detections differ from the PyTorch model's beyond the tolerances."""


def unmatched_detections(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor], *, limit: int,
                         box_tolerance: float = 0.5, score_tolerance: float = 1e-3,
                         mask_tolerance: float = MASK_TOLERANCE) -> tuple[int, int]:
    """(how many of `reference`'s detections have no detection in `other` with the same label, every box
    coordinate within `box_tolerance` pixels and the score within `score_tolerance` (and, with masks, the
    first such twin's mask within `mask_tolerance` at every pixel); how many were checked).
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
    matched = close.any(dim=1)
    if "masks" in reference and len(other["scores"]):
        twin = close.to(torch.uint8).argmax(dim=1)
        mask_error = (reference["masks"][checked] - other["masks"][twin]).abs().flatten(1).amax(dim=1)
        matched &= mask_error <= mask_tolerance
    return int((~matched).sum()), int(checked.sum())


def check_parity(reference: list[dict[str, torch.Tensor]], exported: list[dict[str, torch.Tensor]], *, limit: int,
                 name: str, allowed: float = 0.01) -> str:
    """Raises ExportParityError unless, both ways, at most `allowed` of the detections lack a match (see
    unmatched_detections); returns the summary line."""
    counts = [unmatched_detections(a, b, limit=limit) for a, b in zip(reference, exported)]
    counts += [unmatched_detections(b, a, limit=limit) for a, b in zip(reference, exported)]
    missing, checked = sum(m for m, _ in counts), sum(c for _, c in counts)
    masks = f", masks within {MASK_TOLERANCE}" if reference and "masks" in reference[0] else ""
    summary = (f"{name}: {checked - missing} of {checked} detections match the PyTorch model's on "
               f"{len(reference)} images (same label, boxes within 0.5 px, scores within 1e-3{masks})")
    if missing > allowed * checked:
        raise ExportParityError(f"{summary}: {missing} do not, over the {allowed:.0%} allowed; the export is "
                                "not the model")
    return summary
