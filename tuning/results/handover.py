"""Which model a final selection hands over, chosen on validation only, among its candidates:
the chosen config's best seed model, the ensemble of its seed models, a cross-config ensemble
(the best seed model of each top config) and a student distilled from the better ensemble.

Every candidate is scored on validation by the same evaluation, on its saved folder, and timed
(batch-1 CPU latency, ``trainables.deploy.latency_ms``) and weighed (bytes on disk). The rule
(``pick``):

- ``prefer="accuracy"`` (default): the most accurate. The best seed model's own score is the
  maximum of several noisy draws, so it is no fair bar: a single model of the config counts with
  the seed models' mean, and another candidate wins over it unless it scores below that mean
  (``ensemble_wins``); among those that win, the best score (ties: the faster).
- ``prefer="latency"``: the fastest candidate whose fair score lies within ``within`` points
  (hundredths of the metric: 0.3 = 0.3 accuracy points) of the most accurate one's.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from trainables.errors import ConfigError
from tuning.results.candidates import better
from tuning.results.selection_result import fmt


# how a refusal names a model folder inside --output-dir (``tuning.results.outputs``)
IN_OUTPUT_DIR = "in --output-dir, the folder"
PREFER = ("accuracy", "latency")


def ensemble_wins(ensemble_score: float, member_scores: Sequence[float], mode: str) -> bool:
    """Whether a candidate is handed over rather than the best seed model: unless it scores below
    the seed models' mean (``mode`` max) or above it (min). A non-finite score never wins."""
    if not math.isfinite(ensemble_score):
        return False
    finite = [s for s in member_scores if math.isfinite(s)]
    if not finite:
        return True
    return not better(statistics.fmean(finite), ensemble_score, mode)


def check_rule(prefer: str, within: float) -> None:
    if prefer not in PREFER:
        raise ConfigError(f"`prefer` must be one of {', '.join(PREFER)}, but got {prefer!r}")
    if not (math.isfinite(within) and within >= 0):
        raise ConfigError(f"`within` (points below the most accurate candidate that the fastest "
                          f"may score) must be a number >= 0, but got {within!r}")


def check_distillation(temperature: float, alpha: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"`distill_temperature` must be a number > 0, but got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"`distill_alpha` (the weight of the teacher's term) must lie in [0, 1], "
                          f"but got {alpha!r}")


@dataclass(frozen=True)
class HandoverRule:
    """Which candidates a selection builds besides the best seed model (and, with ``ensemble``,
    the seed ensemble), and how it picks one."""

    cross: bool = False          # the cross-config ensemble (needs top_k >= 2)
    distill: bool = False        # the student distilled from the better ensemble
    temperature: float = 2.0     # distillation temperature
    alpha: float = 0.5           # weight of the teacher's term
    prefer: str = "accuracy"     # or "latency"
    within: float = 0.3          # with "latency": points below the most accurate
    student_layers: int = 0      # the student keeps the encoder's bottom k layers (0: the chosen config's)
    keep: bool = False           # keep every candidate's folder in --output-dir/candidates/<kind>

    def __post_init__(self) -> None:
        check_rule(self.prefer, self.within)
        check_distillation(self.temperature, self.alpha)
        if isinstance(self.student_layers, bool) or not isinstance(self.student_layers, int) \
                or self.student_layers < 0:
            raise ConfigError(f"`student_layers` (--student-layers) must be an integer >= 0 (0: the "
                              f"chosen config's encoder), but got {self.student_layers!r}")


@dataclass(frozen=True)
class Option:
    """One hand-over candidate, scored on validation."""

    kind: str              # single, ensemble, cross or student
    label: str             # what the summary calls it
    folder: str
    val: float             # its own validation score
    fair: float            # the score the rule compares (a single model: the seed models' mean)
    members: int
    latency_ms: float = math.nan   # batch-1 CPU latency, median
    size_mb: float = math.nan      # bytes on disk / 1e6
    handed_over: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def pick(options: Sequence[Option], seed_scores: Sequence[float], *, mode: str,
         prefer: str = "accuracy", within: float = 0.3) -> Option:
    """The option to hand over (``options[0]`` is the best seed model), by the module's rule."""
    check_rule(prefer, within)
    single, others = options[0], list(options[1:])
    winners = [o for o in others if ensemble_wins(o.val, seed_scores, mode)]
    accurate = single
    for option in winners:
        if accurate is single or better(option.val, accurate.val, mode) or (
                round(option.val, 12) == round(accurate.val, 12)
                and option.latency_ms < accurate.latency_ms):
            accurate = option
    if prefer == "accuracy":
        return accurate
    sign = 1.0 if mode == "max" else -1.0
    bar = accurate.fair - sign * within / 100.0
    close = [o for o in options if math.isfinite(o.fair) and sign * (o.fair - bar) >= -1e-12]
    timed = [o for o in close if math.isfinite(o.latency_ms)]
    return min(timed, key=lambda o: o.latency_ms) if timed else accurate


@dataclass(frozen=True)
class Handover:
    kind: str                       # the handed-over option's kind
    folder: str                     # the handed-over model's folder (in the work folder)
    seed: int                       # the best seed model's seed
    single_val: float
    ensemble_val: Optional[float]   # the seed ensemble's, when one was built
    members: int
    options: tuple[Option, ...] = ()
    prefer: str = "accuracy"
    within: float = 0.3

    def rule_text(self) -> str:
        if self.prefer == "latency":
            return f"fastest within {self.within:g} points of the most accurate"
        return "most accurate"

    def describe(self, metric: str) -> str:
        if len(self.options) <= 1:
            return f"the best seed model (seed {self.seed}) {metric} {fmt(self.single_val)}"
        chosen = next(o for o in self.options if o.handed_over)
        rest = "; ".join(f"{o.label} {fmt(o.val)}" for o in self.options if not o.handed_over)
        return f"the {chosen.kind} ({chosen.label} {metric} {fmt(chosen.val)}; {rest})"
