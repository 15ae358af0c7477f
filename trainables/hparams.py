"""Every hyperparameter, declared once: default, allowed values, default search range, phase, doc.

``HPARAMS`` is the single source of truth. The config dataclasses (``FinetuneConfig``,
``ContrastiveConfig``, ``MultitaskConfig``, the baselines' ``TfidfConfig`` and ``BilstmConfig``) list its fields in source, so editors and type checkers see them, with its
names, types (``KIND_TYPES[kind]``) and defaults, in its order; a test holds the two equal. Their
validation reads its rules, the default
search spaces (``search_spaces``) read its ranges, the CLI reads its defaults and choices, YAML
overrides are checked against it, and the README's parameter table is rendered from it
(``tunebert space --table``; a test keeps the README in step). A new parameter goes in
``trainables/hparam_table.py`` and as a field of its config class(es), nowhere else; a test fails if another module spells out a choice list of a parameter declared
here.

``FinetuneConfig.from_dict(d).to_dict()`` is the exact dict a trial trains with and the exact dict
that reaches MLflow. Unknown keys and bad values raise ``ConfigError`` naming the key, the value
and the rule.

This module is the registry's public face; the parts live by job in ``trainables.hparam_kinds``
(what a parameter is), ``trainables.hparam_table`` (the table itself) and ``trainables.configs``
(the typed configs), and every name is importable from here.
"""

from trainables.configs import (BilstmConfig, ContrastiveConfig, FinetuneConfig, MultitaskConfig,
                                TfidfConfig, TrialConfig)
from trainables.hparam_kinds import (ALL_FAMILIES, BASELINES, BILSTM, BOTH, CONTRASTIVE, ENCODERS,
                                     FAMILIES, FINETUNE, MULTITASK, KIND_TYPES, PHASES, TFIDF, HParam)
from trainables.hparam_table import (AUGMENTED, DEFAULT_PERTURB_EVAL, HPARAMS, SGD_ONLY, SWEEP_LEVEL,
                                     TWO_STAGE, choices_of, default_of, markdown_table,
                                     params_of_family)

__all__ = ["ALL_FAMILIES", "AUGMENTED", "BASELINES", "BILSTM", "BOTH", "BilstmConfig", "CONTRASTIVE",
           "ContrastiveConfig", "DEFAULT_PERTURB_EVAL", "ENCODERS",
           "FAMILIES", "FINETUNE", "FinetuneConfig", "HPARAMS", "HParam", "MULTITASK", "MultitaskConfig", "KIND_TYPES", "PHASES",
           "SGD_ONLY", "SWEEP_LEVEL", "TFIDF", "TWO_STAGE", "TfidfConfig", "TrialConfig", "choices_of",
           "default_of", "markdown_table", "params_of_family"]
