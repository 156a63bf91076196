"""What a model costs, counted with torch.utils.flop_counter: pinned to torchvision's own metadata."""

import pytest
from torchvision.models.detection import SSD300_VGG16_Weights

from detection.cli.assembly import build_model
from detection.profiling.complexity import measure_complexity


def test_ssd300_vgg16_with_91_classes_costs_exactly_what_torchvision_says(compose_train):
    classes = ",".join(f"c{k}" for k in range(90))  # 90 foreground classes + background: COCO's 91
    model = build_model(compose_train("anchors=ssd300", "backbone=vgg16", f"dataset.classes=[{classes}]"),
                        pretrained=False)
    complexity = measure_complexity(model)
    meta = SSD300_VGG16_Weights.COCO_V1.meta  # torchvision's "GFLOPS" are multiply-accumulates
    assert complexity.params == meta["num_params"] == 35_641_826
    assert round(complexity.gmacs, 3) == meta["_ops"] == 34.858
    assert complexity.input == (300, 300) and model.training  # counted in eval mode, its mode restored
    assert sum(gmacs for _, gmacs in complexity.parts.values()) == pytest.approx(complexity.gmacs)
    assert sum(count for count, _ in complexity.parts.values()) == complexity.params
    assert list(complexity.parts) == ["features.trunk", "features.extras", "head", "other"]
    assert complexity.parts["other"][0] == 512  # the L2 normalisation's scales of conv4_3
    assert complexity.as_params()["model/gmacs"] == "34.858"


def test_an_rcnn_is_counted_by_backbone_rpn_and_heads_at_its_resize(compose_train):
    model = build_model(compose_train("model=fasterrcnn", "fpn=resnet18", "model.min_size=256", "model.max_size=400"),
                        pretrained=False)
    complexity = measure_complexity(model)
    assert list(complexity.parts)[:3] == ["backbone", "rpn", "roi_heads"] and complexity.input == (256, 341)
    assert sum(count for count, _ in complexity.parts.values()) == complexity.params
    assert sum(gmacs for _, gmacs in complexity.parts.values()) == pytest.approx(complexity.gmacs)
    assert "total" in complexity.table() and "FLOPs = 2 x MACs" in complexity.table()
