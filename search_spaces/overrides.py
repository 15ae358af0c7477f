"""Narrow, widen, fix or drop parameters of a space from a YAML file, without writing Python.

```yaml
lr: {low: 2.0e-5, high: 1.0e-4, log: true}   # narrow or widen a range
batch_size: {choices: [32, 64]}              # change the choices (a plain list works too)
optimizer: adamw                             # fix a value
label_smoothing: null                        # drop: use the trainable's default
freeze_layers: {low: 0, high: 3}             # search a parameter the default space leaves out
```

Every mistake is reported before Ray starts, naming the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

import yaml

from search_spaces.space import Categorical, Fixed, FloatRange, IntRange, Param, SearchSpace
from trainables.errors import ConfigError, UserError
from trainables.hparams import HPARAMS

RANGE_KEYS = {"low", "high", "log", "step", "when"}


class SpaceError(UserError):
    """A search-space file that cannot be used."""


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search-space file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpaceError(f"search-space file {path}: not valid YAML ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise SpaceError(f"search-space file {path}: not UTF-8 text") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpaceError(f"search-space file {path}: expected a mapping of parameter names, "
                         f"got {type(data).__name__}")
    return data


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_value(config_cls, where: str, name: str, value: Any) -> None:
    """A single value must be valid for the trainable on its own (uses the config's own rules)."""
    try:
        config_cls.from_dict({name: value, **_companions(name, value)})
    except ConfigError as exc:
        raise SpaceError(f"{where}: {exc}") from None


def _companions(name: str, value: Any) -> dict:
    # Values that are only valid together with another setting (checked for the pair).
    if name == "nesterov" and value is True:
        return {"optimizer": "sgd", "momentum": 0.9}
    if name == "min_lr":
        return {"lr": max(float(value), 1e-4) if _is_number(value) else 1e-4}
    return {}


def _parse_param(config_cls, source: str, name: str, spec: Any, existing: Param | None) -> Param:
    where = f"{source}: `{name}`"
    field_type = HPARAMS[name].kind
    # a parameter the space leaves out keeps its declared condition (momentum only for sgd)
    when = existing.when if existing else HPARAMS[name].when
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        _check_value(config_cls, where, name, spec)
        return Param(name, Fixed(spec), when)
    if "when" in spec:
        raw_when = spec["when"]
        if not isinstance(raw_when, dict):
            raise SpaceError(f"{where}.when must map a parameter to its allowed values, got {raw_when!r}")
        when = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in raw_when.items()}
    if "choices" in spec:
        extra = set(spec) - {"choices", "when"}
        if extra:
            raise SpaceError(f"{where}: `choices` cannot be combined with {sorted(extra)}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}.choices must be a non-empty list, got {choices!r}")
        for i, choice in enumerate(choices):
            _check_value(config_cls, f"{where}.choices[{i}]", name, choice)
        return Param(name, Categorical(tuple(choices)), when)
    if "value" in spec:
        _check_value(config_cls, where, name, spec["value"])
        return Param(name, Fixed(spec["value"]), when)
    unknown = set(spec) - RANGE_KEYS
    if unknown or not {"low", "high"} <= set(spec):
        raise SpaceError(
            f"{where}: a range needs `low` and `high` (optional `log`, `step`, `when`); got keys "
            f"{sorted(spec)}. Use `choices: [...]` for a categorical or a plain value to fix it.")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if field_type not in ("float", "int", "optional_float", "optional_int"):
        raise SpaceError(f"{where} is a {field_type.replace('_', ' ')} parameter and cannot take a numeric range; "
                         f"use `choices: [...]` or a fixed value")
    for key, v in (("low", low), ("high", high)):
        if not _is_number(v):
            raise SpaceError(f"{where}.{key} must be a finite number, got {v!r}")
    if not isinstance(log, bool):
        raise SpaceError(f"{where}.log must be true or false, got {log!r}")
    if low > high:
        raise SpaceError(f"{where}: `low <= high` must hold, but got (low={low}, high={high})")
    if log and low <= 0:
        raise SpaceError(f"{where}: a log-scale range needs low > 0, but got low={low}")
    step = spec.get("step")
    if step is not None and (not _is_number(step) or step <= 0):
        raise SpaceError(f"{where}.step must be a positive number, got {step!r}")
    if log and step is not None and step != 1:
        raise SpaceError(f"{where}: `step` cannot be combined with `log: true`")
    _check_value(config_cls, f"{where}.low", name, low)
    _check_value(config_cls, f"{where}.high", name, high)
    if field_type in ("int", "optional_int"):
        if not all(float(v).is_integer() for v in (low, high)):
            raise SpaceError(f"{where} is an integer parameter; low and high must be integers, "
                             f"got (low={low}, high={high})")
        return Param(name, IntRange(int(low), int(high), log=log, step=int(step or 1)), when)
    return Param(name, FloatRange(float(low), float(high), log=log,
                                  step=float(step) if step is not None else None), when)


def apply_overrides(space: SearchSpace, overrides: Mapping[str, Any], *, config_cls,
                    source: str = "search space", fixed_by_sweep: tuple = ()) -> SearchSpace:
    """A new space with the YAML's changes applied; parameters keep their order."""
    allowed = set(config_cls.field_names()) - set(fixed_by_sweep)
    unknown = sorted(k for k in overrides if k not in allowed)
    if unknown:
        hint = ""
        swept = [k for k in unknown if k in fixed_by_sweep]
        if swept:
            hint = f" ({swept} are sweep settings: set them on the command line instead)"
        raise SpaceError(f"{source}: unknown parameter(s) {unknown}{hint}; allowed: {sorted(allowed)}")
    params = {p.name: p for p in space.params}
    order = list(space.names())
    for name, spec in overrides.items():
        if spec is None:  # drop: the trainable's default applies
            params.pop(name, None)
            continue
        params[name] = _parse_param(config_cls, source, name, spec, params.get(name))
        if name not in order:
            order.append(name)
    names = set(params)
    for p in params.values():
        missing = [k for k in p.when if k not in names]
        if missing:
            raise SpaceError(f"{source}: `{p.name}` depends on {missing}, which the space no longer has")
    return dataclasses.replace(space, params=tuple(params[n] for n in order if n in params))


def load_space(path: str | Path, space: SearchSpace, *, config_cls, fixed_by_sweep: tuple = ()) -> SearchSpace:
    return apply_overrides(space, load_yaml(path), config_cls=config_cls, source=str(path),
                           fixed_by_sweep=fixed_by_sweep)
