"""Which precision a run computes in, chosen per device and said with its reason.

bf16 autocast on a CPU without native bf16 instructions (AVX-512 BF16 or AMX) is emulated and about 20 to
30 times slower than fp32 (measured: 7.9 s against 0.38 s per SSD128-ResNet18 step with the CPU kernels
limited to AVX2), so `auto` takes it only where the CPU has them.
"""

import contextlib
from dataclasses import dataclass
from typing import Any, Optional

import torch

from detection.engine.settings import SettingsError


@dataclass(frozen=True)
class Precision:
    """`dtype`: the autocast dtype (None: fp32, no autocast); `reason`: why, for the log and the run's tags."""

    dtype: Optional[torch.dtype]
    reason: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range."""
        return self.dtype == torch.float16

    def autocast(self, device: torch.device):
        """The autocast context of this precision on `device` (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


FP32 = Precision(None, "trainer.amp=false")
# training's validation and evaluate.py compute in it: one number per checkpoint, whatever trainer.amp
EVALUATION = Precision(None, "evaluation is fp32 whatever trainer.amp: training's validation and evaluate.py "
                             "give the same number for the same weights")


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 natively, as torch dispatches it: AVX-512 kernels (not limited by
    ATEN_CPU_CAPABILITY) on a CPU with AVX512_BF16 or AMX. Returns (native, what was found)."""
    capability = torch.backends.cpu.get_cpu_capability()
    features = [name for name, query in (("AVX512_BF16", "_is_avx512_bf16_supported"),
                                         ("AMX", "_is_amx_tile_supported"))
                if getattr(torch.cpu, query, lambda: False)()]
    found = f"CPU capability {capability}" + (f" with {'+'.join(features)}" if features else ", no AVX512_BF16/AMX")
    return capability == "AVX512" and bool(features), found


def choose_precision(device: torch.device, amp: Any) -> Precision:
    """The precision for `trainer.amp` on `device`.

    auto: fp16 with a GradScaler on CUDA; bf16 on a CPU with native bf16; fp32 otherwise.
    true: fp16 on CUDA, bf16 elsewhere, whatever the CPU. false: fp32. 'fp16' / 'bf16': that dtype
    (bf16 on a GPU without it is refused).
    """
    cuda = device.type == "cuda"
    if amp is False:
        return FP32
    if amp == "fp16" or (amp is True and cuda):
        return Precision(torch.float16, f"trainer.amp={str(amp).lower()}: fp16 autocast"
                         + (" with a GradScaler" if cuda else ""))
    if amp == "bf16" or amp is True:
        if cuda and not torch.cuda.is_bf16_supported():
            raise SettingsError(f"trainer.amp=bf16: {torch.cuda.get_device_name(device)} has no bf16")
        native, found = cpu_native_bf16() if device.type == "cpu" else (True, "")
        emulated = "" if native else f", emulated here and much slower than fp32 ({found})"
        return Precision(torch.bfloat16, f"trainer.amp={str(amp).lower()}: bf16 autocast{emulated}")
    if amp != "auto":
        raise SettingsError(f"trainer.amp={amp!r}: must be one of auto, true, false, fp16, bf16")
    if cuda:
        return Precision(torch.float16, "auto on CUDA: fp16 autocast with a GradScaler")
    if device.type != "cpu":
        return Precision(None, f"auto on {device.type}: fp32")
    native, found = cpu_native_bf16()
    if native:
        return Precision(torch.bfloat16, f"auto on the CPU: bf16 autocast ({found})")
    return Precision(None, f"auto on the CPU: fp32, bf16 would be emulated ({found})")
