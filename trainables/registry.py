"""The trainable families a sweep can run, by name: config class and training function.

Light to import: training functions are named as ``module:function`` and loaded on demand. Every
family's ``fit(cfg, data, *, device, report, resume_dir=None, progress=None)`` returns a model
whose ``forward(input_ids, attention_mask)`` gives class logits, and reports ``val_accuracy``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from trainables.errors import ConfigError
from trainables.hparams import ContrastiveConfig, FinetuneConfig

TRAINABLES: dict[str, tuple[type, str]] = {
    "finetune": (FinetuneConfig, "trainables.finetune:fit"),
    "contrastive": (ContrastiveConfig, "trainables.contrastive:fit"),
}
RAY_ENTRY_POINT = "trainables.entry:trainable"
# Every trainable reports these for its best validation epoch as ``best_<name>`` (and the epoch as
# ``best_epoch``); a sweep ranks, early-stops and searches on those.
BEST_EPOCH_METRICS = ("val_accuracy", "val_loss", "val_macro_f1")


def ranked_metric(metric: str) -> str:
    """The result key a sweep optimises for ``metric``: its best epoch's value when reported."""
    return f"best_{metric}" if metric in BEST_EPOCH_METRICS else metric


def config_class(name: str) -> type:
    if name not in TRAINABLES:
        raise ConfigError(f"unknown trainable {name!r}; available: {sorted(TRAINABLES)}")
    return TRAINABLES[name][0]


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """The full config a trial trains with: defaults filled in, validated."""
    name = config.get("trainable", "finetune")
    return config_class(name).from_dict({**config, "trainable": name}).to_dict()


def _load(path: str) -> Callable:
    module, function = path.split(":")
    return getattr(importlib.import_module(module), function)


def fit_function(name: str) -> Callable:
    config_class(name)
    return _load(TRAINABLES[name][1])


def ray_entry_point() -> Callable:
    return _load(RAY_ENTRY_POINT)
