"""Where a detector's time goes per image: preprocess, network and postprocess, by hooks on its modules."""

import pytest
import torch

from detection.cli.assembly import build_model
from detection.profiling.speed import StageTimes, speed_line


@pytest.mark.parametrize("overrides", [("backbone=resnet18", "anchors=shapes128"),
                                       ("model=fasterrcnn", "fpn=resnet18", "model.min_size=128", "model.max_size=160")])
def test_each_call_is_split_into_three_stages_per_image(compose_train, overrides):
    model = build_model(compose_train(*overrides), pretrained=False).eval()
    with torch.no_grad(), StageTimes(model, torch.device("cpu")) as times:
        for _ in range(2):
            model([torch.rand(3, 96, 128), torch.rand(3, 120, 100)])
    per_image = times.per_image()
    assert times.images == 4 and list(per_image) == ["preprocess_ms", "network_ms", "postprocess_ms"]
    assert all(ms > 0 for ms in per_image.values()) and per_image["network_ms"] > per_image["preprocess_ms"]
    with torch.no_grad():
        model([torch.rand(3, 96, 128)])  # outside `with`: the hooks are gone
    assert times.images == 4
    assert speed_line(per_image, device=torch.device("cpu"), batch_size=2).startswith(
        "speed per image on cpu, batch 2: preprocess ")


def test_a_model_without_its_stages_is_not_timed():
    model = torch.nn.Linear(2, 2)
    with StageTimes(model, torch.device("cpu")) as times:
        model(torch.zeros(1, 2))
    assert times.per_image() == {}
