"""The typed config of one trial: ``FinetuneConfig``, ``ContrastiveConfig``, ``MultitaskConfig`` and the
baselines' ``TfidfConfig`` and ``BilstmConfig``, frozen dataclasses
whose fields, types and defaults are ``HPARAMS``'s (a test holds them equal), validated when built
by each parameter's rule and the rules between parameters. Read them through ``trainables.hparams``.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Self

from trainables.errors import ConfigError
from trainables.hparam_kinds import ALL_FAMILIES
from trainables.hparam_table import DEFAULT_PERTURB_EVAL, HPARAMS
from trainables.perturb import parse_spec
from trainables.rounds import canonical_eval_every, parse_eval_every


class _Config:
    """Behaviour shared by the generated config dataclasses (fields come from ``HPARAMS``)."""

    TRAINABLE = ""

    def __post_init__(self) -> None:
        if self.trainable != self.TRAINABLE:
            raise ConfigError(f"`trainable` must be {self.TRAINABLE!r} for {type(self).__name__}, "
                              f"got {self.trainable!r}")
        for name in self.field_names():
            if name != "trainable":
                HPARAMS[name].check(getattr(self, name))
        # in round mode `stop_epoch` counts rounds, whose number depends on the data: `fit` checks it
        rounds = parse_eval_every(self.eval_every) is not None
        if self.stop_epoch is not None and self.stop_epoch > self.epochs and not rounds:
            raise ConfigError(f"`stop_epoch` ({self.stop_epoch}) cannot exceed `epochs` ({self.epochs})")
        for name in ("perturb_eval", "perturb_train"):
            if getattr(self, name, None) is not None:
                parse_spec(getattr(self, name), what=f"`{name}`")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Build from a (possibly partial) dict; unset keys take the declared defaults."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            other = [k for k in unknown if k in HPARAMS]
            families = sorted({f for k in other for f in HPARAMS[k].families} & set(ALL_FAMILIES))
            hint = f" ({other} apply to {families} trials only)" if other else ""
            raise ConfigError(f"unknown {cls.TRAINABLE} parameter(s) {unknown}{hint}; allowed: "
                              f"{sorted(cls.field_names())}")
        values = dict(values)
        if "eval_every" in values:  # `--set eval_every=500` and YAML give an int: kept as text
            values["eval_every"] = canonical_eval_every(values["eval_every"])
        return cls(**{k: HPARAMS[k].coerce(v) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    @property
    def last_epoch(self) -> int:
        """The classification-stage epoch training stops after (``stop_epoch`` or ``epochs``).
        With ``eval_every`` the run counts rounds, not epochs, and how many depends on the data:
        ``trainables.finetune`` works them out (``trainables.rounds``) and reports ``rounds``."""
        return self.stop_epoch or self.epochs

    def _refuse_rounds(self) -> None:
        """For the families whose loops count epochs only."""
        if parse_eval_every(self.eval_every) is not None:
            raise ConfigError(f"`eval_every` ({self.eval_every!r}) is available to fine-tuning trials "
                              f"only, not to {self.TRAINABLE} trials (their loops evaluate per epoch); "
                              f"leave it unset (null) or use trainable 'finetune'")


class _EncoderRules(_Config):
    """The rules between the optimizer fields every encoder family has."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ConfigError(
                f"`nesterov` needs optimizer 'sgd' with momentum > 0, but got "
                f"(optimizer={self.optimizer!r}, momentum={self.momentum})")
        if self.min_lr > self.lr:
            raise ConfigError(f"`min_lr` must lie in [0.0, lr={self.lr}], but got {self.min_lr!r}")


class _FinetuneRules(_EncoderRules):
    """Learning rates follow layer-wise decay (LLRD, Howard & Ruder 2018; Sun et al. 2019): the top
    encoder layer trains at ``lr``, layer ``l`` below it at ``lr * llrd_decay**l``, the embeddings
    lowest, and the classification head at ``lr * head_lr_multiplier``."""

    TRAINABLE = "finetune"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.swa_epochs > self.last_epoch:
            raise ConfigError(f"`swa_epochs` ({self.swa_epochs}) cannot exceed the epochs trained "
                              f"({self.last_epoch})")
        if self.swa_epochs and parse_eval_every(self.eval_every) is not None:
            raise ConfigError(f"`swa_epochs` ({self.swa_epochs}) averages the weights at the end of "
                              f"each of the last epochs, which `eval_every` ({self.eval_every!r}) "
                              f"replaces by rounds; use `ema_decay` (updated every step) or leave "
                              f"`eval_every` unset")
        if self.ema_decay and self.swa_epochs:
            raise ConfigError("`ema_decay` and `swa_epochs` both average the weights; use one of "
                              f"them, but got (ema_decay={self.ema_decay}, swa_epochs={self.swa_epochs})")
        if self.distill_teacher and (self.rdrop_alpha or self.supcon_lambda):
            # the folder itself is checked when the trial starts (trainables.distill): a trained
            # student's config must load on a machine without its teacher
            raise ConfigError(
                f"`distill_teacher` ({self.distill_teacher!r}) cannot be combined with `rdrop_alpha` "
                f"({self.rdrop_alpha}) or `supcon_lambda` ({self.supcon_lambda}): the two-dropout-pass "
                f"losses take no teacher; set them to 0 or leave `distill_teacher` unset (null)")


class _ContrastiveRules(_EncoderRules):
    """Contrastive pretraining of the encoder, then classification (or both at once).

    Modes: ``two-stage`` trains encoder + projection head with the contrastive loss for
    ``contrastive_epochs``, then freezes the encoder and trains the classifier head for
    ``epochs`` (the study's protocol); ``two-stage-finetune`` then fine-tunes the whole model
    instead; ``joint`` minimises cross-entropy + ``joint_lambda`` * SupCon for ``epochs``
    (Gunel et al., ICLR 2021). Phases (see ``PHASES``): the classification stage uses the
    ``optimizer``/``loop``/``model`` fields (``lr``, ``optimizer``, LLRD, ``batch_size``,
    ``epochs``); the contrastive stage has its own optimizer, learning rate and batch size
    (``contrastive_*``) and shares LLRD, warm-up and schedule.
    """

    TRAINABLE = "contrastive"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._refuse_rounds()
        if self.mode != "joint" and self.contrastive_epochs < 1:
            raise ConfigError(f"`contrastive_epochs` must lie in [1, 10000] in mode {self.mode!r}, "
                              f"but got {self.contrastive_epochs}")
        if self.mode == "joint" and self.loss != "supcon":
            raise ConfigError(f"`mode` 'joint' combines cross-entropy with SupCon; `loss` must be "
                              f"'supcon', but got {self.loss!r}")

    @property
    def total_epochs(self) -> int:
        """Epochs reported to Ray (ASHA's time axis): both stages, or ``epochs`` when joint."""
        return self.last_epoch if self.mode == "joint" else self.contrastive_epochs + self.last_epoch


@dataclass(frozen=True)
class _SharedFields:
    """The fields both families have, first and in ``HPARAMS``'s order; each family's class
    repeats ``trainable`` only to give it its own default (a redeclared field keeps its place)."""

    trainable: str = ''  # each family's own default, set below
    model: str = 'minilm-l6'
    max_length: int = 128
    epochs: int = 4
    eval_every: Optional[str] = None
    seed: int = 0
    precision: str = 'auto'
    lr: float = 0.0001
    optimizer: str = 'adamw'
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.01
    llrd_decay: float = 1.0
    head_lr_multiplier: float = 1.0
    scheduler: str = 'linear'
    warmup_ratio: float = 0.1
    min_lr: float = 0.0
    batch_size: int = 32
    stop_epoch: Optional[int] = None
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    reinit_layers: int = 0
    pooling: str = 'mean'
    head: str = 'linear'
    head_hidden: int = 256
    classifier_dropout: float = 0.1
    hidden_dropout: Optional[float] = None
    attention_dropout: Optional[float] = None
    num_layers: int = 0


@dataclass(frozen=True)
class FinetuneConfig(_FinetuneRules, _SharedFields):
    """Everything one fine-tuning trial needs besides the data. Fields, types and defaults are
    ``HPARAMS``'s (a test holds them equal); the rules are ``_FinetuneRules``'s."""

    trainable: str = 'finetune'
    quantize: bool = False
    ema_decay: float = 0.0
    swa_epochs: int = 0
    rdrop_alpha: float = 0.0
    supcon_lambda: float = 0.0
    supcon_temperature: float = 0.1
    perturb_train: Optional[str] = None
    perturb_train_prob: float = 0.5
    distill_teacher: Optional[str] = None
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5
    perturb_eval: Optional[str] = DEFAULT_PERTURB_EVAL
    deploy_metrics: bool = True
    preset: Optional[str] = None


@dataclass(frozen=True)
class ContrastiveConfig(_ContrastiveRules, _SharedFields):
    """Everything one contrastive trial needs besides the data. Fields, types and defaults are
    ``HPARAMS``'s (a test holds them equal); modes and phases: ``_ContrastiveRules``."""

    trainable: str = 'contrastive'
    mode: str = 'two-stage'
    loss: str = 'supcon'
    temperature: float = 0.1
    joint_lambda: float = 0.5
    projection_dim: int = 128
    contrastive_epochs: int = 3
    contrastive_optimizer: str = 'adamw'
    contrastive_lr: float = 0.0001
    contrastive_batch_size: int = 64
    augmentation: str = 'none'
    augmentation_strength: float = 0.1
    knn_k: int = 10
    perturb_eval: Optional[str] = DEFAULT_PERTURB_EVAL
    deploy_metrics: bool = True
    preset: Optional[str] = None


class _MultitaskRules(_EncoderRules):
    """One encoder, a sentence head (intents) and a token head (slots), trained on one joint
    dataset or two datasets at once. The sentence head trains at ``lr * head_lr_multiplier``, the
    token head at ``lr * slot_lr_multiplier``, the encoder with LLRD; the loss is
    ``intent_loss_weight * CE(intent) + slot_loss_weight * CE(slots)``. Freezing: ``freeze`` (the
    encoder or one head, the whole run), ``freeze_layers``/``freeze_embeddings`` (the bottom),
    ``unfreeze_every`` (gradual top-down unfreezing)."""

    TRAINABLE = "multitask"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._refuse_rounds()
        if self.freeze == "backbone" and self.unfreeze_every:
            raise ConfigError(f"`freeze` 'backbone' keeps the encoder frozen for the whole run, so "
                              f"`unfreeze_every` ({self.unfreeze_every}) has nothing to unfreeze; "
                              f"use one of them")
        if self.intent_loss_weight == 0 and self.slot_loss_weight == 0:
            raise ConfigError("`intent_loss_weight` and `slot_loss_weight` are both 0: nothing "
                              "would train; give at least one task a weight > 0")


@dataclass(frozen=True)
class MultitaskConfig(_MultitaskRules, _SharedFields):
    """Everything one multi-task trial needs besides the data. Fields, types and defaults
    are ``HPARAMS``'s (a test holds them equal); the rules are ``_MultitaskRules``'s."""

    trainable: str = 'multitask'
    intent_loss_weight: float = 1.0
    slot_loss_weight: float = 1.0
    slot_head: str = 'linear'
    slot_lr_multiplier: float = 1.0
    freeze: str = 'none'
    unfreeze_every: int = 0
    sentence_norm: str = 'none'
    task_mixing: str = 'proportional'
    perturb_eval: Optional[str] = DEFAULT_PERTURB_EVAL
    deploy_metrics: bool = True
    preset: Optional[str] = None


class _TfidfRules(_Config):
    """TF-IDF over the tokenizer's word-piece n-grams and a logistic regression (docs/baselines.md).
    It fits once: a trial reports one epoch, whatever ``epochs`` says (a sweep-level setting for
    the encoder families it may run beside)."""

    TRAINABLE = "tfidf"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._refuse_rounds()
        if self.stop_epoch not in (None, 1):
            raise ConfigError(f"`stop_epoch` must be 1 or null for a tfidf trial (it fits once and "
                              f"reports one epoch), but got {self.stop_epoch}")

    @property
    def total_epochs(self) -> int:
        """Epochs reported: one, the fit."""
        return 1

    @property
    def last_epoch(self) -> int:
        return 1


class _BilstmRules(_Config):
    """A BiLSTM with attention pooling over token embeddings trained from scratch
    (docs/baselines.md); AdamW at a constant ``bilstm_lr``, ``epochs`` epochs."""

    TRAINABLE = "bilstm"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._refuse_rounds()


@dataclass(frozen=True)
class TfidfConfig(_TfidfRules):
    """Everything one TF-IDF trial needs besides the data. Fields, types and defaults are
    ``HPARAMS``'s (a test holds them equal); the rules are ``_TfidfRules``'s."""

    trainable: str = 'tfidf'
    model: str = 'minilm-l6'
    max_length: int = 128
    epochs: int = 4
    eval_every: Optional[str] = None
    seed: int = 0
    precision: str = 'auto'
    stop_epoch: Optional[int] = None
    tfidf_c: float = 1.0
    tfidf_ngram_max: int = 2
    tfidf_sublinear_tf: bool = True
    tfidf_min_df: int = 1
    tfidf_class_weight: str = 'none'
    perturb_eval: Optional[str] = DEFAULT_PERTURB_EVAL
    deploy_metrics: bool = True
    preset: Optional[str] = None


@dataclass(frozen=True)
class BilstmConfig(_BilstmRules):
    """Everything one BiLSTM trial needs besides the data. Fields, types and defaults are
    ``HPARAMS``'s (a test holds them equal); the rules are ``_BilstmRules``'s."""

    trainable: str = 'bilstm'
    model: str = 'minilm-l6'
    max_length: int = 128
    epochs: int = 4
    eval_every: Optional[str] = None
    seed: int = 0
    precision: str = 'auto'
    batch_size: int = 32
    stop_epoch: Optional[int] = None
    grad_clip: float = 1.0
    bilstm_lr: float = 0.002
    bilstm_embedding_dim: int = 128
    bilstm_hidden: int = 128
    bilstm_layers: int = 1
    bilstm_dropout: float = 0.2
    perturb_eval: Optional[str] = DEFAULT_PERTURB_EVAL
    deploy_metrics: bool = True
    preset: Optional[str] = None


# the config of one trial, of any family
TrialConfig = FinetuneConfig | ContrastiveConfig | MultitaskConfig | TfidfConfig | BilstmConfig
