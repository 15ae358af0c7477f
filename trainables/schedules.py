"""Learning-rate schedules as pure functions of the optimizer step.

Each function returns the multiplier applied to a parameter group's base learning rate, so
one schedule serves every LLRD group. Bind the arguments with ``functools.partial`` (picklable,
unlike a lambda) and hand the result to ``torch.optim.lr_scheduler.LambdaLR``.
"""

from __future__ import annotations

import functools
import math

from trainables.hparams import choices_of

SCHEDULERS = choices_of("scheduler")  # declared in trainables.hparams


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """Number of warm-up steps: ``ceil(total_steps * warmup_ratio)`` (0 when the ratio is 0)."""
    return int(math.ceil(total_steps * warmup_ratio))


def lr_multiplier(
    step: int, *, kind: str, total_steps: int, warmup_steps: int, min_ratio: float = 0.0
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    - warm-up (all kinds): rises linearly to 1 over ``warmup_steps`` as
      ``(step + 1) / (warmup_steps + 1)``, so the very first step is not wasted at lr 0.
    - ``linear``: decays linearly from 1 to ``min_ratio`` at ``total_steps``.
    - ``cosine``: half-cosine annealing from 1 to ``min_ratio`` (Loshchilov & Hutter, SGDR, 2017,
      eq. 5 without restarts): ``min + (1 - min) * (1 + cos(pi * progress)) / 2``.
    - ``constant``: stays at 1 after warm-up.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if kind == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    if kind == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {kind!r}")


def make_schedule(
    kind: str, *, total_steps: int, warmup_ratio: float, min_ratio: float = 0.0
) -> functools.partial:
    """A picklable ``step -> multiplier`` function for ``LambdaLR``."""
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {kind!r}")
    return functools.partial(
        lr_multiplier,
        kind=kind,
        total_steps=total_steps,
        warmup_steps=warmup_steps_for(total_steps, warmup_ratio),
        min_ratio=min_ratio,
    )
