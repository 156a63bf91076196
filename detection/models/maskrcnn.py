"""torchvision's Mask R-CNN ResNet50-FPN with predictors sized for our classes."""

from typing import Optional, Sequence

import torchvision
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d
from torch import nn

from detection.models.backbones import load_weights

COCO_NUM_CLASSES = 91


def build_maskrcnn(*, class_names: Sequence[str], backbone_arch: str = "resnet50",
                   backbone_weights: Optional[str] = None, weights: Optional[str] = None,
                   mask_hidden_channels: int = 256, trainable_backbone_layers: int = 3,
                   min_size: int = 800, max_size: int = 1333) -> MaskRCNN:
    """Mask R-CNN ResNet50-FPN whose box predictor is replaced for `len(class_names) + 1` classes and
    whose mask predictor is replaced with a `mask_hidden_channels` hidden layer.

    Args:
        backbone_arch: only 'resnet50' (the FPN extractor torchvision pairs with Mask R-CNN).
        backbone_weights: ImageNet weights of the ResNet: None, a torchvision weights name or a .pth file.
        weights: COCO weights of the whole detector: None, a torchvision weights name ('COCO_V1') or a
            .pth file of `maskrcnn_resnet50_fpn`; the predictors are replaced after loading.
        trainable_backbone_layers: ResNet stages left trainable (0-5) when any weights are loaded.
        min_size, max_size: the resize of torchvision's GeneralizedRCNNTransform.
    """
    if backbone_arch != "resnet50":
        raise ValueError(f"model=maskrcnn is torchvision's Mask R-CNN ResNet50-FPN; backbone={backbone_arch} is "
                         f"not supported with it (use backbone=resnet50)")
    pretrained = weights is not None or backbone_weights is not None
    resnet = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d)
    load_weights(resnet, arch="resnet50", weights=backbone_weights)
    backbone = _resnet_fpn_extractor(resnet, trainable_backbone_layers if pretrained else 5)
    num_classes = len(class_names) + 1
    model = MaskRCNN(backbone, num_classes=COCO_NUM_CLASSES if weights else num_classes,
                     min_size=min_size, max_size=max_size)
    load_weights(model, arch="maskrcnn_resnet50_fpn", weights=weights)
    box_in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_in_features, num_classes)
    mask_in_channels = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in_channels, mask_hidden_channels, num_classes)
    return model
