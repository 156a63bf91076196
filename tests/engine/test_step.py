"""The training step and the network's preparation: skipped steps agree, channels_last gives the same
losses, torch.compile falls back to eager mode with a warning where the platform cannot compile."""

import logging

import pytest
import torch

from conftest import SMALL_SHAPES
from detection.engine.step import TrainStep, compiler_problem, network_parts, prepare_network
from detection.cli.assembly import build_model
from test_host_syncs import batch


@pytest.fixture
def model(compose_train):
    torch.manual_seed(0)
    return build_model(compose_train("backbone=resnet18", "anchors=shapes128", *SMALL_SHAPES))


def step_of(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    return TrainStep(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                     device=torch.device("cpu"))


def test_a_step_updates_counts_images_and_passes_on_a_stop_request(model):
    images, targets = batch(4, 3)
    before = [p.detach().clone() for p in model.parameters()]
    outcome = step_of(model)(images, targets, stop_requested=lambda: True)
    assert outcome.applied and outcome.stop and outcome.images == 4 and not outcome.nonfinite
    assert set(outcome.losses) == {"bbox_regression", "classification"}
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_an_empty_batch_makes_no_update(model):
    before = [p.detach().clone() for p in model.parameters()]
    outcome = step_of(model)([], [])
    assert outcome.empty and not outcome.applied and not outcome.nonfinite
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_channels_last_gives_the_same_losses(model):
    images, targets = batch(2, 3)
    reference = model.train()(images, targets)
    prepared, network = prepare_network(model, device=torch.device("cpu"), channels_last=True)
    first_conv = next(m for m in prepared.modules() if isinstance(m, torch.nn.Conv2d))
    assert network is prepared and first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    for name, value in prepared(images, targets).items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-4)


def test_compile_compiles_the_network_parts_where_a_compiler_is_present(model):
    if compiler_problem(torch.device("cpu")):
        pytest.skip("no working C++ compiler for torch.compile on this machine")
    prepared, _ = prepare_network(model, device=torch.device("cpu"), compile=True)
    parts = network_parts(prepared)
    assert [type(part).__name__ for part in parts] == ["SSDFeatures", "SSDHead"]
    assert all(part._compiled_call_impl is not None for part in parts)
    assert set(prepared.state_dict()) == set(model.state_dict())  # checkpoints keep their keys


def test_compile_falls_back_to_eager_with_a_warning_where_nothing_compiles(model, monkeypatch, caplog):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/c++",))
    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING):
        prepared, _ = prepare_network(model, device=torch.device("cpu"), compile=True)
    torch._dynamo.reset()  # the compiler lookup it poisoned is cached: this test runs last
    assert "trainer.compile=true, but torch.compile cannot run on cpu here" in caplog.text
    assert all(part._compiled_call_impl is None for part in network_parts(prepared))
