"""trainer.amp: the precision chosen for each device, CPU capability and setting, and why."""

import pytest
import torch

from detection.engine import precision as module
from detection.engine.precision import choose_precision
from detection.engine.settings import SettingsError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def cpu(monkeypatch):
    """cpu(capability, bf16=..., amx=...) fakes what torch reports of the CPU."""
    def fake(capability, *, bf16=False, amx=False):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    return fake


@pytest.fixture
def gpu(monkeypatch):
    def fake(*, bf16: bool):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    return fake


@pytest.mark.parametrize("capability, bf16, amx, expected", [
    ("AVX2", False, False, None),            # the AMD EPYC of the issue: bf16 would be emulated
    ("AVX512", False, False, None),          # AVX-512 without its BF16 extension
    ("AVX512", True, False, torch.bfloat16),  # Zen 4, Cooper Lake
    ("AVX512", False, True, torch.bfloat16),  # Sapphire Rapids (AMX)
    ("AVX2", True, False, None),             # ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU: the kernels torch runs
    ("DEFAULT", False, False, None),
    ("SVE256", False, False, None),
])
def test_auto_on_the_cpu_takes_bf16_only_where_it_is_native(cpu, capability, bf16, amx, expected):
    cpu(capability, bf16=bf16, amx=amx)
    chosen = choose_precision(CPU, "auto")
    assert chosen.dtype == expected
    assert capability in chosen.reason
    assert not chosen.needs_grad_scaler


def test_auto_on_cuda_is_fp16_with_a_grad_scaler(gpu):
    gpu(bf16=True)
    chosen = choose_precision(CUDA, "auto")
    assert chosen.dtype == torch.float16 and chosen.needs_grad_scaler and "GradScaler" in chosen.reason


@pytest.mark.parametrize("device", [CPU, CUDA])
def test_false_is_fp32_everywhere(cpu, device):
    cpu("AVX512", bf16=True)
    chosen = choose_precision(device, False)
    assert chosen.dtype is None and chosen.name == "fp32" and "trainer.amp=false" in chosen.reason


def test_true_forces_autocast_and_says_when_the_cpu_emulates_it(cpu, gpu):
    cpu("AVX2")
    forced = choose_precision(CPU, True)
    assert forced.dtype == torch.bfloat16 and "emulated" in forced.reason
    cpu("AVX512", bf16=True)
    assert "emulated" not in choose_precision(CPU, True).reason
    gpu(bf16=True)
    assert choose_precision(CUDA, True).dtype == torch.float16


def test_bf16_on_a_gpu_without_it_is_refused_and_fp16_is_taken_as_asked(gpu):
    gpu(bf16=True)
    assert choose_precision(CUDA, "bf16").dtype == torch.bfloat16
    assert choose_precision(CUDA, "fp16").dtype == torch.float16
    gpu(bf16=False)
    with pytest.raises(SettingsError, match="trainer.amp=bf16: Fake GPU has no bf16"):
        choose_precision(CUDA, "bf16")


def test_the_autocast_context_matches_the_choice(cpu):
    cpu("AVX512", bf16=True)
    layer = torch.nn.Linear(4, 4)
    with choose_precision(CPU, "auto").autocast(CPU):
        assert layer(torch.rand(2, 4)).dtype == torch.bfloat16
    with choose_precision(CPU, False).autocast(CPU):
        assert layer(torch.rand(2, 4)).dtype == torch.float32


def test_the_real_query_answers_on_this_machine():
    native, found = module.cpu_native_bf16()
    assert isinstance(native, bool) and torch.backends.cpu.get_cpu_capability() in found
