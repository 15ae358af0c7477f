"""The default fine-tuning search space, read from the hyperparameter registry.

Each parameter's range, choices and condition are declared once, in ``trainables.hparams.HPARAMS``
(with the literature the ranges come from); this module only selects the searched ones.
"""

from __future__ import annotations

from search_spaces.space import Param, SearchSpace
from trainables.hparams import SWEEP_LEVEL, params_of_family

__all__ = ["FINETUNE_PARAMS", "SWEEP_LEVEL", "finetune_space", "searched_params"]


def searched_params(family: str) -> tuple[Param, ...]:
    """The parameters of ``family`` that the default space samples, in declaration order."""
    return tuple(Param(p.name, p.search, p.when) for p in params_of_family(family)
                 if p.search is not None and p.phase != "run")


FINETUNE_PARAMS: tuple[Param, ...] = searched_params("finetune")


def finetune_space(**constants) -> SearchSpace:
    """The default space; ``constants`` are the sweep-level settings (model, epochs, ...)."""
    return SearchSpace(FINETUNE_PARAMS, {"trainable": "finetune", **constants})
