"""torchvision classification networks as detector trunks: split into the two feature stages an SSD starts
from, or with a feature pyramid for Mask R-CNN."""

import logging
import urllib.error
from pathlib import Path
from typing import Optional

import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

log = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SSDTrunk(nn.Module):
    """A backbone cut into two stages: `stage1` to the stride-8 map (conv4_3 / layer2), `stage2` on to
    the stride-16 map (conv7 / layer3).

    Attributes:
        out_channels: channels of the two maps.
        image_mean, image_std: the per-channel normalisation the weights were trained with.
    """

    def __init__(self, stage1: nn.Module, stage2: nn.Module, out_channels: tuple[int, int]):
        super().__init__()
        self.stage1 = stage1
        self.stage2 = stage2
        self.out_channels = out_channels
        self.image_mean = IMAGENET_MEAN
        self.image_std = IMAGENET_STD

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """float [B, 3, H, W] normalised images to the stride-8 and stride-16 maps."""
        first = self.stage1(images)
        return [first, self.stage2(first)]


def load_weights(model: nn.Module, *, arch: str, weights: Optional[str]) -> None:
    """Loads `weights` into a torchvision classification model in place.

    Args:
        arch: the torchvision model name, e.g. 'resnet50'.
        weights: None (random init), a torchvision weights name ('IMAGENET1K_V1', 'DEFAULT'), or the
            path of a local state-dict file (.pth / .pt).
    """
    if weights is None:
        return
    if weights.endswith((".pth", ".pt")) or Path(weights).expanduser().exists():
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file {path} does not exist")
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        source = str(path)
    else:
        enum = torchvision.models.get_model_weights(arch)
        try:
            entry = enum[weights]
        except KeyError:
            raise ValueError(f"{arch} has no torchvision weights {weights!r}; "
                             f"choose one of {[w.name for w in enum]} or a .pth file") from None
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
        try:
            state_dict = entry.get_state_dict(progress=False)
        except (urllib.error.URLError, OSError) as error:
            raise RuntimeError(
                f"could not download the {arch} weights {weights} from {entry.url} ({error}). Without "
                f"internet, put that file at {cached} (the torch hub cache under TORCH_HOME) or pass "
                f"backbone.weights=/path/to/file.pth") from error
        source = str(cached)
    incompatible = model.load_state_dict(state_dict, strict=False)
    if incompatible.missing_keys or incompatible.unexpected_keys:
        raise ValueError(f"{source} does not fit {arch}: missing {incompatible.missing_keys[:5]}, "
                         f"unexpected {incompatible.unexpected_keys[:5]}")


def build_vgg_trunk(*, arch: str = "vgg16", weights: Optional[str] = None) -> SSDTrunk:
    """VGG split after conv4_3's ReLU, then pool5 (3x3, stride 1), dilated conv6 and 1x1 conv7: the SSD paper's
    reduced VGG16. With `weights`, conv6 and conv7 start from the ImageNet classifier's fc6 and fc7 subsampled
    (`reduced_fc_weights`), as the paper's network does; without, they start at random like the rest."""
    vgg = torchvision.models.get_model(arch, weights=None)
    load_weights(vgg, arch=arch, weights=weights)
    layers = list(vgg.features)
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
    pool3, pool4, pool5 = pools[2], pools[3], pools[4]
    layers[pool3].ceil_mode = True  # so that 300 gives 38 (SSD300), as in the original Caffe model
    conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)
    conv7 = nn.Conv2d(1024, 1024, kernel_size=1)
    if weights is not None:
        load_reduced_fc(conv6, conv7, vgg.classifier)
    stage2 = nn.Sequential(*layers[pool4:pool5], nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
                           conv6, nn.ReLU(inplace=True), conv7, nn.ReLU(inplace=True))
    return SSDTrunk(nn.Sequential(*layers[:pool4]), stage2, (512, 1024))


def reduced_fc_weights(fc6: nn.Linear, fc7: nn.Linear) -> dict[str, torch.Tensor]:
    """conv6's and conv7's weights and biases from VGG16's fc6 (Linear 25088 -> 4096, a 7x7 convolution
    over 512 channels) and fc7 (4096 -> 4096), subsampled as DeepLab-LargeFOV and the SSD paper reduce
    them: every 4th output (and, for fc7, input) channel, and fc6's 7x7 taps at rows and columns 0, 3, 6
    (the dilation of 6 then spreads those 3x3 taps over a field like the original 7x7 one). conv6 weight
    [1024, 512, 3, 3], conv7 weight [1024, 1024, 1, 1], biases [1024]."""
    six = fc6.weight.detach().reshape(fc6.out_features, 512, 7, 7)
    return {"conv6.weight": six[::4, :, ::3, ::3].clone(), "conv6.bias": fc6.bias.detach()[::4].clone(),
            "conv7.weight": fc7.weight.detach()[::4, ::4, None, None].clone(),
            "conv7.bias": fc7.bias.detach()[::4].clone()}


def load_reduced_fc(conv6: nn.Conv2d, conv7: nn.Conv2d, classifier: nn.Sequential) -> None:
    """conv6 and conv7 from the classifier's fc6 and fc7 (`reduced_fc_weights`), unless the weights hold
    no classifier (torchvision's IMAGENET1K_FEATURES fills it with NaN): then they keep their random start."""
    fc6, fc7 = classifier[0], classifier[3]
    if not (torch.isfinite(fc6.weight).all() and torch.isfinite(fc7.weight).all()):
        log.warning("the VGG weights hold no fc6/fc7 (features only): conv6 and conv7 start at random")
        return
    reduced = reduced_fc_weights(fc6, fc7)
    with torch.no_grad():
        for layer, name in ((conv6, "conv6"), (conv7, "conv7")):
            layer.weight.copy_(reduced[f"{name}.weight"])
            layer.bias.copy_(reduced[f"{name}.bias"])


def build_resnet_trunk(*, arch: str = "resnet50", weights: Optional[str] = None) -> SSDTrunk:
    """ResNet split after layer2 (stride 8) and layer3 (stride 16)."""
    resnet = torchvision.models.get_model(arch, weights=None)
    load_weights(resnet, arch=arch, weights=weights)
    stage1 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2)
    channels = (_block_out_channels(resnet.layer2), _block_out_channels(resnet.layer3))
    return SSDTrunk(stage1, resnet.layer3, channels)


def build_resnet_fpn(*, arch: str = "resnet50", weights: Optional[str] = None, trainable_layers: int = 3,
                     frozen: bool = False) -> BackboneWithFPN:
    """A ResNet with torchvision's feature pyramid (256 channels at strides 4 to 64), Mask R-CNN's trunk.

    Args:
        weights: the ResNet's ImageNet weights: None, a torchvision weights name or a .pth file.
        trainable_layers: ResNet stages (0-5) left trainable when the trunk is frozen.
        frozen: frozen BatchNorm and `trainable_layers` trainable stages, as torchvision builds it whenever
            pretrained weights are loaded (these, or the whole detector's); implied by `weights`. Otherwise
            BatchNorm and every stage train.
    """
    frozen = frozen or weights is not None
    resnet = torchvision.models.get_model(arch, weights=None, norm_layer=FrozenBatchNorm2d if frozen else nn.BatchNorm2d)
    load_weights(resnet, arch=arch, weights=weights)
    return _resnet_fpn_extractor(resnet, trainable_layers if frozen else 5)


def _block_out_channels(layer: nn.Sequential) -> int:
    """Output channels of a ResNet layer: its last block's last BatchNorm (Bottleneck or BasicBlock)."""
    last_block = layer[-1]
    last_bn = last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2
    return last_bn.num_features
