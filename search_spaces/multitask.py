"""The default multi-task (joint intent + slot) search space, read from the hyperparameter registry.

It samples what fine-tuning samples (learning rate, LLRD, warm-up, schedule, batch, dropout,
pooling, the sentence head) and the multi-task knobs with a default search range: each task's loss
weight, the token head and its learning-rate multiplier (``trainables.hparams.HPARAMS``).
"""

from __future__ import annotations

from search_spaces.finetune import searched_params
from search_spaces.space import Param, SearchSpace

MULTITASK_PARAMS: tuple[Param, ...] = searched_params("multitask")


def multitask_space(**constants) -> SearchSpace:
    """The default space; ``constants`` are the sweep-level settings (model, epochs, ...)."""
    return SearchSpace(MULTITASK_PARAMS, {"trainable": "multitask", **constants})
