"""The typed schema of the entry points' configurations, registered with Hydra's ConfigStore.

`conf/train.yaml` and `conf/evaluate.yaml` start from these schemas (their defaults lists name them), so
Hydra refuses a misspelt key and a value of the wrong type at compose time. Hydra lets a key added with
`+` through, so `check_*` refuses those, and values out of range, in one line naming the key. Importing
this module does not import torch, so a typo costs a second.
"""

import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from detection.engine.settings import SettingsError, TrainerSettings, check_at_least, check_seed


MODEL_PARTS = ("backbone", "anchors", "fpn")  # groups a model config composes and interpolates
CONFIG_DIR = Path(__file__).resolve().parent / "conf"


class UntrustedConfig(SettingsError):
    """A configuration read from a file names a `_target_` this project's config groups do not name."""


@lru_cache(maxsize=1)
def project_targets() -> frozenset[str]:
    """Every `_target_` the config groups under conf/ name (Hydra's own launcher configs aside): the only
    callables a configuration read from a file (a checkpoint's) may instantiate."""
    targets = set()
    for path in CONFIG_DIR.rglob("*.yaml"):
        if "hydra" not in path.relative_to(CONFIG_DIR).parts:
            groups = yaml.safe_load(path.read_text()) or {}
            groups.pop("hydra", None)  # train.yaml's callbacks: Hydra's, never stored in a checkpoint
            targets.update(target for _, target in targets_in(groups))
    return frozenset(targets)


def targets_in(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, value) of every `_target_` in a plain container, at any depth, lists included."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield where, value
            else:
                yield from targets_in(value, where)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from targets_in(value, f"{path}[{index}]")


def check_targets(config: Any, source: Any) -> None:
    """Refuses a configuration that came from a file (`source`, named in the message) when any `_target_`
    in it, at any depth, is not one of `project_targets()`: a checkpoint is data, and nothing it names is
    called before every target in it has passed. Interpolations are refused too (`${...}` could resolve to
    anything); `config` is a plain container as stored."""
    allowed = project_targets()
    for where, target in targets_in(config):
        if not isinstance(target, str) or target not in allowed:
            raise UntrustedConfig(f"{source}: {where}={target!r} is not a target this project's config groups "
                                  f"name; the configuration stored there is refused and nothing in it was run")


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
    seed: int = 0
    ckpt_path: Optional[str] = None


@dataclass
class EvaluateConfig:
    """Top-level keys of `evaluate.yaml`."""

    ckpt_path: str = MISSING
    dataset: Any = None
    tracking: Any = MISSING
    batch_size: int = 8
    num_workers: int = 2
    device: str = "auto"
    confusion_score_threshold: float = 0.5


@dataclass
class PredictConfig:
    """Top-level keys of `predict.yaml`."""

    ckpt_path: Optional[str] = None
    model_path: Optional[str] = None
    source: str = MISSING
    tracking: Any = MISSING
    score_threshold: float = 0.3
    batch_size: int = 8
    num_workers: int = 2
    device: str = "auto"
    draw: bool = True
    progress: bool = True


@dataclass
class ExportConfig:
    """Top-level keys of `export.yaml`."""

    ckpt_path: str = MISSING
    format: str = "onnx"
    output: Optional[str] = None
    check: bool = True
    check_images: int = 4


@dataclass
class AnchorToolsConfig:
    """Top-level keys of `anchor_tools.yaml`."""

    model: Any = MISSING
    backbone: Any = None
    anchors: Any = None
    fpn: Any = None
    dataset: Any = MISSING
    augment: Any = MISSING
    tracking: Any = MISSING
    command: str = "analyse"
    split: str = "train"
    iou_threshold: float = 0.5
    augmented_passes: int = 0
    seed: int = 0
    fit: Any = MISSING


@dataclass
class InspectDataConfig:
    """Top-level keys of `inspect_data.yaml`."""

    dataset: Any = MISSING
    show: int = 10


def register() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    store.store(name="predict_schema", node=PredictConfig)
    store.store(name="export_schema", node=ExportConfig)
    store.store(name="anchor_tools_schema", node=AnchorToolsConfig)
    store.store(name="inspect_data_schema", node=InspectDataConfig)


def check_train(cfg: DictConfig) -> TrainerSettings:
    """Refuses keys the schema does not know (Hydra's `+key=value` adds them) and out-of-range values, with
    a SettingsError naming the key; returns the loop's settings."""
    known = sorted(field.name for field in fields(TrainConfig))
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise SettingsError(f"unknown top-level key(s) {unknown}; known: {known}")
    check_seed(cfg.seed)
    check_model_parts(cfg)
    check_augment_on_device(cfg)
    return TrainerSettings.from_mapping(OmegaConf.to_container(cfg.trainer, resolve=True))


def check_model_parts(cfg: DictConfig) -> None:
    """Refuses a model part (backbone, anchors, fpn) composed where the model does not use it: added with
    `+backbone=vgg16` under model=maskrcnn, which Hydra suggests when the plain override is refused."""
    used = set(re.findall(r"\$\{(\w+)\}", str(OmegaConf.to_container(cfg.model))))
    for part in MODEL_PARTS:
        if cfg.get(part) is not None and part not in used:
            raise SettingsError(f"{part} is set but model={cfg.model.get('name')} does not use it; its parts: "
                                f"{sorted(used & set(MODEL_PARTS))}")


def check_augment_on_device(cfg: DictConfig) -> None:
    """Refuses augment=ssd_gpu for Mask R-CNN: the device's augmentation moves no instance masks."""
    on_device = str(cfg.get("augment", {}).get("_target_", "")).endswith(".DeviceSSDAugmentation")
    if on_device and "maskrcnn" in str(cfg.model.get("_target_", "")):
        raise SettingsError("augment=ssd_gpu moves boxes but no instance masks, which Mask R-CNN trains on: "
                            "use the loader's augmentation (augment=basic or augment=none) for model=maskrcnn")


def check_evaluate(cfg: DictConfig) -> None:
    """Refuses a batch size under 1 or a negative worker count, naming the key."""
    check_at_least("batch_size", cfg.batch_size, 1)
    check_at_least("num_workers", cfg.num_workers, 0)


def check_predict(cfg: DictConfig) -> None:
    """As check_evaluate, a score threshold within 0..1, and one model: ckpt_path or model_path."""
    check_evaluate(cfg)
    if bool(cfg.ckpt_path) == bool(cfg.model_path):
        raise SettingsError("give one of ckpt_path (a training checkpoint) and model_path (an exported file)")
    if not 0 <= cfg.score_threshold <= 1:
        raise SettingsError(f"score_threshold must be within 0..1, got {cfg.score_threshold}")


def check_export(cfg: DictConfig) -> None:
    """Refuses an unknown format or a negative image count, naming the key."""
    if cfg.format not in ("onnx", "torchscript"):
        raise SettingsError(f"format must be onnx or torchscript, got {cfg.format!r}")
    check_at_least("check_images", cfg.check_images, 0)


def check_anchor_tools(cfg: DictConfig) -> None:
    """Refuses a model without priors, an unknown command or split, and out-of-range numbers."""
    if "anchors" not in cfg.model:
        raise SettingsError("the anchor tools need an SSD (model=ssd): this model has no priors")
    for key, allowed in (("command", ("analyse", "fit")), ("split", ("train", "val"))):
        if cfg[key] not in allowed:
            raise SettingsError(f"{key} must be one of {list(allowed)}, got {cfg[key]!r}")
    check_at_least("augmented_passes", cfg.augmented_passes, 0)
    check_at_least("fit.ratios_per_map", cfg.fit.ratios_per_map, 0, optional=True)
    for key in ("generations", "population"):
        check_at_least(f"fit.{key}", cfg.fit[key], 1)


register()
