"""The checks every entry point runs on its composed configuration before torch loads: keys the schema does
not know (Hydra's `+key=` adds them) or that are unset, values out of range, a class list that is not one,
a model part composed where the model does not use it. Each refusal is a SettingsError naming the key."""

import os
import re
from dataclasses import fields
from typing import Any, NamedTuple, Optional

from omegaconf import DictConfig, OmegaConf

from detection.cli.schema import (AnchorToolsConfig, CompareSweepsConfig, EvaluateConfig, ExportConfig,
                                  InspectDataConfig, PredictConfig, TrainConfig)
from detection.data.classes import checked_class_names
from detection.engine.settings import SettingsError, TrainerSettings, check_at_least, check_seed, unknown_key

MODEL_PARTS = ("backbone", "anchors", "fpn")  # groups a model config composes and interpolates
SPLIT_SOURCES = ("train", "val")  # predict.py's sources that name a split of the checkpoint's dataset


class Range(NamedTuple):
    """A setting's allowed numbers (where it is a list, each of its numbers; aspect ratios: each of each
    map's): from `lowest` (excluded with `above`: a box size, a ratio or a factor of 0 is nonsense) to
    `highest`, whole numbers only with `whole`."""

    key: str
    lowest: float
    highest: Optional[float] = None
    whole: bool = False
    above: bool = False


RANGES = (Range("image_size", 128, whole=True), Range("model.score_threshold", 0, 1),
          Range("model.nms_threshold", 0, 1),
          Range("model.iou_threshold", 0.0, 1, above=True), Range("model.detections_per_image", 1, whole=True),
          Range("model.candidates_per_class", 1, whole=True), Range("model.min_size", 1, whole=True),
          Range("model.max_size", 1, whole=True), Range("anchors.image_size", 32, whole=True),
          Range("anchors.feature_map_sizes", 1, whole=True), Range("anchors.steps", 0.0, above=True),
          Range("anchors.box_sizes", 0.0, above=True), Range("anchors.aspect_ratios", 0.0, above=True),
          Range("scheduler.warmup_steps", 0, whole=True), Range("scheduler.warmup_factor", 0.0, 1, above=True),
          Range("scheduler.min_factor", 0, 1), Range("scheduler.gamma", 0.0, 1, above=True),
          Range("scheduler.milestones", 0.0, 1, above=True))


def numbers_in(value: Any) -> list:
    """The numbers of a setting: itself, or those of a (nested) list."""
    if isinstance(value, (list, tuple)):
        return [number for item in value for number in numbers_in(item)]
    return [value]


def check_ranges(cfg: DictConfig) -> None:
    """Refuses a value of RANGES' keys outside its range, naming the key and the range (keys the
    configuration does not have are not checked)."""
    for key, lowest, highest, whole, above in RANGES:
        value = plain_value(OmegaConf.select(cfg, key, default=None))
        if value is None:
            continue
        allowed = (f"{'whole numbers' if whole else 'numbers'} {'>' if above else '>='} {lowest}"
                   + (f" and <= {highest}" if highest is not None else ""))
        for number in numbers_in(value):
            numeric = isinstance(number, (int, float)) and not isinstance(number, bool)
            if (not numeric or (whole and number != int(number)) or number < lowest
                    or (above and number == lowest) or (highest is not None and number > highest)):
                raise SettingsError(f"{key}={value!r}: must be {allowed}")


def plain_value(value: Any) -> Any:
    """A config node as plain Python containers, resolved; any other value as it is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_classes(cfg: DictConfig) -> None:
    """Refuses a missing, empty, bare-string or repeating `dataset.classes`, in one line with the syntax."""
    if OmegaConf.is_missing(cfg.dataset, "classes"):
        raise SettingsError("dataset.classes is not set: list the classes in label order, e.g. "
                            "dataset.classes=[cat,dog]")
    try:
        checked_class_names(plain_value(cfg.dataset.classes))
    except ValueError as error:
        raise SettingsError(str(error)) from None


def check_keys(cfg: DictConfig, schema: type) -> None:
    """Refuses top-level keys the entry point's schema does not know (Hydra lets `+key=value` add them,
    and an ignored setting is worse than a refused one) and required keys left unset (`ckpt_path=...`)."""
    known = sorted(field.name for field in fields(schema))
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise SettingsError(unknown_key(unknown[0], known))
    unset = [key for key in cfg.keys() if OmegaConf.is_missing(cfg, key)]
    if unset:
        raise SettingsError(f"{unset[0]} is required: give it on the command line ({unset[0]}=...)")


def check_train(cfg: DictConfig) -> TrainerSettings:
    """Refuses keys the schema does not know (Hydra's `+key=value` adds them) and out-of-range values, with
    a SettingsError naming the key; returns the loop's settings."""
    check_keys(cfg, TrainConfig)
    check_seed(cfg.seed)
    check_classes(cfg)
    check_ranges(cfg)
    check_model_parts(cfg)
    check_augment_on_device(cfg)
    check_masks(cfg)
    return TrainerSettings.from_mapping(OmegaConf.to_container(cfg.trainer, resolve=True))


def check_model_parts(cfg: DictConfig) -> None:
    """Refuses a model part (backbone, anchors, fpn) composed where the model does not use it: added with
    `+backbone=vgg16` under model=maskrcnn, which Hydra suggests when the plain override is refused."""
    used = set(re.findall(r"\$\{(\w+)\}", str(OmegaConf.to_container(cfg.model))))
    for part in MODEL_PARTS:
        if cfg.get(part) is not None and part not in used:
            model = str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1].removeprefix("build_")
            raise SettingsError(f"{part} is set but model={model} does not use it; its parts: "
                                f"{sorted(used & set(MODEL_PARTS))}")


def check_augment_on_device(cfg: DictConfig) -> None:
    """Refuses augment=ssd_gpu for Mask R-CNN: the device's augmentation moves no instance masks."""
    on_device = str(cfg.get("augment", {}).get("_target_", "")).endswith(".DeviceSSDAugmentation")
    if on_device and trains_on_masks(cfg):
        raise SettingsError("augment=ssd_gpu moves boxes but no instance masks, which Mask R-CNN trains on: "
                            "use the loader's augmentation (augment=basic or augment=none) for model=maskrcnn")


def trains_on_masks(cfg: DictConfig) -> bool:
    return str(cfg.model.get("_target_", "")).endswith(".build_maskrcnn")


def check_masks(cfg: DictConfig) -> None:
    """Refuses model=maskrcnn on a dataset read without instance masks, before anything is built, naming
    the folder the masks would come from and the box-only model."""
    if not trains_on_masks(cfg):
        return
    for split in ("train", "val"):
        node = cfg.dataset.get(split)
        target = str(node.get("_target_", ""))
        if node.get("with_masks") or target.endswith("build_shapes_dataset"):
            continue
        if "root" not in node:  # COCO: its annotation file's segmentations
            remedy = "set dataset.with_masks=true"
        else:
            folders = [f"{node.root}/{year}/SegmentationObject" for year, _ in node.sets] if "sets" in node \
                else [f"{node.root}/SegmentationObject"]
            missing = [folder for folder in folders if not os.path.isdir(folder)]
            remedy = f"{', '.join(missing)} does not exist" if missing else \
                f"add +dataset.{split}.with_masks=true to read {', '.join(folders)}"
        raise SettingsError(f"model=maskrcnn trains on instance masks, but dataset.{split} gives boxes only "
                            f"({remedy}): for box-only data use model=fasterrcnn")


def check_loading(cfg: DictConfig) -> None:
    """Refuses a batch size under 1 or a negative worker count, naming the key."""
    check_at_least("batch_size", cfg.batch_size, 1)
    check_at_least("num_workers", cfg.num_workers, 0)


def check_evaluate(cfg: DictConfig) -> None:
    """Refuses unknown or unset keys, and out-of-range loading settings and threshold, naming the key."""
    check_keys(cfg, EvaluateConfig)
    check_loading(cfg)
    check_at_least("worst_images", cfg.worst_images, 0)
    if not 0 <= cfg.confusion_score_threshold <= 1:
        raise SettingsError(f"confusion_score_threshold must be within 0..1, got {cfg.confusion_score_threshold}")
    check_corruptions(cfg)
    check_test_time(cfg)


def check_test_time(cfg: DictConfig) -> None:
    """Refuses `tta` items other than flip and input sizes, and `slices` other than [tile size, overlap]."""
    for item in cfg.tta:
        if item != "flip" and (isinstance(item, bool) or not isinstance(item, int) or item < 32):
            raise SettingsError(f"tta={list(cfg.tta)}: {item!r} is neither flip nor an input size (an integer "
                                f">= 32), e.g. tta=[flip,352]")
    if cfg.slices is not None:
        slices = list(cfg.slices)
        if len(slices) != 2 or not float(slices[0]).is_integer() or slices[0] < 32 or not 0 <= slices[1] < 1:
            raise SettingsError(f"slices={slices}: must be [tile size >= 32 pixels, overlap in 0..1), "
                                f"e.g. slices=[320,0.2]")


def check_corruptions(cfg: DictConfig) -> None:
    """Refuses corruption names and severities the benchmark does not have, a seed out of range, and
    `robustness=true` where the corruption package is not installed, naming the key."""
    import importlib.util

    from detection.data.corruptions import CORRUPTIONS, INSTALL, SEVERITIES, unknown_corruptions

    unknown = unknown_corruptions(cfg.corruptions or [])
    if unknown:
        raise SettingsError(f"corruptions={list(cfg.corruptions)}: no corruption {unknown}; choose from "
                            f"{list(CORRUPTIONS)}, or leave it null for all of them")
    if not cfg.severities or set(cfg.severities) - set(SEVERITIES):
        raise SettingsError(f"severities={list(cfg.severities)}: must be some of {list(SEVERITIES)}")
    check_seed(cfg.corruption_seed, "corruption_seed")
    if cfg.robustness and importlib.util.find_spec("imagecorruptions") is None:
        raise SettingsError(f"robustness=true needs the imagecorruptions package: {INSTALL}")


def check_predict(cfg: DictConfig) -> None:
    """Refuses unknown or unset keys, out-of-range loading settings, a score threshold outside 0..1,
    anything but one model: ckpt_path or model_path, and a dataset split as the source of an exported file."""
    check_keys(cfg, PredictConfig)
    check_loading(cfg)
    if bool(cfg.ckpt_path) == bool(cfg.model_path):
        raise SettingsError("give one of ckpt_path (a training checkpoint) and model_path (an exported file)")
    check_test_time(cfg)
    if cfg.model_path and (cfg.tta or cfg.slices):
        raise SettingsError("tta and slices run a checkpoint's model (ckpt_path=), not an exported file")
    if cfg.model_path and cfg.source in SPLIT_SOURCES and not os.path.exists(cfg.source):
        raise SettingsError(f"source={cfg.source}: a dataset split is the checkpoint's; give ckpt_path= (an "
                            f"exported file holds no dataset), or a folder, image, glob or video")
    score = cfg.score_threshold
    if score != "auto" and (isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1):
        raise SettingsError(f"score_threshold must be within 0..1 or auto (each class's threshold, saved by "
                            f"evaluate.py save_thresholds=true), got {cfg.score_threshold!r}")


def check_export(cfg: DictConfig) -> None:
    """Refuses unknown keys, an unknown format or a negative image count, naming the key."""
    check_keys(cfg, ExportConfig)
    if cfg.format not in ("onnx", "torchscript"):
        raise SettingsError(f"format must be onnx or torchscript, got {cfg.format!r}")
    check_at_least("check_images", cfg.check_images, 0)


def check_inspect_data(cfg: DictConfig) -> None:
    """Refuses unknown or unset keys, a negative worker count and a class list that is not one."""
    check_keys(cfg, InspectDataConfig)
    check_at_least("num_workers", cfg.num_workers, 0)
    check_classes(cfg)


def check_compare_sweeps(cfg: DictConfig) -> None:
    """Refuses unknown or unset keys and a store that is not MLflow's."""
    check_keys(cfg, CompareSweepsConfig)
    if cfg.tracking.get("_target_") != "detection.tracking.MlflowTracker":
        raise SettingsError("tracking: compare_sweeps reads sweeps from an MLflow store (tracking=mlflow)")


def check_anchor_tools(cfg: DictConfig) -> None:
    """Refuses unknown keys, a model without priors, an unknown command or split, and out-of-range numbers."""
    check_keys(cfg, AnchorToolsConfig)
    check_ranges(cfg)
    if "anchors" not in cfg.model:
        raise SettingsError("the anchor tools need an SSD (model=ssd): this model has no priors")
    for key, allowed in (("command", ("analyse", "fit")), ("split", ("train", "val"))):
        if cfg[key] not in allowed:
            raise SettingsError(f"{key} must be one of {list(allowed)}, got {cfg[key]!r}")
    check_at_least("augmented_passes", cfg.augmented_passes, 0)
    check_at_least("fit.ratios_per_map", cfg.fit.ratios_per_map, 0, optional=True)
    for key in ("generations", "population"):
        check_at_least(f"fit.{key}", cfg.fit[key], 1)
