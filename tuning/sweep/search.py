"""Optuna glue: the define-by-run callable Ray's ``OptunaSearch`` calls, warm-start points, and
the searcher itself. The one place that knows how Optuna and Ray Tune meet."""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

from ray.tune.search.optuna import OptunaSearch

from search_spaces.space import Categorical, Fixed, SearchSpace, sample
from trainables.errors import ConfigError
from trainables.hparams import HPARAMS, default_of
import tuning.sweep.ray_internals as internals

log = logging.getLogger(__name__)


class SpaceSampler:
    """Picklable define-by-run function: ``(optuna.Trial) -> dict`` of the trial's config.

    The first ``len(warm_start)`` Optuna trials are the enqueued presets (Optuna numbers trials in
    enqueue order); ``warm_start`` holds each one's overrides (``warm_start_values``): its values
    for parameters the space does not sample for it.
    """

    def __init__(self, space: SearchSpace, warm_start: Optional[list[dict]] = None):
        self.space = space
        self.warm_start = list(warm_start or [])

    def __call__(self, trial) -> dict[str, Any]:
        overrides = self.warm_start[trial.number] if trial.number < len(self.warm_start) else None
        return sample(trial, self.space, overrides)


def warm_start_values(space: SearchSpace, preset: dict[str, Any], preset_name: str,
                      sweep_level: tuple[str, ...], notes: Optional[list] = None) -> tuple[dict, dict]:
    """Split a warm-start config into (the point Optuna enqueues, overrides for the rest).

    A warm start names one complete config, never a partly sampled one: every searched parameter
    it does not set takes its registry default (``trainables.hparams.HPARAMS``, the value the
    trainable uses when the parameter is not set at all), so its trial trains, and logs to MLflow,
    exactly what ``tunebert train --preset`` would. Only the branch of the define-by-run space the
    point takes is enqueued (no ``head_hidden`` for a linear head); a value the preset sets for a
    parameter that branch leaves out stays the trial's value, unused, as in ``train --preset``.

    Sweep-level settings (model, epochs, ...) stay the sweep's, and so does a value the space
    fixes (the user's file wins; a differing preset value is noted). A preset value or default
    outside a categorical's choices cannot be enqueued and is reported before anything starts; a
    value outside a numeric range is enqueued as it is (Optuna allows it) and noted in ``notes``.
    Preset keys the space does not mention become the trial's values.
    """
    searched = set(space.searched())
    named, overrides = {}, {}
    for key, value in preset.items():
        if key in sweep_level and key not in searched:
            continue
        param = space.get(key)
        if key in searched:
            named[key] = value
        elif param is not None:  # fixed by the space
            if param.dist.value != value and notes is not None:
                notes.append(f"preset {preset_name!r}: {key}={value!r} is replaced by the space's "
                             f"fixed value {param.dist.value!r}")
        else:
            overrides[key] = value
    enqueued = _complete_point(space, named, overrides, preset_name, notes)
    return enqueued, overrides


def _complete_point(space: SearchSpace, named: dict[str, Any], overrides: dict[str, Any],
                    preset_name: str, notes: Optional[list]) -> dict[str, Any]:
    """The searched values of the trial ``sample`` builds for this warm start: the preset's
    (``named``) or, for a parameter it leaves unset, the registry default. Walks the space in
    ``sample``'s order so that a condition sees the same values it will see in the trial.
    A named parameter the point's branch does not use, and a null (unset) value, which Optuna
    cannot hold, move to ``overrides``: ``sample`` takes those as they are."""
    point: dict[str, Any] = {}  # every active parameter's value, fixed ones included
    enqueued: dict[str, Any] = {}
    defaulted: list[str] = []
    for param in space.params:
        if not param.active(point):
            if param.name in named:
                overrides[param.name] = named[param.name]
            continue
        if isinstance(param.dist, Fixed):
            point[param.name] = param.dist.value
            continue
        if param.name in named:
            value, source = named[param.name], f"sets {param.name}={named[param.name]!r}, which"
        else:
            value = default_of(param.name)
            source = f"does not set {param.name}, so its trial takes the default {value!r}, which"
            defaulted.append(f"{param.name}={value!r}")
        if value is None:  # "not set" (hidden_dropout: the pretrained value) has no Optuna value
            point[param.name] = overrides[param.name] = None
            if notes is not None:
                notes.append(f"preset {preset_name!r}: {param.name} is null (not set), so its trial "
                             f"runs without it and the searcher records no {param.name} for it")
            continue
        _check_in_space(param, value, preset_name, source, notes)
        point[param.name] = enqueued[param.name] = value
    if defaulted:
        log.info("warm start %r leaves %d searched parameter(s) unset; its trial uses their "
                 "defaults: %s", preset_name, len(defaulted), ", ".join(defaulted))
    return enqueued


def _check_in_space(param, value: Any, preset_name: str, source: str, notes: Optional[list]) -> None:
    """The value must be valid for the trainable, and a categorical one one of the choices (Optuna
    cannot enqueue it otherwise); a numeric one outside the range runs as it is, with a note."""
    if param.name in HPARAMS:
        try:
            HPARAMS[param.name].check(HPARAMS[param.name].coerce(value))
        except ConfigError as exc:
            raise ConfigError(f"warm-start preset {preset_name!r}: {exc}") from None
    dist = param.dist
    if isinstance(dist, Categorical) and value not in dist.choices:
        raise ConfigError(
            f"warm-start preset {preset_name!r} {source} is not among the space's choices "
            f"{list(dist.choices)}; add it to the choices, set `{param.name}` in a warm-start "
            f"file, or leave the preset out")
    if hasattr(dist, "low") and not dist.low <= value <= dist.high and notes is not None:
        notes.append(f"preset {preset_name!r} {source} lies outside the space's range "
                     f"[{dist.low}, {dist.high}]; its trial runs with it as it is")


class ObjectivesSearch(OptunaSearch):
    """Ray Tune's ``OptunaSearch`` for several objectives and/or constraints.

    ``metric``/``mode`` are lists (one per objective, the first one ASHA's) or one of each;
    ``constraints`` (``tuning.config.Constraint``) are handed to Optuna as constraint values when
    a trial ends (``Trial.set_constraint``, Optuna >= 5; on older Optuna a ``user_attr`` that
    ``constraint_values`` reads for the sampler's ``constraints_func``). A constraint whose metric
    the trial never reported (``val_accuracy_int8`` of a trial ASHA stopped early) is left unset.

    With several objectives, a trial that ends without all of them (ASHA stopped it before its
    last epoch, the only one that reports ``val_accuracy_int8``) is told to Optuna as PRUNED: TPE
    ranks pruned trials after every completed one. Deployment costs (latency, size, memory)
    arrive with every epoch, so a trial stopped early is COMPLETE on them, as Ray's own
    ``OptunaSearch`` completes ASHA-stopped trials with their last result. Optuna has no intermediate values for several objectives,
    so nothing is reported before a trial ends.
    """

    def __init__(self, space, *, metric, mode, constraints=(), **kwargs):
        super().__init__(space=space, metric=metric, mode=mode, **kwargs)
        self._constraints = tuple(constraints)

    # Ray Tune refuses a result that lacks any of the searcher's metrics
    # (TuneController._validate_result_metrics), but objectives after the first may arrive with a
    # trial's last epoch only (val_accuracy_int8). Ray (and a ConcurrencyLimiter around this) is shown the first
    # objective, which every result carries; the Optuna study holds all of them.
    @property
    def metric(self):
        metric = internals.searcher_metric(self)
        return metric[0] if isinstance(metric, list) else metric

    @property
    def mode(self):
        mode = internals.searcher_mode(self)
        return mode[0] if isinstance(mode, list) else mode

    @property
    def objectives(self) -> list[str]:
        metric = internals.searcher_metric(self)
        return list(metric) if isinstance(metric, list) else [metric]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not isinstance(internals.searcher_metric(self), list):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        import logging

        from optuna.trial import TrialState

        completed, asked = internals.completed_trial_ids(self), internals.optuna_trials(self)
        if trial_id in completed or trial_id not in asked:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = asked[trial_id]
        result = result or {}
        self._tell_constraints(ot_trial, result)
        metric = internals.searcher_metric(self)
        if not isinstance(metric, list):
            return super().on_trial_complete(trial_id, result or None, error)
        values = [result.get(name) for name in metric]
        if error:
            state, values = TrialState.FAIL, None
        elif all(_finite(v) for v in values):
            state = TrialState.COMPLETE
        else:
            state, values = TrialState.PRUNED, None
        try:
            internals.optuna_study(self).tell(ot_trial, values, state=state)
        except Exception as exc:  # as OptunaSearch: a searcher error must not end the sweep
            logging.getLogger(__name__).warning("Optuna could not record trial %s: %s", trial_id, exc)
        completed.add(trial_id)

    def _tell_constraints(self, ot_trial, result: dict) -> None:
        known = {str(c): c.violation(result[c.metric]) for c in self._constraints
                 if _finite(result.get(c.metric))}
        if not known:
            return
        if hasattr(ot_trial, "set_constraint"):
            for key, violation in known.items():
                ot_trial.set_constraint(key, violation)
        else:
            ot_trial.set_user_attr(CONSTRAINTS_ATTR, [known.get(str(c), 0.0) for c in self._constraints])


CONSTRAINTS_ATTR = "tunebert.constraint_violations"


def constraint_values(frozen_trial) -> list[float]:
    """Optuna < 5's ``constraints_func``: the violations ``ObjectivesSearch`` saved (0: unknown)."""
    return list(frozen_trial.user_attrs.get(CONSTRAINTS_ATTR, [0.0]))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_searcher(space: SearchSpace, *, kind: str, seed: int, metric, mode,
                   num_trials: int, presets: list[tuple[dict, dict]], constraints=()):
    """Ray Tune's ``OptunaSearch`` with a seeded TPE (or random) sampler.

    ``metric``/``mode``: one result key and direction, or lists of them (several objectives,
    ``ObjectivesSearch``); ``constraints``: ``tuning.config.Constraint``s the sampler learns from.

    Several objectives keep the TPE sampler (its multi-objective form, MOTPE) rather than
    NSGA-II: sweeps here run tens of trials, below NSGA-II's default population of 50, so NSGA-II
    would sample at random throughout; TPE models from its first few trials, handles the
    conditional define-by-run spaces (``group``), proposes for trials still running
    (``constant_liar``) and takes constraints, like the single-objective sweep.
    """
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # enqueued presets may lie outside a range on purpose; prepare() has told the user
    warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
    if kind == "tpe":
        startup = max(3, min(10, num_trials // 3))
        old_optuna = bool(constraints) and not hasattr(optuna.trial.Trial, "set_constraint")
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True,
                                             group=True, constant_liar=True,
                                             **({"constraints_func": constraint_values} if old_optuna else {}))
    elif kind == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        raise ConfigError(f"searcher must be 'tpe' or 'random', got {kind!r}")
    sampler_fn = SpaceSampler(space, [overrides for _, overrides in presets])
    points = [enqueued for enqueued, _ in presets] or None
    if isinstance(metric, (list, tuple)):  # one objective: Ray's single-metric form
        metric, mode = (metric[0], mode[0]) if len(metric) == 1 else (list(metric), list(mode))
    if isinstance(metric, list) or constraints:
        return ObjectivesSearch(sampler_fn, metric=metric, mode=mode, constraints=constraints,
                                sampler=sampler, points_to_evaluate=points)
    return OptunaSearch(space=sampler_fn, metric=metric, mode=mode, sampler=sampler,
                        points_to_evaluate=points)


def preview_configs(space: SearchSpace, n: int, seed: int, presets: list[tuple[dict, dict]]) -> list[dict]:
    """Sample ``n`` configs offline (no Ray) with the same function the sweep uses: a dry run that
    catches impossible combinations before any cluster resource is taken."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for enqueued, _ in presets:
        study.enqueue_trial(enqueued)
    sampler_fn = SpaceSampler(space, [overrides for _, overrides in presets])
    configs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            trial = study.ask()
            configs.append(sampler_fn(trial))
            study.tell(trial, 0.0)
    return configs
