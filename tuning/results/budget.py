"""The time budget of ``tunebert tune``, split between its phases: pure functions of measured
seconds (how the split is reasoned is in ``tuning.results.pipeline``'s docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from trainables.errors import ConfigError
from tuning.results.jobs import threads_per_worker


@dataclass(frozen=True)
class SelectionPlan:
    top_k: int
    seeds: int
    seconds: float   # planned length of the selection phase
    fits: bool       # False: even one training does not fit the time given (it runs anyway)


@dataclass(frozen=True)
class BudgetSplit:
    budget_s: float
    sweep_s: float
    select_s: float
    selection: SelectionPlan
    basis: str       # "measured speed" or "fixed share"


# a distilled student: one more training of the chosen config, after the others, plus the
# teacher's pass over train (an ensemble of 3 forward passes over train once, against ~4 epochs
# of forward and backward passes: about a quarter of a training)
STUDENT_TRAININGS = 1.25


def selection_seconds(top_k: int, seeds: int, workers: int, training_s: Sequence[float],
                      eval_s: float, student: bool = False) -> float:
    """ceil(top_k·seeds / workers) waves, each as long as the slowest of the top_k configs'
    trainings, plus ``eval_s`` for evaluating the chosen models, plus with ``student`` the
    distilled student (``STUDENT_TRAININGS`` of the best config's training) when there is an
    ensemble to learn from (two models at least)."""
    waves = math.ceil(top_k * seeds / workers) * max(training_s[:top_k]) + eval_s
    if student and top_k * seeds >= 2:
        waves += STUDENT_TRAININGS * training_s[0]
    return waves


def shrink_steps(top_k: int, seeds: int) -> list[tuple[int, int]]:
    """(top_k, seeds), then one step smaller at a time down to (1, 1): the larger of the two
    shrinks first, top_k on a tie. (3, 3) → (2, 3) → (2, 2) → (1, 2) → (1, 1)."""
    steps = [(top_k, seeds)]
    while steps[-1] != (1, 1):
        k, s = steps[-1]
        steps.append((k - 1, s) if k >= s and k > 1 else (k, s - 1))
    return steps


def fit_selection(available_s: float, training_s: Sequence[float], eval_s: float, top_k: int,
                  seeds: int, workers: int = 1, student: bool = False) -> SelectionPlan:
    """The largest selection along ``shrink_steps`` that fits in ``available_s``.

    ``training_s[r]``: seconds to train the rank-(r+1) config once, best first; there may be
    fewer ranks than ``top_k`` (a sweep that finished fewer trials). When even (1, 1) does not
    fit, the plan is (1, 1) with ``fits=False``: one training always runs.
    """
    if not training_s:
        raise ValueError("fit_selection needs the training time of at least one config")
    for k, s in shrink_steps(min(top_k, len(training_s)), seeds):
        seconds = selection_seconds(k, s, workers, training_s, eval_s, student)
        if seconds <= available_s:
            return SelectionPlan(k, s, seconds, True)
    return SelectionPlan(1, 1, selection_seconds(1, 1, workers, training_s, eval_s), False)


def split_budget(budget_s: float, training_s: Optional[float], eval_s: float, top_k: int,
                 seeds: int, workers: int = 1, *, trial_s: Optional[float] = None,
                 max_select_share: float = 0.5, fallback_select_share: float = 0.35,
                 student: bool = False) -> BudgetSplit:
    """Before the sweep: the selection's reserve and the sweep's share of ``budget_s``.

    ``training_s``: the estimated seconds of one selection training (None: not measurable here,
    then the reserve is ``fallback_select_share`` of the budget). ``trial_s``: the longest sweep
    trial (default ``training_s``). The selection gets ``selection_s(top_k, seeds)``, shrunk until
    it fits ``max_select_share`` of the budget; the sweep gets the rest, which must hold one
    trial, else ``ConfigError``.
    """
    if training_s is None:
        select_s = fallback_select_share * budget_s
        return BudgetSplit(budget_s, budget_s - select_s, select_s,
                           SelectionPlan(top_k, seeds, select_s, True), "fixed share")
    trial_s = training_s if trial_s is None else trial_s
    plan = fit_selection(max_select_share * budget_s, [training_s] * top_k, eval_s, top_k, seeds,
                         workers, student)
    sweep_s = budget_s - plan.seconds
    if sweep_s < trial_s:
        need = trial_s + selection_seconds(1, 1, 1, [training_s], eval_s)
        raise ConfigError(
            f"--time-budget {clock(budget_s)} is too small: at the measured speed one sweep trial "
            f"takes about {clock(trial_s)} and the final selection needs at least "
            f"{clock(plan.seconds)} (one training and its evaluation), so the budget must be at "
            f"least {clock(need)}. Raise --time-budget, or lower --epochs or --max-length.")
    return BudgetSplit(budget_s, sweep_s, plan.seconds, plan, "measured speed")


def selection_speedup(cpus_per_trial: float, gpus_per_trial: float, select_workers: int,
                      address: Optional[str] = None) -> float:
    """How many times faster one selection training runs than one sweep trial of the same config.

    On CPU in embedded mode a sweep trial trains on ``cpus_per_trial`` threads beside the other
    trials, while a selection training gets ``cpu_count // select_workers`` threads
    (``tuning.results.jobs.threads_per_worker``): the ratio of the two. Training speed grows a little
    less than linearly with threads, so a plan made with it errs long. Measured on MASSIVE
    (2 cores): sweep trials at 1 thread took 1m26s per epoch, the selection's trainings 34 s;
    without this factor the 2-hour plan left 22 of its 30 selection minutes unused. 1.0 on GPUs
    and on a cluster, whose machines this one cannot see."""
    if gpus_per_trial > 0 or address not in (None, "", "local"):
        return 1.0
    return max(1.0, threads_per_worker(select_workers) / max(1, int(cpus_per_trial)))


def clock(seconds: float) -> str:
    """600 -> '10m00s', 7200 -> '2h00m', 42.4 -> '42s'."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
