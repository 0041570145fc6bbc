"""Learning-rate schedule: linear warm-up, then cosine decay to zero, stepped every optimizer step.

Side4Video (``Recognition/train_vision.py`` with ``_lr_scheduler`` of ``Recognition/utils/solver.py``,
github.com/HJYao00/Side4Video @ 5d72352) warms up linearly over ``warmup_epochs`` and anneals with a cosine to 0 at
``epochs``, updating the rate from a fractional epoch every 10th iteration; here the same curve is
evaluated at every optimizer step, which is smoother and makes resuming exact.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based).

    Rises linearly to 1 over the first ``warmup_steps`` steps (the first step already uses
    1/warmup_steps, so no step is wasted at rate 0), then follows a half cosine from 1 towards 0,
    reaching 0 at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: Optimizer, *, warmup_steps: int, total_steps: int) -> LambdaLR:
    """A LambdaLR over optimizer steps; its ``state_dict`` (the step counter) resumes exactly."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    factor = partial(
        warmup_cosine_factor, warmup_steps=min(warmup_steps, total_steps), total_steps=total_steps
    )
    return LambdaLR(optimizer, factor)
