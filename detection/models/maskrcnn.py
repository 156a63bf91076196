"""torchvision's two-stage detectors on a ResNet-FPN trunk, with predictors sized for our classes: Mask R-CNN
(boxes and masks) and Faster R-CNN (boxes only, for data without masks)."""

from typing import Callable, Optional, Sequence

from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from detection.models.backbones import build_resnet_fpn, load_weights
from detection.models.images import ByteImageRCNNTransform

COCO_NUM_CLASSES = 91


def build_maskrcnn(*, class_names: Sequence[str], backbone: Callable[..., BackboneWithFPN] = build_resnet_fpn,
                   weights: Optional[str] = None, mask_hidden_channels: int = 256, min_size: int = 800,
                   max_size: int = 1333) -> MaskRCNN:
    """Mask R-CNN whose box predictor is replaced for `len(class_names) + 1` classes and whose mask
    predictor is replaced with a `mask_hidden_channels` hidden layer; it takes uint8 images too.

    Args:
        backbone: builds the trunk, called with `frozen=` whether `weights` are loaded (e.g. a partial of
            `build_resnet_fpn` carrying its arch and ImageNet weights).
        weights: COCO weights of the whole detector: None, a torchvision weights name ('COCO_V1') or a
            .pth file of `maskrcnn_resnet50_fpn` (so a ResNet50 trunk); the predictors are replaced after
            loading.
        min_size, max_size: the resize of torchvision's GeneralizedRCNNTransform.
    """
    model = _two_stage(MaskRCNN, "maskrcnn_resnet50_fpn", class_names=class_names, backbone=backbone,
                       weights=weights, min_size=min_size, max_size=max_size)
    mask_in_channels = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in_channels, mask_hidden_channels, len(class_names) + 1)
    return model


def build_fasterrcnn(*, class_names: Sequence[str], backbone: Callable[..., BackboneWithFPN] = build_resnet_fpn,
                     weights: Optional[str] = None, min_size: int = 800, max_size: int = 1333) -> FasterRCNN:
    """Faster R-CNN (boxes only) whose box predictor is replaced for `len(class_names) + 1` classes; it
    takes uint8 images too. Arguments as `build_maskrcnn`'s; `weights` are `fasterrcnn_resnet50_fpn`'s."""
    return _two_stage(FasterRCNN, "fasterrcnn_resnet50_fpn", class_names=class_names, backbone=backbone,
                      weights=weights, min_size=min_size, max_size=max_size)


def _two_stage(model_class, arch: str, *, class_names, backbone, weights, min_size, max_size):
    """`model_class` on the trunk `backbone` builds, `weights` of `arch` loaded, the uint8-taking transform
    and a box predictor for `len(class_names) + 1` classes."""
    num_classes = len(class_names) + 1
    model = model_class(backbone(frozen=weights is not None),
                        num_classes=COCO_NUM_CLASSES if weights else num_classes, min_size=min_size, max_size=max_size)
    load_weights(model, arch=arch, weights=weights)
    transform = model.transform
    model.transform = ByteImageRCNNTransform(transform.min_size, transform.max_size, transform.image_mean,
                                             transform.image_std)
    box_in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_in_features, num_classes)
    return model
