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


def vgg16_state_dict(classifier_finite: bool = True) -> dict:
    """A VGG16 state dict of distinct random values, as an ImageNet file would hold it."""
    state = {key: torch.randn_like(value) for key, value in torchvision.models.vgg16().state_dict().items()}
    if not classifier_finite:  # torchvision's IMAGENET1K_FEATURES: the classifier holds no values
        state.update({key: torch.full_like(value, float("nan")) for key, value in state.items()
                      if key.startswith("classifier.")})
    return state


def test_the_reduced_vgg16_subsamples_fc6_and_fc7_into_conv6_and_conv7_as_the_paper_does(tmp_path):
    state = vgg16_state_dict()
    torch.save(state, tmp_path / "vgg16.pth")
    trunk = build_vgg_trunk(arch="vgg16", weights=str(tmp_path / "vgg16.pth"))
    conv6, conv7 = [layer for layer in trunk.stage2 if isinstance(layer, torch.nn.Conv2d)][-2:]
    fc6 = state["classifier.0.weight"].reshape(4096, 512, 7, 7)
    assert conv6.weight.shape == (1024, 512, 3, 3) and conv6.dilation == (6, 6)
    for out, channel, row, column in [(0, 0, 0, 0), (5, 17, 1, 2), (1023, 511, 2, 2), (256, 100, 2, 0)]:
        assert conv6.weight[out, channel, row, column] == fc6[4 * out, channel, 3 * row, 3 * column]
    assert torch.equal(conv6.bias, state["classifier.0.bias"][[4 * i for i in range(1024)]])
    assert conv7.weight.shape == (1024, 1024, 1, 1)
    assert conv7.weight[3, 1000, 0, 0] == state["classifier.3.weight"][12, 4000]
    assert torch.equal(conv7.weight[:, :, 0, 0], state["classifier.3.weight"][::4, ::4])
    assert torch.equal(conv7.bias, state["classifier.3.bias"][::4])
    # conv1_1 to conv5_3 are the file's own
    assert torch.equal(trunk.stage1[0].weight, state["features.0.weight"])
    for size, maps in ((300, (38, 19)), (512, (64, 32))):
        first, second = trunk(torch.zeros(1, 3, size, size))
        assert first.shape == (1, 512, maps[0], maps[0]) and second.shape == (1, 1024, maps[1], maps[1])


def test_features_only_vgg_weights_leave_conv6_and_conv7_at_their_random_start(tmp_path, caplog):
    torch.save(vgg16_state_dict(classifier_finite=False), tmp_path / "features.pth")
    torch.manual_seed(0)
    trunk = build_vgg_trunk(arch="vgg16", weights=str(tmp_path / "features.pth"))
    conv6 = [layer for layer in trunk.stage2 if isinstance(layer, torch.nn.Conv2d)][-2]
    assert torch.isfinite(conv6.weight).all() and "conv6 and conv7 start at random" in caplog.text
