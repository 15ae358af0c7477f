"""Named configurations from the study that motivated this project.

bert-base-uncased on MASSIVE en-US (60 intents), one run each, tuned by hand:
plain fine-tuning 84.9 % test accuracy, LLRD 81.2 %, warm-up 85.4 %, LLRD + warm-up 88.2 %,
SupCon then a classifier 87.4 %, SimCLR then a classifier 80.7 %.
Its fine-tuning classifier was a bottleneck MLP (768 → 10 → 60) behind heavy dropout (0.9); the
contrastive runs used a linear head on the frozen encoder.
Presets are partial configs: keys they do not set keep the trainable's defaults.
"""

from __future__ import annotations

from typing import Any

from trainables.errors import ConfigError

_STUDY_FINETUNE = {
    "trainable": "finetune",
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

_STUDY_LLRD_WARMUP = {"llrd_decay": 0.9, "scheduler": "linear", "warmup_ratio": 0.2, "min_lr": 0.0}

# SupCon (Khosla et al. 2020): batch 64, 10 contrastive epochs, AdamW lr 1e-4 in both stages,
# LLRD + 20 % warm-up, then a linear classifier on the frozen encoder. The study does not give
# the temperature or the classifier epochs: 0.1 (SupCon's default) and 10.
PRESETS["supcon"] = {
    "trainable": "contrastive", "mode": "two-stage", "loss": "supcon", "temperature": 0.1,
    "contrastive_batch_size": 64, "contrastive_epochs": 10, "contrastive_optimizer": "adamw",
    "contrastive_lr": 1e-4, "optimizer": "adamw", "lr": 1e-4, "batch_size": 64, "epochs": 10,
    "head": "linear", "pooling": "cls", **_STUDY_LLRD_WARMUP,
}
# SimCLR/SimCSE (dropout views): batch 256, 13 contrastive epochs at lr 1e-5, then 20 classifier
# epochs at lr 1e-2, both stages SGD with momentum 0.99 (the study's one optimizer for the row),
# LLRD + 20 % warm-up. The study's "dropout 0.9" is taken as the classifier dropout (0.9 inside
# the encoder would erase the views' signal).
PRESETS["simclr"] = {
    "trainable": "contrastive", "mode": "two-stage", "loss": "simclr", "temperature": 0.1,
    "contrastive_batch_size": 256, "contrastive_epochs": 13, "contrastive_optimizer": "sgd",
    "momentum": 0.99, "contrastive_lr": 1e-5, "optimizer": "sgd", "lr": 1e-2, "batch_size": 256,
    "epochs": 20, "classifier_dropout": 0.9, "head": "linear", "pooling": "cls", **_STUDY_LLRD_WARMUP,
}

# Not from the study: the careful hand-written config the search is measured against (issue 10):
# MiniLM-L6 on MASSIVE, 88.93 ± 0.21 % test over 3 seeds. `tunebert tune` tries it first (its
# --warm-start default), so a sweep always has the hand config among its trials.
PRESETS["hand"] = {"trainable": "finetune", "optimizer": "adamw", "lr": 1e-4, "batch_size": 32,
                   "epochs": 4, "pooling": "mean", "head": "linear", "scheduler": "linear",
                   "warmup_ratio": 0.1, "weight_decay": 0.01}

# Not from the study: the hand joint intent + slot baseline of issue 23 (JointBERT's recipe on a
# small encoder): AdamW, lr 1e-4 for the encoder and x10 for both heads, batch 32, 4 epochs, mean
# pooling, linear heads, dropout 0.1, 10 % warm-up, loss = intent CE + slot CE, first-piece
# tagging, max length 64. A plain PyTorch script with this recipe gave SNIPS test intent 98.29 %,
# slot F1 94.01, sentence 86.43 % (seed 0, MiniLM-L6).
PRESETS["joint-hand"] = {"trainable": "multitask", "optimizer": "adamw", "lr": 1e-4,
                         "head_lr_multiplier": 10.0, "slot_lr_multiplier": 10.0, "batch_size": 32,
                         "epochs": 4, "pooling": "mean", "head": "linear", "slot_head": "linear",
                         "classifier_dropout": 0.1, "scheduler": "linear", "warmup_ratio": 0.1,
                         "weight_decay": 0.01, "intent_loss_weight": 1.0, "slot_loss_weight": 1.0,
                         "max_length": 64}

# what `tunebert presets` says of the presets that are not the study's
PRESET_NOTES = {
    "hand": "a careful hand-written config, not from the study: MiniLM-L6 on MASSIVE 88.9 % test; "
            "`tunebert tune` tries it first",
    "joint-hand": "the hand joint intent + slot baseline (multitask), not from the study: "
                  "JointBERT's recipe on MiniLM-L6, for SNIPS-style data",
}

# the study's presets, with its bert-base-uncased test accuracy (%)
STUDY_TEST_ACCURACY = {"baseline": 84.9, "llrd": 81.2, "warmup": 85.4, "llrd_warmup": 88.2,
                       "supcon": 87.4, "simclr": 80.7}


def get_preset(name: str) -> dict[str, Any]:
    """A copy of preset ``name``'s values, with its name recorded under ``preset``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available presets: {sorted(PRESETS)}")
    return {**PRESETS[name], "preset": name}
