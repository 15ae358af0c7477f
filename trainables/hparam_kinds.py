"""What a hyperparameter is: ``HParam`` (kind, default, rule, search range, phase, doc), the Python
type of each kind (``KIND_TYPES``), the phases and the trial families. The table of every
parameter is ``trainables.hparam_table``; read both through ``trainables.hparams``.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from trainables.errors import ConfigError
from trainables.ranges import Distribution

# the text classifiers built on a pretrained encoder
ENCODER_CLASSIFIERS = ("finetune", "contrastive")
# cheap baselines trained from scratch on the encoder's tokens (docs/baselines.md): what the
# encoder buys is the difference in one sweep's record
TFIDF = ("tfidf",)
BILSTM = ("bilstm",)
BASELINES = TFIDF + BILSTM
# the text-classification families (``--trainable any`` searches over these)
FAMILIES = ENCODER_CLASSIFIERS + BASELINES
# multi-task trials: one encoder, a sentence head and/or a token-tagging head
MULTITASK = ("multitask",)
ALL_FAMILIES = FAMILIES + MULTITASK
# the families that train a pretrained encoder
ENCODERS = ENCODER_CLASSIFIERS + MULTITASK
BOTH = ENCODERS  # the default of ``HParam.families``: every encoder family has the parameter
CONTRASTIVE = ("contrastive",)
FINETUNE = ("finetune",)

# Which part of training a parameter acts on (the "phase" column of the table).
PHASES = {
    "run": "the whole run; a sweep sets it once for every trial (a sweep-level setting)",
    "model": "the encoder and the classification head",
    "optimizer": "the optimizer of the classification stage (fine-tuning, or the classifier "
                 "stage of a contrastive trial)",
    "schedule": "the learning-rate schedule (both stages of a contrastive trial)",
    "loop": "the training loop",
    "recipe": "training recipe knobs for compact encoders (fine-tuning trials; 0 = off)",
    "contrastive": "the contrastive stage or loss (contrastive trials)",
    "multitask": "the tasks of a multi-task trial: loss weights, the token head, freezing, unfreezing, "
                 "how the batches of two datasets mix",
    "eval": "what a trial measures besides its training; fixed for a sweep in a space file, "
            "not searched",
    "baseline": "the cheap baselines trained from scratch (tfidf and bilstm trials, "
                "docs/baselines.md)",
}


@dataclass(frozen=True)
class HParam:
    """One hyperparameter. ``kind`` is one of bool, int, float, str, optional_float, optional_int.

    Validation: ``choices`` for categorical values, else ``[low, high]`` (``(low, high]`` when
    ``low_open``). ``search`` is its distribution in the default search space (``None``: not
    searched by default, the default value applies), ``when`` the condition under which it is
    sampled (``{"head": ("mlp",)}``).
    """

    name: str
    kind: str
    default: Any
    doc: str
    phase: str
    families: tuple[str, ...] = BOTH
    choices: Optional[tuple] = None
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    search: Optional[Distribution] = None
    when: Mapping[str, tuple] = field(default_factory=dict)

    def check(self, value: Any) -> None:
        """Raise ``ConfigError`` unless ``value`` is valid for this parameter on its own."""
        name = self.name
        if self.kind.startswith("optional_") and value is None:
            return
        if self.choices is not None:
            if value not in self.choices or isinstance(value, bool) != isinstance(self.choices[0], bool):
                raise ConfigError(f"`{name}` must be one of {list(self.choices)}, but got {value!r}")
            return
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"`{name}` must be true or false, but got {value!r}")
        elif self.kind in ("int", "optional_int"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"`{name}` must be an integer, but got {value!r} "
                                  f"({type(value).__name__})")
            if not self.low <= value <= self.high:
                raise ConfigError(f"`{name}` must lie in [{self.low}, {self.high}], but got {value}")
        elif self.kind in ("float", "optional_float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"`{name}` must be a number, but got {value!r} "
                                  f"({type(value).__name__})")
            ok = (self.low < value if self.low_open else self.low <= value) and value <= self.high
            if not ok:
                bracket = "(" if self.low_open else "["
                raise ConfigError(f"`{name}` must lie in {bracket}{self.low}, {self.high}], but got {value!r}")
        elif self.kind in ("str", "optional_str"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"`{name}` must be a non-empty string, but got {value!r}")

    def coerce(self, value: Any) -> Any:
        """YAML and MLflow hand back ints for floats such as ``lr: 1`` and floats for whole numbers."""
        if self.kind in ("float", "optional_float") and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if self.kind in ("int", "optional_int") and isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @property
    def annotation(self) -> Any:
        """The Python type of the config field (``KIND_TYPES[kind]``)."""
        return KIND_TYPES[self.kind]

    def allowed(self) -> str:
        """The rule in words, for docs and errors."""
        if self.choices is not None:
            return " \\| ".join(str(c) for c in self.choices)
        if self.kind == "bool":
            return "true \\| false"
        if self.kind == "str":
            return "any"
        if self.kind == "optional_str":
            return "string or null"
        bracket = "(" if self.low_open else "["
        rule = f"{bracket}{_num(self.low)}, {_num(self.high)}]"
        return rule + (" or null" if self.kind.startswith("optional_") else "")


# the Python type of each ``HParam.kind``: the annotation of its config field
KIND_TYPES: dict[str, Any] = {
    "bool": bool, "int": int, "float": float, "str": str,
    "optional_int": Optional[int], "optional_float": Optional[float], "optional_str": Optional[str],
}


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
