"""Per-step learning-rate schedules with linear warmup, as LambdaLR factors."""

import math
from typing import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupThen:
    """lr factor at `step`: linear warmup from `warmup_factor` over `warmup_steps`, then `kind`:
    'multistep' (times gamma at each milestone, given as fractions of total_steps) or 'cosine' (down to
    min_factor at total_steps). A plain object so that LambdaLR checkpoints its settings."""

    def __init__(self, *, kind: str, total_steps: int, warmup_steps: int, warmup_factor: float,
                 milestones: Sequence[float] = (), gamma: float = 0.1, min_factor: float = 0.0):
        if kind not in ("multistep", "cosine"):
            raise ValueError(f"unknown schedule {kind!r}; choose 'multistep' or 'cosine'")
        self.kind = kind
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = min(int(warmup_steps), self.total_steps)
        self.warmup_factor = float(warmup_factor)
        self.milestone_steps = tuple(round(m * self.total_steps) for m in milestones)
        self.gamma = float(gamma)
        self.min_factor = float(min_factor)

    def __call__(self, step: int) -> float:
        warmup = 1.0
        if step < self.warmup_steps:
            warmup = self.warmup_factor + (1 - self.warmup_factor) * step / self.warmup_steps
        if self.kind == "multistep":
            return warmup * self.gamma ** sum(step >= m for m in self.milestone_steps)
        progress = min(1.0, step / self.total_steps)
        return warmup * (self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress)))


def warmup_multistep(optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 500,
                     warmup_factor: float = 1e-3, milestones: Sequence[float] = (2 / 3, 8 / 9),
                     gamma: float = 0.1) -> LambdaLR:
    """Warmup, then the lr times gamma at each milestone (fractions of total_steps; SSD: 80k/120k and 100k/120k)."""
    return LambdaLR(optimizer, WarmupThen(kind="multistep", total_steps=total_steps, warmup_steps=warmup_steps,
                                          warmup_factor=warmup_factor, milestones=milestones, gamma=gamma))


def warmup_cosine(optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 500,
                  warmup_factor: float = 1e-3, min_factor: float = 0.0) -> LambdaLR:
    """Warmup, then cosine decay to min_factor times the base lr at total_steps."""
    return LambdaLR(optimizer, WarmupThen(kind="cosine", total_steps=total_steps, warmup_steps=warmup_steps,
                                          warmup_factor=warmup_factor, min_factor=min_factor))
