"""Optuna glue: the define-by-run callable Ray's ``OptunaSearch`` calls, warm-start points, and
the searcher itself. The one place that knows how Optuna and Ray Tune meet."""

from __future__ import annotations

from typing import Any, Optional

from search_spaces.space import Categorical, SearchSpace, sample
from trainables.errors import ConfigError


class SpaceSampler:
    """Picklable define-by-run function: ``(optuna.Trial) -> dict`` of the trial's config.

    The first ``len(warm_start)`` Optuna trials are the enqueued presets (Optuna numbers trials in
    enqueue order); for those, the preset's values also replace fixed parameters and defaults.
    """

    def __init__(self, space: SearchSpace, warm_start: Optional[list[dict]] = None):
        self.space = space
        self.warm_start = list(warm_start or [])

    def __call__(self, trial) -> dict[str, Any]:
        overrides = self.warm_start[trial.number] if trial.number < len(self.warm_start) else None
        return sample(trial, self.space, overrides)


def warm_start_values(space: SearchSpace, preset: dict[str, Any], preset_name: str,
                      sweep_level: tuple[str, ...], notes: Optional[list] = None) -> tuple[dict, dict]:
    """Split a preset into (values Optuna enqueues for searched params, overrides for the rest).

    Sweep-level settings (model, epochs, ...) stay the sweep's, and so does a value the space
    fixes (the user's file wins; a differing preset value is noted). A preset value outside a
    categorical's choices cannot be enqueued and is reported before anything starts; a value
    outside a numeric range is enqueued as it is (Optuna allows it) and noted in ``notes``.
    Preset keys the space does not mention become the trial's values.
    """
    searched = set(space.searched())
    enqueued, overrides = {}, {}
    for key, value in preset.items():
        if key in sweep_level and key not in searched:
            continue
        param = space.get(key)
        if key in searched:
            if isinstance(param.dist, Categorical) and value not in param.dist.choices:
                raise ConfigError(
                    f"warm-start preset {preset_name!r} sets {key}={value!r}, which is not among "
                    f"the space's choices {list(param.dist.choices)}; add it to the choices or "
                    f"leave the preset out")
            dist = param.dist
            if hasattr(dist, "low") and not dist.low <= value <= dist.high and notes is not None:
                notes.append(f"preset {preset_name!r}: {key}={value} lies outside the space's "
                             f"range [{dist.low}, {dist.high}]; it runs as the preset says")
            enqueued[key] = value
        elif param is not None:  # fixed by the space
            if param.dist.value != value and notes is not None:
                notes.append(f"preset {preset_name!r}: {key}={value!r} is replaced by the space's "
                             f"fixed value {param.dist.value!r}")
        else:
            overrides[key] = value
    return enqueued, overrides


def build_searcher(space: SearchSpace, *, kind: str, seed: int, metric: str, mode: str,
                   num_trials: int, presets: list[tuple[dict, dict]]):
    """Ray Tune's ``OptunaSearch`` with a seeded TPE (or random) sampler."""
    import warnings

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # enqueued presets may lie outside a range on purpose; prepare() has told the user
    warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
    if kind == "tpe":
        startup = max(3, min(10, num_trials // 3))
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True,
                                             group=True, constant_liar=True)
    elif kind == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        raise ConfigError(f"searcher must be 'tpe' or 'random', got {kind!r}")
    sampler_fn = SpaceSampler(space, [overrides for _, overrides in presets])
    return OptunaSearch(space=sampler_fn, metric=metric, mode=mode, sampler=sampler,
                        points_to_evaluate=[enqueued for enqueued, _ in presets] or None)


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
