"""Search-space specs as data, and the define-by-run function that samples them.

A ``SearchSpace`` is an ordered tuple of ``Param``s. Each has a distribution (a float or int
range, a categorical choice, or a fixed value) and an optional condition ``when`` — a mapping of
earlier parameters to the values under which this one exists (momentum only for sgd, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

from trainables.ranges import Categorical, Distribution, Fixed, FloatRange, IntRange

# The range types live in trainables/ranges.py, a leaf both packages build on; re-exported here.
__all__ = [
    "Categorical", "Distribution", "Fixed", "FloatRange", "IntRange", "Param", "SearchSpace", "sample", "suggest",
]

@dataclass(frozen=True)
class Param:
    name: str
    dist: Distribution
    when: Mapping[str, tuple] = field(default_factory=dict)  # {"optimizer": ("sgd",)}

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(values.get(key) in allowed for key, allowed in self.when.items())

    def describe(self) -> Any:
        d = self.dist.describe()
        if self.when:
            d = dict(d) if isinstance(d, dict) else {"value": d}
            d["when"] = {k: list(v) for k, v in self.when.items()}
        return d


@dataclass(frozen=True)
class SearchSpace:
    """Ordered parameters plus constants that every trial gets (model, epochs, ...)."""

    params: tuple[Param, ...]
    constants: Mapping[str, Any] = field(default_factory=dict)

    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def searched(self) -> tuple[str, ...]:
        """Names of the parameters that are sampled (not fixed)."""
        return tuple(p.name for p in self.params if not isinstance(p.dist, Fixed))

    def get(self, name: str) -> Optional[Param]:
        return next((p for p in self.params if p.name == name), None)

    def with_constants(self, **constants: Any) -> "SearchSpace":
        return replace(self, constants={**self.constants, **constants})

    def describe(self) -> dict:
        """The space as the YAML a user would write to reproduce it."""
        return {p.name: p.describe() for p in self.params}


def suggest(trial, param: Param) -> Any:
    """Sample one parameter through the Optuna trial interface."""
    dist = param.dist
    if isinstance(dist, FloatRange):
        return trial.suggest_float(param.name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntRange):
        return trial.suggest_int(param.name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, Categorical):
        return trial.suggest_categorical(param.name, list(dist.choices))
    return dist.value


def sample(trial, space: SearchSpace, overrides: Optional[Mapping[str, Any]] = None) -> dict:
    """Define-by-run body: the trial's config as a dict of constants.

    ``overrides`` (a warm-start preset's values that Optuna does not hold: parameters the space
    does not mention or does not use on the preset's branch, and null values) are taken as they
    are, except that a value the space fixes wins; the space's other parameters come from the
    trial, where Optuna already holds the enqueued preset values of searched ones.
    """
    overrides = overrides or {}
    config: dict[str, Any] = {}
    for param in space.params:
        if not param.active(config):
            continue
        taken = param.name in overrides and not isinstance(param.dist, Fixed)
        config[param.name] = overrides[param.name] if taken else suggest(trial, param)
    for name, value in overrides.items():
        config.setdefault(name, value)
    return {**config, **{k: v for k, v in space.constants.items() if k not in config}}
