"""The trainable families a sweep can run, by name: config class and Ray entry point.

Light to import: entry points are named as ``module:function`` and loaded on demand.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from trainables.errors import ConfigError
from trainables.hparams import FinetuneConfig

TRAINABLES: dict[str, tuple[type, str]] = {
    "finetune": (FinetuneConfig, "trainables.finetune:finetune_trainable"),
}


def config_class(name: str) -> type:
    if name not in TRAINABLES:
        raise ConfigError(f"unknown trainable {name!r}; available: {sorted(TRAINABLES)}")
    return TRAINABLES[name][0]


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """The full config a trial trains with: defaults filled in, validated."""
    name = config.get("trainable", "finetune")
    return config_class(name).from_dict({**config, "trainable": name}).to_dict()


def entry_point(name: str) -> Callable:
    module, function = TRAINABLES[name][1].split(":")
    config_class(name)
    return getattr(importlib.import_module(module), function)
