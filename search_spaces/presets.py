"""Named configurations from the study that motivated this project.

bert-base-uncased on MASSIVE en-US (60 intents), one run each, tuned by hand:
plain fine-tuning 84.9 % test accuracy, LLRD 81.2 %, warm-up 85.4 %, LLRD + warm-up 88.2 %.
Its classifier was a bottleneck MLP (768 → 10 → 60) behind heavy dropout (0.9).
Presets are partial configs: keys they do not set keep the trainable's defaults.
"""

from __future__ import annotations

from typing import Any

from trainables.errors import ConfigError

_STUDY_FINETUNE = {
    "optimizer": "adamw",
    "lr": 1e-4,
    "scheduler": "cosine",
    "min_lr": 1e-6,  # cosine annealing down to 1e-6
    "warmup_ratio": 0.0,
    "classifier_dropout": 0.9,
    "batch_size": 16,
    "epochs": 10,
    "llrd_decay": 1.0,
    "head_lr_multiplier": 1.0,
    "pooling": "cls",
    "head": "mlp",
    "head_hidden": 10,
}

PRESETS: dict[str, dict[str, Any]] = {
    "baseline": dict(_STUDY_FINETUNE),
    # LLRD: the top layer at 1e-4, each layer below x0.9, the classifier at 1e-2
    "llrd": {**_STUDY_FINETUNE, "llrd_decay": 0.9, "head_lr_multiplier": 100.0},
    # warm-up: linear schedule with 20 % warm-up
    "warmup": {**_STUDY_FINETUNE, "scheduler": "linear", "min_lr": 0.0, "warmup_ratio": 0.2},
    "llrd_warmup": {**_STUDY_FINETUNE, "llrd_decay": 0.9, "head_lr_multiplier": 100.0,
                    "scheduler": "linear", "min_lr": 0.0, "warmup_ratio": 0.2},
}

STUDY_TEST_ACCURACY = {"baseline": 84.9, "llrd": 81.2, "warmup": 85.4, "llrd_warmup": 88.2}


def get_preset(name: str) -> dict[str, Any]:
    """A copy of preset ``name``'s values, with its name recorded under ``preset``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available presets: {sorted(PRESETS)}")
    return {**PRESETS[name], "preset": name}
