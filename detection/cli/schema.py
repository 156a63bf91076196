"""The typed schema of the entry points' configurations, registered with Hydra's ConfigStore: the one place
their defaults are written (`conf/<entry point>.yaml` holds only its defaults list, and the `trainer` group is
`TrainerSettings`).

`conf/train.yaml`, `conf/evaluate.yaml`, ... start from these schemas (their defaults lists name them), so
Hydra refuses a misspelt key and a value of the wrong type at compose time; `checks.py` refuses what Hydra
lets through. Importing this module does not import torch, so a typo costs a second.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from detection.data.corruptions import SEVERITIES
from detection.engine.settings import TrainerSettings

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"  # the config groups, beside the package
# the tracking store when neither tracking.uri nor MLFLOW_TRACKING_URI names one: one store for every run,
# wherever Hydra puts a job's outputs, beside conf/ (its artifacts go to mlartifacts/ beside it)
DEFAULT_STORE = f"sqlite:///{CONFIG_DIR.parent / 'mlflow.db'}"


@dataclass
class TrainConfig:
    """Top-level keys of `train.yaml`: one node per config group (each checked by what it builds), the
    loop's settings, the seed and the checkpoint to resume."""

    model: Any = MISSING
    backbone: Any = None   # the SSD's trunk, composed by model/ssd.yaml
    anchors: Any = None    # the SSD's anchor layout, likewise
    fpn: Any = None        # Mask R-CNN's trunk, composed by model/maskrcnn.yaml
    dataset: Any = MISSING
    augment: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    tracking: Any = MISSING
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    image_size: Optional[int] = None   # the model's input (SSD: its side; R-CNNs: the short side); null: the groups'
    seed: int = 0
    ckpt_path: Optional[str] = None


@dataclass
class TestTimeOptions:
    """More views of each image at test time, merged by NMS (evaluate.py and predict.py;
    docs/evaluation.md#test-time-augmentation-and-sliced-inference)."""

    tta: list[Any] = field(default_factory=list)   # flip and/or input sizes (SSD: its side; R-CNNs: the short side)
    slices: Optional[list[float]] = None          # [tile size, overlap]: overlapping tiles besides the whole image


@dataclass
class EvaluateConfig(TestTimeOptions):
    """`python evaluate.py ckpt_path=<checkpoint> [dataset=...]`: the model comes from the checkpoint."""

    ckpt_path: str = MISSING
    dataset: Any = None       # another dataset with the checkpoint's classes (default: the checkpoint's own)
    tracking: Any = MISSING
    batch_size: int = 8
    num_workers: int = 2
    device: str = "auto"
    confusion_score_threshold: float = TrainerSettings.confusion_score_threshold  # what the matrix counts
    save_thresholds: bool = False   # also write a copy of the checkpoint holding each class's F1-best threshold
    worst_images: int = 16          # the images with the lowest AP50 drawn in worst_images.png (0: none)
    # the corruption benchmark (docs/evaluation.md#robustness-to-corruptions): the split again under each
    # corruption (null: the 15 of detection/data/corruptions.py) at each severity (1..5)
    robustness: bool = False
    corruptions: Optional[list[str]] = None
    severities: list[int] = field(default_factory=lambda: list(SEVERITIES))
    corruption_seed: int = 0        # each image's corruption is drawn from (this, image, corruption, severity)


@dataclass
class PredictConfig(TestTimeOptions):
    """`python predict.py ckpt_path=<checkpoint> source=<folder | image | glob | video | train | val>` (train or
    val, where no such path exists: that split of the checkpoint's dataset): each image drawn into
    <run dir>/images/ (a video into <run dir>/<name>.mp4), the detections in <run dir>/predictions.json (COCO
    results) and the timing in images.json."""

    ckpt_path: Optional[str] = None    # a training checkpoint, or:
    model_path: Optional[str] = None   # a file export.py wrote (model.onnx: onnxruntime; model.pt: TorchScript)
    source: str = MISSING
    tracking: Any = MISSING
    # detections below it are neither drawn nor written; auto: each class's F1-best threshold, which
    # `evaluate.py save_thresholds=true` stores in a checkpoint copy (and export.py in the file)
    score_threshold: Any = 0.3
    batch_size: int = 8
    num_workers: int = 2
    device: str = "auto"
    draw: bool = True                  # false: predictions.json and images.json only
    progress: bool = True


@dataclass
class ExportConfig:
    """`python export.py ckpt_path=<checkpoint> [format=onnx|torchscript]`: an SSD's or a Mask R-CNN's whole eval
    path (resize, normalisation, network, decoding, NMS, masks) in one file, checked against the PyTorch
    model before it is kept. ONNX: SSD opset 18, dynamic batch, height and width; Mask R-CNN opset 11, one
    image a call, dynamic height and width. TorchScript: traced."""

    ckpt_path: str = MISSING
    format: str = "onnx"
    output: Optional[str] = None   # default: model.onnx / model.pt in the run directory
    check: bool = True             # compare with PyTorch on check_images images; a mismatch is an error
    check_images: int = 4          # from the checkpoint's validation split, plus 2 random images of other sizes


@dataclass
class FitConfig:
    """`anchor_tools fit`'s settings."""

    name: str = "fitted"                   # writes <run dir>/conf/anchors/<name>.yaml; the log says how to train on it
    output: Optional[str] = None           # or this file instead
    paper_scales: bool = False             # true: search s_min and s_max of the paper's linear rule, not a size per map
    ratios_per_map: Optional[int] = None   # null keeps each map's ratio count (heads and checkpoints still fit)
    generations: int = 60                  # differential evolution (scipy), seeded by `seed`
    population: int = 15


@dataclass
class AnchorToolsConfig:
    """`python -m detection.cli.anchor_tools analyse|fit [dataset=...] [anchors=...] [backbone=...]`: how well the
    SSD's priors cover a split's boxes, and priors fitted to them (docs/anchors.md)."""

    model: Any = MISSING
    backbone: Any = None
    anchors: Any = None
    fpn: Any = None
    dataset: Any = MISSING
    augment: Any = MISSING        # drawn only with augmented_passes > 0
    tracking: Any = MISSING
    command: str = "analyse"      # analyse | fit (the first word after the module name sets it)
    split: str = "train"          # train | val
    iou_threshold: float = "${model.iou_threshold}"  # type: ignore[assignment]  (the model's matching threshold)
    augmented_passes: int = 0     # > 0: boxes after that many passes of the training augmentation
    seed: int = 0
    fit: FitConfig = field(default_factory=FitConfig)


@dataclass
class InspectDataConfig:
    """`python -m detection.cli.inspect_data dataset=<a VOC-layout dataset>`: every annotation of both splits
    read and every image decoded; problems listed by file, statistics and plots; exit status 1 on errors."""

    dataset: Any = MISSING
    show: int = 10   # problems printed per kind (all of them go to dataset_report.json)
    num_workers: int = 2   # processes decoding the images (0: in the inspecting process)
    progress: bool = True


@dataclass
class CompareSweepsConfig:
    """`python -m detection.cli.compare_sweeps first=<run id> second=<run id>`: two seed sweeps' parent runs
    compared seed by seed (docs/tracking.md)."""

    first: str = MISSING     # a seed sweep's parent run id (its MLflow run page shows it)
    second: str = MISSING    # the other's: the line says first - second
    metric: str = "val/map"  # a metric every child logs
    tracking: Any = MISSING


def register() -> None:
    """The schemas as Hydra's `<entry point>_schema` configs, and the loop's settings as the `trainer` group's
    only option, `default`: the defaults are written once, in these dataclasses."""
    store = ConfigStore.instance()
    store.store(group="trainer", name="default", node=TrainerSettings)
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    store.store(name="predict_schema", node=PredictConfig)
    store.store(name="export_schema", node=ExportConfig)
    store.store(name="anchor_tools_schema", node=AnchorToolsConfig)
    store.store(name="inspect_data_schema", node=InspectDataConfig)
    store.store(name="compare_sweeps_schema", node=CompareSweepsConfig)
