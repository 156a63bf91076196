"""`image_size=`, the one knob for the model's input, as ultralytics' `imgsz`: it rewrites the composed
configuration once, before anything is built, so that every node reading the input size (the augmentation's
warp, the experiment label, a search's study name) sees the same number and checkpoints store it resolved.

- SSD: the anchors group's layout moved to that input: its box sizes scaled with it, its feature-map sizes
  and steps left to the network's dry run (which drops the maps the network does not produce at that size,
  saying so), `anchors.image_size` set.
- Faster / Mask R-CNN: torchvision's resize, `model.min_size` set to it and `model.max_size` scaled with it.

Applying it twice changes nothing (a resumed run's stored configuration is already at its size)."""

import logging

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def apply_image_size(cfg: DictConfig) -> DictConfig:
    """`cfg` with `image_size` (when set) applied to the model's nodes, in place; returns it."""
    size = cfg.get("image_size")
    if size is None:
        return cfg
    anchors = cfg.get("anchors")
    if anchors is not None and anchors.image_size != size:
        factor = size / anchors.image_size
        with open_dict(anchors):
            scaled = [round(float(value) * factor, 2) for value in OmegaConf.to_container(anchors.box_sizes)]
            log.info("image_size=%d: the anchors' box sizes scaled by %.3f from their %d-pixel layout to %s; "
                     "feature maps from the network's dry run", size, factor, anchors.image_size, scaled)
            anchors.box_sizes, anchors.image_size = scaled, size
            anchors.feature_map_sizes, anchors.steps = None, None
    elif "min_size" in cfg.model and cfg.model.min_size != size:
        cfg.model.max_size = round(cfg.model.max_size * size / cfg.model.min_size)
        cfg.model.min_size = size
        log.info("image_size=%d: images resized to a short side of %d, a long side of at most %d", size, size,
                 cfg.model.max_size)
    return cfg
