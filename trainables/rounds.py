"""Budgets in steps: ``eval_every``, the reporting round of a trial measured in optimizer steps or
examples instead of epochs (issue 24). Pure arithmetic, no torch.

``eval_every`` is written ``N`` or ``N steps`` (N optimizer steps) or ``Nex`` / ``N examples``
(N training examples, turned into ``ceil(N / batch_size)`` steps with the trial's own batch size,
so trials of different batch sizes evaluate after about the same amount of data). ``0`` or null:
one round per epoch, as without it. A round trains the next N steps, across epoch boundaries; the
learning-rate schedule still spans ``epochs`` whole epochs, and the last round ends with the last
epoch, so it may be shorter: a run of ``epochs * steps_per_epoch`` steps has
``ceil(epochs * steps_per_epoch / N)`` rounds (``round_count``).

Global step ``g`` (0-based, counting every batch of the epochs' orders, a data-parallel worker's
left-out batches included) lies in epoch ``g // steps_per_epoch + 1`` at batch
``g % steps_per_epoch`` of that epoch's order (``position``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from trainables.errors import ConfigError

_SPEC = re.compile(r"^\s*(\d[\d_]*)\s*(steps?|examples?|ex)?\s*$", re.IGNORECASE)
SYNTAX = "N or 'N steps' (optimizer steps), 'Nex' or 'N examples' (examples), 0 or null: per epoch"


@dataclass(frozen=True)
class EvalEvery:
    """A parsed ``eval_every``: ``count`` optimizer steps, or ``count`` examples when ``examples``."""

    count: int
    examples: bool = False

    def steps(self, batch_size: int) -> int:
        """Optimizer steps per round for a trial of ``batch_size`` (examples rounded up to whole steps)."""
        return math.ceil(self.count / batch_size) if self.examples else self.count

    def __str__(self) -> str:
        return f"{self.count}ex" if self.examples else str(self.count)


def parse_eval_every(value: Any, what: str = "`eval_every`") -> Optional[EvalEvery]:
    """``value`` (an int, or text as in the module docstring) as an ``EvalEvery``; None for 0 or
    None (per epoch). Raises ``ConfigError`` naming ``what``, the value and the syntax."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{what} must be {SYNTAX}, but got {value!r} ({type(value).__name__})")
    match = _SPEC.match(str(value))
    if not match:
        raise ConfigError(f"{what} must be {SYNTAX} (e.g. 500, 500 steps, 20000ex), but got {value!r}")
    count = int(match.group(1).replace("_", ""))
    if count == 0:
        return None
    if count > 10**12:
        raise ConfigError(f"{what} must be at most 10**12, but got {value!r}")
    return EvalEvery(count, examples=(match.group(2) or "s").lower().startswith("ex"))


def canonical_eval_every(value: Any, what: str = "`eval_every`") -> Optional[str]:
    """``value`` written the one way configs keep it: ``'500'`` (steps), ``'20000ex'``, or None."""
    parsed = parse_eval_every(value, what)
    return None if parsed is None else str(parsed)


def round_count(epochs: int, steps_per_epoch: int, steps_per_round: int) -> int:
    """Rounds in a run of ``epochs`` epochs: the last one ends with the last epoch."""
    return math.ceil(epochs * steps_per_epoch / steps_per_round)


def position(step: int, steps_per_epoch: int) -> tuple[int, int]:
    """(epoch, 1-based; batches of that epoch's order already trained) at global step ``step``."""
    return step // steps_per_epoch + 1, step % steps_per_epoch


def most_rounds(eval_every: Any, *, epochs: int, train_size: int, batch_sizes: Iterable[int]) -> int:
    """The most rounds a trial of any of ``batch_sizes`` runs on ``train_size`` examples
    (ASHA's ``max_t`` in round mode): in steps, the smallest batch has the most."""
    spec = parse_eval_every(eval_every)
    if spec is None:
        return epochs
    return max(round_count(epochs, math.ceil(train_size / b), spec.steps(b)) for b in set(batch_sizes))
