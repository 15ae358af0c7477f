"""Budgets in steps: ``eval_every``, the reporting round of a trial measured in optimizer steps or
examples instead of epochs (issue 24). The setting, and a trial's rounds as arithmetic on global
steps (``RoundPlan``); no torch.

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

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from trainables.encoding import steps_per_epoch
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


@dataclass
class RoundPlan:
    """The rounds of one trial: ``steps_per_round`` optimizer steps each, ``total_steps`` in the
    schedule's ``epochs`` epochs, training stops after ``last_round`` (``stop_epoch``, which
    counts rounds here, or the schedule's last). ``order`` is where training stands in the batch
    order of the epoch being trained, (epoch, its batches as an iterator, batches and examples
    taken from it): an epoch's order may be drawn lazily (a memory-mapped split's
    ``BlockBatches``), so it is read forward, never held whole; it is never saved: ``draw(epoch)``
    gives the same order again, and a resumed round skips what its checkpoint trained."""

    steps_per_epoch: int
    steps_per_round: int
    total_steps: int
    last_round: int
    order: tuple = (0, iter(()), 0, 0)

    def span(self, round_number: int) -> tuple[int, int]:
        """The global steps [start, end) that round ``round_number`` (1-based) trains."""
        start = (round_number - 1) * self.steps_per_round
        return start, min(start + self.steps_per_round, self.total_steps)

    def where(self, step: int) -> dict[str, int]:
        """Where global step ``step`` lies: its epoch and the batches of that epoch's order before
        it (what a checkpoint records as ``extra["position"]``)."""
        epoch, done = position(step, self.steps_per_epoch)
        return {"step": step, "epoch": epoch, "batches_done": done,
                "steps_per_epoch": self.steps_per_epoch, "steps_per_round": self.steps_per_round}

    def _take(self, epoch: int, done: int, count: int, draw: Callable[[int], Iterable]) -> list:
        """Batches ``done .. done + count`` of epoch ``epoch``'s order, read on from where the
        last call stopped (or from a fresh draw, skipping ``done``)."""
        if self.order[0] != epoch or self.order[2] != done:
            batches, seen = iter(draw(epoch)), 0
            for _ in range(done):
                seen += len(next(batches))
            self.order = (epoch, batches, done, seen)
        _, batches, taken, seen = self.order
        out = list(itertools.islice(batches, count))
        self.order = (epoch, batches, taken + len(out), seen + sum(len(b) for b in out))
        return out

    def batches(self, round_number: int, draw: Callable[[int], Iterable]) -> list:
        """The round's batches: those at its global steps, from each epoch's order in turn (a
        round that starts inside an epoch skips the batches of it already trained)."""
        start, end = self.span(round_number)
        batches: list = []
        while start + len(batches) < end:
            epoch, done = position(start + len(batches), self.steps_per_epoch)
            batches.extend(self._take(epoch, done, end - start - len(batches), draw))
        return batches

    def progress(self, round_number: int, train_size: int, draw: Callable[[int], Iterable]) -> dict:
        """What a round's report adds: ``step`` (global steps done), ``epoch_progress`` (epochs
        done, fractional), ``examples_seen`` and ``rounds`` (the round the run stops after)."""
        end = self.span(round_number)[1]
        epoch, done = position(end, self.steps_per_epoch)
        seen = (epoch - 1) * train_size
        if done:
            self._take(epoch, done, 0, draw)  # stands at `done` after the round, else redrawn
            seen += self.order[3]
        return {"step": end, "epoch_progress": end / self.steps_per_epoch, "examples_seen": seen,
                "rounds": self.last_round}

    def check_resumed(self, saved: Optional[dict], round_done: int, where: str) -> None:
        """A checkpoint's ``position`` must be where this plan ends round ``round_done``: the same
        batch size and ``eval_every`` as when it was written."""
        expected = self.where(self.span(round_done)[1])
        if saved != expected:
            raise ConfigError(
                f"checkpoint {where} stopped at {saved}, but round {round_done} of this trial ends "
                f"at {expected}: `batch_size` or `eval_every` changed since it was written; resume "
                f"it with the settings it started with")


def plan_rounds(cfg, train_size: int) -> Optional[RoundPlan]:
    """The rounds of a trial of config ``cfg`` on ``train_size`` examples (None: per epoch).
    ``stop_epoch`` counts rounds then; more than the schedule has is refused."""
    spec = parse_eval_every(getattr(cfg, "eval_every", None))
    if spec is None:
        return None
    per_epoch = steps_per_epoch(train_size, cfg.batch_size)
    per_round = spec.steps(cfg.batch_size)
    rounds = round_count(cfg.epochs, per_epoch, per_round)
    if cfg.stop_epoch is not None and cfg.stop_epoch > rounds:
        raise ConfigError(
            f"`stop_epoch` ({cfg.stop_epoch}) counts rounds with `eval_every` ({cfg.eval_every!r}), "
            f"and this run has {rounds} (ceil({cfg.epochs} epochs * {per_epoch} steps / {per_round} "
            f"steps per round)); set stop_epoch to at most {rounds}, or leave it unset")
    return RoundPlan(per_epoch, per_round, cfg.epochs * per_epoch, cfg.stop_epoch or rounds)


def check_sweep_setting(eval_every: Any, *, trainable: str, population_based: bool,
                        mutate: Iterable[str]) -> Optional[str]:
    """A sweep's ``eval_every`` (--eval-every) in its written form, refused where it cannot work:
    trainables other than fine-tuning, and a population-based sweep that mutates the batch size
    (a clone resumes at a batch of its donor's batch order, which another batch size lacks)."""
    value = canonical_eval_every(eval_every, "`eval_every` (--eval-every)")
    if value is not None and trainable != "finetune":
        raise ConfigError(f"`eval_every` (--eval-every {value}) works with --trainable finetune "
                          f"only, but got {trainable!r}: contrastive and multitask trials evaluate "
                          f"per epoch. Leave --eval-every out for them.")
    if value is not None and population_based and "batch_size" in mutate:
        raise ConfigError(f"population based training cannot mutate `batch_size` with --eval-every "
                          f"{value}: a clone resumes mid-epoch at a batch of its donor's batch "
                          f"order, which another batch size does not have; leave batch_size out of "
                          f"--mutate")
    return value
