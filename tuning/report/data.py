"""What ``tunebert report`` reads about a sweep from MLflow: its trials, its saved search space,
its best trial and the learning curves of its top trials.

Everything goes through ``tuning.tracking`` (the one module that imports mlflow), loaded on first
use so that building the CLI parser stays fast.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional

import tuning.tracking as tracking
from trainables.hparams import HPARAMS
from tuning.tracking.best import score_key, top_k

METRIC = "val_accuracy"  # what a trial is scored by when the sweep names nothing else
TOP_CURVES = 5
# The per-epoch metrics of a multitask trial, one curve panel each (those its data reports):
# intent accuracy, slot F1, then sentence accuracy (joint data) or, only where there is none
# (two datasets), the task mean.
TASK_CURVES = ("val_intent_accuracy", "val_slot_f1", "val_sentence_accuracy")
TWO_DATASET_CURVE = "val_task_mean"
MULTITASK = "multitask"
# Parameters searched on a log scale in the default spaces (a sweep's search_space.yaml may add more).
LOG_PARAMS = frozenset({"lr", "contrastive_lr", "temperature", "head_lr_multiplier", "joint_lambda"})
# Config keys that are provenance, not hyperparameters.
NOT_HYPERPARAMETERS = frozenset({"preset"})
# How tracking's end-reason tag starts for a FINISHED trial that did not run all its epochs.
STOPPED_EARLY = "stopped early"


def _tracking():
    """``tuning.tracking``, through one function the tests can stub."""
    return tracking


@dataclass(frozen=True)
class TrialRecord:
    """One trial's MLflow run, as the report needs it."""

    run_id: str
    trial_id: str
    status: str  # FINISHED | FAILED | KILLED | RUNNING
    end_reason: str  # "completed", "stopped early (...)", "error", ...
    config: dict[str, Any]
    metrics: dict[str, float]  # last value of each metric
    start_ms: int
    end_ms: Optional[int]
    preset: Optional[str] = None
    error: Optional[str] = None
    # the sweep's sampling conditions (``search_conditions`` of its saved search space)
    search_when: Mapping[str, Mapping[str, tuple]] = field(default_factory=dict)
    metric: str = METRIC  # the sweep's (first) objective, which ``value`` reads

    @functools.cached_property  # read once per parameter when the report builds its study
    def inactive(self) -> dict[str, str]:
        """The config keys this trial did not use, and why: ``{"head_hidden": "not used:
        head=linear"}`` (see ``inactive_params``)."""
        return inactive_params(self.config, self.search_when)

    @property
    def value(self) -> float:
        """The trial's score: the sweep's metric at its best epoch where the trial reported that
        (else its last value; NaN when it never reported one)."""
        return float(self.metrics.get(score_key(self.metric, self.metrics), math.nan))

    @property
    def scored(self) -> bool:
        """A finished trial with a finite metric: the only kind that can be best."""
        return self.status == "FINISHED" and math.isfinite(self.value)

    @property
    def stopped_early(self) -> bool:
        """Finished before its last epoch (ASHA, or the sweep's time budget)."""
        return self.status == "FINISHED" and self.end_reason.startswith(STOPPED_EARLY)

    @property
    def label(self) -> str:
        return f"{self.trial_id} ({self.preset})" if self.preset else self.trial_id


def load_trials(uri: str, sweep: str, metric: str = METRIC) -> list[TrialRecord]:
    """Every trial run of ``sweep``, in start order, scored by ``metric`` (the sweep's first
    objective). Raises TrackingError for an unknown sweep."""
    tracking = _tracking()
    records = []
    for run in tracking.trial_runs(uri, sweep):
        tags = run.data.tags
        records.append(TrialRecord(
            run_id=run.info.run_id, trial_id=tags.get(tracking.TRIAL_ID, run.info.run_id[:8]),
            status=run.info.status, end_reason=tags.get(tracking.END_REASON, ""),
            config=json.loads(tags.get(tracking.CONFIG, "{}")), metrics=dict(run.data.metrics),
            start_ms=int(run.info.start_time or 0), end_ms=run.info.end_time,
            preset=tags.get("tunebert.preset"), error=tags.get(tracking.ERROR), metric=metric))
    return sorted(records, key=lambda r: (r.start_ms, r.trial_id))


def pick_best(trials: list[TrialRecord], sweep: str, uri: str, storage: str) -> Optional[TrialRecord]:
    """The report's best trial: the one `tunebert best` returns (the one ranking function, so the
    two never disagree: stage-1 contrastive trials excluded, best epoch, same tie-break)."""

    leader = top_k(sweep, 1, tracking_uri=uri, storage=storage)  # the sweep's own objectives
    return next((t for t in trials if leader and t.trial_id == leader[0].trial_id), None)


# --------------------------------------------------------------------------- the used parameters


def search_conditions(space: dict) -> dict[str, dict[str, tuple]]:
    """The ``when`` of each parameter of a saved ``search_space.yaml`` (``SearchSpace.describe``):
    the searcher sampled it only in trials where that held."""
    conditions = {}
    for name, spec in space.items():
        when = spec.get("when") if isinstance(spec, dict) else None
        if isinstance(when, dict) and when:
            conditions[name] = {key: tuple(allowed) if isinstance(allowed, (list, tuple)) else (allowed,)
                                for key, allowed in when.items()}
    return conditions


def with_search_conditions(trials: list[TrialRecord], space: dict) -> list[TrialRecord]:
    """``trials`` knowing the sweep's sampling conditions (from its saved search space)."""
    conditions = search_conditions(space)
    return [replace(t, search_when=conditions) for t in trials]


def inactive_params(config: Mapping[str, Any],
                    search_when: Optional[Mapping[str, Mapping[str, tuple]]] = None) -> dict[str, str]:
    """The keys of ``config`` its trial did not use -> why ("not used: head=linear").

    A trial's config holds every parameter, the ones its branch of the define-by-run space never
    sampled too (the trainable fills in their defaults). The conditions are the registry's
    ``HParam.when`` (the trainable reads ``momentum`` only with sgd, ``head_hidden`` only with an
    mlp head) and, from ``search_when``, the sweep's own (a parameter its search space samples
    only on one branch took its default on the others: "not searched"). A parameter whose
    condition names an unused parameter is unused too.
    """
    search_when = search_when or {}

    def why(name: str, seen: tuple[str, ...]) -> Optional[str]:
        registry = HPARAMS[name].when if name in HPARAMS else {}
        for verb, when in (("not used", registry), ("not searched", search_when.get(name, {}))):
            for key, allowed in when.items():
                if key in seen or key not in config:  # a cycle, or a config without the key
                    return f"{verb}: no {key}"
                upstream = why(key, (*seen, name))
                if upstream or config[key] not in allowed:
                    return upstream or f"{verb}: {key}={config[key]}"
        return None

    return {name: reason for name in config if (reason := why(name, ())) is not None}


# --------------------------------------------------------------------------- the varying parameters


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def varying_params(trials: list[TrialRecord]) -> dict[str, str]:
    """Parameters whose value differs between the trials that used them: name -> "numeric" or
    "categorical" (a trial's value of a parameter it did not use, ``TrialRecord.inactive``, is a
    default that says nothing about the parameter).

    Only keys every trial's config has count (in a mixed sweep, family-specific parameters are
    left out: their absence would only repeat what ``trainable`` says).
    """
    if not trials:
        return {}
    shared = set.intersection(*(set(t.config) for t in trials)) - NOT_HYPERPARAMETERS
    kinds = {}
    for name in sorted(shared):
        values = used_values(trials, name)
        if any(isinstance(v, (list, dict)) for v in values):
            continue
        if len({json.dumps(v, sort_keys=True) for v in values}) < 2:
            continue
        kinds[name] = "numeric" if all(_is_number(v) for v in values) else "categorical"
    return kinds


def used_values(trials: list[TrialRecord], name: str) -> list[Any]:
    """The values of ``name`` in the trials that used it, in order."""
    return [t.config[name] for t in trials if name not in t.inactive]


def log_scaled(kinds: dict[str, str], trials: list[TrialRecord], space: dict) -> set[str]:
    """Numeric parameters to show and model on a log scale: the usual ones and any the sweep's
    search space marks ``log: true``, as long as every value used is positive."""
    marked = {name for name, spec in space.items() if isinstance(spec, dict) and spec.get("log")}
    return {name for name, kind in kinds.items()
            if kind == "numeric" and (name in LOG_PARAMS or name in marked)
            and all(v > 0 for v in used_values(trials, name))}


def categorical_choices(trials: list[TrialRecord], name: str) -> list[str]:
    """The values ``name`` took in the trials that used it, as strings, shortest first."""
    return sorted({str(v) for v in used_values(trials, name)}, key=lambda s: (len(s), s))


def saved_search_space(uri: str, parent_run_id: Optional[str], sweep_dir: Path) -> dict:
    """The sweep's ``search_space.yaml`` (from the parent run, else the local sweep folder)."""
    import yaml

    tracking = _tracking()
    text = None
    if parent_run_id and "search_space.yaml" in tracking.artifact_paths(uri, parent_run_id):
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(tracking.download_artifacts(uri, parent_run_id, "search_space.yaml", tmp)).read_text()
    elif (sweep_dir / "search_space.yaml").is_file():
        text = (sweep_dir / "search_space.yaml").read_text()
    loaded = yaml.safe_load(text) if text else None
    return loaded if isinstance(loaded, dict) else {}


# --------------------------------------------------------------------------- time and curves


def wall_time(parent, trials: list[TrialRecord]) -> Optional[float]:
    """Seconds the sweep ran: the parent run's ``wall_time_s``, else first start to last end."""
    if parent is not None and "wall_time_s" in parent.data.metrics:
        return float(parent.data.metrics["wall_time_s"])
    ends = [t.end_ms for t in trials if t.end_ms]
    return (max(ends) - min(t.start_ms for t in trials)) / 1000 if ends else None


def is_multitask(trials: list[TrialRecord]) -> bool:
    """Whether the sweep trains multitask models (a sweep on joint data trains nothing else)."""
    return any(t.config.get("trainable") == MULTITASK for t in trials)


def curve_metrics(trials: list[TrialRecord]) -> tuple[str, ...]:
    """The per-epoch metrics the learning curves show, one panel each: the sweep's metric and
    val_loss (val_accuracy beside a sweep ranked by val_loss); for a multitask sweep, each
    task's score that its trials report (after the sweep's metric when that is none of them),
    then val_loss."""
    metric = trials[0].metric if trials else METRIC
    if is_multitask(trials):
        reported = {key for t in trials for key in t.metrics}
        tasks = [key for key in TASK_CURVES if key in reported]
        if "val_sentence_accuracy" not in reported and TWO_DATASET_CURVE in reported:
            tasks.append(TWO_DATASET_CURVE)
        ranked = [] if metric in tasks or metric == "val_loss" else [metric]  # e.g. --metric val_macro_f1
        return (*ranked, *tasks, "val_loss")
    return (metric, "val_loss") if metric != "val_loss" else ("val_loss", "val_accuracy")


def top_curves(uri: str, trials: list[TrialRecord], sweep: str, storage: str,
               k: int = TOP_CURVES, keys: Optional[tuple[str, ...]] = None
               ) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per-epoch ``keys`` (default: ``curve_metrics(trials)``) of the sweep's ``k`` best trials,
    best first, as `tunebert best --top k` ranks them (``tuning.tracking.best.top_k``, the one
    ranking function: the sweep's own objectives and constraints, no stage-1 contrastive trial):
    ``"<label> (<score>)" -> {metric: [(epoch, value), ...]}``."""

    tracking = _tracking()
    by_id = {t.trial_id: t for t in trials}
    top = [by_id[r.trial_id] for r in top_k(sweep, k, tracking_uri=uri, storage=storage)
           if r.trial_id in by_id]
    keys = keys or curve_metrics(trials)
    return {f"{t.label} ({t.value:.3f})": {key: tracking.metric_history(uri, t.run_id, key)
                                           for key in keys}
            for t in top}
