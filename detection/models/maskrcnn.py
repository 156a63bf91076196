"""torchvision's Mask R-CNN on a ResNet-FPN trunk, with predictors sized for our classes."""

from typing import Callable, Optional, Sequence

from torchvision.models.detection import MaskRCNN
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
    num_classes = len(class_names) + 1
    model = MaskRCNN(backbone(frozen=weights is not None), num_classes=COCO_NUM_CLASSES if weights else num_classes,
                     min_size=min_size, max_size=max_size)
    load_weights(model, arch="maskrcnn_resnet50_fpn", weights=weights)
    transform = model.transform
    model.transform = ByteImageRCNNTransform(transform.min_size, transform.max_size, transform.image_mean,
                                             transform.image_std)
    box_in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_in_features, num_classes)
    mask_in_channels = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in_channels, mask_hidden_channels, num_classes)
    return model
