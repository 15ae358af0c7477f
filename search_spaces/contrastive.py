"""Search spaces for the contrastive trainable, and the mixed space that searches the family too.

Ranges, choices and conditions come from ``trainables.hparams.HPARAMS``. The classification stage
reuses the fine-tuning parameters that apply to contrastive trials.
"""

from __future__ import annotations

from search_spaces.finetune import searched_params
from search_spaces.space import Categorical, Param, SearchSpace
from trainables.hparams import FAMILIES, HPARAMS

CONTRASTIVE_PARAMS: tuple[Param, ...] = searched_params("contrastive")


def contrastive_space(**constants) -> SearchSpace:
    return SearchSpace(CONTRASTIVE_PARAMS, {"trainable": "contrastive", **constants})


def mixed_space(**constants) -> SearchSpace:
    """The family (fine-tuning, contrastive, or a cheap baseline: ``FAMILIES``) as one more
    (first) parameter; a parameter of some families only exists when one of them is drawn. All
    report ``val_accuracy``, so they rank in one table."""
    params = [Param("trainable", Categorical(FAMILIES))]
    seen = set()
    for family in FAMILIES:
        for p in searched_params(family):
            if p.name in seen:
                continue
            seen.add(p.name)
            only = tuple(f for f in FAMILIES if f in HPARAMS[p.name].families)
            when = {} if len(only) == len(FAMILIES) else {"trainable": only}
            params.append(Param(p.name, p.dist, {**when, **p.when}))
    return SearchSpace(tuple(params), {k: v for k, v in constants.items() if k != "trainable"})
