"""Best configurations of a sweep, read from MLflow (works with no Ray and after the sweep exited).

Only trials whose run FINISHED with a classifier and whose metric is a finite number can be
best: failed, killed, still-running and NaN runs never are, nor contrastive trials stopped before
their classifier stage.

A trial is scored by its best validation epoch, not its last: trainables report ``best_epoch``
and ``best_val_*`` (the scores of the model the trial hands over) every epoch, and ranking reads
``best_<metric>`` (``score_key``). The config handed back records the epoch count that produced
the score as ``stop_epoch`` (the schedule still spans ``epochs``), so retraining it reproduces
that model. This is the one ranking function: ``best``, ``top_k``, ``report``, ``select`` and
``train --from-sweep`` all call it.

A sweep's ``Goal`` (its objectives and constraints, read back from its parent run) decides who
can rank: a trial that breaks a constraint, or never reported a constraint's or an objective's
metric (``val_accuracy_int8`` arrives at a trial's last epoch only, so a trial ASHA stopped early
has none; latency, size and memory arrive with every epoch), is infeasible: never best, never on the front. Trials rank lexicographically over the
objectives in order, so with several objectives the best trial is the point of the Pareto front
(``front``) that is best on the first objective (or on ``prefer``), ties going to the next.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import tuning.tracking as tracking
from trainables.errors import ConfigError
from trainables.registry import REPORTED_METRICS
from tuning.config import Constraint, DEFAULT_ROOT, Objective, SweepConfig, resolve_tracking_uri


@dataclass(frozen=True)
class TrialRun:
    """One finished trial as MLflow holds it."""

    run_id: str
    trial_id: str
    trainable: str
    config: dict[str, Any]
    metrics: dict[str, float]
    artifact_uri: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)

    def score(self, metric: str = "val_accuracy") -> float:
        """The trial's score: ``metric`` at its best validation epoch."""
        return self.metrics[score_key(metric, self.metrics)]

    @property
    def name(self) -> str:
        return self.tags.get("mlflow.runName", self.run_id)


def _uri(tracking_uri: Optional[str], storage: str) -> str:
    return resolve_tracking_uri(tracking_uri, Path(storage).expanduser().resolve())


def score_key(metric: str, metrics: dict) -> str:
    """The key a trial is ranked by: ``best_<metric>`` (its best epoch's) when it was reported."""
    return f"best_{metric}" if f"best_{metric}" in metrics else metric


def reproducing_config(config: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """``config`` with ``stop_epoch`` set to the classification-stage epoch that produced the
    trial's score, when that is not its last epoch."""
    best_epoch = metrics.get("best_epoch")
    if not best_epoch:
        return config
    stage1 = 0
    if config.get("trainable") == "contrastive" and config.get("mode", "two-stage") != "joint":
        stage1 = int(config.get("contrastive_epochs", 0))
    stop = int(best_epoch) - stage1
    epochs = int(config.get("epochs", 0))
    return {**config, "stop_epoch": stop if 1 <= stop < epochs else None}


def _to_trial(run) -> TrialRun:
    tags = run.data.tags
    # a Population Based Training clone trains on with its mutated config: that one is current
    current = tags.get(tracking.PBT_CONFIG) or tags.get(tracking.CONFIG, "{}")
    config = reproducing_config(json.loads(current), run.data.metrics)
    return TrialRun(run_id=run.info.run_id, trial_id=tags.get(tracking.TRIAL_ID, ""),
                    trainable=tags.get(tracking.TRAINABLE, config.get("trainable", "finetune")),
                    config=config, metrics=dict(run.data.metrics),
                    artifact_uri=run.info.artifact_uri, status=run.info.status, tags=dict(tags))


@dataclass(frozen=True)
class Goal:
    """What a sweep ranks by: its objectives (the first one ASHA's) and its constraints."""

    objectives: tuple[Objective, ...] = (Objective("val_accuracy", "max"),)
    constraints: tuple[Constraint, ...] = ()

    @classmethod
    def of(cls, cfg: SweepConfig) -> "Goal":
        return cls(cfg.objective_list, cfg.constraint_list)

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    def values(self, run: TrialRun) -> tuple[float, ...]:
        """The run's score on each objective (its best epoch's where reported); NaN if missing."""
        return tuple(float(run.metrics.get(score_key(m, run.metrics), math.nan)) for m in self.metrics)

    def feasible(self, metrics: dict) -> bool:
        return all(c.holds(metrics) for c in self.constraints)

    def preferring(self, metric: Optional[str]) -> "Goal":
        """This goal with ``metric``'s objective moved first (``best --prefer``)."""
        if metric is None:
            return self
        chosen = [o for o in self.objectives if o.metric == metric]
        if not chosen:
            raise ConfigError(f"`prefer` must be one of the sweep's objectives {self.metrics}, "
                              f"but got {metric!r}")
        return Goal(tuple(chosen + [o for o in self.objectives if o.metric != metric]), self.constraints)

    def wanted(self) -> str:
        """What a trial needs to rank, for messages."""
        text = "a finite " + " and ".join(repr(m) for m in self.metrics)
        return text + (f" that meets {', '.join(map(str, self.constraints))}" if self.constraints else "")

    def __str__(self) -> str:
        text = ", ".join(str(o) for o in self.objectives)
        return text + (f" subject to {', '.join(str(c) for c in self.constraints)}" if self.constraints else "")


def _param_list(text: Optional[str]) -> list[str]:
    """A list-valued sweep setting as the parent run logged it (``str`` of a list)."""
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def sweep_goal(sweep: str, *, tracking_uri: Optional[str] = None, storage: str = DEFAULT_ROOT) -> Goal:
    """The objectives and constraints ``sweep`` was started with, from its parent MLflow run's
    parameters (``SweepConfig.to_dict`` as logged); older sweeps: their ``metric``/``mode``."""
    parent = tracking.sweep_run(_uri(tracking_uri, storage), sweep)
    params = parent.data.params if parent is not None else {}
    metric, mode = params.get("metric", "val_accuracy"), params.get("mode", "max")
    objectives = _param_list(params.get("objectives")) or [f"{metric}:{mode}"]
    return Goal(tuple(Objective.parse(o) for o in objectives),
                tuple(Constraint.parse(c) for c in _param_list(params.get("constraints"))))


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one (Pareto dominance)."""
    better = False
    for x, y, mode in zip(a, b, modes):
        if (x < y) if mode == "max" else (x > y):
            return False
        better = better or x != y
    return better


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices, in input order, of the points no other point dominates.

    ``points``: n points of k objective values each; ``modes``: k of "max"/"min". Equal points do
    not dominate each other, so both stay. O(n^2 k): sweeps hold tens to hundreds of trials."""
    for mode in modes:
        if mode not in ("max", "min"):
            raise ConfigError(f"every mode must be 'max' or 'min', but got {list(modes)}")
    if any(len(p) != len(modes) for p in points):
        raise ConfigError(f"every point needs one value per mode ({len(modes)}), but got "
                          f"{[len(p) for p in points]}")
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, modes) for j, q in enumerate(points) if j != i)]


def rank(runs: list[TrialRun], goal: Goal) -> list[TrialRun]:
    """The runs that can rank under ``goal``, best first: lexicographic over its objectives.

    Only FINISHED runs with a classifier (a contrastive trial stopped in its first stage reported
    a k-NN proxy, not a classifier's accuracy), finite values on every objective, and every
    constraint met. Ties keep the order MLflow lists the runs in."""
    def eligible(run: TrialRun) -> bool:
        return (run.status == "FINISHED" and run.metrics.get("stage", 2) != 1
                and all(math.isfinite(v) for v in goal.values(run)) and goal.feasible(run.metrics))

    def key(run: TrialRun) -> tuple[float, ...]:
        return tuple(-v if mode == "max" else v for v, mode in zip(goal.values(run), goal.modes))

    return sorted(filter(eligible, runs), key=key)


def _sweep_runs(sweep: str, goal: Optional[Goal], tracking_uri: Optional[str],
                storage: str) -> tuple[list[TrialRun], Goal]:
    """The sweep's trial runs and its goal (``goal``, else the sweep's own); a metric no trial
    reported and no trial can report is refused (a typo)."""
    runs = [_to_trial(r) for r in tracking.trial_runs(_uri(tracking_uri, storage), sweep)]
    goal = goal or sweep_goal(sweep, tracking_uri=tracking_uri, storage=storage)
    known = sorted({m for r in runs for m in r.metrics})
    for metric in goal.metrics:
        if known and metric not in known and metric not in REPORTED_METRICS:
            raise ConfigError(f"no trial of sweep {sweep!r} reported metric {metric!r}; "
                              f"metrics there: {known}")
    return runs, goal


def top_k(sweep: str, k: int = 5, metric: Optional[str] = None, mode: Optional[str] = None, *,
          goal: Optional[Goal] = None, tracking_uri: Optional[str] = None,
          storage: str = DEFAULT_ROOT) -> list[TrialRun]:
    """The ``k`` best feasible finished trials of ``sweep``, best first (``rank``), each scored at
    its best validation epoch (``score_key``); ``TrialRun.config`` reproduces that epoch's model.

    ``goal``: objectives and constraints (default: the sweep's own, ``sweep_goal``). ``metric``
    ranks by that one metric instead of the objectives (``mode``: its direction, default the
    sweep's for it, else max); the constraints still apply."""
    if mode not in (None, "max", "min"):
        raise ConfigError(f"`mode` must be 'max' or 'min', but got {mode!r}")
    if k < 1:
        raise ConfigError(f"`k` must be >= 1, but got {k}")
    goal = goal or sweep_goal(sweep, tracking_uri=tracking_uri, storage=storage)
    if metric is not None:
        mode = mode or next((o.mode for o in goal.objectives if o.metric == metric), "max")
        goal = Goal((Objective(metric, mode),), goal.constraints)
    runs, goal = _sweep_runs(sweep, goal, tracking_uri, storage)
    return rank(runs, goal)[:k]


def front(sweep: str, *, goal: Optional[Goal] = None, tracking_uri: Optional[str] = None,
          storage: str = DEFAULT_ROOT) -> list[TrialRun]:
    """The Pareto front of ``sweep``: its feasible finished trials that no other such trial
    dominates on the objectives (``goal``, default the sweep's own), best on the first objective
    first. With one objective: the best trial (and any that tie with it)."""
    runs, goal = _sweep_runs(sweep, goal, tracking_uri, storage)
    ranked = rank(runs, goal)
    return [ranked[i] for i in pareto_front([goal.values(r) for r in ranked], goal.modes)]


def front_rows(runs: list[TrialRun], goal: Goal) -> list[dict[str, Any]]:
    """One plain dict per front point (``front``'s order): trial, objective values, the metrics of
    the constraints, best epoch, run id and config."""
    extra = [c.metric for c in goal.constraints if c.metric not in goal.metrics]
    return [{"point": i, "trial_id": r.trial_id,
             **{m: v for m, v in zip(goal.metrics, goal.values(r))},
             **{m: float(r.metrics[m]) for m in dict.fromkeys(extra)},
             "epoch": int(r.metrics.get("best_epoch", 0)) or None, "run_id": r.run_id,
             "config": r.config}
            for i, r in enumerate(runs, start=1)]


def best_run(sweep: str, metric: Optional[str] = None, mode: Optional[str] = None, *,
             prefer: Optional[str] = None, tracking_uri: Optional[str] = None,
             storage: str = DEFAULT_ROOT) -> TrialRun:
    """The best feasible finished trial: run id, metrics, config and artifact URI. With several
    objectives, the front's point best on the first objective, or on ``prefer`` (one of them)."""
    goal = sweep_goal(sweep, tracking_uri=tracking_uri, storage=storage).preferring(prefer)
    best = top_k(sweep, 1, metric, mode, goal=goal, tracking_uri=tracking_uri, storage=storage)
    if not best:
        ranked_by = Goal((Objective(metric, mode or "max"),), goal.constraints) if metric else goal
        raise ConfigError(f"sweep {sweep!r} has no finished trial with {ranked_by.wanted()} yet")
    return best[0]


def best_config(sweep: str, metric: Optional[str] = None, mode: Optional[str] = None, *,
                prefer: Optional[str] = None, tracking_uri: Optional[str] = None,
                storage: str = DEFAULT_ROOT) -> dict[str, Any]:
    """The best trial's full config as a plain dict (includes ``trainable``); train it with
    ``tunebert train --config`` or ``tuning.results.train.train_config``. With several objectives, the
    config of the front's point ``best_run`` picks."""
    return dict(best_run(sweep, metric, mode, prefer=prefer, tracking_uri=tracking_uri,
                         storage=storage).config)
