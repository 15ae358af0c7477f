"""The default fine-tuning search space.

Ranges follow the BERT fine-tuning literature: learning rate 1e-5..3e-4 on a log scale (Devlin
et al. 2019 searched 2e-5..5e-5; Mosbach et al. 2021 and Sun et al. 2019 go higher for small
encoders), LLRD decay 0.7..1.0 (Sun et al. 2019 use 0.95; Zhang et al. 2021 ~0.9), warm-up
0..30 % of the steps, dropout 0..0.5, batch 16..128, weight decay 0..0.1, label smoothing 0..0.2.
"""

from __future__ import annotations

from search_spaces.space import Categorical, Fixed, FloatRange, IntRange, Param, SearchSpace

# Settings of the whole sweep rather than hyperparameters: every trial gets the same value.
SWEEP_LEVEL = ("trainable", "model", "max_length", "epochs", "seed", "precision")

SGD = {"optimizer": ("sgd",)}

FINETUNE_PARAMS: tuple[Param, ...] = (
    Param("lr", FloatRange(1e-5, 3e-4, log=True)),
    Param("optimizer", Categorical(("adamw", "sgd"))),
    Param("momentum", FloatRange(0.8, 0.99), when=SGD),
    Param("nesterov", Categorical((False, True)), when=SGD),
    Param("weight_decay", FloatRange(0.0, 0.1)),
    Param("llrd_decay", FloatRange(0.7, 1.0)),
    Param("head_lr_multiplier", FloatRange(1.0, 100.0, log=True)),
    Param("scheduler", Categorical(("linear", "cosine", "constant"))),
    Param("warmup_ratio", FloatRange(0.0, 0.3)),
    Param("batch_size", Categorical((16, 32, 64, 128))),
    Param("classifier_dropout", FloatRange(0.0, 0.5)),
    Param("label_smoothing", FloatRange(0.0, 0.2)),
    Param("pooling", Categorical(("cls", "mean", "max"))),
    Param("head", Categorical(("linear", "mlp"))),
    Param("head_hidden", IntRange(16, 512, log=True), when={"head": ("mlp",)}),
    Param("grad_clip", Fixed(1.0)),
)


def finetune_space(**constants) -> SearchSpace:
    """The default space; ``constants`` are the sweep-level settings (model, epochs, ...)."""
    return SearchSpace(FINETUNE_PARAMS, {"trainable": "finetune", **constants})
