"""Backbone weights: none, a local .pth file, or a torchvision weights name from the torch hub cache."""

from pathlib import Path

import pytest
import torch
import torchvision

from detection.models.backbones import build_resnet_trunk, build_vgg_trunk, load_weights


def test_local_weights_file_is_loaded(tmp_path):
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    trunk = build_resnet_trunk(arch="resnet18", weights=str(path))
    assert torch.equal(trunk.stage1[0].weight, source.conv1.weight)
    assert torch.equal(trunk.stage2[0].conv1.weight, source.layer3[0].conv1.weight)


def test_weights_name_loads_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = torchvision.models.resnet18()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / Path(url).name)
    trunk = build_resnet_trunk(arch="resnet18", weights="IMAGENET1K_V1")
    assert torch.equal(trunk.stage1[0].weight, source.conv1.weight)


def test_weights_that_cannot_be_downloaded_say_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable")))
    expected = tmp_path / "hub" / "checkpoints" / Path(torchvision.models.VGG16_Weights.IMAGENET1K_V1.url).name
    with pytest.raises(RuntimeError, match=f"put that file at {expected}.*backbone.weights=/path/to/file.pth"):
        build_vgg_trunk(arch="vgg16", weights="IMAGENET1K_V1")


def test_unknown_weights_name_lists_the_choices():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        load_weights(torchvision.models.resnet18(), arch="resnet18", weights="IMAGENET_V9")


def test_weights_file_of_another_network_is_refused(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(torchvision.models.vgg11().state_dict(), path)
    with pytest.raises(ValueError, match=f"{path} does not fit resnet18"):
        build_resnet_trunk(arch="resnet18", weights=str(path))


def test_vgg_trunk_splits_after_conv4_3_at_stride_8_and_16():
    trunk = build_vgg_trunk(arch="vgg16")
    first, second = trunk(torch.zeros(1, 3, 300, 300))
    assert first.shape == (1, 512, 38, 38) and second.shape == (1, 1024, 19, 19)
