"""The fine-tuning hyperparameters: one frozen, validated dataclass.

``FinetuneConfig.from_dict(d).to_dict()`` is the exact dict a trial trains with and the exact dict
that reaches MLflow. Unknown keys and bad values raise ``ConfigError`` naming the key, the value
and the rule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Optional

from trainables.errors import ConfigError
from trainables.schedules import SCHEDULERS

POOLINGS = ("cls", "mean", "max")
HEADS = ("linear", "mlp")
OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"`{name}` must be one of {list(allowed)}, but got {value!r}")


def _check_range(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"`{name}` must be a number, but got {value!r} ({type(value).__name__})")
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"`{name}` must lie in {bracket}{low}, {high}], but got {value!r}")


def _check_int(name: str, value: Any, low: int, high: int = 10**9) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"`{name}` must be an integer, but got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise ConfigError(f"`{name}` must lie in [{low}, {high}], but got {value}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"`{name}` must be true or false, but got {value!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything one fine-tuning trial needs besides the data.

    Learning rates follow layer-wise decay (LLRD, Howard & Ruder 2018; Sun et al. 2019): the top
    encoder layer trains at ``lr``, layer ``l`` below it at ``lr * llrd_decay**l``, the embeddings
    lowest, and the classification head at ``lr * head_lr_multiplier``.
    """

    TRAINABLE: ClassVar[str] = "finetune"

    trainable: str = "finetune"
    model: str = "minilm-l6"
    max_length: int = 128
    # classifier
    pooling: str = "mean"
    head: str = "linear"
    head_hidden: int = 256
    classifier_dropout: float = 0.1
    hidden_dropout: Optional[float] = None  # None keeps the pretrained encoder's value
    attention_dropout: Optional[float] = None
    # optimizer
    optimizer: str = "adamw"
    lr: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.01
    llrd_decay: float = 1.0
    head_lr_multiplier: float = 1.0
    # schedule
    scheduler: str = "linear"
    warmup_ratio: float = 0.1
    min_lr: float = 0.0
    # loop
    batch_size: int = 32
    epochs: int = 4
    grad_clip: float = 1.0  # 0 disables clipping
    label_smoothing: float = 0.0
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    reinit_layers: int = 0
    seed: int = 0
    precision: str = "auto"  # bf16 where the device has fast bf16 units, else fp32/fp16
    # provenance: the named preset this config came from, if any
    preset: Optional[str] = None

    def __post_init__(self) -> None:
        if self.trainable != self.TRAINABLE:
            raise ConfigError(f"`trainable` must be {self.TRAINABLE!r} for {type(self).__name__}, "
                              f"got {self.trainable!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"`model` must be a hub id, a local folder or an alias, got {self.model!r}")
        _check_int("max_length", self.max_length, 8, 8192)
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("head", self.head, HEADS)
        _check_int("head_hidden", self.head_hidden, 1)
        _check_range("classifier_dropout", self.classifier_dropout, 0.0, 0.99)
        for name in ("hidden_dropout", "attention_dropout"):
            if getattr(self, name) is not None:
                _check_range(name, getattr(self, name), 0.0, 0.99)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_range("lr", self.lr, 0.0, 10.0, low_open=True)
        _check_range("momentum", self.momentum, 0.0, 0.9999)
        _check_bool("nesterov", self.nesterov)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ConfigError(
                f"`nesterov` needs optimizer 'sgd' with momentum > 0, but got "
                f"(optimizer={self.optimizer!r}, momentum={self.momentum})"
            )
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("llrd_decay", self.llrd_decay, 0.0, 1.0, low_open=True)
        _check_range("head_lr_multiplier", self.head_lr_multiplier, 0.0, 10_000.0, low_open=True)
        _check_choice("scheduler", self.scheduler, SCHEDULERS)
        _check_range("warmup_ratio", self.warmup_ratio, 0.0, 0.9)
        _check_range("min_lr", self.min_lr, 0.0, self.lr)
        _check_int("batch_size", self.batch_size, 1, 65536)
        _check_int("epochs", self.epochs, 1, 10_000)
        _check_range("grad_clip", self.grad_clip, 0.0, 1e6)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.9)
        _check_bool("freeze_embeddings", self.freeze_embeddings)
        _check_int("freeze_layers", self.freeze_layers, 0, 1000)
        _check_int("reinit_layers", self.reinit_layers, 0, 1000)
        _check_int("seed", self.seed, 0, 2**32 - 1)
        _check_choice("precision", self.precision, PRECISIONS)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FinetuneConfig":
        """Build from a (possibly partial) dict; unset keys take the defaults above."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown {cls.TRAINABLE} parameter(s) {unknown}; allowed: {sorted(cls.field_names())}"
            )
        values = dict(values)
        # YAML and MLflow hand back ints for floats such as `lr: 1` and floats for whole numbers
        for f in fields(cls):
            if f.name in values and f.type in ("float", "Optional[float]"):
                v = values[f.name]
                if isinstance(v, int) and not isinstance(v, bool):
                    values[f.name] = float(v)
            if f.name in values and f.type == "int":
                v = values[f.name]
                if isinstance(v, float) and v.is_integer():
                    values[f.name] = int(v)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "FinetuneConfig":
        return dataclasses.replace(self, **changes)


MODES = ("two-stage", "two-stage-finetune", "joint")
CONTRASTIVE_LOSSES = ("supcon", "simclr")
AUGMENTATION_KINDS = ("none", "word_deletion", "span_cutoff", "shuffle")


@dataclass(frozen=True)
class ContrastiveConfig(FinetuneConfig):
    """Contrastive pretraining of the encoder, then classification (or both at once).

    Modes: ``two-stage`` trains encoder + projection head with the contrastive loss for
    ``contrastive_epochs``, then freezes the encoder and trains the classifier head for
    ``epochs`` (the study's protocol); ``two-stage-finetune`` then fine-tunes the whole model
    instead; ``joint`` minimises cross-entropy + ``joint_lambda`` * SupCon for ``epochs``
    (Gunel et al., ICLR 2021). The classification stage uses the fine-tuning fields (``lr``,
    ``optimizer``, LLRD, schedule, ``batch_size``, ``epochs``); the contrastive stage has its own
    optimizer, learning rate and batch size, and shares LLRD, warm-up and schedule.
    """

    TRAINABLE: ClassVar[str] = "contrastive"

    trainable: str = "contrastive"
    mode: str = "two-stage"
    loss: str = "supcon"
    temperature: float = 0.1
    projection_dim: int = 128
    contrastive_epochs: int = 3
    contrastive_optimizer: str = "adamw"
    contrastive_lr: float = 1e-4
    contrastive_batch_size: int = 64
    augmentation: str = "none"  # views always differ by dropout (SimCSE); this adds text noise
    augmentation_strength: float = 0.1
    joint_lambda: float = 0.5
    knn_k: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("mode", self.mode, MODES)
        _check_choice("loss", self.loss, CONTRASTIVE_LOSSES)
        _check_range("temperature", self.temperature, 0.0, 10.0, low_open=True)
        _check_int("projection_dim", self.projection_dim, 1, 65536)
        _check_int("contrastive_epochs", self.contrastive_epochs, 0 if self.mode == "joint" else 1, 10_000)
        _check_choice("contrastive_optimizer", self.contrastive_optimizer, OPTIMIZERS)
        _check_range("contrastive_lr", self.contrastive_lr, 0.0, 10.0, low_open=True)
        _check_int("contrastive_batch_size", self.contrastive_batch_size, 2, 65536)
        _check_choice("augmentation", self.augmentation, AUGMENTATION_KINDS)
        _check_range("augmentation_strength", self.augmentation_strength, 0.0, 0.5)
        _check_range("joint_lambda", self.joint_lambda, 0.0, 100.0)
        _check_int("knn_k", self.knn_k, 1, 1000)
        if self.mode == "joint" and self.loss != "supcon":
            raise ConfigError(f"`mode` 'joint' combines cross-entropy with SupCon; `loss` must be "
                              f"'supcon', but got {self.loss!r}")

    @property
    def total_epochs(self) -> int:
        """Epochs reported to Ray (ASHA's time axis): both stages, or ``epochs`` when joint."""
        return self.epochs if self.mode == "joint" else self.contrastive_epochs + self.epochs
