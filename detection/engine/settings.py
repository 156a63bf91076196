"""The training loop's plain settings as one typed object, checked when it is made.

This module imports nothing heavy (no torch), so an entry point can check a composed configuration
before it imports torch: a misspelt key or a nonsense value costs a second, not a model build.
"""

import difflib
from dataclasses import dataclass, fields
from typing import Any, Optional

AMP_NAMES = ("auto", "fp16", "bf16")  # besides true and false


class SettingsError(ValueError):
    """A setting with a value the loop cannot run with; the message names the key."""


def unknown_key(key: str, known) -> str:
    """'<key> is not a setting' with the closest of `known` suggested (`trainer.epochs` -> `trainer.max_epochs`):
    the line an unknown key is refused with. `known`: the keys beside it, named as `key`'s last part is."""
    parent, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    return f"{key} is not a setting: {hint}known: {', '.join(sorted(known))}"


def check_at_least(key: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    """Refuses `value` unless it is an integer >= `minimum` (or None, when `optional`), naming `key`."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if optional else "")
        raise SettingsError(f"{key}={value!r}: must be {allowed}")


@dataclass
class TrainerSettings:
    """What the loop needs besides the model, the data and the optimiser: the `trainer` config group's one
    option (`trainer=default`, registered from this class: its defaults are written here only)."""

    max_epochs: int = 12
    # the length in optimiser steps instead (a paper's iterations): the fewest whole epochs that hold them, the
    # learning-rate schedule spanning exactly these steps
    max_steps: Optional[int] = None
    batch_size: int = 8                          # per process (rank)
    num_workers: int = 2                         # loader processes (0: load in the training process)
    persistent_workers: bool = True              # keep them from epoch to epoch (items seeded by (seed, epoch, index))
    prefetch_factor: int = 2                     # batches each worker loads ahead
    device: str = "auto"                         # auto: CUDA when present, else the CPU; cpu, cuda, cuda:<index>
    # auto: fp16 + GradScaler on CUDA, bf16 on a CPU with native bf16 (AVX512_BF16/AMX), else fp32; true (fp16
    # on CUDA, bf16 elsewhere), false (fp32), fp16 or bf16 force one. Validation is fp32 whatever it says.
    amp: Any = "auto"
    grad_clip: Optional[float] = None            # max gradient norm (null: no clipping)
    log_every: int = 10                          # steps between train/* metrics
    max_nonfinite_in_row: int = 10               # non-finite losses in a row (each step skipped) that stop the run
    checkpoint_every: Optional[int] = None       # steps between mid-epoch checkpoints (epoch ends always checkpoint)
    keep_last: int = 1                           # step_<n>.pt files kept (last.pt and best.pt are links to them)
    best_model_only: bool = False                # best.pt without the training state: half the size, to share
    limit_train_images: Optional[int] = None     # train on the first N images only (debugging)
    limit_val_images: Optional[int] = None
    progress: bool = True                        # progress bars
    sync_batchnorm: bool = False                 # with several ranks: BatchNorm statistics over the global batch
    debug_images_every: Optional[int] = 500      # steps between debug images of a training batch (and each validation)
    channels_last: Any = "auto"                  # NHWC weights and activations: auto is true on CUDA, false on the CPU
    compile: bool = False                        # torch.compile the network; eager with a warning where it cannot
    cudnn_benchmark: bool = True                 # CUDA: cuDNN times its algorithms per input shape (SSD's is fixed)
    warn_data_wait: Optional[float] = 0.25       # warn (once) when the loop waits for data this share of the time
    confusion_score_threshold: float = 0.5       # the detections each validation's confusion matrix counts

    def __post_init__(self):
        for key, minimum in (("max_epochs", 1), ("batch_size", 1), ("num_workers", 0), ("log_every", 1),
                             ("max_nonfinite_in_row", 0), ("keep_last", 1), ("prefetch_factor", 1)):
            check_at_least(f"trainer.{key}", getattr(self, key), minimum)
        for key in ("max_steps", "checkpoint_every", "limit_train_images", "limit_val_images", "debug_images_every"):
            check_at_least(f"trainer.{key}", getattr(self, key), 1, optional=True)
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise SettingsError(f"trainer.grad_clip={self.grad_clip!r}: must be a positive max gradient norm "
                                f"or null (no clipping)")
        if not (isinstance(self.amp, bool) or self.amp in AMP_NAMES):
            raise SettingsError(f"trainer.amp={self.amp!r}: must be one of auto, true, false, fp16, bf16")
        if not (isinstance(self.channels_last, bool) or self.channels_last == "auto"):
            raise SettingsError(f"trainer.channels_last={self.channels_last!r}: must be auto (true on CUDA), true "
                                f"or false")
        if self.warn_data_wait is not None and not 0 < self.warn_data_wait < 1:
            raise SettingsError(f"trainer.warn_data_wait={self.warn_data_wait!r}: must be a fraction of the step "
                                f"time between 0 and 1, or null (never warn)")
        if not 0 <= self.confusion_score_threshold <= 1:
            raise SettingsError(f"trainer.confusion_score_threshold={self.confusion_score_threshold!r}: must be a "
                                f"score between 0 and 1")
        if not isinstance(self.device, str) or not self.device:
            raise SettingsError(f"trainer.device={self.device!r}: must be auto, cpu, cuda or cuda:<index>")

    def uses_channels_last(self, device_type: str) -> bool:
        return self.channels_last is True or (self.channels_last == "auto" and device_type == "cuda")

    @classmethod
    def from_mapping(cls, values: Any) -> "TrainerSettings":
        """From a mapping with exactly these keys (a composed `trainer` node); an unknown key is an error."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(unknown_key(f"trainer.{unknown[0]}", known))
        return cls(**dict(values))


def check_seed(seed: Any, key: str = "seed") -> int:
    """A seed (setting `key`): an integer in [0, 2**32), what NumPy and torch both accept."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise SettingsError(f"{key}={seed!r}: must be an integer in [0, 2**32)")
    return seed
