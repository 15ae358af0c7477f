"""The final selection's candidates and how they are ranked: one of a sweep's top configs with its
scores over fresh seeds (``Candidate``), the seeds it gets, and the one order every choice uses
(best mean, then lower std, then better sweep rank)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from trainables.errors import UserError


# the first seed offset a selection trains: offset 0 would repeat the sweep trial's own run
FIRST_SEED_OFFSET = 1


def selection_seeds(config: dict[str, Any], seeds: int) -> tuple[int, ...]:
    """The seeds a selection trains ``config`` with: its own seed + 1..``seeds``."""
    base = int(config.get("seed", 0))
    return tuple(base + FIRST_SEED_OFFSET + j for j in range(seeds))


def seed_offsets(seeds: int) -> str:
    return f"{FIRST_SEED_OFFSET}..{FIRST_SEED_OFFSET + seeds - 1}"


@dataclass(frozen=True)
class Candidate:
    """One of the sweep's top-k configs and its re-training over seeds."""

    rank: int                 # 1-based rank in the sweep's top-k
    trial_id: str
    trial_run_id: str
    sweep_score: float        # the trial's metric in the sweep
    config: dict[str, Any]    # the trial's config (each seed run replaces ``seed``)
    seeds: tuple[int, ...]
    scores: tuple[float, ...]  # the metric of each seed's run at its last epoch; NaN if diverged
    run_ids: tuple[str, ...]   # "" for a seed whose run could not be identified
    mean: float
    std: float
    chosen: bool = False

    @property
    def diverged(self) -> bool:
        return not all(math.isfinite(s) for s in self.scores)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); std is 0 for one value, both NaN if any value is."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    if not all(math.isfinite(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _choice_key(candidate: Candidate, mode: str) -> tuple[float, float, int]:
    # means of the same numbers in another order can differ in the last bits: compare rounded
    mean = round(candidate.mean, 12)
    return (-mean if mode == "max" else mean, round(candidate.std, 12), candidate.rank)


def choose(candidates: Sequence[Candidate], mode: str = "max") -> Candidate:
    """The best mean (highest for ``mode='max'``); ties: lower std, then better rank. Candidates
    whose mean is not finite (a seed diverged) cannot be chosen."""
    eligible = [c for c in candidates if math.isfinite(c.mean)]
    if not eligible:
        raise SelectionError(
            f"none of the {len(candidates)} candidate(s) trained to a finite validation score on "
            f"every seed, so there is nothing to choose; check the configs (their runs ended FAILED)")
    return min(eligible, key=lambda c: _choice_key(c, mode))


class SelectionError(UserError):
    """Final selection cannot go ahead as asked."""


def better(a: float, b: float, mode: str) -> bool:
    """``a`` strictly better than ``b`` (higher for ``mode='max'``), ignoring the last bits (as
    ``choose`` does); a NaN is never better."""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    a, b = round(a, 12), round(b, 12)
    return a > b if mode == "max" else a < b


def best_seed(seeds: Sequence[int], scores: Sequence[float], mode: str) -> tuple[int, float]:
    """(seed, score) of the best score; ties go to the earlier seed."""
    index = 0
    for i in range(1, len(scores)):
        if better(scores[i], scores[index], mode):
            index = i
    return seeds[index], scores[index]


def candidate_metrics(c: Candidate, metric: str) -> dict[str, float]:
    out = {f"rank{c.rank}_{metric}_seed{s}": v for s, v in zip(c.seeds, c.scores)}
    out.update({f"rank{c.rank}_{metric}_mean": c.mean, f"rank{c.rank}_{metric}_std": c.std,
                f"rank{c.rank}_sweep_{metric}": c.sweep_score})
    return out
